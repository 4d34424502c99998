"""``./dev/demo --once`` end to end: API -> outbox -> relay -> Kafka -> consumer -> read model.

The driver prints a final ``DEMO_SUMMARY {json}`` line and writes the same JSON to
``--summary-json``; the tests check that, not the prose.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from .conftest import ROOT, Stack

# What the demo's requests must produce (dev/outbox_dev/demo/driver.py, Demo.scenario): alice places
# 42.50 and 7.25 and cancels the second; bob places 10.00 and 99.99.
EXPECTED = {
    "alice": {"orders": 2, "total_amount": "42.50", "cancelled": 1},
    "bob": {"orders": 2, "total_amount": "109.99", "cancelled": 0},
}
EVENTS = 7  # 4 OrderPlaced, 2 OrderStatusChanged, 1 OrderCancelled


def run_demo(tmp_path: Path, *flags: str) -> tuple[subprocess.CompletedProcess[str], Any]:
    summary = tmp_path / "summary.json"
    # The demo takes its settings from the stack, not OUTBOX_* variables; but the stack's
    # own ports (OUTBOX_STACK_*_PORT) must stay, or the demo starts a second stack on the
    # default ports over the same data directory, stopping this one.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("OUTBOX_") or k.startswith("OUTBOX_STACK_")
    }
    started = time.monotonic()
    proc = subprocess.run(
        [str(ROOT / "dev" / "demo"), "--once", "--summary-json", str(summary), *flags],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert elapsed < 60, f"took {elapsed:.1f}s"
    line = [x for x in proc.stdout.splitlines() if x.startswith("DEMO_SUMMARY ")][-1]
    printed = json.loads(line.removeprefix("DEMO_SUMMARY "))
    assert json.loads(summary.read_text()) == printed
    return proc, printed


def assert_clean(stack: Stack, result: Any) -> None:
    """The demo's databases are gone and none of its child processes is left.

    (A pid could in theory be reused by then; with a few seconds between, it is not.)
    """
    run = result["run"]
    with stack.mysql_connect() as conn, conn.cursor() as cur:
        cur.execute("SHOW DATABASES LIKE %s", (f"demo_{run}%",))
        assert cur.fetchall() == ()
    assert len(result["child_pids"]) >= 3
    for pid in result["child_pids"]:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # gone (and reaped by the demo, so not a zombie either)


def test_demo_once_builds_the_read_model(stack: Stack, tmp_path: Path) -> None:
    proc, result = run_demo(tmp_path)
    assert result["read_model"] == EXPECTED
    assert result["expected_read_model"] == EXPECTED  # what the API answered
    assert result["events"] == EVENTS
    assert result["distinct_events_on_kafka"] == EVENTS
    assert result["inbox_rows"] == EVENTS
    assert result["consumer_applied"] == EVENTS
    # The 4xx answers are shown.
    assert "HTTP 409" in proc.stdout and "HTTP 422" in proc.stdout
    assert_clean(stack, result)


@pytest.mark.timeout(120)
def test_demo_with_relay_restart_counts_nothing_twice(stack: Stack, tmp_path: Path) -> None:
    # The relay is stopped (SIGTERM) halfway, an order is placed while it is down, and it
    # is restarted ignoring its checkpoint: every earlier event reaches Kafka twice.
    proc, result = run_demo(tmp_path, "--restart-relay-midway")
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
