"""FastStream integration: outbox events, each handled once, in a FastStream Kafka subscriber.

::

    from faststream import AckPolicy, FastStream
    from faststream.kafka import KafkaBroker
    from transactional_outbox.consumer import AsyncRedisStore, ReceivedEvent
    from transactional_outbox.faststream import exactly_once

    broker = KafkaBroker("localhost:9092")

    @broker.subscriber(
        "outbox.event.order", group_id="billing", ack_policy=AckPolicy.NACK_ON_ERROR
    )
    @exactly_once(store=AsyncRedisStore(redis), consumer_name="billing")
    async def on_order(event: ReceivedEvent) -> None: ...

- The handler receives our :class:`~transactional_outbox.consumer.ReceivedEvent`
  (decoded from the Kafka record FastStream read: id, type, aggregate, payload bytes,
  user headers, topic/partition/offset), plus the session with an inbox (SQL) store,
  exactly as with :func:`~transactional_outbox.consumer.idempotent_consumer`, whose
  stores it takes: any dedup or inbox store, sync (run in a thread) or async.
- A duplicate (the id is done in the store) returns without calling the handler, so
  FastStream acks it. A handler that raises is not marked done (its claim is
  released) and the exception goes on to FastStream, whose ``ack_policy`` decides:
  ``NACK_ON_ERROR`` seeks back and the record is delivered again (retried),
  ``REJECT_ON_ERROR`` commits past it. A record without a valid ``id`` header raises
  :class:`~transactional_outbox.InvalidRecordError` the same way, without a call.
- A store that cannot be reached (:class:`~transactional_outbox.StoreUnavailableError`:
  a lost connection, a Redis failover, the SQL inbox's database gone) is waited for
  here, with backoff from 0.1 s to 5 s, however long: whatever the ``ack_policy``, the
  record is neither committed past unhandled nor redelivered in a tight loop while the
  outage lasts. Stopping the app ends the wait; the record is not acked.
- :data:`OutboxEventDep` gives a handler of your own the decoded event
  (``async def h(event: OutboxEventDep)``), to call an ``@idempotent_consumer`` yourself.

One record per call: a batch subscriber (``batch=True``) is refused (use
:class:`~transactional_outbox.consumer.ConsumerRunner` for batches). With
OpenTelemetry, each event runs in our CONSUMER span (``outbox.outcome``,
``outbox.attempt``), a child of FastStream's own span when its telemetry middleware
continued the same trace. Needs the ``faststream`` extra (``faststream[kafka]``).
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from faststream import Depends
from faststream.kafka.annotations import KafkaMessage

from .consumer.decorator import AsyncIdempotentHandler, Store, idempotent_consumer
from .consumer.received import ReceivedEvent
from .exceptions import ConfigurationError, StoreUnavailableError

__all__ = ["OutboxEventDep", "exactly_once", "received_event"]

logger = logging.getLogger("transactional_outbox.faststream")

_WAIT_FIRST, _WAIT_MAX = 0.1, 5.0  # seconds between tries while the store is unreachable


def received_event(message: KafkaMessage) -> ReceivedEvent:
    """The outbox event in the record FastStream is handling (a FastStream dependency)."""
    raw = message.raw_message
    if isinstance(raw, tuple | list):
        raise ConfigurationError(
            "batch", "a batch subscriber is not supported: subscribe with batch=False"
        )
    return ReceivedEvent.from_record(raw)


OutboxEventDep = Annotated[ReceivedEvent, Depends(received_event)]
"""A handler parameter's type that FastStream fills with the record's :class:`ReceivedEvent`."""


def exactly_once(
    *, store: Store, consumer_name: str | None = None
) -> Callable[[Callable[..., Any]], Callable[[ReceivedEvent], Awaitable[None]]]:
    """Make ``handler`` a FastStream subscriber function that handles each event id once.

    ``store`` and ``consumer_name`` are :func:`idempotent_consumer`'s (an async
    store needs an ``async def`` handler, a sync one a plain one). Put it *under*
    ``@broker.subscriber(...)``. The returned function's ``idempotent`` attribute
    is the :func:`idempotent_consumer` handler it calls.
    """
    decorate = idempotent_consumer(store=store, consumer_name=consumer_name)

    def wrap(handler: Callable[..., Any]) -> Callable[[ReceivedEvent], Awaitable[None]]:
        once = decorate(handler)
        if isinstance(once, AsyncIdempotentHandler):

            async def subscriber(event: OutboxEventDep) -> None:
                await _until_the_store_answers(lambda: once(event), event)

        else:

            async def subscriber(event: OutboxEventDep) -> None:
                # A sync store and handler would block the event loop, and FastStream's
                # consumer with it.
                await _until_the_store_answers(lambda: asyncio.to_thread(once, event), event)

        # Name and docs for FastStream's AsyncAPI schema; not __wrapped__, whose
        # signature FastStream would read instead of ours.
        for name in ("__module__", "__name__", "__qualname__", "__doc__"):
            setattr(subscriber, name, getattr(handler, name, getattr(subscriber, name)))
        subscriber.idempotent = once  # type: ignore[attr-defined]
        return subscriber

    return wrap


async def _until_the_store_answers(
    call: Callable[[], Awaitable[object]], event: ReceivedEvent
) -> None:
    # An outage is not the handler's failure: left to FastStream's ack_policy, it would
    # commit past the record (REJECT_ON_ERROR) or redeliver it at once, again and again.
    delay = _WAIT_FIRST
    while True:
        try:
            await call()
            return
        except StoreUnavailableError as exc:
            logger.warning(
                "store unavailable for event %s (%r); waiting %.2fs for it",
                event.id,
                exc.__cause__ or exc,
                delay,
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, _WAIT_MAX)
