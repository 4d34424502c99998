"""``@idempotent_consumer``: run a handler at most once per event id (per consumer name)."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias, overload

from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from ..exceptions import ConfigurationError
from .received import ReceivedEvent, RecordLike
from .redis_store import AsyncRedisStore, RedisStore
from .sql_store import AsyncSqlStore, SqlStore

__all__ = ["AsyncConsumer", "Store", "SyncConsumer", "idempotent_consumer"]

Store: TypeAlias = AsyncRedisStore | RedisStore | AsyncSqlStore | SqlStore
"""Any deduplication store :func:`idempotent_consumer` accepts."""

AsyncConsumer: TypeAlias = Callable[[ReceivedEvent | RecordLike], Awaitable[bool]]
"""A decorated async handler: ``await handler(event_or_record)`` → whether it ran."""

SyncConsumer: TypeAlias = Callable[[ReceivedEvent | RecordLike], bool]
"""A decorated sync handler: ``handler(event_or_record)`` → whether it ran."""


@overload
def idempotent_consumer(
    *, store: AsyncRedisStore, consumer_name: str | None = None
) -> Callable[[Callable[[ReceivedEvent], Awaitable[object]]], AsyncConsumer]: ...
@overload
def idempotent_consumer(
    *, store: RedisStore, consumer_name: str | None = None
) -> Callable[[Callable[[ReceivedEvent], object]], SyncConsumer]: ...
@overload
def idempotent_consumer(
    *, store: AsyncSqlStore, consumer_name: str | None = None
) -> Callable[[Callable[[ReceivedEvent, AsyncSession], Awaitable[object]]], AsyncConsumer]: ...
@overload
def idempotent_consumer(
    *, store: SqlStore, consumer_name: str | None = None
) -> Callable[[Callable[[ReceivedEvent, Session], object]], SyncConsumer]: ...
def idempotent_consumer(
    *, store: Store, consumer_name: str | None = None
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Make a handler run at most once per event id, deduplicated in ``store``.

    The decorated function takes an aiokafka ``ConsumerRecord`` (anything
    :class:`RecordLike`) or a :class:`ReceivedEvent`; a record is decoded first,
    so one without a valid ``id`` header raises
    :class:`~transactional_outbox.InvalidRecordError` and the handler does not
    run. The handler itself always receives a :class:`ReceivedEvent`, plus the
    session with a SQL store::

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

    Stores: :class:`AsyncRedisStore` / :class:`AsyncSqlStore` need an ``async
    def`` handler; :class:`RedisStore` / :class:`SqlStore` a plain one.
    """
    wants_async = isinstance(store, AsyncRedisStore | AsyncSqlStore)

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        if _is_async(fn) != wants_async:
            kind = "an `async def`" if wants_async else "a plain (sync)"
            raise ConfigurationError(
                "store", f"{type(store).__name__} needs {kind} handler, {fn!r} is not one"
            )
        if isinstance(store, AsyncRedisStore):
            return _async_redis(store, consumer_name, fn)
        if isinstance(store, RedisStore):
            return _sync_redis(store, consumer_name, fn)
        if isinstance(store, AsyncSqlStore):
            return _async_sql(store, consumer_name, fn)
        if isinstance(store, SqlStore):
            return _sync_sql(store, consumer_name, fn)
        raise ConfigurationError("store", f"unsupported store {store!r}")

    return decorate


def _is_async(fn: object) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - async callable objects
    )


def _event(item: ReceivedEvent | RecordLike) -> ReceivedEvent:
    return item if isinstance(item, ReceivedEvent) else ReceivedEvent.from_record(item)


def _async_redis(
    store: AsyncRedisStore, name: str | None, fn: Callable[[ReceivedEvent], Awaitable[object]]
) -> AsyncConsumer:
    @functools.wraps(fn)
    async def wrapper(item: ReceivedEvent | RecordLike) -> bool:
        event = _event(item)
        key = store._key(event.id, name)
        claim = await store._claim(key)
        if claim is None:
            return False
        try:
            await fn(event)
        except BaseException:
            # Also on cancellation: free the claim now rather than after its TTL.
            await store._release(key, claim)
            raise
        await store._complete(key, claim)
        return True

    return wrapper


def _sync_redis(
    store: RedisStore, name: str | None, fn: Callable[[ReceivedEvent], object]
) -> SyncConsumer:
    @functools.wraps(fn)
    def wrapper(item: ReceivedEvent | RecordLike) -> bool:
        event = _event(item)
        key = store._key(event.id, name)
        claim = store._claim(key)
        if claim is None:
            return False
        try:
            fn(event)
        except BaseException:
            store._release(key, claim)
            raise
        store._complete(key, claim)
        return True

    return wrapper


def _async_sql(
    store: AsyncSqlStore,
    name: str | None,
    fn: Callable[[ReceivedEvent, AsyncSession], Awaitable[object]],
) -> AsyncConsumer:
    @functools.wraps(fn)
    async def wrapper(item: ReceivedEvent | RecordLike) -> bool:
        event = _event(item)
        return await store._run(event.id, name, functools.partial(fn, event))

    return wrapper


def _sync_sql(
    store: SqlStore, name: str | None, fn: Callable[[ReceivedEvent, Session], object]
) -> SyncConsumer:
    @functools.wraps(fn)
    def wrapper(item: ReceivedEvent | RecordLike) -> bool:
        event = _event(item)
        return store._run(event.id, name, functools.partial(fn, event))

    return wrapper
