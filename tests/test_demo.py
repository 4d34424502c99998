"""``./dev/demo --once`` end to end: API -> outbox -> relay -> Kafka -> consumer -> read model,
on MariaDB (binlog) and on PostgreSQL (``--database postgresql``: a replication slot; also
with ``--outbox-mode message``, events as logical decoding messages).

The driver prints a final ``DEMO_SUMMARY {json}`` line and writes the same JSON to
``--summary-json``; the tests check that, not the prose.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import psycopg
import pytest

from outbox_dev import stack as local_stack

from .conftest import ROOT, Stack

# What the demo's requests must produce (dev/outbox_dev/demo/driver.py, Demo.scenario): alice places
# 42.50 and 7.25 and cancels the second; bob places 10.00 and 99.99.
EXPECTED = {
    "alice": {"orders": 2, "total_amount": "42.50", "cancelled": 1},
    "bob": {"orders": 2, "total_amount": "109.99", "cancelled": 0},
}
EVENTS = 7  # 4 OrderPlaced, 2 OrderStatusChanged, 1 OrderCancelled

# The demo's flags per database (and write mode) it runs on.
ON = {
    "mysql": (),
    "postgresql": ("--database", "postgresql"),
    "postgresql-message": ("--database", "postgresql", "--outbox-mode", "message"),
}


def run_demo(tmp_path: Path, *flags: str) -> tuple[subprocess.CompletedProcess[str], Any]:
    summary = tmp_path / "summary.json"
    # No OUTBOX_ settings leak into the demo, but it shares the tests' stack: with the
    # OUTBOX_STACK_* ports dropped it started the default-port stack in the same .stack/
    # directory, taking over the state (pid files) of the stack the tests run on.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("OUTBOX_") or k.startswith("OUTBOX_STACK_")
    }
    proc = subprocess.run(
        [str(ROOT / "dev" / "demo"), "--once", "--summary-json", str(summary), *flags],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    line = [x for x in proc.stdout.splitlines() if x.startswith("DEMO_SUMMARY ")][-1]
    printed = json.loads(line.removeprefix("DEMO_SUMMARY "))
    assert json.loads(summary.read_text()) == printed
    return proc, printed


def assert_clean(stack: Stack, result: Any) -> None:
    """The demo's databases (and PostgreSQL: its replication slot) are gone and none of
    its child processes is left.

    (A pid could in theory be reused by then; with a few seconds between, it is not.)
    """
    run = result["run"]
    if result["database"] == "postgresql":
        with psycopg.connect(local_stack.env_vars()["OUTBOX_PG_URL"]) as conn:
            like = (f"demo_{run}%",)
            dbs = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", like)
            assert dbs.fetchall() == []
            slots = "SELECT slot_name FROM pg_replication_slots WHERE slot_name LIKE %s"
            assert conn.execute(slots, like).fetchall() == []  # no slot keeps WAL
    else:
        with stack.mysql_connect() as conn, conn.cursor() as cur:
            cur.execute("SHOW DATABASES LIKE %s", (f"demo_{run}%",))
            assert cur.fetchall() == ()
    assert len(result["child_pids"]) >= 3
    for pid in result["child_pids"]:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # gone (and reaped by the demo, so not a zombie either)


# PostgreSQL in table mode runs in the restart test below (the suite's time).
@pytest.mark.parametrize("on", [on for on in ON if on != "postgresql"])
def test_demo_once_builds_the_read_model(stack: Stack, tmp_path: Path, on: str) -> None:
    proc, result = run_demo(tmp_path, *ON[on])
    assert (result["database"], result["outbox_mode"]) == (
        on.partition("-")[0],
        on.partition("-")[2] or "table",
    )
    assert result["read_model"] == EXPECTED
    assert result["expected_read_model"] == EXPECTED  # what the API answered
    assert result["events"] == EVENTS
    assert result["distinct_events_on_kafka"] == EVENTS
    assert result["inbox_rows"] == EVENTS
    assert result["consumer_applied"] == EVENTS
    # The 4xx answers are shown.
    assert "HTTP 409" in proc.stdout and "HTTP 422" in proc.stdout
    assert result["kafka_records"] == EVENTS  # no restart: no duplicate
    assert_clean(stack, result)


@pytest.mark.timeout(120)
def test_demo_with_relay_restart_counts_nothing_twice(stack: Stack, tmp_path: Path) -> None:
    # The relay is stopped (SIGTERM) halfway, an order is placed while it is down, and it
    # is restarted ignoring its checkpoint: every earlier event reaches Kafka twice.
    proc, result = run_demo(tmp_path, "--restart-relay-midway")
    assert result["database"] == "mysql"
    assert result["relay_restarted"] is True
    assert result["read_model"] == EXPECTED  # nothing missing, nothing counted twice
    assert result["events"] == EVENTS
    assert result["distinct_events_on_kafka"] == EVENTS
    duplicates = result["kafka_records"] - EVENTS
    assert duplicates == 4  # the 4 events published before the stop, sent again
    assert result["inbox_rows"] == EVENTS
    assert result["consumer_applied"] == EVENTS
    assert result["consumer_skipped"] == duplicates
    assert "relay stopped with SIGTERM (exit code 0" in proc.stdout
    assert_clean(stack, result)


@pytest.mark.timeout(120)
def test_demo_on_postgresql_with_relay_restart_loses_nothing(stack: Stack, tmp_path: Path) -> None:
    # The same on PostgreSQL: the slot only moves forward, so the restarted relay resumes
    # at the slot's confirmed position whatever the (ignored) checkpoint says; the events
    # after it, up to all 4 published before the stop, reach Kafka again.
    proc, result = run_demo(tmp_path, "--restart-relay-midway", *ON["postgresql"])
    assert (result["database"], result["relay_restarted"]) == ("postgresql", True)
    assert result["read_model"] == EXPECTED  # nothing missing, nothing counted twice
    assert result["distinct_events_on_kafka"] == EVENTS
    duplicates = result["kafka_records"] - EVENTS
    assert 0 <= duplicates <= 4
    assert result["inbox_rows"] == EVENTS
    assert result["consumer_applied"] == EVENTS
    assert result["consumer_skipped"] == duplicates
    assert "(the relay is down: the event waits in the replication slot)" in proc.stdout
    assert_clean(stack, result)
