"""``AsyncOutboxSession``: the asyncio twin of :class:`~transactional_outbox.OutboxSession`.

A module of its own because SQLAlchemy's asyncio extension needs ``greenlet``
(the ``async`` extra): ``from transactional_outbox import OutboxSession`` on a
plain install must not import it (SQLAlchemy 2.1 no longer installs greenlet).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from .event import OutboxEvent, Serializer
from .exceptions import ConfigurationError
from .session import OutboxSession

__all__ = ["AsyncOutboxSession", "is_async_sessionmaker"]


def is_async_sessionmaker(factory: object) -> bool:
    """Whether ``factory`` is an ``async_sessionmaker`` (for ``enable_outbox``)."""
    return isinstance(factory, async_sessionmaker)


class AsyncOutboxSession(AsyncSession):
    """An :class:`~sqlalchemy.ext.asyncio.AsyncSession` with :meth:`add_event`.

    Its ``sync_session_class`` is :class:`OutboxSession`, which takes the
    ``outbox_*`` settings (pass them to ``async_sessionmaker`` or here).
    """

    sync_session_class: type[Session] = OutboxSession

    def __init__(self, bind: Any = None, **kw: Any) -> None:
        super().__init__(bind, **kw)
        if not isinstance(self.sync_session, OutboxSession):
            raise ConfigurationError(
                "sync_session_class",
                f"must be a subclass of OutboxSession, not {type(self.sync_session).__name__}",
            )
        self._outbox_sync: OutboxSession = self.sync_session

    def add_event(
        self,
        *,
        aggregate_type: str,
        aggregate_id: str | int,
        event_type: str,
        payload: Any,
        headers: Mapping[str, str] | None = None,
        id: uuid.UUID | None = None,
        timestamp: datetime | None = None,
        serializer: Serializer | None = None,
    ) -> OutboxEvent:
        """Same as :meth:`OutboxSession.add_event` (no I/O, so not a coroutine)."""
        return self._outbox_sync.add_event(
            aggregate_type=aggregate_type,
            aggregate_id=aggregate_id,
            event_type=event_type,
            payload=payload,
            headers=headers,
            id=id,
            timestamp=timestamp,
            serializer=serializer,
        )

    def add_events(self, events: Iterable[OutboxEvent]) -> None:
        """Same as :meth:`OutboxSession.add_events`."""
        self._outbox_sync.add_events(events)
