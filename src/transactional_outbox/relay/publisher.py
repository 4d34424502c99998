"""Kafka publisher: a thin adapter over aiokafka's producer.

Records are handed to the producer with ``send()`` (which batches and keeps
per-partition order) and acknowledged through callbacks, never one
``send_and_wait`` per event.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    InvalidTopicError,
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    TopicAuthorizationFailedError,
    UnsupportedForMessageFormatError,
)

from ..exceptions import PublishError
from .routing import KafkaRecord, invalid_topic_reason

__all__ = ["KafkaPublisher", "is_permanent"]

_PERMANENT = (
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    InvalidTopicError,
    TopicAuthorizationFailedError,
    UnsupportedForMessageFormatError,
)


def is_permanent(exc: BaseException) -> bool:
    """True for errors that retrying the same record cannot fix."""
    return isinstance(exc, (*_PERMANENT, PublishError))


class KafkaPublisher:
    """Sends records; calls ``on_done(error_or_None)`` once per record when Kafka answers."""

    def __init__(self, producer_args: dict[str, Any]) -> None:
        self._args = producer_args
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        """Connect to the cluster."""
        self._producer = AIOKafkaProducer(**self._args)
        try:
            await self._producer.start()
        except BaseException:
            await self._producer.stop()
            self._producer = None
            raise

    async def send(
        self,
        record: KafkaRecord,
        event_id: str,
        on_done: Callable[[BaseException | None], None],
    ) -> None:
        """Queue ``record``; may wait while the producer's buffer is full.

        Raises :class:`PublishError` at once for a record Kafka would refuse
        whatever happens (bad topic name, too large).
        """
        assert self._producer is not None, "start() first"
        reason = invalid_topic_reason(record.topic)
        if reason:
            raise PublishError(event_id, reason)
        try:
            fut = await self._producer.send(
                record.topic,
                value=record.value,
                key=record.key,
                headers=record.headers,
                timestamp_ms=record.timestamp_ms,
            )
        except _PERMANENT as exc:
            raise PublishError(event_id, f"{type(exc).__name__}: {exc}") from exc

        def done(f: Any) -> None:
            if f.cancelled():
                on_done(KafkaError("send cancelled"))
            else:
                on_done(f.exception())

        fut.add_done_callback(done)

    async def flush(self) -> None:
        """Wait until every queued record is answered."""
        if self._producer is not None:
            await self._producer.flush()

    async def stop(self) -> None:
        """Flush and disconnect."""
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()
