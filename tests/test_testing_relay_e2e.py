"""transactional_outbox.testing against the real path: MariaDB, the relay and the broker.

What a test captures must be what the relay publishes, byte for byte: the same
events (none rolled back, none from a rolled-back SAVEPOINT), and for each the
same topic, key, value, headers and timestamp.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.orm import sessionmaker

from transactional_outbox import AsyncOutboxSession, OutboxEvent, OutboxSession
from transactional_outbox.consumer import ReceivedEvent
from transactional_outbox.testing import capture_events, to_received, to_record

from .relay_harness import Collector, relay_settings, running_relay, wait_until


def add(session: Any, aggregate_type: str, aggregate_id: Any, event_type: str, **kw: Any) -> None:
    session.add_event(
        aggregate_type=aggregate_type,
        aggregate_id=aggregate_id,
        event_type=event_type,
        payload=kw.pop("payload", {"event": event_type, "text": "zß€😀"}),
        **kw,
    )


async def test_captured_events_equal_the_published_records_byte_for_byte(
    conn: Any,
    engine: sa.Engine,
    async_engine: AsyncEngine,
    settings_kw: dict[str, Any],
    topic_prefix: str,
) -> None:
    template = topic_prefix + "{aggregatetype}"
    factory = sessionmaker(engine, class_=OutboxSession)
    async_factory = async_sessionmaker(async_engine, class_=AsyncOutboxSession)
    with capture_events() as captured:
        with factory() as s:
            add(s, "order", 1, "Placed", headers={"tenant": "acme", "x-empty": ""})
            add(
                s,
                "customer",
                "c-1",
                "Signed",
                payload=b"\x00\xff not utf-8 \x80",
                id=uuid.UUID(bytes=uuid.uuid4().bytes[:12] + b"\x00" * 4),
            )
            savepoint = s.begin_nested()
            add(s, "order", 1, "DroppedWithSavepoint")
            s.flush()
            savepoint.rollback()
            with s.begin_nested():
                add(s, "order", 1, "Released")
            add(
                s,
                "order",
                2,
                "Zoned",
                timestamp=datetime(
                    2026, 5, 1, 8, 0, 0, 654321, tzinfo=timezone(timedelta(hours=5))
                ),
            )
            s.commit()
        with factory() as s:
            add(s, "order", 1, "RolledBack")
            s.flush()
            s.rollback()
        async with async_factory.begin() as s:
            add(s, "order", 1, "PaidAsync", payload="plain text")
            add(s, "order", 2, "ShippedAsync")
    assert captured.types() == [
        "Placed",
        "Signed",
        "Released",
        "Zoned",
        "PaidAsync",
        "ShippedAsync",
    ]

    expected = {e.id: to_record(e, topic_template=template) for e in captured}
    async with Collector(settings_kw["kafka_bootstrap"]) as col:
        await col.watch(sorted({r.topic for r in expected.values()}))
        async with running_relay(relay_settings(**settings_kw)) as relay:
            await col.wait_for(len(expected))
        # The relay stopped after flushing: everything it sent is in the broker.
        await wait_until(
            lambda: len(col.records) >= relay.stats.published, what="all published records"
        )
    assert relay.stats.published == len(expected)

    published = {uuid.UUID(dict(r.headers)["id"].decode()): r for r in col.records}
    assert published.keys() == expected.keys()
    for event_id, real in published.items():
        mine = expected[event_id]
        assert (real.topic, real.key, real.value, list(real.headers), real.timestamp) == (
            mine.topic,
            mine.key,
            mine.value,
            list(mine.headers),
            mine.timestamp,
        )
        # And the consumer's view of each is the same.
        event = _by_id(captured, event_id)
        assert ReceivedEvent.from_record(real) == to_received(
            event, partition=real.partition, offset=real.offset, topic_template=template
        )
    # Per key, the relay kept the captured (commit) order.
    for key in {r.key for r in col.records}:
        order = [dict(r.headers)["id"].decode() for r in col.records if r.key == key]
        assert order == [str(e.id) for e in captured if e.aggregate_id.encode() == key]


def _by_id(events: Any, event_id: uuid.UUID) -> OutboxEvent:
    [event] = [e for e in events if e.id == event_id]
    return event
