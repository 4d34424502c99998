"""The relay's own binlog reader on real MariaDB binlogs: the library as the oracle.

Random transaction shapes (1-1,000 outbox events, business rows in the same
transaction, another database's outbox table, DDL, rollbacks, ids ending in
zero bytes), read from file/pos, from a GTID state, and resumed mid-stream.
"""

from __future__ import annotations

import random
import threading
import uuid
from collections.abc import Iterator

import pymysql
import pytest

from transactional_outbox.relay.channel import SourceBatch
from transactional_outbox.relay.mysql.binlog.protocol import DumpConnection
from transactional_outbox.relay.mysql.decode import row_to_event
from transactional_outbox.relay.mysql.source import BinlogSource, SourceSettings
from transactional_outbox.relay.position import BinlogPosition
from transactional_outbox.relay.routing import TopicRouter, build_record

from . import _binlog, _own_reader
from .conftest import Stack
from .polling import wait_until_sync
from .relay_harness import OUTBOX_DDL

ROUTER = TopicRouter(template="t.{aggregatetype}")


def same(got: list[object], want: list[object]) -> None:
    """``got == want``, reported briefly (pytest's diff of thousands of records takes minutes)."""
    if got != want:
        first = next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), None)
        detail = "" if first is None else f"; first difference at {first}: {got[first]!r:.300}"
        raise AssertionError(f"{len(got)} records, {len(want)} expected{detail}")


INSERT = "INSERT INTO {t} VALUES (%s, %s, %s, %s, %s, %s, NOW(6))"


@pytest.fixture
def other_db(stack: Stack, database: str) -> Iterator[str]:
    name = f"{database}_o"
    with stack.mysql_connect() as conn, conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    with stack.mysql_connect(name) as conn, conn.cursor() as cur:
        cur.execute(OUTBOX_DDL.format(table="outbox"))
    yield name
    with stack.mysql_connect() as conn, conn.cursor() as cur:
        cur.execute(f"DROP DATABASE {name}")


def _id(rng: random.Random) -> bytes:
    raw = bytes(rng.randrange(256) for _ in range(16))
    if rng.random() < 0.2:  # ids ending in zero bytes must come back 16 bytes long
        raw = raw[: rng.randrange(4, 16)].ljust(16, b"\0")
    return raw


def write_random(conn: pymysql.Connection, other: str, rng: random.Random, txns: int) -> int:  # type: ignore[type-arg]
    """Random transactions; returns how many outbox rows were committed."""
    committed = 0
    with conn.cursor() as cur:
        for k in range(txns):
            events = rng.choice([1, 1, 1, 2, 5, 30, 1000 if k % 17 == 0 else 3])
            cur.execute("BEGIN")
            rows = [
                (
                    _id(rng),
                    rng.choice(["order", "user"]),
                    f"a{rng.randrange(50)}",
                    "Placed",
                    bytes(rng.randrange(256) for _ in range(rng.choice([0, 10, 300]))),
                    rng.choice(['{"k":"v"}', "{}", None]),
                )
                for _ in range(events)
            ]
            if rng.random() < 0.5:
                cur.execute("INSERT INTO orders (note) VALUES ('business row')")
            cur.executemany(INSERT.format(t="outbox"), rows)
            if rng.random() < 0.3:
                cur.execute(INSERT.format(t=f"{other}.outbox"), rows[0])
            cur.execute(
                "DELETE FROM outbox WHERE id IN (" + ",".join(["%s"] * events) + ")",
                [r[0] for r in rows],
            )
            if rng.random() < 0.1:
                cur.execute("ROLLBACK")
            else:
                cur.execute("COMMIT")
                committed += events
            if rng.random() < 0.05:
                cur.execute(f"ALTER TABLE orders ADD COLUMN c{k} INT NULL")
    return committed


@pytest.mark.parametrize("seed", [1, 2])
def test_random_shapes_match_the_library_from_file_pos_gtid_and_mid_stream(
    stack: Stack, database: str, other_db: str, seed: int
) -> None:
    rng = random.Random(seed)
    conn = stack.mysql_connect(database)
    conn.autocommit(True)
    with conn.cursor() as cur:
        cur.execute(OUTBOX_DDL.format(table="outbox"))
        cur.execute("CREATE TABLE orders (id INT AUTO_INCREMENT PRIMARY KEY, note TEXT)")
        cur.execute("SHOW MASTER STATUS")
        file, pos = cur.fetchone()[:2]
        cur.execute("SELECT BINLOG_GTID_POS(%s, %s)", (file, pos))
        gtid = cur.fetchone()[0]
    try:
        count = write_random(conn, other_db, rng, 60)
        with conn.cursor() as cur:
            cur.execute("SHOW MASTER STATUS")
            end = cur.fetchone()[:2]
    finally:
        conn.close()
    reference = [
        build_record(row_to_event(values), ROUTER)
        for values in _binlog.read(stack, database, (file, pos)).inserted
    ]
    assert len(reference) == count
    batches = _own_reader.read_batches(stack, database, (file, pos), ROUTER, cap=500)
    got = [r for records, _ in batches for r in records]
    same(got, reference)
    by_gtid = _own_reader.read_batches(stack, database, (file, pos), ROUTER, gtid=gtid)
    same([r for records, _ in by_gtid for r in records], reference)
    assert by_gtid[-1][1].gtid is not None  # (other tests write the binlog meanwhile)
    # The source itself, with small batches (open transactions handed over in chunks).
    url = stack.mysql_url
    settings = SourceSettings(
        host=str(url.host),
        port=int(url.port or 3306),
        user=str(url.username),
        password=str(url.password),
        server_id=7000 + seed,
        schema=database,
        table="outbox",
        is_mariadb=True,
        chunk_events=300,
    )
    sink = ListSink(stop_at=end)
    BinlogSource(settings, sink, BinlogPosition(file=file, pos=pos), router=ROUTER).run()
    assert sink.error is None
    same(sink.records, reference)
    # Resume at a hand-over position in the middle: exactly the rest follows.
    k = len(batches) // 2
    before = sum(len(records) for records, _ in batches[: k + 1])
    rest = _own_reader.read_batches(stack, database, batches[k][1], ROUTER)
    same([r for records, _ in rest for r in records], reference[before:])


class ListSink:
    """Collects records; refuses more once a commit reaches ``stop_at``."""

    def __init__(self, stop_at: tuple[str, int] | None = None) -> None:
        self.records: list[object] = []
        self.error: BaseException | None = None
        self.closed = False
        self.stop_at = stop_at

    def put(self, batch: SourceBatch) -> bool:
        self.records += batch.records
        c = batch.commit
        if self.stop_at and c is not None and (c.file, c.pos) >= self.stop_at:
            return False
        return not self.closed

    def fail(self, error: BaseException) -> None:
        self.error = error

    def close(self) -> None:
        self.closed = True


def test_a_second_connection_with_our_server_id_is_retried_not_fatal(
    stack: Stack, database: str
) -> None:
    # MariaDB ends the older dump with error 4052 when another connection
    # registers the same server_id: the source backs off and reconnects.
    url = stack.mysql_url
    conn = stack.mysql_connect(database)
    conn.autocommit(True)
    with conn.cursor() as cur:
        cur.execute(OUTBOX_DDL.format(table="outbox"))
        cur.execute("SHOW MASTER STATUS")
        file, pos = cur.fetchone()[:2]
    server_id = 7000 + random.randrange(1000)
    settings = SourceSettings(
        host=str(url.host),
        port=int(url.port or 3306),
        user=str(url.username),
        password=str(url.password),
        server_id=server_id,
        schema=database,
        table="outbox",
        is_mariadb=True,
        reconnect_delay_seconds=0.2,
        heartbeat_seconds=1.0,
    )
    sink = ListSink()
    source = BinlogSource(settings, sink, BinlogPosition(file=file, pos=pos), router=ROUTER)
    thread = threading.Thread(target=source.run, daemon=True)
    thread.start()
    wait_until_sync(lambda: source.connected, what="the source to connect")
    intruder = DumpConnection(
        {"host": url.host, "port": url.port, "user": url.username, "password": url.password},
        server_id=server_id,
        is_mariadb=True,
        heartbeat_seconds=1.0,
        read_timeout=10.0,
        file=file,
        pos=pos,
    )
    try:
        wait_until_sync(
            lambda: source.reconnects >= 1, what="the source to see error 4052 and retry"
        )
        wait_until_sync(lambda: source.connected, what="the source to connect again")
        ids = [uuid.uuid4().bytes for _ in range(3)]
        with conn.cursor() as cur:
            cur.executemany(
                INSERT.format(t="outbox"), [(i, "order", "a", "T", b"p", "{}") for i in ids]
            )
        wait_until_sync(lambda: len(sink.records) == 3, what="the rows written after the retry")
        assert sink.error is None
    finally:
        source.stop()
        thread.join(10)
        intruder.close()
        conn.close()


def test_a_reconnect_to_another_server_mid_transaction_skips_none_of_its_rows(
    stack: Stack, database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A large transaction's first rows are handed over before its commit; the
    # connection is then lost and the next one reaches "another server" (a failover:
    # the identity is replaced here, the binlog is the stack's). The transaction read
    # there may be another one, so none of its rows may be skipped as "already sent".
    from transactional_outbox.relay.mysql import source as source_module

    identities = iter(["server_id=1", "server_id=2"])
    monkeypatch.setattr(source_module, "read_identity", lambda cur, **kw: next(identities))
    url = stack.mysql_url
    conn = stack.mysql_connect(database)
    with conn.cursor() as cur:
        cur.execute(OUTBOX_DDL.format(table="outbox"))
        cur.execute("SHOW MASTER STATUS")
        file, pos = cur.fetchone()[:2]
        cur.execute("SELECT BINLOG_GTID_POS(%s, %s)", (file, pos))
        gtid = cur.fetchone()[0]
    settings = SourceSettings(
        host=str(url.host),
        port=int(url.port or 3306),
        user=str(url.username),
        password=str(url.password),
        server_id=7000 + random.randrange(1000),
        schema=database,
        table="outbox",
        is_mariadb=True,
        reconnect_delay_seconds=0.2,
        heartbeat_seconds=1.0,
        chunk_events=10,
    )
    # (reconnects so far, batch): a transaction larger than one socket read (256 KB)
    # so that its commit is not read yet when the first rows are handed over.
    batches: list[tuple[int, SourceBatch]] = []

    class CuttingSink(ListSink):
        def put(self, batch: SourceBatch) -> bool:
            batches.append((source.reconnects, batch))
            if len(batches) == 1:
                source._dump.shutdown()  # type: ignore[union-attr]  # lost mid-transaction
            return super().put(batch)

    sink = CuttingSink()
    start = BinlogPosition(file=file, pos=pos, gtid=gtid)
    source = BinlogSource(settings, sink, start, router=ROUTER, use_gtid=True)
    ids = [uuid.uuid4().bytes for _ in range(30)]
    payload = b"p" * 20_000
    with conn.cursor() as cur:
        cur.execute("BEGIN")  # one transaction (executemany splits the INSERT at 1 MB)
        cur.executemany(
            INSERT.format(t="outbox"), [(i, "order", "a", "T", payload, "{}") for i in ids]
        )
        cur.execute("COMMIT")
    thread = threading.Thread(target=source.run, daemon=True)
    thread.start()
    try:
        wait_until_sync(
            lambda: any(b.commit for n, b in batches if n >= 1), what="the commit, reconnected"
        )
        assert sink.error is None
        before = sum(len(b.records) for n, b in batches if n == 0)
        assert before > 0 and all(b.commit is None for n, b in batches if n == 0)
        # Read whole again after the reconnect to "another server": none skipped.
        assert sum(len(b.records) for n, b in batches if n >= 1) == 30
    finally:
        source.stop()
        thread.join(10)
        conn.close()
