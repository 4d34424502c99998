"""transactional_outbox.testing: the round trip to the consumer (no servers)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from transactional_outbox import OutboxEvent, OutboxSession, outbox_table
from transactional_outbox.consumer import ReceivedEvent, SqlStore, idempotent_consumer, inbox_table
from transactional_outbox.event import kafka_headers
from transactional_outbox.exceptions import ConfigurationError
from transactional_outbox.testing import EventList, capture_events, to_received, to_record

EVENT = OutboxEvent.create(
    id=uuid.UUID(bytes=b"\xab" * 15 + b"\x00"),
    aggregate_type="order",
    aggregate_id=42,
    event_type="OrderPlaced",
    payload={"total": "42.50", "note": "é"},
    headers={
        "tenant": "acme",
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    },
    timestamp=datetime(2026, 3, 1, 12, 30, 45, 123456, tzinfo=timezone(timedelta(hours=2))),
)


def test_to_record_is_the_relay_record_contract() -> None:
    rec = to_record(EVENT, partition=3, offset=17)
    assert (rec.topic, rec.partition, rec.offset) == ("outbox.event.order", 3, 17)
    assert rec.key == b"42"
    assert rec.value == '{"total":"42.50","note":"é"}'.encode()
    assert list(rec.headers) == kafka_headers(EVENT)
    assert rec.headers[:5] == (
        ("id", str(EVENT.id).encode()),
        ("type", b"OrderPlaced"),
        ("aggregatetype", b"order"),
        ("aggregateid", b"42"),
        ("timestamp", b"2026-03-01T10:30:45.123456+00:00"),
    )
    assert rec.timestamp == int(EVENT.timestamp.timestamp() * 1000)
    assert rec.timestamp_type == 0
    assert "42.50" not in repr(rec)  # values stay out of reprs


def test_topic_template_and_overrides_are_the_relays_settings() -> None:
    assert to_record(EVENT, topic_template="app.{aggregatetype}.v1").topic == "app.order.v1"
    assert to_record(EVENT, topic_overrides={"order": "orders"}).topic == "orders"
    with pytest.raises(ConfigurationError, match="topic_template"):
        to_record(EVENT, topic_template="bad topic {aggregatetype}")


def test_outbox_table_feeds_schema_placeholders_and_table_overrides() -> None:
    # One relay for many outbox tables routes by the table an event was written to.
    template = "outbox.{schema}.{table}.{aggregatetype}"
    rec = to_record(EVENT, topic_template=template, outbox_table="shop.outbox")
    assert rec.topic == "outbox.shop.outbox.order"
    overrides = {"shop.outbox:order": "shop-orders", "order": "orders"}
    assert to_record(EVENT, topic_overrides=overrides, outbox_table="shop.outbox").topic == (
        "shop-orders"
    )
    assert to_record(EVENT, topic_overrides=overrides, outbox_table="crm.outbox").topic == (
        "orders"
    )
    received = to_received(EVENT, topic_template=template, outbox_table="crm.outbox")
    assert received.topic == "outbox.crm.outbox.order"


def test_to_received_decodes_what_the_consumer_would_get() -> None:
    received = to_received(EVENT, partition=1, offset=5)
    assert received == ReceivedEvent.from_event(
        EVENT, topic="outbox.event.order", partition=1, offset=5
    )
    assert received.headers == {
        "tenant": "acme",
        "traceparent": EVENT.headers["traceparent"],
        "content-type": "application/json",
    }
    assert received.timestamp == datetime(2026, 3, 1, 10, 30, 45, 123456, tzinfo=UTC)
    assert received.json() == {"total": "42.50", "note": "é"}


def test_event_list_records_count_offsets_per_topic() -> None:
    other = OutboxEvent.create(
        aggregate_type="customer", aggregate_id="c", event_type="Signed", payload=b"x"
    )
    events = EventList([EVENT, other, EVENT])
    assert [(r.topic, r.offset) for r in events.records()] == [
        ("outbox.event.order", 0),
        ("outbox.event.customer", 0),
        ("outbox.event.order", 1),
    ]
    assert [(r.event_type, r.offset) for r in events.received()] == [
        ("OrderPlaced", 0),
        ("Signed", 0),
        ("OrderPlaced", 1),
    ]


def test_events_written_by_real_code_drive_an_idempotent_handler() -> None:
    engine = sa.create_engine("sqlite://", poolclass=sa.StaticPool)
    metadata = sa.MetaData()
    outbox_table(metadata)
    inbox_table(metadata)
    totals = sa.Table("totals", metadata, sa.Column("order_id", sa.String(20), primary_key=True))
    metadata.create_all(engine)
    app_sessions = sessionmaker(engine, class_=OutboxSession)
    with capture_events() as captured, app_sessions.begin() as session:
        session.add_event(aggregate_type="order", aggregate_id=1, event_type="Placed", payload={})
    calls: list[str] = []

    @idempotent_consumer(store=SqlStore(sessionmaker(engine)), consumer_name="totals")
    def on_order(event: ReceivedEvent, session: Session) -> None:
        calls.append(event.aggregate_id)
        if len(calls) == 1:
            session.execute(totals.insert().values(order_id=event.aggregate_id))
            raise RuntimeError("fails once")
        session.execute(totals.insert().values(order_id=event.aggregate_id))

    [record] = captured.records()
    with pytest.raises(RuntimeError, match="fails once"):
        on_order(record)  # a record-like goes through ReceivedEvent.from_record
    assert on_order(record) is True  # the retry runs: the failure left nothing behind
    assert on_order(record) is False  # a duplicate delivery is skipped
    assert calls == ["1", "1"]
    with engine.connect() as conn:
        assert conn.scalars(sa.select(totals.c.order_id)).all() == ["1"]
    engine.dispose()


def test_in_memory_stores_dedup_handlers_fed_by_captured_events() -> None:
    from transactional_outbox.testing import AsyncInMemoryStore, InMemoryStore

    engine = sa.create_engine("sqlite://", poolclass=sa.StaticPool)
    outbox_table(metadata := sa.MetaData())
    metadata.create_all(engine)
    with capture_events() as captured, sessionmaker(engine, class_=OutboxSession).begin() as s:
        s.add_event(aggregate_type="order", aggregate_id=7, event_type="Placed", payload={})
    [record] = captured.records()
    calls: list[str] = []

    @idempotent_consumer(store=InMemoryStore(), consumer_name="sync")
    def on_order(event: ReceivedEvent) -> None:
        calls.append(event.event_type)
        if len(calls) == 1:
            raise RuntimeError("fails once")

    with pytest.raises(RuntimeError, match="fails once"):
        on_order(record)
    assert on_order(record) is True  # the failure released the claim: the retry runs
    assert on_order(record) is False  # a duplicate delivery is skipped
    assert calls == ["Placed", "Placed"]

    store = AsyncInMemoryStore()
    async_calls: list[str] = []

    @idempotent_consumer(store=store, consumer_name="async")
    async def on_order_async(event: ReceivedEvent) -> None:
        async_calls.append(event.id.hex)

    async def deliver_twice() -> list[bool]:
        return [await on_order_async(record), await on_order_async(record)]

    assert asyncio.run(deliver_twice()) == [True, False]
    assert async_calls == [captured[0].id.hex]
    engine.dispose()


def test_importing_the_helpers_needs_no_relay_or_consumer_extras() -> None:
    code = (
        "import sys, transactional_outbox.testing, transactional_outbox.testing.pytest_plugin\n"
        "from transactional_outbox.testing import to_record, EventList\n"
        "from transactional_outbox import OutboxEvent\n"
        "e = OutboxEvent.create(aggregate_type='a', aggregate_id=1, event_type='t', payload={})\n"
        "to_record(e); EventList([e]).records()\n"
        "loaded = sorted(m for m in ('aiokafka', 'redis', 'pymysql', 'pymysqlreplication')"
        " if m in sys.modules)\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
