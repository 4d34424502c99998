"""The PostgreSQL source on a real PostgreSQL 15: what it reads equals what was committed.

Differential: random transactions written by the SDK (both modes: outbox rows and
outbox messages) with rollbacks, savepoints rolled back, other tables, large and
non-UTF-8 payloads and ids ending in zero bytes; the records read equal the
records expected (``transactional_outbox.testing.to_record``), in commit order.
"""

from __future__ import annotations

import json
import random
import threading
import uuid
from collections import Counter
from datetime import UTC, datetime

import psycopg
import sqlalchemy as sa
from sqlalchemy.orm import sessionmaker

from outbox_dev.pg import ScratchPostgres
from tests._pg import ListSink, PgDb, db, expected, pg
from tests.polling import wait_until_sync
from transactional_outbox import OutboxEvent, OutboxSession, outbox_table
from transactional_outbox._pg_message import emit_events
from transactional_outbox.relay.postgres import PgBatch, slot_lag_bytes
from transactional_outbox.relay.routing import KafkaRecord

__all__ = ["db", "pg"]  # fixtures


def _event(rng: random.Random, big_left: list[int]) -> OutboxEvent:
    roll = rng.random()
    if big_left[0] and roll < 0.01:
        big_left[0] -= 1
        payload = rng.randbytes(1_100_000 + rng.randrange(100_000))
    elif roll < 0.4:
        payload = rng.randbytes(rng.randrange(0, 300))  # not UTF-8, may be empty
    else:
        payload = {"n": rng.randrange(10**9), "text": "é" * rng.randrange(20)}
    event_id = None
    if rng.random() < 0.1:
        event_id = uuid.UUID(bytes=rng.randbytes(16 - (k := rng.randrange(1, 6))) + bytes(k))
    headers = {"tenant": str(rng.randrange(3))} if rng.random() < 0.3 else None
    return OutboxEvent.create(
        aggregate_type=rng.choice(["order", "invoice", "customer"]),
        aggregate_id=str(rng.randrange(50)),
        event_type=rng.choice(["Created", "Updated"]),
        payload=payload,
        headers=headers,
        id=event_id,
    )


def _size(rng: random.Random) -> int:
    roll = rng.random()
    if roll < 0.7:
        return rng.randint(1, 5)
    if roll < 0.95:
        return rng.randint(6, 100)
    return rng.randint(101, 1000)


def test_differential_random_transactions_both_modes_many_tables(db: PgDb) -> None:
    rng = random.Random(25)
    db.sql("CREATE SCHEMA svc2")
    md = sa.MetaData()
    table_a = outbox_table(md)
    table_b = outbox_table(md, schema="svc2")
    other = sa.Table(
        "other", md, sa.Column("id", sa.Integer, primary_key=True), sa.Column("v", sa.Text)
    )
    md.create_all(db.engine)
    tables = [("public", "outbox"), ("svc2", "outbox")]
    db.prepare(tables)
    factory = sessionmaker(db.engine, class_=OutboxSession, outbox_table=table_a)
    messages = f"{db.name}.outbox"
    want: list[KafkaRecord] = []
    big_left = [3]
    other_id = 0
    seen: Counter[str] = Counter()  # what the random run covered (asserted below)

    def write(session: OutboxSession, target: str, event: OutboxEvent) -> str:
        conn = session.connection()
        if target == "a":
            session.add_events([event])
            session.flush()
            return "public.outbox"
        if target == "b":
            row = {c.key: v for c, v in zip(table_b.c, _row(event), strict=True)}
            conn.execute(table_b.insert(), row)
            conn.execute(table_b.delete().where(table_b.c.id == event.id.bytes))
            return "svc2.outbox"
        emit_events(conn, [event])
        return messages

    for _ in range(45):
        with factory() as session:
            pending: list[KafkaRecord] = []
            for _ in range(_size(rng)):
                event = _event(rng, big_left)
                target = rng.choice("abm")
                pending.append(expected(event, write(session, target, event)))
                seen[target] += 1
                seen["1 MB+"] += len(event.payload) >= 1_000_000
                seen["id ending in 0"] += event.id.bytes[-1] == 0
                seen["not UTF-8"] += not _utf8(event.payload)
                if rng.random() < 0.05:
                    seen["other table"] += 1
                    other_id += 1
                    session.connection().execute(other.insert(), {"id": other_id, "v": "x"})
            if rng.random() < 0.25:
                nested = session.begin_nested()
                for _ in range(rng.randint(1, 5)):
                    write(session, rng.choice("abm"), _event(rng, [0]))
                nested.rollback()
                seen["savepoint rolled back"] += 1
            if rng.random() < 0.1:
                session.rollback()
                seen["rolled back"] += 1
                continue
            seen["max events"] = max(seen["max events"], len(pending))
            session.commit()
            want += pending
    with factory() as session:  # a sentinel: once read, nothing written before is missing
        sentinel = _event(rng, [0])
        want.append(expected(sentinel, write(session, "m", sentinel)))
        session.commit()

    covered = ("a", "b", "m", "1 MB+", "id ending in 0", "not UTF-8", "other table")
    covered += ("savepoint rolled back", "rolled back")
    assert all(seen[k] for k in covered) and seen["max events"] > 500, seen
    _, sink = db.source(tables, prefixes=("outbox",), chunk_events=300)
    wait_until_sync(lambda: sink.error or len(sink.records) >= len(want), what="every event")
    assert sink.error is None
    got = sink.records
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g == w, f"record {i} differs"
    commits = sink.commits()
    assert commits == sorted(commits) and len(set(commits)) == len(commits)
    assert any(b.commit is None for b in sink.batches), "no large transaction was split"


def _utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


def _row(event: OutboxEvent) -> tuple[object, ...]:
    return (
        event.id.bytes,
        event.aggregate_type,
        event.aggregate_id,
        event.event_type,
        event.payload,
        json.dumps(dict(event.headers), separators=(",", ":")) if event.headers else None,
        event.timestamp.astimezone(UTC).replace(tzinfo=None),
    )


DEBEZIUM_DDL = """
CREATE TABLE {name} (
  id uuid PRIMARY KEY,
  aggregatetype varchar(255) NOT NULL,
  aggregateid varchar(255) NOT NULL,
  type varchar(255) NOT NULL,
  "timestamp" timestamptz NOT NULL,
  payload {payload},
  tracingspancontext varchar(256),
  headers text
)
"""


def test_debezium_layouts_publish_the_same_record_jsonb_as_its_text(db: PgDb) -> None:
    kinds = {"dbz_jsonb": "jsonb", "dbz_text": "text", "dbz_bytea": "bytea"}
    for name, payload in kinds.items():
        db.sql(DEBEZIUM_DDL.format(name=name, payload=payload))
    tables = [("public", name) for name in kinds]
    db.prepare(tables)
    body = '{"b": 1,   "a": [1, 2], "b": 2}'
    want = []
    with psycopg.connect(db.server.dsn(db.name)) as conn:
        for name, kind in kinds.items():
            e = OutboxEvent.create(
                aggregate_type="order",
                aggregate_id="7",
                event_type="Placed",
                payload=body,
                headers={"k": "v"},
                timestamp=datetime(2025, 6, 1, 12, 0, 0, 123456, tzinfo=UTC),
            )
            value = body.encode() if kind == "bytea" else body
            conn.execute(
                f'INSERT INTO {name} (id, aggregatetype, aggregateid, type, "timestamp", '
                "payload, tracingspancontext, headers) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                (e.id, "order", "7", "Placed", e.timestamp, value, "span", '{"k":"v"}'),
            )
            stored = conn.execute(f"SELECT payload::text FROM {name}").fetchone()
            assert stored is not None
            if kind == "jsonb":  # PostgreSQL's text of the jsonb value, not what was inserted
                assert stored[0] == '{"a": [1, 2], "b": 2}'
                e = OutboxEvent(**{**_fields(e), "payload": stored[0].encode()})
            want.append(expected(e, f"public.{name}"))
        conn.commit()
    _, sink = db.source(tables)
    wait_until_sync(lambda: sink.error or len(sink.records) >= 3, what="three records")
    assert sink.records == want


def _fields(e: OutboxEvent) -> dict[str, object]:
    names = ("id", "aggregate_type", "aggregate_id", "event_type", "payload", "headers")
    return {n: getattr(e, n) for n in (*names, "timestamp")}


def _write_one(db: PgDb, n: int) -> OutboxEvent:
    factory = sessionmaker(db.engine, class_=OutboxSession)
    with factory() as session:
        e = session.add_event(
            aggregate_type="order", aggregate_id=str(n), event_type="E", payload=b"p"
        )
        session.commit()
    return e


def _reply_time(db: PgDb) -> str:
    # As the superuser: pg_stat_replication hides other roles' details.
    return db.server.psql(
        "SELECT reply_time FROM pg_stat_replication WHERE application_name = 'outbox-relay'"
    )


def test_the_slot_is_never_confirmed_past_an_unacknowledged_event(db: PgDb) -> None:
    md = sa.MetaData()
    outbox_table(md).create(db.engine)
    db.prepare([("public", "outbox")])
    a = _write_one(db, 1)
    source, sink = db.source([("public", "outbox")])
    wait_until_sync(lambda: len(sink.records) == 1, what="event A")
    b = _write_one(db, 2)
    wait_until_sync(lambda: len(sink.records) == 2, what="event B")
    lsn_a, lsn_b = sink.commits()[:2]
    assert lsn_a < lsn_b
    source.confirm(lsn_a)  # Kafka acknowledged A only
    wait_until_sync(lambda: db.confirmed_flush() == lsn_a, what="the slot at A's commit")
    seen = _reply_time(db)
    wait_until_sync(lambda: _reply_time(db) != seen, what="a later status update")
    seen = _reply_time(db)
    wait_until_sync(lambda: _reply_time(db) != seen, what="yet another status update")
    assert db.confirmed_flush() == lsn_a
    db.stop_sources()
    # A new reader from the slot gets B again (and not A): nothing unacknowledged is lost.
    _, again = db.source([("public", "outbox")])
    wait_until_sync(lambda: len(again.records) >= 1, what="B redelivered")
    assert again.records[0] == expected(b, "public.outbox") != expected(a, "public.outbox")
    assert len(again.records) == 1


def test_postgres_killed_mid_stream_the_source_reconnects_and_loses_nothing(
    db: PgDb, pg: ScratchPostgres
) -> None:
    md = sa.MetaData()
    table = outbox_table(md)
    md.create_all(db.engine)
    db.prepare([("public", "outbox")])
    factory = sessionmaker(db.engine, class_=OutboxSession, outbox_table=table)
    events: list[OutboxEvent] = []
    with factory() as session:
        for i in range(3000):
            events.append(
                session.add_event(
                    aggregate_type="t", aggregate_id=str(i % 7), event_type="E", payload=b"x" * 500
                )
            )
            if i % 10 == 9:
                session.commit()
        session.commit()
    source, sink = db.source([("public", "outbox")], chunk_events=50)
    wait_until_sync(lambda: len(sink.records) >= 200, what="part of the stream")
    pg.restart(kill=True)
    wait_until_sync(lambda: source.reconnects >= 1, what="the source to notice")
    with factory() as session:
        for _ in range(100):
            events.append(
                session.add_event(
                    aggregate_type="t", aggregate_id="x", event_type="E", payload=b"after"
                )
            )
        session.commit()
    want = [expected(e, "public.outbox") for e in events]
    wait_until_sync(
        lambda: sink.error or len(sink.records) >= len(want), within=60, what="all events"
    )
    assert sink.error is None
    assert sink.records == want
    # Resume from a confirmed LSN: a new source after confirming half gets the rest.
    commits = sink.commits()
    half = commits[len(commits) // 2]
    source.confirm(half)
    wait_until_sync(lambda: db.confirmed_flush() == half, what="the slot at the half")
    read = 0
    for batch in sink.batches:
        read += len(batch.records)
        if batch.commit == half:
            break
    db.stop_sources()
    _, rest = db.source([("public", "outbox")])
    wait_until_sync(lambda: len(rest.records) >= len(want) - read, within=60, what="the rest")
    assert rest.records == want[read:]


def test_slot_lag_bytes_reports_unconfirmed_wal(db: PgDb) -> None:
    md = sa.MetaData()
    outbox_table(md).create(db.engine)
    db.prepare([("public", "outbox")])
    conn = db.wire()
    try:
        before = slot_lag_bytes(conn, db.slot)
        _write_one(db, 1)
        after = slot_lag_bytes(conn, db.slot)
        assert before is not None and after is not None
        assert after[1] > before[1] and after[0] >= after[1]
        assert slot_lag_bytes(conn, "no_such_slot") is None
    finally:
        conn.close()


def test_idle_stream_hands_over_the_servers_wal_end_for_the_caller_to_confirm(db: PgDb) -> None:
    md = sa.MetaData()
    outbox_table(md).create(db.engine)
    db.sql("CREATE TABLE noise (v int)")
    db.prepare([("public", "outbox")])
    start = db.confirmed_flush()
    source, sink = db.source([("public", "outbox")])
    db.sql("INSERT INTO noise SELECT generate_series(1, 1000)")  # other tables' WAL only
    wait_until_sync(lambda: any(c > start for c in sink.commits()), what="an idle position")
    assert not sink.records
    assert db.confirmed_flush() == start  # nothing confirmed until the caller says so
    source.confirm(sink.commits()[-1])
    wait_until_sync(lambda: db.confirmed_flush() == sink.commits()[-1], what="the slot advanced")


class GatedSink(ListSink):
    """Holds the first part of an open transaction until ``gate`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.held = threading.Event()

    def put(self, batch: PgBatch) -> bool:
        if batch.commit is None and not self.gate.is_set():
            self.held.set()
            self.gate.wait(60)
        return super().put(batch)


def test_a_large_transaction_cut_by_a_restart_is_not_handed_over_twice(
    db: PgDb, pg: ScratchPostgres
) -> None:
    md = sa.MetaData()
    outbox_table(md).create(db.engine)
    db.prepare([("public", "outbox")])
    factory = sessionmaker(db.engine, class_=OutboxSession)
    events: list[OutboxEvent] = []
    with factory() as session:
        events.append(
            session.add_event(aggregate_type="t", aggregate_id="0", event_type="E", payload=b"s")
        )
        session.commit()
        for i in range(3000):  # ~6 MB: more than the socket buffers hold
            events.append(
                session.add_event(
                    aggregate_type="t", aggregate_id=str(i), event_type="E", payload=bytes(2000)
                )
            )
        session.commit()
    want = [expected(e, "public.outbox") for e in events]
    sink = GatedSink()
    source, _ = db.source([("public", "outbox")], sink=sink, chunk_events=100)
    wait_until_sync(sink.held.is_set, what="the first part of the large transaction")
    pg.restart(kill=True)  # the rest of the transaction is cut off mid-stream
    sink.gate.set()
    wait_until_sync(
        lambda: sink.error or len(sink.records) >= len(want), within=60, what="all events"
    )
    assert source.reconnects >= 1
    assert sink.error is None and sink.records == want
    assert sum(sum((b.tables or {}).values()) for b in sink.batches) == len(want)
