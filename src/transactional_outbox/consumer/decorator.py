"""``@idempotent_consumer``: run a handler at most once per event id (per consumer name)."""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeAlias, overload

from ..exceptions import ConfigurationError, StoreUnavailableError
from .received import ReceivedEvent, RecordLike
from .store import AsyncDedupStore, AsyncInboxStore, DedupStore, InboxStore, store_unavailable
from .tracing import DUPLICATE, HANDLED, EventSpan, consumer_tracer, current_event_span

if TYPE_CHECKING:  # SQLAlchemy is only needed by SQL stores' users
    from sqlalchemy.ext.asyncio import AsyncSession
    from sqlalchemy.orm import Session

__all__ = [
    "AsyncConsumer",
    "AsyncIdempotentHandler",
    "IdempotentHandler",
    "Store",
    "SyncConsumer",
    "idempotent_consumer",
]

Store: TypeAlias = AsyncDedupStore | DedupStore | AsyncInboxStore | InboxStore
"""Any deduplication store :func:`idempotent_consumer` accepts (see ``store`` protocols)."""

AsyncConsumer: TypeAlias = Callable[[ReceivedEvent | RecordLike], Awaitable[bool]]
"""A decorated async handler: ``await handler(event_or_record)`` → whether it ran."""

SyncConsumer: TypeAlias = Callable[[ReceivedEvent | RecordLike], bool]
"""A decorated sync handler: ``handler(event_or_record)`` → whether it ran."""


class _Idempotent:
    def __init__(self, fn: Callable[..., Any], store: Store, consumer_name: str | None) -> None:
        functools.update_wrapper(self, fn)  # type: ignore[arg-type]
        self.fn = fn
        """The undecorated handler."""
        self.store = store
        self.consumer_name = consumer_name
        # Inbox stores pass the handler their session; claim stores don't.
        self.inbox = isinstance(store, AsyncInboxStore | InboxStore)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.fn!r}, store={self.store!r}, "
            f"consumer_name={self.consumer_name!r})"
        )


class AsyncIdempotentHandler(_Idempotent):
    """What :func:`idempotent_consumer` returns for an async store: ``await h(record)`` → ran?

    ``fn``, ``store`` and ``consumer_name`` are what :class:`ConsumerRunner`
    reads to deduplicate whole batches.
    """

    async def __call__(self, item: ReceivedEvent | RecordLike) -> bool:
        """Run the handler unless the event is done; ``True`` if it ran and succeeded."""
        event = _event(item)
        tracer = consumer_tracer()
        if tracer is None:
            return await self._once(event)
        state = current_event_span(event.id)  # the runner's span for this event
        if state is not None:
            return _outcome(state, await self._once(event))
        with tracer.span(event, consumer_name=self.consumer_name) as state:
            return _outcome(state, await self._once(event))

    async def _once(self, event: ReceivedEvent) -> bool:
        if self.inbox:
            inbox: AsyncInboxStore = self.store  # type: ignore[assignment]
            return await inbox.run_once(
                event.id, self.consumer_name, functools.partial(self.fn, event)
            )
        store: AsyncDedupStore = self.store  # type: ignore[assignment]
        with _store_calls():
            claim = await store.claim(event.id, self.consumer_name)
        if claim is None:
            return False
        try:
            await self.fn(event)
        except BaseException:
            # Also on cancellation: free the claim now rather than after its TTL.
            await store.release(claim)
            raise
        with _store_calls():
            await store.complete(claim)
        return True


class IdempotentHandler(_Idempotent):
    """What :func:`idempotent_consumer` returns for a sync store: ``h(record)`` → ran?"""

    def __call__(self, item: ReceivedEvent | RecordLike) -> bool:
        """Run the handler unless the event is done; ``True`` if it ran and succeeded."""
        event = _event(item)
        tracer = consumer_tracer()
        if tracer is None:
            return self._once(event)
        state = current_event_span(event.id)  # the runner's span for this event
        if state is not None:
            return _outcome(state, self._once(event))
        with tracer.span(event, consumer_name=self.consumer_name) as state:
            return _outcome(state, self._once(event))

    def _once(self, event: ReceivedEvent) -> bool:
        if self.inbox:
            inbox: InboxStore = self.store  # type: ignore[assignment]
            return inbox.run_once(event.id, self.consumer_name, functools.partial(self.fn, event))
        store: DedupStore = self.store  # type: ignore[assignment]
        with _store_calls():
            claim = store.claim(event.id, self.consumer_name)
        if claim is None:
            return False
        try:
            self.fn(event)
        except BaseException:
            store.release(claim)
            raise
        with _store_calls():
            store.complete(claim)
        return True


@overload
def idempotent_consumer(
    *, store: AsyncInboxStore, consumer_name: str | None = None
) -> Callable[
    [Callable[[ReceivedEvent, AsyncSession], Awaitable[object]]], AsyncIdempotentHandler
]: ...
@overload
def idempotent_consumer(
    *, store: InboxStore, consumer_name: str | None = None
) -> Callable[[Callable[[ReceivedEvent, Session], object]], IdempotentHandler]: ...
@overload
def idempotent_consumer(
    *, store: AsyncDedupStore, consumer_name: str | None = None
) -> Callable[[Callable[[ReceivedEvent], Awaitable[object]]], AsyncIdempotentHandler]: ...
@overload
def idempotent_consumer(
    *, store: DedupStore, consumer_name: str | None = None
) -> Callable[[Callable[[ReceivedEvent], object]], IdempotentHandler]: ...
def idempotent_consumer(
    *, store: Store, consumer_name: str | None = None
) -> Callable[[Callable[..., Any]], _Idempotent]:
    """Make a handler run at most once per event id, deduplicated in ``store``.

    The decorated function takes an aiokafka ``ConsumerRecord`` (anything
    :class:`RecordLike`) or a :class:`ReceivedEvent`; a record is decoded first,
    so one without a valid ``id`` header raises
    :class:`~transactional_outbox.InvalidRecordError` and the handler does not
    run. The handler itself always receives a :class:`ReceivedEvent`, plus the
    session with an inbox (SQL) store::

        @idempotent_consumer(store=AsyncRedisStore(redis), consumer_name="billing")
        async def on_order(event: ReceivedEvent) -> None: ...

        @idempotent_consumer(store=AsyncSqlStore(async_sessionmaker(engine)))
        async def on_order(event: ReceivedEvent, session: AsyncSession) -> None: ...

    It returns ``True`` if the handler ran and succeeded, ``False`` if the event
    was already processed (the handler's own return value is dropped). If the
    handler raises, the exception propagates and the event is not marked done,
    so a retry processes it.

    ``consumer_name`` scopes the deduplication: handlers with different names
    each process an event once (e.g. two services sharing a Redis or a database).
    Without it, every unnamed handler on the same store shares one scope.

    ``store`` is any :class:`AsyncDedupStore` / :class:`AsyncInboxStore` (needs
    an ``async def`` handler) or :class:`DedupStore` / :class:`InboxStore` (a
    plain one): the shipped Redis, SQL and in-memory stores, or your own.

    With OpenTelemetry and an SDK set up, each call runs in a CONSUMER span whose
    parent is the event's ``traceparent``, with the outcome (``handled``,
    ``duplicate``, ``failed``) as ``outbox.outcome`` (see ``consumer.tracing``).
    """
    wants_async = _store_is_async(store)

    def decorate(fn: Callable[..., Any]) -> _Idempotent:
        if is_async_callable(fn) != wants_async:
            kind = "an `async def`" if wants_async else "a plain (sync)"
            raise ConfigurationError(
                "store", f"{type(store).__name__} needs {kind} handler, {fn!r} is not one"
            )
        if wants_async:
            return AsyncIdempotentHandler(fn, store, consumer_name)
        return IdempotentHandler(fn, store, consumer_name)

    return decorate


def _store_is_async(store: object) -> bool:
    if isinstance(store, AsyncInboxStore | InboxStore):
        return inspect.iscoroutinefunction(store.run_once)
    if isinstance(store, AsyncDedupStore | DedupStore):
        return inspect.iscoroutinefunction(store.claim)
    raise ConfigurationError(
        "store",
        f"{type(store).__name__} is not a dedup store: it needs claim/complete/release"
        " (and the *_many forms), or run_once",
    )


def is_async_callable(fn: object) -> bool:
    """Whether calling ``fn`` returns an awaitable: an ``async def`` or an object with one."""
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - async callable objects
    )


def _outcome(state: EventSpan, ran: bool) -> bool:
    state.outcome(HANDLED if ran else DUPLICATE)
    return ran


def _event(item: ReceivedEvent | RecordLike) -> ReceivedEvent:
    return item if isinstance(item, ReceivedEvent) else ReceivedEvent.from_record(item)


@contextlib.contextmanager
def _store_calls() -> Iterator[None]:
    """A store that cannot be reached raises :class:`StoreUnavailableError`: not the
    handler's failure (the runner waits for the store without counting an attempt)."""
    try:
        yield
    except Exception as exc:
        if store_unavailable(exc):
            raise StoreUnavailableError(f"the dedup store cannot be reached: {exc!r}") from exc
        raise
