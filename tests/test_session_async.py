"""AsyncOutboxSession on real MariaDB through asyncmy: the same guarantees as the sync path."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from transactional_outbox import (
    AsyncOutboxSession,
    ConfigurationError,
    InvalidEventError,
    OutboxEvent,
    OutboxSession,
    enable_outbox,
    outbox_table,
)

from . import _binlog
from .conftest import Stack
from .test_session import (
    ALL_ZERO_ID,
    BINARY_PAYLOAD,
    DELETE_CHUNK,
    ZERO_TAIL_ID,
    Base,
    Order,
    expected,
)

# mysql-replication's own connection code, not ours.
pytestmark = pytest.mark.filterwarnings("ignore:'db' is deprecated:DeprecationWarning")


def add(session: AsyncOutboxSession, name: str, **kw: Any) -> OutboxEvent:
    fields = {"aggregate_type": "order", "aggregate_id": "42", "payload": {}, **kw}
    return session.add_event(event_type=name, **fields)


@pytest.fixture
async def outbox(async_engine: AsyncEngine) -> sa.Table:
    table = outbox_table(sa.MetaData())
    async with async_engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
        await conn.run_sync(table.create)
    return table


@pytest.fixture
def factory(outbox: sa.Table, async_engine: AsyncEngine) -> async_sessionmaker[AsyncOutboxSession]:
    return async_sessionmaker(async_engine, class_=AsyncOutboxSession)


@pytest.fixture
def start(stack: Stack, outbox: sa.Table) -> _binlog.Position:
    return _binlog.position(stack)


async def table_rows(engine: AsyncEngine, table: sa.Table) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        result = await conn.execute(sa.select(table))
        return [dict(r._mapping) for r in result]


async def test_commit_writes_exact_rows_and_leaves_table_empty(
    factory: async_sessionmaker[AsyncOutboxSession],
    async_engine: AsyncEngine,
    outbox: sa.Table,
    stack: Stack,
    database: str,
    start: _binlog.Position,
) -> None:
    async with factory() as session:
        session.add(Order(id=1, total=5))
        events = [
            add(session, "Zero", id=ALL_ZERO_ID, payload=BINARY_PAYLOAD),
            add(session, "ZeroTail", id=ZERO_TAIL_ID, payload=b"\xff\x00"),
            add(session, "Json", payload={"é": 1}),
        ]
        await session.commit()
    log = _binlog.read(stack, database, start)
    assert log.inserted == [expected(e) for e in events]
    assert [r["id"] for r in log.deleted] == [e.id.bytes for e in events]
    assert await table_rows(async_engine, outbox) == []


async def test_rollback_and_savepoints(
    factory: async_sessionmaker[AsyncOutboxSession],
    stack: Stack,
    database: str,
    start: _binlog.Position,
) -> None:
    async with factory() as session:
        add(session, "rolled-back")
        await session.flush()
        add(session, "rolled-back-buffered")
        await session.rollback()
        add(session, "outer")
        savepoint = await session.begin_nested()
        add(session, "inner-flushed")
        await session.flush()
        add(session, "inner-buffered")
        await savepoint.rollback()
        async with session.begin_nested():
            add(session, "released")
        with pytest.raises(ZeroDivisionError):
            async with session.begin_nested():
                add(session, "failed-block")
                raise ZeroDivisionError
        add(session, "last")
        await session.commit()
    types = [r["type"] for r in _binlog.read(stack, database, start).inserted]
    assert types == ["outer", "released", "last"]


async def test_asyncmy_round_trips_binary_and_longblob(
    async_engine: AsyncEngine, outbox: sa.Table
) -> None:
    factory = async_sessionmaker(async_engine, class_=AsyncOutboxSession, outbox_keep_rows=True)
    big = BINARY_PAYLOAD * 4096  # ~1 MiB: past BLOB's 64 KiB, inside LONGBLOB
    async with factory.begin() as session:
        events = [
            add(session, "Zero", id=ALL_ZERO_ID, payload=BINARY_PAYLOAD),
            add(session, "ZeroTail", id=ZERO_TAIL_ID, payload=b"\x00\x00"),
            add(session, "Big", payload=big),
            add(session, "Empty", payload=b""),
        ]
    rows = await table_rows(async_engine, outbox)
    by_id = {r["id"]: r for r in rows}
    assert {e.id.bytes for e in events} == set(by_id)
    for event in events:
        assert by_id[event.id.bytes] == expected(event)


def count_with(engine: AsyncEngine, statements: list[str]) -> Any:
    def record(*args: Any) -> None:
        statements.append(args[2])

    return record


async def test_one_statement_per_flush_and_one_delete_per_chunk_of_ids(
    factory: async_sessionmaker[AsyncOutboxSession],
    async_engine: AsyncEngine,
    outbox: sa.Table,
) -> None:
    counts = []
    for n in (1, 10, 10_000):
        statements: list[str] = []
        record = count_with(async_engine, statements)
        async with factory() as session:
            await session.connection()
            sa.event.listen(async_engine.sync_engine, "before_cursor_execute", record)
            try:
                for i in range(n):
                    add(session, f"E{i}", payload={"i": i})
                await session.commit()
            finally:
                sa.event.remove(async_engine.sync_engine, "before_cursor_execute", record)
        counts.append(len(statements))
    # asyncmy binds client-side too: one compound statement up to DELETE_CHUNK events.
    assert counts == [1, 1, 1 + 10_000 // DELETE_CHUNK]
    assert await table_rows(async_engine, outbox) == []


async def test_enable_outbox_on_async_sessionmaker(
    async_engine: AsyncEngine, stack: Stack, database: str
) -> None:
    table = outbox_table(sa.MetaData(), name="async_out")
    async with async_engine.begin() as conn:
        await conn.run_sync(table.create)

    class MySync(Session):
        marker = "mine"

    class MyAsync(AsyncSession):
        sync_session_class = MySync

    factory = async_sessionmaker(async_engine, class_=MyAsync)
    enabled = enable_outbox(factory, table=table, keep_rows=True)
    assert enabled is factory
    start = _binlog.position(stack)
    async with enabled.begin() as session:
        assert isinstance(session, MyAsync)
        assert isinstance(session.sync_session, OutboxSession)
        assert session.sync_session.marker == "mine"  # type: ignore[attr-defined]
        event = add(session, "Enabled", payload=b"\x00")
    assert await table_rows(async_engine, table) == [expected(event)]
    log = _binlog.read(stack, database, start, "async_out")
    assert log.inserted == [expected(event)]


async def test_invalid_event_raises_and_writes_nothing(
    factory: async_sessionmaker[AsyncOutboxSession],
    stack: Stack,
    database: str,
    start: _binlog.Position,
) -> None:
    async with factory() as session:
        with pytest.raises(InvalidEventError, match=r"invalid aggregate_type='': must not be"):
            add(session, "E", aggregate_type="")
        with pytest.raises(InvalidEventError, match=r"invalid headers\['k'\]=1"):
            session.add_events(
                [
                    OutboxEvent(
                        id=uuid.uuid4(),
                        aggregate_type="a",
                        aggregate_id="1",
                        event_type="E",
                        payload=b"",
                        headers={"k": 1},  # type: ignore[dict-item]
                        timestamp=OutboxEvent.create(
                            aggregate_type="a", aggregate_id="1", event_type="E", payload=b""
                        ).timestamp,
                    )
                ]
            )
        await session.commit()
    assert _binlog.read(stack, database, start).inserted == []


def test_async_session_needs_an_outbox_sync_session(async_engine: AsyncEngine) -> None:
    with pytest.raises(ConfigurationError, match="sync_session_class"):
        AsyncOutboxSession(async_engine, sync_session_class=Session)
    assert isinstance(AsyncOutboxSession(async_engine), AsyncSession)
