"""``add_event`` in the table-less mode on a real PostgreSQL 15: what the relay reads.

Sessions with ``outbox_mode="message"`` (sync, async with psycopg 3, and an
``enable_outbox`` factory) write events as transactional logical decoding
messages; the relay's PostgreSQL source reads exactly the committed ones, in
commit order, equal to ``to_record(...)``; rolled-back transactions, rolled-back
savepoints and sessions closed without commit emit nothing; the testing capture
sees the same events.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import sessionmaker

from tests._pg import PgDb, db, expected, pg
from tests.polling import wait_until_sync
from transactional_outbox import OutboxEvent, OutboxSession, enable_outbox
from transactional_outbox.relay.routing import KafkaRecord
from transactional_outbox.testing import capture_events

__all__ = ["db", "pg"]  # fixtures


def _orders(db: PgDb) -> sa.Table:
    orders = sa.Table(
        "orders",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("total", sa.Text, nullable=False),
    )
    orders.create(db.engine)
    return orders


def _add(session: OutboxSession, n: int, tag: str) -> OutboxEvent:
    return session.add_event(
        aggregate_type="order",
        aggregate_id=n,
        event_type=tag,
        payload={"n": n, "tag": tag},
        headers={"tenant": "t1"} if n % 2 else None,
    )


def _prepare(db: PgDb) -> None:
    # A publication of no table: messages need none (and the relay creates it so).
    db.prepare([])
    rows = db.sql(f"SELECT count(*) FROM pg_publication_tables WHERE pubname = '{db.publication}'")
    assert rows == [("0",)]


def _read(db: PgDb, prefix: str, want: list[KafkaRecord]) -> list[KafkaRecord | object]:
    """Everything the source reads up to ``want``'s last record (a sentinel)."""
    _, sink = db.source([], prefixes=(prefix,), chunk_events=300)
    last = want[-1]
    wait_until_sync(lambda: sink.error or last in sink.records, what="the sentinel")
    assert sink.error is None
    return list(sink.records)


def test_sync_session_relay_reads_exactly_the_committed_events(db: PgDb) -> None:
    orders = _orders(db)
    _prepare(db)
    factory = sessionmaker(
        db.engine, class_=OutboxSession, outbox_mode="message", outbox_message_prefix="billing"
    )
    table = f"{db.name}.billing"
    committed: list[OutboxEvent] = []
    with capture_events() as captured:
        with factory() as session:  # several events in one flush, and business rows
            session.execute(orders.insert(), {"id": 1, "total": "10.00"})
            committed += [_add(session, i, "Placed") for i in range(3)]
            session.commit()
        with factory() as session:  # rolled back: nothing
            _add(session, 100, "RolledBack")
            session.flush()
            session.rollback()
        with factory() as session:  # closed without commit: nothing
            _add(session, 101, "NeverCommitted")
            session.flush()
        with factory() as session:  # a savepoint rolled back, around it kept events
            committed.append(_add(session, 4, "BeforeSavepoint"))
            nested = session.begin_nested()
            _add(session, 102, "InSavepoint")
            session.flush()
            nested.rollback()
            committed.append(_add(session, 5, "AfterSavepoint"))
            kept = session.begin_nested()
            committed.append(_add(session, 6, "InKeptSavepoint"))
            kept.commit()
            session.commit()
        with factory() as session:  # more than one SELECT's worth (500) in one flush
            committed += [_add(session, 1000 + i, "Bulk") for i in range(620)]
            session.commit()
        with factory() as session:  # the sentinel
            committed.append(_add(session, 7, "Sentinel"))
            session.commit()
    want = [expected(e, table) for e in committed]
    assert _read(db, "billing", want) == want
    assert list(captured) == committed
    # No table was needed: the database has only the business table.
    assert [
        r[0] for r in db.sql("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    ] == ["orders"]


async def test_async_session_and_enable_outbox_write_messages(db: PgDb) -> None:
    _prepare(db)
    engine = create_async_engine(db.server.url(db.name, driver="psycopg"))
    factory = enable_outbox(async_sessionmaker(engine), mode="message")
    committed: list[OutboxEvent] = []
    try:
        with capture_events() as captured:
            async with factory() as session:
                committed.append(
                    session.add_event(
                        aggregate_type="order",
                        aggregate_id=1,
                        event_type="Placed",
                        payload=b"\x00\xff",
                    )
                )
                committed.append(
                    session.add_event(
                        aggregate_type="order",
                        aggregate_id=2,
                        event_type="Placed",
                        payload={"a": 1},
                    )
                )
                await session.commit()
            async with factory() as session:
                session.add_event(
                    aggregate_type="order", aggregate_id=3, event_type="Gone", payload={}
                )
                await session.flush()
                await session.rollback()
            async with factory() as session:
                committed.append(
                    session.add_event(
                        aggregate_type="order", aggregate_id=4, event_type="Sentinel", payload={}
                    )
                )
                await session.commit()
    finally:
        await engine.dispose()
    want = [expected(e, f"{db.name}.outbox") for e in committed]
    assert _read(db, "outbox", want) == want
    assert list(captured) == committed
