"""The primary fails over: a MariaDB primary and a GTID replica, the app and the relay
behind addresses that move to the replica when it is promoted (issue 23).

Every event in the promoted server's data (a ledger row written in the same
transaction as each event) must reach Kafka, in order per aggregate, and the
relay must resume without an operator; where it cannot (the replica was behind
the relay), it stops with advice that works as written.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pymysql
import pytest
import redis
from sqlalchemy.engine import make_url

from outbox_dev.scratch import HOST, ScratchReplicaPair
from outbox_dev.tcp_proxy import TcpProxy
from transactional_outbox.exceptions import CheckpointError
from transactional_outbox.relay import Relay, RelaySettings
from transactional_outbox.relay.position import BinlogPosition, encode_checkpoint

from .conftest import ROOT, Stack, unique
from .relay_harness import (
    OUTBOX_DDL,
    Collector,
    RelayProcess,
    make_event,
    relay_settings,
    wait_until,
    write_events,
)

LEDGER_DDL = """CREATE TABLE ledger (
    seq BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    event_id BINARY(16) NOT NULL,
    aggregateid VARCHAR(16) NOT NULL)"""
AGGREGATES = 5


@dataclass
class Failover:
    """The pair, and the two addresses: the app's and the relay's (moved together)."""

    pair: ScratchReplicaPair
    app: TcpProxy
    db: TcpProxy

    def url(self) -> str:
        p = self.pair.primary
        return f"mysql+pymysql://{p.user}:{p.password}@{HOST}:{self.db.port}/app"

    def promote_and_switch(self) -> None:
        self.pair.promote()
        for proxy in (self.app, self.db):
            proxy.target = (HOST, self.pair.replica.port)

    def ledger(self) -> list[tuple[str, str]]:
        """(event id, aggregate) of every transaction the promoted server holds, in order."""
        with self.pair.replica.connect("app") as conn, conn.cursor() as cur:
            cur.execute("SELECT event_id, aggregateid FROM ledger ORDER BY seq")
            return [(str(_uuid(r[0])), str(r[1])) for r in cur.fetchall()]


def _uuid(raw: bytes) -> str:
    import uuid

    return str(uuid.UUID(bytes=raw))


@pytest.fixture
def failover(stack: Stack) -> Iterator[Failover]:
    pair = ScratchReplicaPair(unique("failover"))
    try:
        pair.start()
        with pair.primary.connect() as conn, conn.cursor() as cur:
            cur.execute("CREATE DATABASE app")
            cur.execute("USE app")
            cur.execute(OUTBOX_DDL.format(table="outbox"))
            cur.execute(LEDGER_DDL)
        pair.wait_replica(pair.primary_gtid())
        with TcpProxy(pair.primary.port) as app, TcpProxy(pair.primary.port) as db:
            yield Failover(pair, app, db)
    finally:
        pair.destroy()


@dataclass
class Writer:
    """Writes one event (and its ledger row) per transaction through the app's address,
    reconnecting after errors, until stopped. The ledger, not this, says what committed."""

    port: int
    user: str
    password: str
    committed: int = 0
    stop_flag: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> Writer:
        self.thread = threading.Thread(target=self._run, daemon=True, name="writer")
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stop_flag.set()
        assert self.thread is not None
        self.thread.join(30)

    def _run(self) -> None:
        conn = None
        i = 0
        while not self.stop_flag.is_set():
            try:
                if conn is None:
                    conn = pymysql.connect(
                        host=HOST,
                        port=self.port,
                        user=self.user,
                        password=self.password,
                        database="app",
                        autocommit=True,
                        connect_timeout=2,
                        read_timeout=5,
                        write_timeout=5,
                    )
                event = make_event(aggregate_id=f"a{i % AGGREGATES}")

                def ledger(
                    cur: object, event_id: bytes = event.id.bytes, agg: str = event.aggregate_id
                ) -> None:
                    cur.execute(  # type: ignore[attr-defined]
                        "INSERT INTO ledger (event_id, aggregateid) VALUES (%s, %s)",
                        (event_id, agg),
                    )

                write_events(conn, [event], also=ledger)
                i += 1
                self.committed += 1
            except (pymysql.err.MySQLError, OSError):
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()
                conn = None
                self.stop_flag.wait(0.05)
        if conn is not None:
            conn.close()


def writer_for(f: Failover) -> Writer:
    p = f.pair.primary
    return Writer(f.app.port, p.user, p.password)


def settings_for(
    f: Failover, stack: Stack, topic_prefix: str, redis_prefix: str, **kw: object
) -> RelaySettings:
    values: dict[str, object] = {
        "start_position": "earliest",
        "reconnect_max_ms": 1000,
        **kw,
    }
    return relay_settings(
        mysql_url=make_url(f.url()),
        redis_url=stack.redis_url,
        kafka_bootstrap=stack.kafka_bootstrap,
        topic_prefix=topic_prefix,
        redis_prefix=redis_prefix,
        **values,
    )


@contextlib.asynccontextmanager
async def relay_task(settings: RelaySettings) -> AsyncIterator[tuple[Relay, asyncio.Task[None]]]:
    relay = Relay(settings)
    task = asyncio.create_task(relay.run())
    try:
        yield relay, task
    finally:
        relay.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 60)


async def wait_published(col: Collector, f: Failover, task: asyncio.Task[None] | None) -> None:
    """Every ledger event reached Kafka, in ledger order per aggregate."""
    ledger = await asyncio.to_thread(f.ledger)
    want = {event_id for event_id, _ in ledger}

    def done() -> bool:
        if task is not None and task.done():
            return True
        return want <= set(col.ids())

    await wait_until(done, within=90, what=f"{len(want)} ledger events on Kafka")
    if task is not None and task.done():
        task.result()  # the relay's own error
    assert_order(col, ledger)


def assert_order(col: Collector, ledger: list[tuple[str, str]]) -> None:
    """Each aggregate's events first reached Kafka in ledger (commit) order."""
    first: dict[str, int] = {}
    for n, event_id in enumerate(col.ids()):
        first.setdefault(event_id, n)
    for agg in {a for _, a in ledger}:
        ours = [e for e, a in ledger if a == agg]
        assert ours == sorted(ours, key=first.__getitem__), f"aggregate {agg} out of order"


async def until(condition: object, what: str, within: float = 60) -> None:
    await wait_until(condition, within=within, what=what)  # type: ignore[arg-type]


async def test_live_failover_with_default_settings_resumes_by_gtid(
    failover: Failover, stack: Stack, topic_prefix: str, redis_prefix: str
) -> None:
    """The relay reading through the failover: reconnects to the promoted replica by
    GTID (the old primary's FILE:POS means nothing there) and loses nothing."""
    f = failover
    settings = settings_for(f, stack, topic_prefix, redis_prefix)
    assert settings.resume_by_gtid == "auto"
    writer = writer_for(f).start()
    try:
        async with Collector(stack.kafka_bootstrap) as col:
            await col.watch([topic_prefix + "order"])
            async with relay_task(settings) as (relay, task):
                await col.wait_for(100, within=60)
                # The relay's path breaks first, so what it read the replica has too
                # (the lagging case is the next test).
                f.db.cut()
                await asyncio.to_thread(f.pair.wait_replica, f.pair.primary_gtid())
                await asyncio.to_thread(f.pair.kill_primary)  # mid-writes
                await asyncio.to_thread(f.promote_and_switch)
                f.db.restore()
                before = writer.committed
                await until(lambda: writer.committed >= before + 100, "writes on the new primary")
                writer.stop()
                await wait_published(col, f, task)
                assert not task.done()
                await until(
                    lambda: (
                        relay.stats.checkpoint is not None
                        and relay.stats.checkpoint.server == "server_id=2"
                    ),
                    "a checkpoint on the promoted server",
                )
    finally:
        writer.stop()


async def test_relay_restarted_during_the_failover_resumes_by_the_checkpoints_gtid(
    failover: Failover, stack: Stack, topic_prefix: str, redis_prefix: str
) -> None:
    """A relay started while the primary is dead waits for a server, then finds the
    checkpoint's place on the promoted replica by GTID (not by file name)."""
    f = failover
    settings = settings_for(f, stack, topic_prefix, redis_prefix)
    writer = writer_for(f).start()
    try:
        async with Collector(stack.kafka_bootstrap) as col:
            await col.watch([topic_prefix + "order"])
            async with relay_task(settings) as (_relay, task):
                await col.wait_for(100, within=60)
            assert task.done() and task.exception() is None
            await asyncio.to_thread(f.pair.wait_replica, f.pair.primary_gtid())
            await asyncio.to_thread(f.pair.kill_primary)
            async with relay_task(settings) as (_relay, task):
                await asyncio.to_thread(f.promote_and_switch)
                before = writer.committed
                await until(lambda: writer.committed >= before + 100, "writes on the new primary")
                writer.stop()
                await wait_published(col, f, task)
                assert not task.done()
    finally:
        writer.stop()


async def test_promoted_replica_behind_the_relay_stops_with_advice_that_works(
    failover: Failover, stack: Stack, topic_prefix: str, redis_prefix: str, tmp_path: Path
) -> None:
    """The relay published transactions the replica never received: the promoted
    server does not have the checkpoint's GTID. Not "purged": its own message, and
    the --start-position it suggests publishes everything the new primary has."""
    f = failover
    settings = settings_for(f, stack, topic_prefix, redis_prefix)
    writer = writer_for(f).start()
    try:
        async with Collector(stack.kafka_bootstrap) as col:
            await col.watch([topic_prefix + "order"])
            async with relay_task(settings) as (_relay, task):
                await col.wait_for(50, within=60)
                await asyncio.to_thread(f.pair.stop_replication)  # the replica falls behind
                seen = len(col.records)
                await col.wait_for(seen + 50, within=60)  # published, never replicated
                await asyncio.to_thread(f.pair.kill_primary)
                await asyncio.to_thread(f.promote_and_switch)
                await wait_until(task.done, within=60, what="the relay to stop")
                error = task.exception()
            assert isinstance(error, CheckpointError), error
            text = str(error)
            assert "the server does not have GTID 0-1-" in text, text
            assert "purged" not in text, text
            advice = re.search(r"--start-position (gtid:\S+)", text)
            assert advice is not None, text
            before = writer.committed
            await until(lambda: writer.committed >= before + 50, "writes on the new primary")
            writer.stop()
            # A restart as it was (the command line): exit 3, one line, no traceback.
            cli = RelayProcess(settings, tmp_path / "relay.log")
            cli.start()
            assert cli.proc is not None
            assert await asyncio.to_thread(cli.proc.wait, 60) == 3, cli.log()
            assert "the server does not have GTID 0-1-" in cli.log()
            assert "Traceback" not in cli.log()
            # Following the advice as written: the same relay name (the unusable
            # checkpoint is still stored) with the suggested --start-position.
            advised = settings_for(f, stack, topic_prefix, redis_prefix, start_position=advice[1])
            async with relay_task(advised) as (_relay, task):
                await wait_published(col, f, task)
    finally:
        writer.stop()


# -- colliding binlog names -------------------------------------------------------------


def xid_ends(conn: pymysql.Connection, file: str) -> tuple[list[int], set[int]]:
    """End offsets of the commits in ``file``, and every event boundary."""
    with conn.cursor() as cur:
        cur.execute(f"SHOW BINLOG EVENTS IN '{file}'")
        rows = cur.fetchall()
    return [int(r[4]) for r in rows if r[2] == "Xid"], {int(r[4]) for r in rows} | {4}


def gtid_at(conn: pymysql.Connection, file: str, pos: int) -> str:
    with conn.cursor() as cur:
        cur.execute("SELECT BINLOG_GTID_POS(%s, %s)", (file, pos))
        return str(cur.fetchone()[0])


def write_n(f: Failover, n: int) -> None:
    writer = writer_for(f)
    writer.port = f.pair.primary.port
    writer.start()
    deadline = time.monotonic() + 60
    while writer.committed < n and time.monotonic() < deadline:
        time.sleep(0.01)
    writer.stop()


def pad_tables(f: Failover) -> None:
    """A table of the replica's own (domain 9), for :func:`pad_replica`."""
    with f.pair.replica.connect() as conn, conn.cursor() as cur:
        cur.execute("SET SESSION gtid_domain_id = 9")
        cur.execute("CREATE DATABASE pad")
        cur.execute("CREATE TABLE pad.t (b LONGBLOB)")


def pad_replica(f: Failover, size: int) -> None:
    """Local transactions of ``size`` binlog bytes in all (domain 9) on the replica only:
    the replicated transactions after them sit ``size`` bytes further in its binlog."""
    with f.pair.replica.connect() as conn, conn.cursor() as cur:
        cur.execute("SET SESSION gtid_domain_id = 9")

        def end() -> int:
            cur.execute("SHOW MASTER STATUS")
            return int(cur.fetchone()[1])

        start = end()
        cur.execute("INSERT INTO pad.t VALUES ('')")
        empty = end() - start  # a transaction with an empty blob
        extra = size - 2 * empty
        assert extra >= 0, f"cannot pad {size} bytes (an empty pad is {empty})"
        cur.execute("INSERT INTO pad.t VALUES (%s)", (b"x" * extra,))
        assert end() - start == size


@pytest.mark.parametrize("landing", ["mid-event", "boundary"])
async def test_colliding_binlog_names_resume_by_gtid_and_skip_nothing(
    failover: Failover, stack: Stack, topic_prefix: str, redis_prefix: str, landing: str
) -> None:
    """Both servers write mysql-bin.000001, the replica's offsets shifted. The old
    primary's checkpoint offset lands mid-event on the new primary, or exactly on one of
    its commits at another GTID state (where FILE:POS silently skipped transactions).
    By default the relay resumes by GTID: nothing skipped; with resume_by_gtid=off it
    refuses the offset (exit 3) rather than read it."""
    f = failover
    await asyncio.to_thread(pad_tables, f)
    await asyncio.to_thread(write_n, f, 3)  # the size of one transaction, on both servers
    await asyncio.to_thread(f.pair.wait_replica, f.pair.primary_gtid())
    with f.pair.primary.connect() as p, f.pair.replica.connect() as r:
        p_ends, _ = xid_ends(p, "mysql-bin.000001")
        r_ends, _ = xid_ends(r, "mysql-bin.000001")
    size = p_ends[-1] - p_ends[-2]
    shift = r_ends[-1] - p_ends[-1]  # replica offset minus primary offset, same commit
    # Shift by a whole number of transactions (>= 2) plus half of one for mid-event.
    k = max(2, -(-(shift + 1000) // size))
    target = k * size + (size // 2 if landing == "mid-event" else 0)
    await asyncio.to_thread(pad_replica, f, target - shift)
    await asyncio.to_thread(write_n, f, 40)
    await asyncio.to_thread(f.pair.wait_replica, f.pair.primary_gtid())
    with f.pair.primary.connect() as p, f.pair.replica.connect() as r:
        p_ends, _ = xid_ends(p, "mysql-bin.000001")
        r_ends, r_all = xid_ends(r, "mysql-bin.000001")
        x = p_ends[-20]  # the relay's checkpoint on the old primary: 19 commits before its end
        old_state = gtid_at(p, "mysql-bin.000001", x)
        if landing == "boundary":
            assert x in r_ends
            assert gtid_at(r, "mysql-bin.000001", x) != old_state  # another place there
        else:
            assert x not in r_all
    await asyncio.to_thread(f.pair.kill_primary)
    await asyncio.to_thread(f.promote_and_switch)
    checkpoint = BinlogPosition(
        file="mysql-bin.000001", pos=x, gtid=old_state, server="server_id=1"
    )
    client = redis.Redis.from_url(stack.redis_url)
    try:
        off = settings_for(f, stack, topic_prefix, redis_prefix, resume_by_gtid="off")
        client.set(off.checkpoint_key, encode_checkpoint(checkpoint))
        with pytest.raises(CheckpointError, match=r"the server changed.*set resume_by_gtid=auto"):
            await asyncio.wait_for(Relay(off).run(), 60)
        # A version-1 checkpoint (no server recorded): the GTID check still refuses.
        client.set(
            off.checkpoint_key,
            encode_checkpoint(BinlogPosition(file=checkpoint.file, pos=x, gtid=old_state)),
        )
        with pytest.raises(CheckpointError, match="not a place in this server's binlog"):
            await asyncio.wait_for(Relay(off).run(), 60)
        # Default settings: by GTID, every transaction after the checkpoint published.
        client.set(off.checkpoint_key, encode_checkpoint(checkpoint))
        settings = settings_for(f, stack, topic_prefix, redis_prefix)
        after = [e for e, _ in f.ledger()][-19:]  # committed after the checkpoint
        async with Collector(stack.kafka_bootstrap) as col:
            await col.watch([topic_prefix + "order"])
            async with relay_task(settings) as (_relay, task):
                await wait_until(
                    lambda: set(after) <= set(col.ids()) or task.done(),
                    within=60,
                    what="the 19 events after the checkpoint",
                )
                assert not task.done(), task
        # From exactly there: none skipped, none from before, in order per aggregate.
        assert set(col.ids()) == set(after)
        assert_order(col, [(e, a) for e, a in f.ledger() if e in set(after)])
    finally:
        client.close()


def test_chaos_failovers_lose_nothing(stack: Stack) -> None:
    """bench/chaos.py's "primary failover" fault, twice under writers (--quick): every
    committed event delivered (committed = delivered), none invented or misordered."""
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "chaos.py"),
            "--quick",
            "--failover",
            "--only",
            "primary_failover",
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    summary = json.loads(out.split("CHAOS_SUMMARY ", 1)[1].splitlines()[0])
    assert summary["faults"]["primary_failover"] == 2
    assert summary["committed"] > 0 and summary["delivered"] == summary["committed"]
    assert summary["lost"] == summary["invented"] == summary["misordered"] == 0
