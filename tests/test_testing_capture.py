"""transactional_outbox.testing: capturing committed events on SQLite (no servers)."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session, registry, sessionmaker

from transactional_outbox import (
    AsyncOutboxSession,
    OutboxEvent,
    OutboxSession,
    enable_outbox,
    outbox_table,
)
from transactional_outbox.testing import CapturedEvents, EventList, capture_events

pytest_plugins = ["transactional_outbox.testing.pytest_plugin"]

metadata = sa.MetaData()
OUTBOX = outbox_table(metadata)
ITEMS = sa.Table("items", metadata, sa.Column("id", sa.Integer, primary_key=True))


class Item:
    def __init__(self, id: int) -> None:
        self.id = id


registry().map_imperatively(Item, ITEMS)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[sa.Engine]:
    eng = sa.create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    metadata.create_all(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def factory(engine: sa.Engine) -> sessionmaker[OutboxSession]:
    # keep_rows: the table then shows what the database really committed.
    return sessionmaker(engine, class_=OutboxSession, outbox_keep_rows=True)


@pytest.fixture
async def async_engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    eng = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'adb.sqlite'}")
    async with eng.begin() as conn:
        await conn.run_sync(metadata.create_all)
    yield eng
    await eng.dispose()


def add(session: Any, event_type: str, aggregate_id: str | int = 1, **kw: Any) -> OutboxEvent:
    event: OutboxEvent = session.add_event(
        aggregate_type="order",
        aggregate_id=aggregate_id,
        event_type=event_type,
        payload=kw.pop("payload", {"n": event_type}),
        **kw,
    )
    return event


def committed_types(engine: sa.Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.scalars(sa.select(OUTBOX.c.event_type)))


def test_records_committed_events_in_commit_order_and_not_rolled_back_ones(
    factory: sessionmaker[OutboxSession], engine: sa.Engine
) -> None:
    with capture_events() as captured:
        first = factory()
        second = factory()
        a = add(first, "A")
        b = add(second, "B")
        second.commit()  # commits before the session that added first
        assert captured.types() == ["B"]
        first.commit()
        with factory() as s:
            add(s, "RolledBack")
            s.flush()  # written, then undone by the database
            s.rollback()
        with factory() as s:
            add(s, "NeverCommitted")  # close() without commit
        first.close()
        second.close()
    assert list(captured) == [b, a]
    assert captured.types() == committed_types(engine)


def test_savepoints_rolled_back_are_dropped_and_released_ones_kept(
    factory: sessionmaker[OutboxSession], engine: sa.Engine
) -> None:
    with capture_events() as captured, factory() as session:
        add(session, "outer")
        sp = session.begin_nested()
        add(session, "sp1-flushed")
        session.flush()
        with session.begin_nested():
            add(session, "sp2-released-inside-rolled-back")
        add(session, "sp1-buffered")
        sp.rollback()
        with session.begin_nested():
            add(session, "released")
            with session.begin_nested():
                add(session, "released-deeper")
        with pytest.raises(ZeroDivisionError), session.begin_nested():
            add(session, "failed-block")
            session.flush()
            raise ZeroDivisionError
        add(session, "last")
        assert captured.types() == []  # nothing is recorded before the commit
        session.commit()
    assert captured.types() == ["outer", "released", "released-deeper", "last"]


def test_savepoint_released_then_root_rolled_back_records_nothing(
    factory: sessionmaker[OutboxSession],
) -> None:
    with capture_events() as captured, factory() as session:
        with session.begin_nested():
            add(session, "released")
        session.rollback()
        add(session, "next-transaction")
        session.commit()
    assert captured.types() == ["next-transaction"]


def test_failed_commit_records_nothing(factory: sessionmaker[OutboxSession]) -> None:
    with capture_events() as captured, factory() as session:
        session.execute(ITEMS.insert().values(id=1))
        session.commit()
        add(session, "with-duplicate-row")
        session.add(Item(1))
        # The outbox writes its rows first (before_commit), then the ORM flush fails.
        with pytest.raises(sa.exc.IntegrityError):
            session.commit()
        session.rollback()
    assert captured.types() == []


def test_enable_outbox_factory_and_events_outside_capture(engine: sa.Engine) -> None:
    class AppSession(Session):
        pass

    factory = enable_outbox(sessionmaker(engine, class_=AppSession))
    with factory.begin() as session:
        add(session, "before")
    with capture_events() as captured, factory() as session:
        add(session, "written-inside-committed-after")
        session.flush()
        with capture_events() as inner:
            add(session, "inside-both")
            session.commit()
    with factory.begin() as session:
        add(session, "after")
    # The outer capture was open at the write and the commit; the inner one only
    # saw the events written while it was open.
    assert captured.types() == ["written-inside-committed-after", "inside-both"]
    assert inner.types() == ["inside-both"]


def test_sessions_in_threads_are_captured(factory: sessionmaker[OutboxSession]) -> None:
    def work(n: int) -> None:
        for i in range(20):
            with factory.begin() as s:
                add(s, "T", aggregate_id=f"{n}-{i}")

    with capture_events() as captured:
        threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(captured) == 80
    for n in range(4):  # each thread's transactions in its own order
        ids = [e.aggregate_id for e in captured if e.aggregate_id.startswith(f"{n}-")]
        assert ids == [f"{n}-{i}" for i in range(20)]


async def test_async_session_on_aiosqlite(async_engine: AsyncEngine) -> None:
    factory = async_sessionmaker(async_engine, class_=AsyncOutboxSession)
    with capture_events() as captured:
        async with factory.begin() as session:
            placed = add(session, "Placed", 7, payload={"total": "42.50"})
            async with session.begin_nested() as sp:
                add(session, "Dropped", 7)
                await sp.rollback()
        async with factory() as session:
            add(session, "RolledBack", 8)
            await session.flush()
            await session.rollback()
    assert list(captured) == [placed]


async def test_enable_outbox_async_factory(async_engine: AsyncEngine) -> None:
    factory = enable_outbox(async_sessionmaker(async_engine))
    with capture_events() as captured:
        async with factory.begin() as session:
            add(session, "A")
            add(session, "B")
    assert captured.types() == ["A", "B"]


def test_fixture_records_the_test(
    outbox_events: CapturedEvents, factory: sessionmaker[OutboxSession]
) -> None:
    with factory.begin() as s:
        add(s, "Setup")
    outbox_events.clear()
    with factory.begin() as s:
        add(s, "Placed", 42, payload={"total": "9.99"})
    outbox_events.one("Placed", aggregate_id=42, payload={"total": "9.99"})
    assert outbox_events.types() == ["Placed"]


def _event(event_type: str, aggregate_type: str, aggregate_id: str, payload: Any) -> OutboxEvent:
    return OutboxEvent.create(
        aggregate_type=aggregate_type,
        aggregate_id=aggregate_id,
        event_type=event_type,
        payload=payload,
    )


def test_event_list_filters_and_assertions() -> None:
    a = _event("Placed", "order", "1", {"total": 1})
    b = _event("Paid", "order", "1", {"total": 1})
    c = _event("Placed", "order", "2", {"total": 2})
    d = _event("Signed", "customer", "1", [1, 2])
    events = EventList([a, b, c, d])
    assert events.of_type("Placed") == [a, c]
    assert events.of_type("Placed", "Signed") == [a, c, d]
    assert events.for_aggregate("order") == [a, b, c]
    assert events.for_aggregate("order", 1) == [a, b]
    assert events.filter("Placed", aggregate_id=2) == [c]
    assert events.payloads() == [{"total": 1}, {"total": 1}, {"total": 2}, [1, 2]]
    assert events.one("Signed") is d
    assert events.one(aggregate_type="order", aggregate_id="2", payload={"total": 2}) is c
    assert events[1:] == EventList([b, c, d])
    with pytest.raises(AssertionError, match=r"found 2; captured: Placed order/1; Paid"):
        events.one("Placed")
    with pytest.raises(AssertionError, match="of type 'Nope', found 0"):
        events.one("Nope")
    with pytest.raises(AssertionError, match=r"payload \{'total': 2\} != expected \{'total': 3\}"):
        events.one("Placed", aggregate_id=2, payload={"total": 3})
    binary = _event("Blob", "file", "f", b"\xff\x00")
    with pytest.raises(AssertionError, match="Blob file/f: payload is not JSON"):
        EventList([binary]).one(payload={})
    assert repr(EventList()) == "EventList((no events))"
    assert events != "abcd"


def test_add_events_and_autoflush_writes_are_captured(
    factory: sessionmaker[OutboxSession], engine: sa.Engine
) -> None:
    built = [
        OutboxEvent.create(aggregate_type="order", aggregate_id=i, event_type="Built", payload={})
        for i in range(3)
    ]
    with capture_events() as captured, factory() as session:
        session.add_events(built)
        session.add(Item(5))
        # Autoflush writes the buffered events (keep_rows: the query sees them).
        assert session.scalar(sa.select(sa.func.count()).select_from(OUTBOX)) == 3
        add(session, "After")
        session.commit()
    assert captured.types() == ["Built", "Built", "Built", "After"]
    assert list(captured)[:3] == built
    assert captured.types() == committed_types(engine)
