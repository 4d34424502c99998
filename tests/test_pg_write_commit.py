"""The table-less mode's messages ride the COMMIT (one round trip) where the session's
commit is certain to be the connection's, and are emitted at once everywhere else; a
message that fails fails the commit with it. On a real PostgreSQL 15 with psycopg 3."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import sessionmaker

from tests._pg import PgDb, db, expected, pg
from tests.polling import wait_until_sync
from transactional_outbox import OutboxEvent, OutboxSession, _pg_message

__all__ = ["db", "pg"]  # fixtures


def _orders(db: PgDb) -> sa.Table:
    orders = sa.Table(
        "orders",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("n", sa.Integer),
    )
    orders.create(db.engine)
    db.prepare([])
    return orders


def _emits_through_sqlalchemy(engine: sa.Engine) -> list[str]:
    seen: list[str] = []

    @sa.event.listens_for(engine, "before_cursor_execute")
    def spy(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "pg_logical_emit_message" in statement:
            seen.append(statement)

    return seen


def _add(session: OutboxSession, n: int) -> OutboxEvent:
    return session.add_event(
        aggregate_type="order", aggregate_id=n, event_type="E", payload={"n": n}
    )


def _read_until(db: PgDb, last: OutboxEvent) -> list[Any]:
    _, sink = db.source([], prefixes=("outbox",))
    want = expected(last, f"{db.name}.outbox")
    wait_until_sync(lambda: sink.error or want in sink.records, what="the last event")
    assert sink.error is None
    return list(sink.records)


def test_an_engine_session_sends_its_messages_with_the_commit(db: PgDb) -> None:
    orders = _orders(db)
    emits = _emits_through_sqlalchemy(db.engine)
    factory = sessionmaker(db.engine, class_=OutboxSession, outbox_mode="message")
    with factory() as session:
        session.execute(orders.insert(), {"id": 1, "n": 1})
        first = [_add(session, 1), _add(session, 2)]
        session.commit()
        session.execute(orders.insert(), {"id": 2, "n": 2})
        second = [_add(session, 3)]
        session.flush()  # written at flush: emitted at once, then committed
        session.commit()
    assert len(emits) == 1  # only the flush's; the commit's went in the pipeline
    table = f"{db.name}.outbox"
    got = _read_until(db, second[-1])
    assert got == [expected(e, table) for e in first + second]
    with db.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM orders")).scalar() == 2


def test_a_session_joined_to_a_callers_transaction_emits_at_once(db: PgDb) -> None:
    orders = _orders(db)
    emits = _emits_through_sqlalchemy(db.engine)
    with db.engine.connect() as conn:
        outer = conn.begin()
        session = OutboxSession(bind=conn, outbox_mode="message")
        session.execute(orders.insert(), {"id": 1, "n": 1})
        _add(session, 1)
        session.commit()  # the caller's transaction is still open: no COMMIT to ride
        session.close()
        outer.rollback()
        outer = conn.begin()
        session = OutboxSession(bind=conn, outbox_mode="message")
        kept = _add(session, 2)
        session.commit()
        session.close()
        outer.commit()
    assert len(emits) == 2
    assert _read_until(db, kept) == [expected(kept, f"{db.name}.outbox")]


def test_a_message_that_fails_fails_the_commit_and_nothing_is_committed(
    db: PgDb, monkeypatch: pytest.MonkeyPatch
) -> None:
    orders = _orders(db)
    factory = sessionmaker(db.engine, class_=OutboxSession, outbox_mode="message")
    real = _pg_message.statements

    def broken(events: Any, prefix: str) -> list[tuple[str, dict[str, Any]]]:
        sql = "SELECT pg_logical_emit_message(true, %(prefix)s, (1 / 0)::text)"
        return [(sql, {"prefix": prefix})]

    monkeypatch.setattr("transactional_outbox._pg_commit.statements", broken)
    with factory() as session:
        session.execute(orders.insert(), {"id": 1, "n": 1})
        _add(session, 1)
        with pytest.raises(Exception, match="division by zero"):
            session.commit()
        session.rollback()
        monkeypatch.setattr("transactional_outbox._pg_commit.statements", real)
        session.execute(orders.insert(), {"id": 2, "n": 2})  # the session goes on
        after = _add(session, 2)
        session.commit()
    with db.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT id FROM orders ORDER BY id")).scalars().all()
    assert rows == [2]
    assert _read_until(db, after) == [expected(after, f"{db.name}.outbox")]
