"""Tests of the FastStream example with FastStream's in-memory broker (no Kafka, no Redis).
Run: ``pytest examples/faststream``."""

from __future__ import annotations

import order_counts
from faststream.kafka import TestKafkaBroker

from transactional_outbox import OutboxEvent
from transactional_outbox.consumer import AsyncInMemoryStore
from transactional_outbox.testing import to_record


def relayed(event: OutboxEvent) -> dict[str, object]:
    """What the relay publishes for ``event`` (DESIGN §2), as FastStream publish() takes it."""
    record = to_record(event, topic_template=order_counts.TOPIC)
    return {
        "message": record.value,
        "topic": record.topic,
        "key": record.key,
        "headers": {name: value.decode() for name, value in record.headers},
    }


async def test_each_order_event_counts_once_however_often_it_is_delivered() -> None:
    order_counts.counts.clear()
    broker = order_counts.create_broker(AsyncInMemoryStore())
    events = [
        OutboxEvent.create(
            aggregate_type="order",
            aggregate_id=n,
            event_type="OrderPlaced",
            payload={"order_id": n, "customer_id": "c-1" if n < 3 else "c-2"},
        )
        for n in range(5)
    ]
    async with TestKafkaBroker(broker) as test_broker:
        for _ in range(3):  # every event delivered three times (the relay's redeliveries)
            for event in events:
                await test_broker.publish(**relayed(event))
    assert order_counts.counts == {"c-1": 3, "c-2": 2}
