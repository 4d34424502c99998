"""Topic routing and the Kafka record of an event (DESIGN §2; no servers)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest

from transactional_outbox.event import OutboxEvent
from transactional_outbox.exceptions import ConfigurationError
from transactional_outbox.relay.routing import (
    DEFAULT_TOPIC_TEMPLATE,
    KafkaRecord,
    TopicRouter,
    build_record,
    event_of,
    invalid_topic_reason,
    record_id,
)

# -- TopicRouter ---------------------------------------------------------------------


def test_default_template_is_debeziums() -> None:
    assert DEFAULT_TOPIC_TEMPLATE == "outbox.event.{aggregatetype}"
    router = TopicRouter()
    assert router.topic("order") == "outbox.event.order"
    assert router.topic("Customer") == "outbox.event.Customer"


def test_custom_template_and_alias() -> None:
    assert TopicRouter(template="app.{aggregatetype}.v1").topic("order") == "app.order.v1"
    assert TopicRouter(template="app.{aggregate_type}").topic("order") == "app.order"
    assert TopicRouter(template="all-events").topic("order") == "all-events"


def test_overrides_win_over_the_template() -> None:
    router = TopicRouter(
        template="t.{aggregatetype}", overrides={"order": "orders", "customer": "crm.customers"}
    )
    assert router.topic("order") == "orders"
    assert router.topic("customer") == "crm.customers"
    assert router.topic("invoice") == "t.invoice"
    # repeated lookups (cached) give the same answer
    assert router.topic("order") == "orders"
    assert router.topic("invoice") == "t.invoice"


def test_overrides_are_copied() -> None:
    overrides = {"order": "orders"}
    router = TopicRouter(overrides=overrides)
    overrides["order"] = "changed"
    assert router.topic("order") == "orders"


@pytest.mark.parametrize(
    "template",
    [
        "outbox.{aggregatetypo}",
        "outbox.{0}",
        "outbox.{}",
        "outbox.{aggregatetype",
        "outbox.}",
        "outbox.{aggregatetype!z}",
        "outbox.{aggregatetype:>>>}",
        "outbox.{aggregatetype.nope}",
        "outbox/{aggregatetype}",  # every topic it gives is illegal
        "outbox event {aggregatetype}",
        "",
    ],
)
def test_bad_template_names_topic_template(template: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        TopicRouter(template=template)
    assert info.value.setting == "topic_template"
    assert str(info.value).startswith("topic_template: ")
    assert repr(template) in str(info.value)


@pytest.mark.parametrize("topic", ["", "orders/eu", "orders eu", ".", "..", "ü", "x" * 250])
def test_illegal_override_topic_names_topic_overrides(topic: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        TopicRouter(overrides={"order": "orders", "customer": topic})
    assert info.value.setting == "topic_overrides"
    assert "'customer'" in str(info.value)


# -- invalid_topic_reason -------------------------------------------------------------


@pytest.mark.parametrize(
    "topic", ["orders", "outbox.event.order", "a", "A-Z_0.9", "...", ".a", "x" * 249]
)
def test_legal_topic_names(topic: str) -> None:
    assert invalid_topic_reason(topic) is None


@pytest.mark.parametrize(
    "topic",
    ["", "x" * 250, "orders/eu", "orders eu", "orders\n", "orders\t", "ordérs", "a:b", "a*", "#"],
)
def test_illegal_topic_names(topic: str) -> None:
    reason = invalid_topic_reason(topic)
    assert reason is not None
    assert repr(topic) in reason
    assert "1-249 characters" in reason


@pytest.mark.parametrize("topic", [".", ".."])
def test_dot_and_dotdot_are_illegal(topic: str) -> None:
    assert invalid_topic_reason(topic) == "topic name cannot be '.' or '..'"


# -- build_record ---------------------------------------------------------------------

EVENT_ID = uuid.UUID("0190a6b2-3c4d-7e5f-8a9b-0c1d2e3f4a5b")


def event(**changes: object) -> OutboxEvent:
    fields: dict[str, object] = {
        "id": EVENT_ID,
        "aggregate_type": "order",
        "aggregate_id": "Ωrder-42",
        "event_type": "OrderPlaced",
        "payload": b'{"total": 10}\x00\xff',
        "headers": {"content-type": "application/json", "trace": "abc", "a": ""},
        "timestamp": datetime(2024, 5, 1, 12, 30, 45, 123456, tzinfo=UTC),
    }
    fields.update(changes)
    return OutboxEvent(**fields)  # type: ignore[arg-type]


def test_build_record() -> None:
    record = build_record(event(), TopicRouter())
    assert isinstance(record, KafkaRecord)
    assert record.topic == "outbox.event.order"
    assert record.key == "Ωrder-42".encode()
    assert record.value == b'{"total": 10}\x00\xff'
    assert record.headers == [
        ("id", b"0190a6b2-3c4d-7e5f-8a9b-0c1d2e3f4a5b"),
        ("type", b"OrderPlaced"),
        ("aggregatetype", b"order"),
        ("aggregateid", "Ωrder-42".encode()),
        ("timestamp", b"2024-05-01T12:30:45.123456+00:00"),
        ("content-type", b"application/json"),
        ("trace", b"abc"),
        ("a", b""),
    ]
    assert record.timestamp_ms == 1714566645123


def test_build_record_user_headers_keep_their_order() -> None:
    headers = {"z": "1", "a": "2", "m": "3"}
    record = build_record(event(headers=headers), TopicRouter())
    assert [k for k, _ in record.headers[5:]] == ["z", "a", "m"]


def test_build_record_payload_is_the_same_bytes() -> None:
    payload = bytes(range(256))
    record = build_record(event(payload=payload), TopicRouter())
    assert record.value == payload


def test_build_record_uses_the_router() -> None:
    router = TopicRouter(overrides={"order": "orders"})
    assert build_record(event(), router).topic == "orders"
    assert build_record(event(aggregate_type="invoice"), router).topic == "outbox.event.invoice"


def test_build_record_canonical_uuid_text_for_any_id() -> None:
    for raw in (b"\x00" * 16, b"\xff" * 16, b"\xab" + b"\x00" * 15):
        record = build_record(event(id=uuid.UUID(bytes=raw)), TopicRouter())
        assert record.headers[0] == ("id", str(uuid.UUID(bytes=raw)).encode())
    assert build_record(event(id=uuid.UUID(int=0)), TopicRouter()).headers[0] == (
        "id",
        b"00000000-0000-0000-0000-000000000000",
    )


@pytest.mark.parametrize(
    ("ts", "ms", "header"),
    [
        # 999999 µs: must floor to 999 ms, never round up to the next second
        (
            datetime(2024, 5, 1, 12, 30, 45, 999999, tzinfo=UTC),
            1714566645999,
            "2024-05-01T12:30:45.999999+00:00",
        ),
        (
            datetime(2024, 5, 1, 12, 30, 45, tzinfo=UTC),
            1714566645000,
            "2024-05-01T12:30:45.000000+00:00",
        ),
        (datetime(1970, 1, 1, tzinfo=UTC), 0, "1970-01-01T00:00:00.000000+00:00"),
        (
            datetime(1970, 1, 1, 0, 0, 0, 999, tzinfo=UTC),
            0,
            "1970-01-01T00:00:00.000999+00:00",
        ),
        (
            datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
            253402300799999,
            "9999-12-31T23:59:59.999999+00:00",
        ),
        # another offset: the header is rendered in UTC
        (
            datetime(2024, 5, 1, 14, 30, 45, 500000, tzinfo=timezone(timedelta(hours=2))),
            1714566645500,
            "2024-05-01T12:30:45.500000+00:00",
        ),
    ],
)
def test_build_record_timestamp_is_exact(ts: datetime, ms: int, header: str) -> None:
    record = build_record(event(timestamp=ts), TopicRouter())
    assert record.timestamp_ms == ms
    assert isinstance(record.timestamp_ms, int)
    assert dict(record.headers)["timestamp"] == header.encode()


def test_build_record_timestamp_matches_integer_arithmetic() -> None:
    base = datetime(2001, 2, 3, 4, 5, 6, tzinfo=UTC)
    for us in (0, 1, 499, 500, 999, 1000, 123456, 999499, 999500, 999999):
        ts = base.replace(microsecond=us)
        record = build_record(event(timestamp=ts), TopicRouter())
        assert record.timestamp_ms == 981173106000 + us // 1000


def test_router_headers_equal_kafka_headers_for_repeated_and_distinct_header_sets() -> None:
    from transactional_outbox.event import kafka_headers

    router = TopicRouter()
    shared = {"content-type": "application/json", "tenant": "t-1"}
    events = [
        event(headers=shared),
        event(headers=shared),
        event(headers={"content-type": "application/json", "tenant": "t-2"}),
        event(headers={}),
        event(headers=shared),
    ]
    for _ in range(2):  # again: whatever the router keeps between calls changes nothing
        for ev in events:
            assert router.headers(ev) == kafka_headers(ev)


@pytest.mark.parametrize(
    "event",
    [
        OutboxEvent(
            id=uuid.UUID(int=0),
            aggregate_type="order",
            aggregate_id="o-1",
            event_type="Placed",
            payload=b"",
            timestamp=datetime(2026, 11, 27, tzinfo=UTC),
        ),
        OutboxEvent(
            id=uuid.uuid4(),
            aggregate_type="Kundenbestellung",
            aggregate_id="ä" * 255,
            event_type="Geändert",
            payload=bytes(range(256)),
            headers={"z": "1", "content-type": "application/json", "a": "ü"},
            timestamp=datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        ),
    ],
)
def test_event_of_inverts_build_record(event: OutboxEvent) -> None:
    record = build_record(event, TopicRouter())
    back = event_of(record)
    assert back == event
    assert list(back.headers) == list(event.headers)  # order kept
    assert record_id(record) == str(event.id)
