"""Deduplication in SQL: an inbox row written in the handler's own transaction.

The inbox row is inserted first, then the handler runs in the same session and
transaction, then both commit. A duplicate hits the primary key (consumer,
event_id): a concurrent one blocks on the row lock until the first commits (then
fails as a duplicate) or rolls back (then proceeds). Effects that live in the
same database therefore happen exactly once.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

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

    def _insert(self, event_id: uuid.UUID, consumer_name: str | None) -> sa.Insert:
        return sa.insert(self.table).values(
            consumer=_UNSCOPED if consumer_name is None else consumer_name,
            event_id=event_id,
            # DATETIME holds no zone: store UTC, as the outbox table does.
            processed_at=datetime.now(UTC).replace(tzinfo=None),
        )

    def _exists(self, event_id: uuid.UUID, consumer_name: str | None) -> sa.Select[Any]:
        consumer = _UNSCOPED if consumer_name is None else consumer_name
        c = self.table.c
        return sa.select(sa.literal(1)).where(c.consumer == consumer, c.event_id == event_id)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(table={self.table.fullname!r})"


class SqlStore(_SqlBase):
    """Deduplicate with an inbox table, for sync handlers ``handler(event, session)``.

    ``session_factory`` makes a new :class:`~sqlalchemy.orm.Session` (e.g. a
    ``sessionmaker``). For each event the decorator opens a session, begins a
    transaction, inserts the inbox row, calls the handler with the session and
    commits: the handler must not commit or roll back itself. ``table`` is the
    inbox table (default: ``outbox_inbox``, see :func:`inbox_table`).
    """

    def __init__(
        self, session_factory: Callable[[], Session], *, table: sa.Table | None = None
    ) -> None:
        super().__init__(table)
        self._session_factory = session_factory

    def _run(
        self,
        event_id: uuid.UUID,
        consumer_name: str | None,
        call: Callable[[Session], object],
    ) -> bool:
        with self._session_factory() as session:
            try:
                with session.begin():
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

    Like :class:`SqlStore` with an :class:`~sqlalchemy.ext.asyncio.AsyncSession`
    factory (e.g. an ``async_sessionmaker``).
    """

    def __init__(
        self, session_factory: Callable[[], AsyncSession], *, table: sa.Table | None = None
    ) -> None:
        super().__init__(table)
        self._session_factory = session_factory

    async def _run(
        self,
        event_id: uuid.UUID,
        consumer_name: str | None,
        call: Callable[[AsyncSession], Any],
    ) -> bool:
        async with self._session_factory() as session:
            try:
                async with session.begin():
                    await session.execute(self._insert(event_id, consumer_name))
                    await call(session)
            except IntegrityError:
                async with session.begin():
                    found = (await session.execute(self._exists(event_id, consumer_name))).first()
                    if found is None:
                        raise
                return False
        return True
