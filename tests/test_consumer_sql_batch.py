"""The async SQL inbox store's batch operations, against the stack's MariaDB."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from transactional_outbox.consumer import AsyncInboxStore, AsyncSqlStore, inbox_table

metadata = sa.MetaData()
inbox = inbox_table(metadata, name="batch_inbox")
effects = sa.Table(
    "batch_effects",
    metadata,
    sa.Column("event_id", sa.String(36), primary_key=True),
)


@pytest.fixture
async def store(async_engine: AsyncEngine) -> AsyncIterator[AsyncSqlStore]:
    async with async_engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    yield AsyncSqlStore(async_sessionmaker(async_engine), table=inbox, batch_transactions=True)


async def _ids(engine: AsyncEngine, column: sa.ColumnElement[object]) -> set[str]:
    async with engine.connect() as conn:
        return {str(v) for v in (await conn.execute(sa.select(column))).scalars()}


def write(event_id: uuid.UUID, calls: list[uuid.UUID]) -> Callable[[AsyncSession], Awaitable[None]]:
    async def call(session: AsyncSession) -> None:
        calls.append(event_id)
        await session.execute(sa.insert(effects).values(event_id=str(event_id)))

    return call


def fail(event_id: uuid.UUID, calls: list[uuid.UUID]) -> Callable[[AsyncSession], Awaitable[None]]:
    async def call(session: AsyncSession) -> None:
        calls.append(event_id)
        await session.execute(sa.insert(effects).values(event_id=str(event_id)))
        raise RuntimeError("handler failed after writing")

    return call


async def test_store_satisfies_the_protocol(store: AsyncSqlStore) -> None:
    assert isinstance(store, AsyncInboxStore) and store.batch_transactions


async def test_done_ids_reports_recorded_ids_in_one_query(
    store: AsyncSqlStore, async_engine: AsyncEngine
) -> None:
    a, b, c = (uuid.uuid4() for _ in range(3))
    calls: list[uuid.UUID] = []
    assert await store.run_once(a, "billing", write(a, calls))
    assert await store.done_ids([a, b, c], "billing") == {a}
    assert await store.done_ids([a, b, c], "shipping") == set()  # another consumer's scope
    assert await store.done_ids([], "billing") == set()


async def test_a_failing_call_rolls_back_only_its_savepoint(
    store: AsyncSqlStore, async_engine: AsyncEngine
) -> None:
    a, b, c = (uuid.uuid4() for _ in range(3))
    calls: list[uuid.UUID] = []
    results = await store.run_batch(
        "billing", [(a, write(a, calls)), (b, fail(b, calls)), (c, write(c, calls))]
    )
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], RuntimeError)
    assert calls == [a, b, c]
    # The failed event left neither its write nor its inbox row; the others committed both.
    assert await _ids(async_engine, effects.c.event_id) == {str(a), str(c)}
    assert await _ids(async_engine, inbox.c.event_id) == {str(a), str(c)}
    # Its retry runs it alone and records it.
    assert await store.run_once(b, "billing", write(b, calls))
    assert await store.done_ids([a, b, c], "billing") == {a, b, c}


async def test_an_id_recorded_meanwhile_falls_back_to_one_transaction_each(
    store: AsyncSqlStore, async_engine: AsyncEngine
) -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    calls: list[uuid.UUID] = []
    # Another worker recorded `a` after this one checked the batch.
    assert await store.run_once(a, "billing", write(a, calls))
    calls.clear()
    results = await store.run_batch("billing", [(a, write(a, calls)), (b, write(b, calls))])
    assert results == [None, None]
    assert calls == [b]  # `a` was not run again
    assert await _ids(async_engine, effects.c.event_id) == {str(a), str(b)}
