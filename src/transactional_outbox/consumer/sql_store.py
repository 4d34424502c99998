"""Deduplication in SQL: an inbox row written in the handler's own transaction.

The inbox row is inserted first, then the handler runs in the same session and
transaction, then both commit. A duplicate hits the primary key (consumer,
event_id): a concurrent one blocks on the row lock until the first commits (then
fails as a duplicate) or rolls back (then proceeds). Effects that live in the
same database therefore happen exactly once.

For the runner, :meth:`AsyncSqlStore.done_ids` checks a whole batch in one query
before any handler runs, and with ``batch_transactions=True`` a batch runs in
one transaction with a savepoint per event (:meth:`AsyncSqlStore.run_batch`).

A database that cannot be reached is the store being unavailable, not the
handler failing: ``run_once`` raises :class:`StoreUnavailableError` when it
cannot connect, or when SQLAlchemy reports the connection lost (its dialect's
disconnect check: ``DBAPIError.connection_invalidated``) anywhere in the
transaction, the handler's statements included (they run on the same
connection). The runner then waits without counting an attempt. A commit cut
off that had in fact been applied is found as a duplicate when the event runs
again: still exactly once.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from ..exceptions import ConfigurationError, StoreUnavailableError

__all__ = ["DEFAULT_INBOX_TABLE", "AsyncSqlStore", "SqlStore", "inbox_table"]

DEFAULT_INBOX_TABLE = "outbox_inbox"
"""Default name of the inbox table (also what migration ``outbox_0002`` creates)."""

# Used when a consumer name is not given; "" keeps the column NOT NULL and the
# primary key simple.
_UNSCOPED = ""
_MYSQL = ("mysql", "mariadb")


class _BinaryUuid(sa.TypeDecorator[uuid.UUID]):
    """A UUID stored as BINARY(16), like the outbox table's ``id``."""

    impl = sa.LargeBinary(16)
    cache_ok = True

    def load_dialect_impl(self, dialect: sa.Dialect) -> sa.types.TypeEngine[Any]:
        # LargeBinary is BLOB on MySQL, which cannot be in a primary key.
        if dialect.name in _MYSQL:
            return dialect.type_descriptor(mysql.BINARY(16))
        return dialect.type_descriptor(sa.LargeBinary(16))

    def process_bind_param(self, value: uuid.UUID | None, dialect: sa.Dialect) -> bytes | None:
        return None if value is None else value.bytes

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> uuid.UUID | None:
        return None if value is None else uuid.UUID(bytes=bytes(value))


def inbox_table(
    metadata: sa.MetaData, *, name: str = DEFAULT_INBOX_TABLE, schema: str | None = None
) -> sa.Table:
    """Define the inbox table in ``metadata``: ``consumer``, ``event_id``, ``processed_at``.

    The primary key (consumer, event_id) is what makes a duplicate fail. Create
    it with ``metadata.create_all`` or the ``outbox_0002`` alembic migration.
    """
    return sa.Table(
        name,
        metadata,
        sa.Column("consumer", sa.String(255), primary_key=True),
        sa.Column("event_id", _BinaryUuid(), primary_key=True),
        sa.Column(
            "processed_at",
            sa.DateTime().with_variant(mysql.DATETIME(fsp=6), *_MYSQL),
            nullable=False,
        ),
        schema=schema,
    )


_default_table = inbox_table(sa.MetaData())


class _SqlBase:
    def __init__(self, table: sa.Table | None) -> None:
        self.table = _default_table if table is None else table

    def _row(self, event_id: uuid.UUID, consumer_name: str | None, now: datetime) -> dict[str, Any]:
        return {
            "consumer": _UNSCOPED if consumer_name is None else consumer_name,
            "event_id": event_id,
            "processed_at": now,
        }

    def _insert(self, event_id: uuid.UUID, consumer_name: str | None) -> sa.Insert:
        return sa.insert(self.table).values(self._row(event_id, consumer_name, _now()))

    def _exists(self, event_id: uuid.UUID, consumer_name: str | None) -> sa.Select[Any]:
        consumer = _UNSCOPED if consumer_name is None else consumer_name
        c = self.table.c
        return sa.select(sa.literal(1)).where(c.consumer == consumer, c.event_id == event_id)

    def _done_query(
        self, event_ids: Sequence[uuid.UUID], consumer_name: str | None
    ) -> sa.Select[Any]:
        consumer = _UNSCOPED if consumer_name is None else consumer_name
        c = self.table.c
        return sa.select(c.event_id).where(c.consumer == consumer, c.event_id.in_(event_ids))

    def _delete(self, event_id: uuid.UUID, consumer_name: str | None) -> sa.Delete:
        consumer = _UNSCOPED if consumer_name is None else consumer_name
        c = self.table.c
        return sa.delete(self.table).where(c.consumer == consumer, c.event_id == event_id)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(table={self.table.fullname!r})"


@contextlib.contextmanager
def _connecting() -> Iterator[None]:
    # No connection at all: whatever the driver says (refused, timed out, a login
    # the server turned away), the store cannot be used now; the runner's warnings
    # carry the cause while it waits.
    try:
        yield
    except DBAPIError as exc:
        raise StoreUnavailableError(
            f"the inbox's database cannot be reached: {exc.orig!r}"
        ) from exc


@contextlib.contextmanager
def _outage() -> Iterator[None]:
    try:
        yield
    except DBAPIError as exc:
        if exc.connection_invalidated:
            raise StoreUnavailableError(
                f"the inbox's database connection was lost: {exc.orig!r}"
            ) from exc
        raise


def _now() -> datetime:
    # DATETIME holds no zone: store UTC, as the outbox table does.
    return datetime.now(UTC).replace(tzinfo=None)


class SqlStore(_SqlBase):
    """Deduplicate with an inbox table, for sync handlers ``handler(event, session)``.

    An :class:`InboxStore`. ``session_factory`` makes a new
    :class:`~sqlalchemy.orm.Session` (e.g. a ``sessionmaker``). For each event
    the decorator opens a session, begins a transaction, inserts the inbox row,
    calls the handler with the session and commits: the handler must not commit
    or roll back itself. ``table`` is the inbox table (default:
    ``outbox_inbox``, see :func:`inbox_table`).
    """

    def __init__(
        self, session_factory: Callable[[], Session], *, table: sa.Table | None = None
    ) -> None:
        super().__init__(table)
        self._session_factory = session_factory

    def run_once(
        self,
        event_id: uuid.UUID,
        consumer_name: str | None,
        call: Callable[[Session], object],
    ) -> bool:
        """In one transaction: insert the inbox row, ``call(session)``, commit.

        ``False`` (``call`` not made, or rolled back) if the row existed already.
        """
        with _outage(), self._session_factory() as session:
            try:
                with session.begin():
                    with _connecting():
                        session.connection()
                    session.execute(self._insert(event_id, consumer_name))
                    call(session)
            except IntegrityError:
                # The handler's own writes can violate constraints too: only an
                # existing inbox row makes this a duplicate.
                with session.begin():
                    if session.execute(self._exists(event_id, consumer_name)).first() is None:
                        raise
                return False
        return True


class AsyncSqlStore(_SqlBase):
    """Deduplicate with an inbox table, for async handlers ``await handler(event, session)``.

    An :class:`AsyncInboxStore`: like :class:`SqlStore` with an
    :class:`~sqlalchemy.ext.asyncio.AsyncSession` factory (e.g. an
    ``async_sessionmaker``).

    ``batch_transactions=True`` lets :class:`ConsumerRunner` run a fetched
    batch's events in one transaction, one savepoint each: a handler that raises
    rolls back its own savepoint (its writes and inbox row) and is retried
    alone; the others commit together. Faster (MariaDB here commits ~2,200
    one-row transactions/s from 8 connections), but the events of one
    transaction run one after another, and their effects become visible
    together. ``batch_concurrency`` such transactions run at once, each with
    its own share of the batch's keys (and its own pooled connection).
    """

    def __init__(
        self,
        session_factory: Callable[[], AsyncSession],
        *,
        table: sa.Table | None = None,
        batch_transactions: bool = False,
        batch_concurrency: int = 8,
    ) -> None:
        super().__init__(table)
        if batch_concurrency < 1:
            raise ConfigurationError(
                "batch_concurrency", f"must be at least 1, got {batch_concurrency}"
            )
        self._session_factory = session_factory
        self.batch_transactions = batch_transactions
        self.batch_concurrency = batch_concurrency

    async def run_once(
        self,
        event_id: uuid.UUID,
        consumer_name: str | None,
        call: Callable[[AsyncSession], Awaitable[object]],
    ) -> bool:
        """See :meth:`SqlStore.run_once`."""
        with _outage():
            return await self._run_once(event_id, consumer_name, call)

    async def _run_once(
        self,
        event_id: uuid.UUID,
        consumer_name: str | None,
        call: Callable[[AsyncSession], Awaitable[object]],
    ) -> bool:
        async with self._session_factory() as session:
            try:
                async with session.begin():
                    with _connecting():
                        await session.connection()
                    await session.execute(self._insert(event_id, consumer_name))
                    await call(session)
            except IntegrityError:
                async with session.begin():
                    found = (await session.execute(self._exists(event_id, consumer_name))).first()
                    if found is None:
                        raise
                return False
        return True

    async def done_ids(
        self, event_ids: Sequence[uuid.UUID], consumer_name: str | None
    ) -> set[uuid.UUID]:
        """Which of ``event_ids`` have an inbox row (one query)."""
        if not event_ids:
            return set()
        async with self._session_factory() as session:
            rows = await session.execute(self._done_query(event_ids, consumer_name))
            return {row[0] for row in rows}

    async def run_batch(
        self,
        consumer_name: str | None,
        calls: Sequence[tuple[uuid.UUID, Callable[[AsyncSession], Awaitable[object]]]],
    ) -> list[BaseException | None]:
        """Run ``calls`` in one transaction, a savepoint each (see the class docstring).

        The inbox rows of all ids are inserted first in one statement (so a
        concurrent duplicate blocks on their locks); if one exists already, the
        batch falls back to :meth:`run_once` per event.
        """
        if not calls:
            return []
        now = _now()
        rows = [self._row(event_id, consumer_name, now) for event_id, _ in calls]
        results: list[BaseException | None] = []
        async with self._session_factory() as session:
            try:
                async with session.begin():
                    await session.execute(sa.insert(self.table), rows)
                    for event_id, call in calls:
                        results.append(
                            await self._savepoint(session, event_id, consumer_name, call)
                        )
            except IntegrityError:
                if len(results) == len(calls):
                    raise  # the commit failed, not the inbox insert
                return [
                    await self._run_alone(event_id, consumer_name, call) for event_id, call in calls
                ]
        return results

    async def _savepoint(
        self,
        session: AsyncSession,
        event_id: uuid.UUID,
        consumer_name: str | None,
        call: Callable[[AsyncSession], Awaitable[object]],
    ) -> BaseException | None:
        savepoint = await session.begin_nested()
        try:
            await call(session)
        except Exception as exc:
            await savepoint.rollback()
            # The inbox row was inserted before the savepoint: take it out, so
            # the commit does not mark a failed event done.
            await session.execute(self._delete(event_id, consumer_name))
            return exc
        await savepoint.commit()
        return None

    async def _run_alone(
        self,
        event_id: uuid.UUID,
        consumer_name: str | None,
        call: Callable[[AsyncSession], Awaitable[object]],
    ) -> BaseException | None:
        try:
            await self.run_once(event_id, consumer_name, call)
        except Exception as exc:
            return exc
        return None
