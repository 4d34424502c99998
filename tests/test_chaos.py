"""Chaos: the quick run of ``bench/chaos.py``, and what chaos runs found."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymysql
import pytest
from sqlalchemy.engine import make_url

from outbox_dev.scratch import ScratchBroker, ScratchMariaDB
from transactional_outbox.relay import Relay

from .conftest import ROOT, Stack, unique
from .relay_harness import (
    OUTBOX_DDL,
    Collector,
    make_event,
    relay_settings,
    running_relay,
    wait_until,
    write_events,
)


def test_quick_chaos_run_loses_nothing(stack: Stack) -> None:
    """Each fault kind once under load: nothing lost, invented or misordered (once to
    keep the suite's time; longer runs: bench/chaos.py)."""
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "chaos.py"), "--quick"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        out, _ = proc.communicate(timeout=150)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # the script stops its servers on SIGTERM
        out, _ = proc.communicate(timeout=60)
        raise AssertionError(f"chaos run timed out:\n{out[-5000:]}") from None
    assert proc.returncode == 0, out[-5000:]
    assert "lost=0 invented=0 misordered=0" in out, out[-5000:]
    summary = json.loads(out.split("CHAOS_SUMMARY ", 1)[1].splitlines()[0])
    assert summary["lost"] == 0 and summary["committed"] > 0
    assert summary["delivered"] == summary["committed"]
    assert set(summary["faults"]) >= {
        "relay_kill",
        "mariadb_restart",
        "redis_restart",
        "kafka_cut",
        "kafka_stall",
        "broker_pause",
    }
    assert all(summary["faults"][k] >= 1 for k in summary["faults"])


# -- found by chaos runs -------------------------------------------------------------

OTHER_DDL = {
    # the outbox's own layout (an archive or audit copy, or `outbox` of another schema)
    "same layout": OUTBOX_DDL.format(table="other"),
    # any other table, e.g. the business rows written beside the events
    "other layout": """CREATE TABLE other (
        event_id CHAR(36) NOT NULL PRIMARY KEY, aggregatetype VARCHAR(32) NOT NULL,
        aggregateid VARCHAR(64) NOT NULL, seq BIGINT NOT NULL)""",
}


@pytest.fixture
def scratch(stack: Stack) -> Iterator[ScratchMariaDB]:
    db = ScratchMariaDB(unique("scratch-tableid-"))
    db.destroy()
    db.start()
    try:
        yield db
    finally:
        db.destroy()


@pytest.mark.parametrize("layout", list(OTHER_DDL))
async def test_rows_of_another_table_are_not_taken_for_outbox_rows_after_a_server_restart(
    scratch: ScratchMariaDB, stack: Stack, topic_prefix: str, redis_prefix: str, layout: str
) -> None:
    """Table ids restart with the server: the outbox's id in one binlog is another
    table's id in the next. A relay reading across the restart (from a checkpoint
    taken before it, say) must publish the outbox rows and only them.

    Found by bench/chaos.py (relay exit 1, "Result length not requested length").
    """
    with scratch.connect() as conn, conn.cursor() as cur:
        cur.execute("CREATE DATABASE app")
        cur.execute("USE app")
        cur.execute(OUTBOX_DDL.format(table="outbox"))
        cur.execute(OTHER_DDL[layout])
    await asyncio.to_thread(scratch.stop)  # each server lifetime below starts alike
    await asyncio.to_thread(scratch.start)
    with scratch.connect("app") as conn, conn.cursor() as cur:
        cur.execute("SHOW MASTER STATUS")
        file, pos = cur.fetchone()[:2]
        real = make_event(aggregate_id="real")
        write_events(conn, [real])  # the first table this lifetime opens: the outbox
    await asyncio.to_thread(scratch.stop)
    await asyncio.to_thread(scratch.start)
    with scratch.connect("app") as conn, conn.cursor() as cur:
        # the first table this lifetime opens: `other`, with the outbox's old id
        if layout == "same layout":
            write_events(conn, [make_event(aggregate_id="not-an-event")], table="other")
        else:
            cur.execute("INSERT INTO other VALUES (UUID(), 'order', 'not-an-event', 1)")
        after = make_event(aggregate_id="after")
        write_events(conn, [after])
        assert table_ids(cur, "outbox")[0] == table_ids(cur, "other")[-1], "ids did not collide"

    settings = relay_settings(
        mysql_url=make_url(scratch.url("app")),
        redis_url=stack.redis_url,
        kafka_bootstrap=stack.kafka_bootstrap,
        topic_prefix=topic_prefix,
        redis_prefix=redis_prefix,
        start_position=f"{file}:{pos}",  # a checkpoint from before the restart
    )
    async with Collector(stack.kafka_bootstrap) as col:
        await col.watch([topic_prefix + "order"])
        relay = Relay(settings)
        task = asyncio.create_task(relay.run())
        try:
            await wait_until(
                lambda: str(after.id) in col.ids() or task.done(),
                within=30,
                what="the event written after the restart",
            )
            if task.done():
                task.result()  # the relay's own error
        finally:
            relay.stop()
            # The relay's own error, if it had one, fails the test here.
            await asyncio.wait_for(task, 30)
    # (keys differ, so partitions may too: compare without cross-partition order)
    got = sorted((r.key.decode(), dict(r.headers)["id"].decode()) for r in col.records)
    assert got == [("after", str(after.id)), ("real", str(real.id))]


def errors(relay: Relay) -> float:
    """The relay's ``outbox_relay_publish_errors_total``: Kafka batches that failed."""
    return relay.metrics.registry.get_sample_value("outbox_relay_publish_errors_total") or 0


def table_ids(cur: object, table: str) -> list[int]:
    """The table ids ``app.<table>`` had in the binlog's Table_map events, in order."""
    ids: list[int] = []
    cur.execute("SHOW BINARY LOGS")  # type: ignore[attr-defined]
    for name, *_rest in cur.fetchall():  # type: ignore[attr-defined]
        cur.execute("SHOW BINLOG EVENTS IN %s", (name,))  # type: ignore[attr-defined]
        for row in cur.fetchall():  # type: ignore[attr-defined]
            info = str(row[5])
            if row[2] == "Table_map" and info.endswith(f"(app.{table})"):
                ids.append(int(info.split("table_id: ", 1)[1].split()[0]))
    return ids


@pytest.fixture
def proxied_broker(tmp_path: Path) -> Iterator[ScratchBroker]:
    broker = ScratchBroker(tmp_path / "broker")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


async def test_a_failed_batch_is_not_overtaken_by_a_later_batch_of_its_partition(
    conn: pymysql.Connection,
    settings_kw: dict[str, Any],
    topic_prefix: str,
    proxied_broker: ScratchBroker,
) -> None:
    """Kafka unreachable for longer than a batch may wait: the oldest batch of a
    partition fails; the next one, younger, must not reach Kafka before the failed
    events are sent again, or the key's order is broken for good.

    Found by bench/chaos.py (2 aggregates out of order in a 12-minute run): without
    an idempotent producer, aiokafka fails an expired batch and goes on sending the
    partition's later batches, and the relay flushes them at the end of the session.
    """
    bootstrap = proxied_broker.bootstrap
    settings = relay_settings(
        **{**settings_kw, "kafka_bootstrap": bootstrap},
        request_timeout_ms=2000,  # how long a batch may wait for Kafka
        reconnect_max_ms=500,
    )
    proxy = proxied_broker.proxy
    first, a, b = (make_event(aggregate_id="k", event_type=t) for t in ("First", "A", "B"))
    async with Collector(bootstrap) as col:
        await col.watch([topic_prefix + "order"])
        async with running_relay(settings) as relay:
            write_events(conn, [first])
            await col.wait_for(1)
            proxy.cut()
            write_events(conn, [a])
            await wait_until(lambda: relay.stats.outstanding == 1, what="A's batch sent")
            # B's batch must be younger than A's by a good margin, so that it is still
            # pending when A's expires: the margin is a duration, asserted below.
            await asyncio.sleep(1.0)
            write_events(conn, [b])
            await wait_until(lambda: relay.stats.outstanding == 2, what="B's batch sent")
            await wait_until(lambda: errors(relay) >= 1, what="A's batch failed")
            # The race this test is about: A's batch failed, B's is still pending (not
            # failed, not delivered) when Kafka comes back. Checked, not hoped for: no
            # await between the check and the restore.
            assert errors(relay) == 1, "B's batch failed too: the race did not happen"
            assert str(b.id) not in col.ids()
            proxy.restore()
            await wait_until(lambda: {str(a.id), str(b.id)} <= set(col.ids()), what="A and B")
    names = {str(first.id): "First", str(a.id): "A", str(b.id): "B"}
    in_kafka = [names[i] for i in col.ids()]
    assert list(dict.fromkeys(in_kafka)) == ["First", "A", "B"], f"partition: {in_kafka}"
