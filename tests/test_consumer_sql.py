"""@idempotent_consumer with the SQL inbox stores, against the stack's real MariaDB."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, sessionmaker

from transactional_outbox.consumer import (
    AsyncSqlStore,
    ReceivedEvent,
    SqlStore,
    idempotent_consumer,
    inbox_table,
)

from ._consumer_helpers import make_record, order_event

metadata = sa.MetaData()
inbox = inbox_table(metadata)
effects = sa.Table(
    "effects",
    metadata,
    sa.Column("n", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("event_id", sa.String(36), nullable=False),
    sa.Column("consumer", sa.String(64), nullable=False),
)


@pytest.fixture
def tables(engine: sa.Engine) -> Iterator[sa.Engine]:
    metadata.create_all(engine)
    yield engine


@pytest.fixture
async def async_tables(async_engine: AsyncEngine) -> AsyncIterator[AsyncEngine]:
    async with async_engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    yield async_engine


def _count(engine: sa.Engine, table: sa.Table) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


async def _acount(engine: AsyncEngine, table: sa.Table) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(sa.select(sa.func.count()).select_from(table))).scalar_one())


def test_sync_same_record_twice_runs_once(tables: sa.Engine) -> None:
    store = SqlStore(sessionmaker(tables), table=inbox)

    @idempotent_consumer(store=store, consumer_name="billing")
    def handle(event: ReceivedEvent, session: Session) -> None:
        session.execute(sa.insert(effects).values(event_id=str(event.id), consumer="billing"))

    event = order_event()
    assert handle(make_record(event, offset=1)) is True
    assert handle(make_record(event, offset=2)) is False
    assert _count(tables, effects) == 1
    with tables.connect() as conn:
        row = conn.execute(sa.select(inbox)).one()
    assert (row.consumer, row.event_id) == ("billing", event.id)


def test_sync_failing_handler_leaves_neither_writes_nor_inbox_row(tables: sa.Engine) -> None:
    attempts = 0

    @idempotent_consumer(store=SqlStore(sessionmaker(tables), table=inbox))
    def handle(event: ReceivedEvent, session: Session) -> None:
        nonlocal attempts
        attempts += 1
        session.execute(sa.insert(effects).values(event_id=str(event.id), consumer="x"))
        if attempts == 1:
            raise RuntimeError("downstream failed")

    record = make_record(order_event())
    with pytest.raises(RuntimeError):
        handle(record)
    assert (_count(tables, effects), _count(tables, inbox)) == (0, 0)
    assert handle(record) is True
    assert handle(record) is False
    assert (_count(tables, effects), _count(tables, inbox), attempts) == (1, 1, 2)


def test_sync_handlers_own_integrity_error_is_not_a_duplicate(tables: sa.Engine) -> None:
    @idempotent_consumer(store=SqlStore(sessionmaker(tables), table=inbox))
    def handle(event: ReceivedEvent, session: Session) -> None:
        session.execute(sa.insert(effects).values(n=1, event_id=str(event.id), consumer="x"))

    assert handle(make_record(order_event(1))) is True
    with pytest.raises(IntegrityError):
        handle(make_record(order_event(2)))  # effects.n=1 exists: the handler's own error
    assert _count(tables, inbox) == 1


def test_sync_concurrent_duplicates_run_once(tables: sa.Engine) -> None:
    store = SqlStore(sessionmaker(tables), table=inbox)
    runs = 0
    lock = threading.Lock()

    @idempotent_consumer(store=store)
    def handle(event: ReceivedEvent, session: Session) -> None:
        nonlocal runs
        with lock:
            runs += 1
        session.execute(sa.insert(effects).values(event_id=str(event.id), consumer="x"))

    event = order_event()
    barrier = threading.Barrier(8)
    results: list[bool] = []

    def worker(offset: int) -> None:
        barrier.wait()
        results.append(handle(make_record(event, offset=offset)))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == [False] * 7 + [True]
    assert runs == 1
    assert _count(tables, effects) == 1


def test_consumer_names_scope_the_inbox(tables: sa.Engine) -> None:
    store = SqlStore(sessionmaker(tables), table=inbox)

    def make(name: str | None) -> Callable[[ReceivedEvent], bool]:
        @idempotent_consumer(store=store, consumer_name=name)
        def handle(event: ReceivedEvent, session: Session) -> None:
            session.execute(sa.insert(effects).values(event_id=str(event.id), consumer=name or "-"))

        return handle

    billing, shipping, unnamed = make("billing"), make("shipping"), make(None)
    record = make_record(order_event())
    assert [billing(record), shipping(record), unnamed(record)] == [True, True, True]
    assert [billing(record), shipping(record), unnamed(record)] == [False, False, False]
    with tables.connect() as conn:
        consumers = sorted(conn.execute(sa.select(inbox.c.consumer)).scalars())
    assert consumers == ["", "billing", "shipping"]


async def test_async_concurrent_duplicates_run_once(async_tables: AsyncEngine) -> None:
    runs = 0

    @idempotent_consumer(store=AsyncSqlStore(async_sessionmaker(async_tables), table=inbox))
    async def handle(event: ReceivedEvent, session: AsyncSession) -> None:
        nonlocal runs
        runs += 1
        await session.execute(sa.insert(effects).values(event_id=str(event.id), consumer="x"))

    event = order_event()
    results = await asyncio.gather(*(handle(make_record(event, offset=i)) for i in range(20)))
    assert sorted(results) == [False] * 19 + [True]
    assert runs == 1
    assert await _acount(async_tables, effects) == 1


async def test_async_failing_handler_rolls_back_then_succeeds_once(
    async_tables: AsyncEngine,
) -> None:
    attempts = 0

    @idempotent_consumer(
        store=AsyncSqlStore(async_sessionmaker(async_tables), table=inbox),
        consumer_name="billing",
    )
    async def handle(event: ReceivedEvent, session: AsyncSession) -> None:
        nonlocal attempts
        attempts += 1
        await session.execute(sa.insert(effects).values(event_id=str(event.id), consumer="b"))
        if attempts == 1:
            raise RuntimeError("downstream failed")

    record = make_record(order_event())
    with pytest.raises(RuntimeError):
        await handle(record)
    assert (await _acount(async_tables, effects), await _acount(async_tables, inbox)) == (0, 0)
    assert await handle(record) is True
    assert await handle(ReceivedEvent.from_record(record)) is False
    assert (await _acount(async_tables, effects), await _acount(async_tables, inbox)) == (1, 1)
    assert attempts == 2


async def test_async_default_table_and_schema_option(async_engine: AsyncEngine) -> None:
    # The store's default table is ``outbox_inbox``, as the migration creates it.
    own = sa.MetaData()
    table = inbox_table(own)
    assert table.name == "outbox_inbox"
    async with async_engine.begin() as conn:
        await conn.run_sync(own.create_all)
    store = AsyncSqlStore(async_sessionmaker(async_engine))
    assert store.table.name == "outbox_inbox"

    @idempotent_consumer(store=store)
    async def handle(event: ReceivedEvent, session: AsyncSession) -> None:
        pass

    record = make_record(order_event())
    assert [await handle(record), await handle(record)] == [True, False]
