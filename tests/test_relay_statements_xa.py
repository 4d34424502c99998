"""Statement-logged outbox writes and XA transactions, on real MariaDB servers.

- A session switched to ``binlog_format=STATEMENT`` (or a global ``MIXED``, on a
  scratch server of its own) while the relay runs: the relay exits 2 naming
  ``binlog_format``; every event committed before is published, none after, and
  the checkpoint is the commit just before the statement-logged transaction.
- XA on the stack (XA statements are per session): PREPARE + ROLLBACK is never
  published, PREPARE + COMMIT once and only at the COMMIT, and a relay stopped
  between PREPARE and COMMIT loses nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymysql
import pytest
import redis
from sqlalchemy.engine import make_url

from outbox_dev.scratch import ScratchMariaDB
from transactional_outbox.relay.mysql.source import BinlogSource
from transactional_outbox.relay.position import decode_checkpoint

from .conftest import Stack, unique
from .relay_harness import (
    INSERT,
    OUTBOX_DDL,
    Collector,
    RelayProcess,
    make_event,
    relay_settings,
    running_relay,
    wait_until,
    write_events,
)


def master_status(conn: pymysql.Connection) -> tuple[str, int]:
    with conn.cursor() as cur:
        cur.execute("SHOW MASTER STATUS")
        file, pos = cur.fetchone()[:2]
    return str(file), int(pos)


@pytest.fixture
def scratch() -> Iterator[ScratchMariaDB]:
    """A MariaDB of this test's own: it changes the server's global binlog_format."""
    db = ScratchMariaDB(unique("scratch-stmt-"))
    db.destroy()
    db.start()
    try:
        with db.connect() as conn, conn.cursor() as cur:
            cur.execute("CREATE DATABASE app")
            cur.execute("USE app")
            cur.execute(OUTBOX_DDL.format(table="outbox"))
        yield db
    finally:
        db.destroy()


@pytest.mark.parametrize("scope", ["session STATEMENT", "global MIXED"])
async def test_a_statement_logged_outbox_write_stops_the_relay_with_nothing_skipped(
    scratch: ScratchMariaDB,
    stack: Stack,
    topic_prefix: str,
    redis_prefix: str,
    tmp_path: Path,
    scope: str,
) -> None:
    with scratch.connect("app") as conn:
        start = master_status(conn)
    settings = relay_settings(
        mysql_url=make_url(scratch.url("app")),
        redis_url=stack.redis_url,
        kafka_bootstrap=stack.kafka_bootstrap,
        topic_prefix=topic_prefix,
        redis_prefix=redis_prefix,
        start_position=f"{start[0]}:{start[1]}",
    )
    before = [make_event(aggregate_id=f"before-{i}") for i in range(20)]
    lost, after = make_event(aggregate_id="statement"), make_event(aggregate_id="after")
    relay = RelayProcess(settings, tmp_path / "relay.log")
    async with Collector(stack.kafka_bootstrap) as col:
        await col.watch([topic_prefix + "order"])
        relay.start()
        try:
            with scratch.connect("app") as rows:
                for e in before:
                    write_events(rows, [e])
                await col.wait_for(len(before))  # read live, mid-stream
                boundary = master_status(rows)
            if scope == "global MIXED":
                with scratch.connect() as admin, admin.cursor() as cur:
                    cur.execute("SET GLOBAL binlog_format = 'MIXED'")
                writer = scratch.connect("app")  # a new connection takes the global value
            else:
                writer = scratch.connect("app")
                with writer.cursor() as cur:
                    cur.execute("SET SESSION binlog_format = 'STATEMENT'")
            with writer:
                write_events(writer, [lost])
            with scratch.connect("app") as rows, rows.cursor() as cur:
                cur.execute("SET SESSION binlog_format = 'ROW'")
                write_events(rows, [after])
            assert relay.proc is not None
            code = await asyncio.to_thread(relay.proc.wait, 60)
        finally:
            if relay.proc is not None and relay.proc.poll() is None:
                relay.kill()
        await asyncio.sleep(0.5)  # anything late would have arrived by now
    text = relay.log()
    assert code == 2, text
    errors = [line for line in text.splitlines() if "configuration error: binlog_format:" in line]
    assert len(errors) == 1, text
    assert "`app`.`outbox`" in errors[0] and "binlog_format=ROW" in errors[0]
    assert "Traceback" not in text
    assert sorted(col.ids()) == sorted(str(e.id) for e in before)
    saved = redis.Redis.from_url(stack.redis_url).get(settings.checkpoint_key)
    assert saved is not None
    cp = decode_checkpoint(saved)
    assert (cp.file, cp.pos) == boundary


@pytest.fixture
def xa_conn(stack: Stack, database: str) -> Iterator[pymysql.Connection]:
    """A second connection to this test's database: a session in XA PREPARED state
    takes no other statement."""
    c = stack.mysql_connect(database)
    yield c
    c.close()
    # A prepared XA transaction outlives its session (MariaDB 10.5+) and holds its
    # locks: one a failed test left behind would block dropping the database.
    with stack.mysql_connect() as admin, admin.cursor() as cur:
        cur.execute("XA RECOVER")
        for fmt, glen, blen, data in cur.fetchall():
            if data[:glen].decode(errors="replace").endswith(database):
                xid = f"X'{data[:glen].hex()}',X'{data[glen : glen + blen].hex()}',{fmt}"
                cur.execute(f"XA ROLLBACK {xid}")


def xa_prepare(conn: pymysql.Connection, xid: str, events: list[Any]) -> None:
    """``XA START; insert; delete; XA END; XA PREPARE`` (what a two-phase session does)."""
    with conn.cursor() as cur:
        cur.execute(f"XA START '{xid}'")
        for e in events:
            cur.execute(
                INSERT.format(table="outbox"),
                (e.id.bytes, e.aggregate_type, e.aggregate_id, e.event_type, e.payload, "{}",
                 e.timestamp.replace(tzinfo=None)),
            )  # fmt: skip
            cur.execute("DELETE FROM outbox WHERE id = %s", (e.id.bytes,))
        cur.execute(f"XA END '{xid}'")
        cur.execute(f"XA PREPARE '{xid}'")


def xa_outcome(conn: pymysql.Connection, xid: str, verb: str) -> None:
    with conn.cursor() as cur:
        cur.execute(f"XA {verb} '{xid}'")


async def test_xa_prepare_then_rollback_or_commit(
    conn: pymysql.Connection,
    xa_conn: pymysql.Connection,
    settings_kw: dict[str, Any],
    topic_prefix: str,
) -> None:
    rolled_back, committed = make_event(aggregate_id="rb"), make_event(aggregate_id="xa")
    marks = [make_event(aggregate_id=f"mark-{i}") for i in range(3)]
    tag = conn.db.decode()  # (xa_conn rolls back what a failed run leaves prepared)
    settings = relay_settings(**settings_kw)
    async with Collector(settings_kw["kafka_bootstrap"]) as col:
        await col.watch([topic_prefix + "order"])
        async with running_relay(settings) as relay:
            # PREPARE + ROLLBACK, then an ordinary commit: only the latter is published
            xa_prepare(xa_conn, f"rb-{tag}", [rolled_back])
            xa_outcome(xa_conn, f"rb-{tag}", "ROLLBACK")
            write_events(conn, [marks[0]])
            await col.wait_for(1)
            # PREPARE, an ordinary commit while it waits, then COMMIT
            before = master_status(conn)
            xa_prepare(xa_conn, f"cm-{tag}", [committed])
            write_events(conn, [marks[1]])
            await wait_until(lambda: str(marks[1].id) in col.ids(), what="the mark")
            assert str(committed.id) not in col.ids(), "published before its XA COMMIT"
            held = relay.checkpoint_position  # the commit of mark 1 is acknowledged
            assert held is not None and (held.file, held.pos) <= before, (held, before)
            xa_outcome(xa_conn, f"cm-{tag}", "COMMIT")
            write_events(conn, [marks[2]])
            await wait_until(
                lambda: str(committed.id) in col.ids() and str(marks[2].id) in col.ids(),
                what="the committed XA event",
            )
            after = master_status(conn)
            await wait_until(
                lambda: (
                    relay.checkpoint_position is not None
                    and (relay.checkpoint_position.file, relay.checkpoint_position.pos) >= after
                ),
                what="the checkpoint past the XA COMMIT",
            )
    ids = col.ids()
    assert str(rolled_back.id) not in ids
    assert ids.count(str(committed.id)) == 1
    assert ids.index(str(marks[1].id)) < ids.index(str(committed.id))  # same key: in order


async def test_a_relay_stopped_between_prepare_and_commit_loses_nothing(
    conn: pymysql.Connection,
    xa_conn: pymysql.Connection,
    settings_kw: dict[str, Any],
    topic_prefix: str,
) -> None:
    waiting, mark, later = (make_event(aggregate_id=k) for k in ("xa", "mark", "later"))
    xid = f"restart-{conn.db.decode()}"
    settings = relay_settings(**settings_kw)
    async with Collector(settings_kw["kafka_bootstrap"]) as col:
        await col.watch([topic_prefix + "order"])
        async with running_relay(settings):
            xa_prepare(xa_conn, xid, [waiting])
            write_events(conn, [mark])
            await wait_until(lambda: str(mark.id) in col.ids(), what="the mark")
            assert str(waiting.id) not in col.ids(), "published before its XA COMMIT"
        # stopped cleanly: its checkpoint is saved, before the PREPARE
        xa_outcome(xa_conn, xid, "COMMIT")
        write_events(conn, [later])
        async with running_relay(settings):
            await wait_until(
                lambda: str(waiting.id) in col.ids() and str(later.id) in col.ids(),
                what="the XA event committed while the relay was down",
            )
    ids = col.ids()
    assert ids.count(str(waiting.id)) == 1 and ids.count(str(later.id)) == 1
    assert str(mark.id) in ids  # (sent again after the restart: at-least-once allows it)


async def test_rotations_and_checksum_switches_pass_the_crc_checks(
    scratch: ScratchMariaDB, stack: Stack, topic_prefix: str, redis_prefix: str
) -> None:
    """Real ROTATE, FORMAT_DESCRIPTION, GTID and XID events across files with and
    without checksums: every one is checked where it has a CRC32, none is refused."""
    with scratch.connect("app") as conn:
        start = master_status(conn)
    settings = relay_settings(
        mysql_url=make_url(scratch.url("app")),
        redis_url=stack.redis_url,
        kafka_bootstrap=stack.kafka_bootstrap,
        topic_prefix=topic_prefix,
        redis_prefix=redis_prefix,
        start_position=f"{start[0]}:{start[1]}",
    )
    events = [make_event(aggregate_id=f"k{i}") for i in range(5)]
    async with Collector(stack.kafka_bootstrap) as col:
        await col.watch([topic_prefix + "order"])
        async with running_relay(settings) as relay:
            with scratch.connect("app") as conn, conn.cursor() as cur:
                write_events(conn, [events[0]])
                cur.execute("FLUSH BINARY LOGS")
                write_events(conn, [events[1]])
                cur.execute("SET GLOBAL binlog_checksum = 'NONE'")  # rotates too
                write_events(conn, [events[2]])
                cur.execute("FLUSH BINARY LOGS")
                write_events(conn, [events[3]])
                cur.execute("SET GLOBAL binlog_checksum = 'CRC32'")
                write_events(conn, [events[4]])
                end = master_status(conn)
            await col.wait_for(len(events))
            await wait_until(
                lambda: (p := relay.checkpoint_position) is not None and (p.file, p.pos) == end,
                what="the checkpoint at the last commit",
            )
    assert sorted(col.ids()) == sorted(str(e.id) for e in events)


async def test_a_reconnect_while_a_prepared_group_waits_reads_it_again(
    stack: Stack,
    conn: pymysql.Connection,
    xa_conn: pymysql.Connection,
    settings_kw: dict[str, Any],
    topic_prefix: str,
) -> None:
    """The binlog connection lost between PREPARE and COMMIT: the reader resumes
    from before the PREPARE (the position it handed over), so the prepared rows
    are read again and published at the COMMIT; what committed in between comes
    twice (at-least-once)."""
    waiting, mark, later = (make_event(aggregate_id=k) for k in ("xa", "mark", "later"))
    xid = f"reconnect-{conn.db.decode()}"
    settings = relay_settings(**settings_kw, reader="thread")
    async with Collector(settings_kw["kafka_bootstrap"]) as col:
        await col.watch([topic_prefix + "order"])
        async with running_relay(settings) as relay:
            xa_prepare(xa_conn, xid, [waiting])
            write_events(conn, [mark])
            await wait_until(lambda: str(mark.id) in col.ids(), what="the mark")
            source = relay.session.source if relay.session else None
            assert isinstance(source, BinlogSource)
            with stack.mysql_connect() as admin, admin.cursor() as cur:
                cur.execute(
                    "SELECT id FROM information_schema.PROCESSLIST"
                    " WHERE COMMAND LIKE 'Binlog Dump%%' AND DB IS NULL"
                )
                for (thread,) in cur.fetchall():
                    cur.execute(f"KILL {thread}")
            await wait_until(lambda: source.reconnects > 0, what="a reconnect")
            xa_outcome(xa_conn, xid, "COMMIT")
            write_events(conn, [later])
            await wait_until(
                lambda: str(waiting.id) in col.ids() and str(later.id) in col.ids(),
                what="the XA event committed after the reconnect",
            )
    ids = col.ids()
    assert ids.count(str(waiting.id)) == 1 and ids.count(str(later.id)) == 1
    assert ids.count(str(mark.id)) == 2  # read again from before the PREPARE
