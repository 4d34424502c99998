"""Helpers shared by the consumer tests: records without a broker, publishing as the relay."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.structs import ConsumerRecord, RecordMetadata

from transactional_outbox.event import OutboxEvent, kafka_headers


def make_record(
    event: OutboxEvent | None = None,
    *,
    headers: Sequence[tuple[str, bytes]] | None = None,
    topic: str = "outbox.event.order",
    partition: int = 0,
    offset: int = 0,
    key: bytes | None = None,
    value: bytes | None = None,
    timestamp_ms: int = 1_700_000_000_000,
) -> ConsumerRecord[bytes, bytes]:
    """A ConsumerRecord as aiokafka would deliver the relay's record of ``event``."""
    if headers is None:
        assert event is not None
        headers = kafka_headers(event)
    if event is not None:
        key = event.aggregate_id.encode() if key is None else key
        value = event.payload if value is None else value
    return ConsumerRecord(
        topic=topic,
        partition=partition,
        offset=offset,
        timestamp=timestamp_ms,
        timestamp_type=0,
        key=key,
        value=value,
        checksum=None,
        serialized_key_size=len(key or b""),
        serialized_value_size=len(value or b""),
        headers=list(headers),
    )


def order_event(n: int = 1, **kwargs: Any) -> OutboxEvent:
    """A small valid event of aggregate ``order``."""
    return OutboxEvent.create(
        aggregate_type="order",
        aggregate_id=kwargs.pop("aggregate_id", f"o-{n}"),
        event_type=kwargs.pop("event_type", "OrderPlaced"),
        payload=kwargs.pop("payload", {"n": n}),
        **kwargs,
    )


async def publish(
    bootstrap: str, topic: str, events: Sequence[OutboxEvent], *, partition: int | None = 0
) -> list[int]:
    """Publish ``events`` as the relay would (DESIGN §2); return their offsets."""
    return [m.offset for m in await publish_sent(bootstrap, topic, events, partition=partition)]


async def publish_sent(
    bootstrap: str, topic: str, events: Sequence[OutboxEvent], *, partition: int | None = 0
) -> list[RecordMetadata]:
    """Publish ``events`` as the relay would (DESIGN §2); the broker's answer for each."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        futures = [
            await producer.send(
                topic,
                value=e.payload,
                key=e.aggregate_id.encode(),
                headers=kafka_headers(e),
                partition=partition,
                timestamp_ms=int(e.timestamp.timestamp() * 1000),
            )
            for e in events
        ]
        return [await f for f in futures]
    finally:
        await producer.stop()


async def publish_raw(
    bootstrap: str,
    topic: str,
    value: bytes,
    *,
    key: bytes | None = None,
    headers: Sequence[tuple[str, bytes]] = (),
    partition: int = 0,
) -> int:
    """Publish one arbitrary record; return its offset."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        meta = await producer.send_and_wait(
            topic, value=value, key=key, headers=list(headers), partition=partition
        )
        return int(meta.offset)
    finally:
        await producer.stop()
