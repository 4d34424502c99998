"""Session integration: ``session.add_event(...)`` and insert-then-delete at flush.

Events are buffered on the session in call order and written when the session
flushes (explicitly, by autoflush, before a SAVEPOINT, or at commit) as an
``INSERT`` of all of them plus the ``DELETE`` of the same ids on the session's
own connection (the statements: :mod:`._outbox_sql`), so they commit or roll
back with the business rows and the table stays empty while the binlog keeps
every INSERT.
"""

from __future__ import annotations

import dataclasses
import uuid
import warnings
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, cast, overload

import sqlalchemy as sa
from sqlalchemy import event as sa_event
from sqlalchemy.orm import Session, sessionmaker

from ._otel import trace_headers
from ._outbox_sql import TablePlan, table_plan, write_rows
from ._pg_commit import defer, left_over
from ._pg_message import DEFAULT_PREFIX, check_dialect, emit_events
from .event import OutboxEvent, Serializer
from .exceptions import ConfigurationError, InvalidEventError, OutboxError
from .record_format import encode_headers
from .table import outbox_table

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import async_sessionmaker

    from .async_session import AsyncOutboxSession

__all__ = ["AsyncOutboxSession", "OutboxSession", "enable_outbox"]

_DEFAULT_TABLE = outbox_table(sa.MetaData())

write_hooks: list[Callable[[OutboxSession, list[OutboxEvent]], None]] = []
"""Called with the events each successful write put on a session's connection (not
yet committed); how ``transactional_outbox.testing`` sees them. Empty in production
(the loop over it then costs ~40 ns per write, measured with timeit)."""


@dataclasses.dataclass(frozen=True, slots=True)
class _Settings:
    plan: TablePlan
    keep_rows: bool
    serializer: Serializer | None
    message_prefix: str | None  # None: table mode


def _settings(
    table: sa.Table | None,
    keep_rows: bool,
    serializer: Serializer | None,
    mode: str,
    prefix: str,
    bind: Any,
) -> _Settings:
    table = _DEFAULT_TABLE if table is None else table
    if not isinstance(table, sa.Table):
        raise ConfigurationError("outbox_table", f"must be a sqlalchemy Table, not {table!r}")
    if mode not in ("table", "message"):
        raise ConfigurationError("outbox_mode", f"must be 'table' or 'message', not {mode!r}")
    if mode == "table":
        return _Settings(table_plan(table), bool(keep_rows), serializer, None)
    if not isinstance(prefix, str) or not prefix:
        raise ConfigurationError(
            "outbox_message_prefix", f"must be a non-empty string, not {prefix!r}"
        )
    if keep_rows:
        raise ConfigurationError("outbox_keep_rows", "there are no rows in outbox_mode='message'")
    if isinstance(getattr(bind, "dialect", None), sa.Dialect):
        check_dialect(bind.dialect)  # fail at once on an engine of another database
    return _Settings(table_plan(table), False, serializer, prefix)


class OutboxSession(Session):
    """A :class:`~sqlalchemy.orm.Session` with :meth:`add_event` / :meth:`add_events`.

    Use it as ``sessionmaker(engine, class_=OutboxSession)`` or turn an
    existing factory into one with :func:`enable_outbox`. Keyword-only
    settings, also accepted by ``sessionmaker``:

    - ``outbox_table``: the :class:`~sqlalchemy.Table` to write (default: ``outbox``
      from :func:`~transactional_outbox.outbox_table`);
    - ``outbox_keep_rows``: keep the rows instead of deleting them in the same
      transaction (for debugging; the relay only needs the binlog);
    - ``outbox_serializer``: serializer for non-bytes payloads (default JSON);
    - ``outbox_mode``: ``"table"`` (default: rows in ``outbox_table``) or
      ``"message"`` (PostgreSQL 14+ only: no table, each event a transactional
      ``pg_logical_emit_message``; DESIGN §1 "The table-less mode");
    - ``outbox_message_prefix``: the messages' prefix in ``"message"`` mode (default
      ``"outbox"``; it names the outbox as the table name does).
    """

    def __init__(
        self,
        bind: Any = None,
        *,
        outbox_table: sa.Table | None = None,
        outbox_keep_rows: bool = False,
        outbox_serializer: Serializer | None = None,
        outbox_mode: Literal["table", "message"] = "table",
        outbox_message_prefix: str = DEFAULT_PREFIX,
        **kw: Any,
    ) -> None:
        super().__init__(bind, **kw)
        self._outbox = _settings(
            outbox_table,
            outbox_keep_rows,
            outbox_serializer,
            outbox_mode,
            outbox_message_prefix,
            bind,
        )
        self._outbox_pending: list[OutboxEvent] = []
        # The connection info whose COMMIT carries this transaction's messages (psycopg).
        self._outbox_carrier: dict[Any, Any] | None = None

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
        """Validate an event and write it with this session's transaction.

        Takes the arguments of :meth:`OutboxEvent.create` (``serializer``
        defaults to the session's). The event is written at the next flush
        (at the latest, at commit); a rollback discards it. Raises
        :class:`InvalidEventError` / :class:`SerializationError` at once.
        """
        event = OutboxEvent.create(
            aggregate_type=aggregate_type,
            aggregate_id=aggregate_id,
            event_type=event_type,
            payload=payload,
            headers=headers,
            id=id,
            timestamp=timestamp,
            serializer=self._outbox.serializer if serializer is None else serializer,
        )
        event = _with_trace(event)
        self._outbox_buffer([event])
        return event

    def add_events(self, events: Iterable[OutboxEvent]) -> None:
        """Add already built events, in order. All are validated before any is buffered."""
        checked = [_with_trace(_revalidate(e)) for e in events]
        self._outbox_buffer(checked)

    def flush(self, objects: Any = None) -> None:
        """Flush ORM changes, then write the buffered events (written even when there
        are no ORM changes, when Session.flush() alone would do nothing)."""
        if objects is None:
            super().flush()
        else:
            super().flush(objects)
        self._outbox_write()

    def _outbox_buffer(self, events: list[OutboxEvent]) -> None:
        if events:
            # Begin the session transaction as Session.add() does, so a
            # rollback() right after add_event() clears the buffer.
            self._autobegin_t()
            self._outbox_pending.extend(events)

    def _outbox_write(self, *, at_commit: bool = False) -> None:
        events = self._outbox_pending
        if not events:
            return
        self._outbox_pending = []
        plan = self._outbox.plan
        try:
            conn = self.connection(bind_arguments={"clause": plan.table})
            prefix = self._outbox.message_prefix
            if prefix is not None:
                check_dialect(conn.dialect)
                carrier = at_commit and defer(self, plan.table, conn, events, prefix)
                if carrier:
                    self._outbox_carrier = carrier
                else:
                    emit_events(conn, events, prefix)
            else:
                # Rows in list order, which is the binlog order.
                rows = [_row(e) for e in events]
                write_rows(conn, plan, rows, delete=not self._outbox.keep_rows)
        except BaseException:
            # Put them back: a commit after a caught error retries (and fails
            # again, e.g. on a duplicate id) instead of silently dropping them.
            self._outbox_pending[:0] = events
            raise
        for hook in write_hooks:
            hook(self, events)


@overload
def enable_outbox(
    factory: sessionmaker[Any],
    *,
    table: sa.Table | None = None,
    keep_rows: bool = False,
    serializer: Serializer | None = None,
    mode: Literal["table", "message"] = "table",
    message_prefix: str = DEFAULT_PREFIX,
) -> sessionmaker[OutboxSession]: ...
@overload
def enable_outbox(
    factory: async_sessionmaker[Any],
    *,
    table: sa.Table | None = None,
    keep_rows: bool = False,
    serializer: Serializer | None = None,
    mode: Literal["table", "message"] = "table",
    message_prefix: str = DEFAULT_PREFIX,
) -> async_sessionmaker[AsyncOutboxSession]: ...
def enable_outbox(
    factory: sessionmaker[Any] | async_sessionmaker[Any],
    *,
    table: sa.Table | None = None,
    keep_rows: bool = False,
    serializer: Serializer | None = None,
    mode: Literal["table", "message"] = "table",
    message_prefix: str = DEFAULT_PREFIX,
) -> sessionmaker[OutboxSession] | async_sessionmaker[AsyncOutboxSession]:
    """Make an existing ``sessionmaker`` / ``async_sessionmaker`` produce outbox sessions.

    The factory is changed in place (its session class gains
    ``add_event``/``add_events``; its own class and settings are kept) and
    returned, typed accordingly. ``table``, ``keep_rows``, ``serializer``, ``mode``
    and ``message_prefix`` are the ``outbox_*`` settings of :class:`OutboxSession`.
    """
    if isinstance(factory, sessionmaker):
        factory.class_ = _with_base(factory.class_, OutboxSession)
    else:
        # The async parts need greenlet (the ``async`` extra): imported only here.
        # Without it, nothing can be an async_sessionmaker.
        try:
            from .async_session import AsyncOutboxSession, is_async_sessionmaker
        except ImportError:
            is_async = False
        else:
            is_async = is_async_sessionmaker(factory)
        if not is_async:
            raise ConfigurationError(
                "factory", f"must be a sessionmaker or async_sessionmaker, not {factory!r}"
            )
        # Read the sync class before wrapping: AsyncOutboxSession's own would win.
        sync_class = factory.kw.get("sync_session_class") or factory.class_.sync_session_class
        factory.class_ = _with_base(factory.class_, AsyncOutboxSession)
        factory.kw["sync_session_class"] = _with_base(sync_class, OutboxSession)
    factory.kw.update(outbox_table=table, outbox_keep_rows=keep_rows, outbox_serializer=serializer)
    factory.kw.update(outbox_mode=mode, outbox_message_prefix=message_prefix)
    return cast("sessionmaker[OutboxSession] | async_sessionmaker[AsyncOutboxSession]", factory)


def _with_base(cls: type[Any], base: type[Any]) -> type[Any]:
    if issubclass(cls, base):
        return cls
    # Outbox class first, so its flush()/__init__ wrap the user's class.
    return type(cls.__name__, (base, cls), {})


def _row(event: OutboxEvent) -> tuple[Any, ...]:
    return (
        event.id.bytes,
        event.aggregate_type,
        event.aggregate_id,
        event.event_type,
        event.payload,
        _headers_text(event.headers),
        # DATETIME has no zone: store naive UTC (OutboxEvent timestamps are UTC).
        event.timestamp.astimezone(UTC).replace(tzinfo=None),
    )


_headers_texts: dict[tuple[tuple[str, str], ...], str] = {}


def _headers_text(headers: Mapping[str, str]) -> str:
    # Most events of an app carry the same few headers (content-type): ~0.3 us from
    # this memo instead of ~2 us of JSON an event (timeit). Bounded: small texts only,
    # and emptied when full (per-request headers such as traceparent never repeat).
    key = tuple(headers.items())
    text = _headers_texts.get(key)
    if text is None:
        text = encode_headers(headers)
        if len(text) <= 512:
            if len(_headers_texts) >= 256:
                _headers_texts.clear()
            _headers_texts[key] = text
    return text


def _revalidate(event: object) -> OutboxEvent:
    # The plain constructor trusts its arguments; nothing unchecked may reach the table.
    if not isinstance(event, OutboxEvent):
        raise InvalidEventError("event", event, "must be an OutboxEvent")
    if not isinstance(event.payload, bytes):
        raise InvalidEventError("payload", event.payload, "must be bytes in a built OutboxEvent")
    return OutboxEvent.create(
        id=event.id,
        aggregate_type=event.aggregate_type,
        aggregate_id=event.aggregate_id,
        event_type=event.event_type,
        payload=event.payload,
        headers=event.headers,
        timestamp=event.timestamp,
    )


def _with_trace(event: OutboxEvent) -> OutboxEvent:
    if any(k.lower() == "traceparent" for k in event.headers):
        return event  # the caller's trace context wins
    extra = trace_headers()
    return dataclasses.replace(event, headers={**event.headers, **extra}) if extra else event


def _pending(session: Session) -> list[OutboxEvent] | None:
    return session._outbox_pending if isinstance(session, OutboxSession) else None


@sa_event.listens_for(OutboxSession, "before_commit")
def _write_before_commit(session: Session) -> None:
    # commit() only flushes a session with ORM changes; a session that only
    # added events would otherwise commit without them.
    if isinstance(session, OutboxSession):
        session._outbox_write(at_commit=True)


@sa_event.listens_for(OutboxSession, "after_rollback")
def _discard_on_rollback(session: Session) -> None:
    # Fires for the root transaction and for a rolled-back SAVEPOINT. Events
    # buffered before a SAVEPOINT were written when it began (begin_nested()
    # flushes), so everything still buffered belongs to what was rolled back;
    # rows already written inside it are rolled back by the database.
    pending = _pending(session)
    if pending:
        pending.clear()


@sa_event.listens_for(OutboxSession, "after_commit")
def _check_nothing_left(session: Session) -> None:
    carrier = session._outbox_carrier if isinstance(session, OutboxSession) else None
    if carrier is not None and isinstance(session, OutboxSession):
        session._outbox_carrier = None
        if lost := left_over(carrier):
            raise OutboxError(
                f"{lost} outbox message statement(s) were handed to the COMMIT, which did not "
                "send them: the transaction committed without its events (a bug: report it)"
            )
    pending = _pending(session)
    if pending and not session.in_nested_transaction():
        warnings.warn(
            f"{len(pending)} outbox event(s) were added during commit, after the outbox "
            "wrote its rows, and were NOT written; add events before commit() or in a "
            "before_flush hook",
            RuntimeWarning,
            stacklevel=2,
        )
        pending.clear()


@sa_event.listens_for(OutboxSession, "after_transaction_end")
def _discard_at_end(session: Session, transaction: Any) -> None:
    # close() without commit() ends the transaction without after_rollback.
    pending = _pending(session)
    if pending and transaction.parent is None:
        pending.clear()


def __getattr__(name: str) -> Any:
    # ``AsyncOutboxSession`` lives in ``async_session`` (it needs greenlet, the
    # ``async`` extra); still importable from here, as before.
    if name == "AsyncOutboxSession":
        from .async_session import AsyncOutboxSession

        return AsyncOutboxSession
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
