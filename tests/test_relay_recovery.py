"""Restarts: graceful and SIGKILL, with a writer committing all the while."""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import threading
import urllib.request
import uuid
from collections import defaultdict
from pathlib import Path

import pytest
import redis

from transactional_outbox.relay.position import decode_checkpoint

from . import _binlog
from .conftest import Stack
from .relay_harness import (
    OUTBOX_DDL,
    Collector,
    RelayProcess,
    free_port,
    make_event,
    relay_settings,
    running_relay,
    wait_until,
    write_events,
)


@pytest.mark.parametrize("by_gtid", [False, True], ids=["file-pos", "gtid"])
async def test_graceful_restart_resumes_without_loss_or_duplicates(
    conn, settings_kw, topic_prefix, stack: Stack, by_gtid: bool
) -> None:
    settings = relay_settings(**settings_kw, resume_by_gtid=by_gtid)
    first = [make_event(aggregate_id=str(i % 7)) for i in range(40)]
    second = [make_event(aggregate_id=str(i % 7)) for i in range(40)]
    async with Collector(stack.kafka_bootstrap) as col:
        await col.watch([topic_prefix + "order"])
        for k in range(0, 40, 8):
            write_events(conn, first[k : k + 8])
        async with running_relay(settings):
            await col.wait_for(40)
        saved = redis.Redis.from_url(stack.redis_url).get(settings.checkpoint_key)
        assert saved is not None
        assert decode_checkpoint(saved).gtid  # MariaDB always records the GTID state
        for k in range(0, 40, 8):
            write_events(conn, second[k : k + 8])
        async with running_relay(settings) as relay:
            await col.wait_for(80)
            await wait_until(lambda: relay.stats.published == 40, what="40 published")
    # Order across partitions is not defined; per-key order is tested elsewhere.
    assert sorted(col.ids()) == sorted(str(e.id) for e in first + second)
    assert len(set(col.ids())) == len(col.ids()) == 80


class Writer(threading.Thread):
    """Commits small transactions of events over a few aggregates until stopped."""

    def __init__(self, stack: Stack, database: str, seed: int) -> None:
        super().__init__(daemon=True)
        self.conn = stack.mysql_connect(database)
        self.rng = random.Random(seed)
        self.committed: list[tuple[str, str]] = []  # (aggregate id, event id) in commit order
        self.halt = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.halt.is_set():
                events = [
                    make_event(aggregate_id=f"a{self.rng.randrange(25)}")
                    for _ in range(self.rng.randint(1, 4))
                ]
                rollback = self.rng.random() < 0.1
                write_events(self.conn, events, rollback=rollback)
                if not rollback:
                    self.committed.extend((e.aggregate_id, str(e.id)) for e in events)
                self.halt.wait(0.002)
        except BaseException as exc:
            self.error = exc
        finally:
            self.conn.close()


async def test_sigkill_at_random_points_loses_nothing(
    stack: Stack, database: str, conn, settings_kw, topic_prefix, tmp_path: Path
) -> None:
    seed = int(os.environ.get("OUTBOX_TEST_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    settings = relay_settings(**settings_kw, checkpoint_interval_ms=50)
    client = redis.Redis.from_url(stack.redis_url)
    allowed_duplicates: set[str] = set()
    writer = Writer(stack, database, seed)
    async with Collector(stack.kafka_bootstrap) as col:
        await col.watch([topic_prefix + "order"])
        writer.start()
        for kill in range(3):  # random points each run (the seed is in the messages)
            proc = RelayProcess(settings, tmp_path / "relay.log")
            proc.start()
            target = len(col.records) + rng.randint(20, 300)
            await wait_until(
                lambda t=target: len(col.records) >= t,  # type: ignore[misc]
                within=60,
                what=f"progress before kill {kill} (seed {seed})",
            )
            await asyncio.sleep(rng.random() * 0.3)  # a random point, not a sync point
            assert proc.kill(signal.SIGKILL) == -signal.SIGKILL
            raw = client.get(settings.checkpoint_key)
            if raw is None:
                start = settings.start_position.rsplit(":", 1)
                after = (start[0], int(start[1]))
            else:
                cp = decode_checkpoint(raw)
                after = (cp.file, cp.pos)
            # Only events after the saved checkpoint may come again.
            allowed_duplicates |= {
                str(uuid.UUID(bytes=row["id"]))
                for row in _binlog.read(stack, database, after).inserted
            }
        writer.halt.set()
        writer.join(10)
        assert writer.error is None
        committed_ids = {eid for _, eid in writer.committed}
        proc = RelayProcess(settings, tmp_path / "relay.log")
        proc.start()
        await wait_until(
            lambda: committed_ids <= set(col.ids()),
            within=60,
            what=f"every committed event (seed {seed})",
        )
        assert proc.kill(signal.SIGTERM) == 0, proc.log()[-3000:]

    received = col.ids()
    assert set(received) == committed_ids, f"seed {seed}"
    counts: dict[str, int] = defaultdict(int)
    for eid in received:
        counts[eid] += 1
    duplicated = {eid for eid, n in counts.items() if n > 1}
    assert duplicated <= allowed_duplicates, f"seed {seed}"

    first_seen: dict[str, list[str]] = defaultdict(list)
    seen: set[str] = set()
    for rec in col.records:
        eid = dict(rec.headers)["id"].decode()
        if eid not in seen:
            seen.add(eid)
            first_seen[rec.key.decode()].append(eid)
    expected: dict[str, list[str]] = defaultdict(list)
    for agg, eid in writer.committed:
        expected[agg].append(eid)
    assert first_seen == expected, f"seed {seed}"
    print(
        f"seed {seed}: {len(committed_ids)} committed, {len(received)} received, "
        f"{len(duplicated)} duplicated"
    )


async def test_mysql_restart_reconnects_from_the_last_position(
    stack: Stack, topic_prefix: str, redis_prefix: str
) -> None:
    from .scratch_server import scratch_mariadb

    with scratch_mariadb("scratch-restart", free_port()) as server:
        with server.connect() as c, c.cursor() as cur:
            cur.execute("CREATE DATABASE app")
            cur.execute("USE app")
            cur.execute(OUTBOX_DDL.format(table="outbox"))
        from sqlalchemy.engine import make_url

        settings = relay_settings(
            mysql_url=make_url(server.url("app")),
            redis_url=stack.redis_url,
            kafka_bootstrap=stack.kafka_bootstrap,
            topic_prefix=topic_prefix,
            redis_prefix=redis_prefix,
            reconnect_max_ms=1000,
        )
        before = [make_event(aggregate_id=str(i)) for i in range(5)]
        after = [make_event(aggregate_id=str(i)) for i in range(5)]
        async with Collector(stack.kafka_bootstrap) as col:
            await col.watch([topic_prefix + "order"])
            async with running_relay(settings) as relay:
                with server.connect("app") as c:
                    write_events(c, before)
                await col.wait_for(5)
                await asyncio.to_thread(server.restart)
                with server.connect("app") as c:
                    write_events(c, after)
                await col.wait_for(10)
                assert relay.stats.database == "ok"
    assert sorted(col.ids()) == sorted(str(e.id) for e in before + after)


def metrics(port: int) -> bytes:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            return bytes(resp.read())
    except OSError:
        return b""


async def test_progress_lines_report_rate_lag_and_checkpoint(
    conn, settings_kw, topic_prefix, stack: Stack, tmp_path: Path
) -> None:
    port = free_port()
    settings = relay_settings(**settings_kw, progress_interval_ms=200, metrics_port=port)
    proc = RelayProcess(settings, tmp_path / "relay.log")
    proc.start()
    try:
        async with Collector(stack.kafka_bootstrap) as col:
            await col.watch([topic_prefix + "order"])
            write_events(conn, [make_event(aggregate_id=str(i)) for i in range(10)])
            await col.wait_for(10)
            # Caught up: 0 bytes behind the binlog head (not "lag 13s" as the
            # time since the last event grows while idle).
            await wait_until(
                lambda: (
                    "10 published, behind 0 B, last event" in proc.log()
                    and "checkpoint mysql-bin." in proc.log()
                ),
                what="a progress line after the events, caught up",
            )
            await wait_until(
                lambda: b"outbox_relay_binlog_behind_bytes 0.0" in metrics(port),
                what="/metrics: 0 bytes behind",
            )
            ages = re.findall(rb"\noutbox_relay_last_event_age_seconds (\S+)", metrics(port))
            assert ages and float(ages[0]) >= 0
    finally:
        assert proc.kill(signal.SIGTERM) == 0
    line = next(x for x in proc.log().splitlines() if "10 published, behind 0 B" in x)
    assert "events/s" in line and "kafka ok" in line
    assert re.search(r"last event \d+\.\ds ago", line), line
