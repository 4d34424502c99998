"""ReceivedEvent decoding, dead-letter headers and runner settings: no servers needed."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from transactional_outbox.consumer import (
    ConsumerError,
    InvalidRecordError,
    ReceivedEvent,
    dead_letter_headers,
)
from transactional_outbox.event import OutboxEvent, kafka_headers

from ._consumer_helpers import make_record, order_event


def test_decodes_the_relays_record() -> None:
    stamp = datetime(2024, 5, 1, 12, 30, 45, 123456, tzinfo=UTC)
    event = OutboxEvent.create(
        aggregate_type="order",
        aggregate_id="o-42",
        event_type="OrderPlaced",
        payload={"total": 12},
        headers={"traceparent": "00-abc-def-01"},
        timestamp=stamp,
    )
    received = ReceivedEvent.from_record(make_record(event, partition=3, offset=17))
    assert received.id == event.id
    assert (received.event_type, received.aggregate_type, received.aggregate_id) == (
        "OrderPlaced",
        "order",
        "o-42",
    )
    assert received.timestamp == stamp and received.timestamp.tzinfo is not None
    assert received.headers == {"traceparent": "00-abc-def-01", "content-type": "application/json"}
    assert received.payload == b'{"total":12}'
    assert received.json() == {"total": 12}
    assert (received.topic, received.partition, received.offset) == ("outbox.event.order", 3, 17)
    assert received == ReceivedEvent.from_event(
        event, topic="outbox.event.order", partition=3, offset=17
    )


def test_repr_hides_the_payload() -> None:
    received = ReceivedEvent.from_record(make_record(order_event(payload="secret-card-number")))
    assert "secret" not in repr(received)
    assert "bytes" in repr(received)


def test_id_ending_in_zero_bytes_round_trips() -> None:
    event_id = uuid.UUID(bytes=b"\x01" * 14 + b"\x00\x00")
    event = order_event(id=event_id)
    assert ReceivedEvent.from_record(make_record(event)).id == event_id


def test_raw_16_byte_id_is_accepted() -> None:
    event = order_event()
    headers = [(k, event.id.bytes if k == "id" else v) for k, v in kafka_headers(event)]
    assert ReceivedEvent.from_record(make_record(event, headers=headers)).id == event.id


def test_missing_id_header_is_rejected() -> None:
    event = order_event()
    headers = [(k, v) for k, v in kafka_headers(event) if k != "id"]
    with pytest.raises(InvalidRecordError, match=r"no 'id' header") as info:
        ReceivedEvent.from_record(make_record(event, headers=headers, offset=5))
    assert "outbox.event.order/0@5" in str(info.value)
    assert isinstance(info.value, ConsumerError)


@pytest.mark.parametrize("bad", [b"", b"not-a-uuid", b"\xff\xfe" * 20, b"12345"])
def test_invalid_id_header_is_rejected(bad: bytes) -> None:
    event = order_event()
    headers = [(k, bad if k == "id" else v) for k, v in kafka_headers(event)]
    with pytest.raises(InvalidRecordError, match=r"invalid 'id' header"):
        ReceivedEvent.from_record(make_record(event, headers=headers))


def test_conflicting_id_headers_are_rejected() -> None:
    event = order_event()
    headers = [*kafka_headers(event), ("id", str(uuid.uuid4()).encode())]
    with pytest.raises(InvalidRecordError, match="conflicting 'id'"):
        ReceivedEvent.from_record(make_record(event, headers=headers))


def test_invalid_timestamp_header_is_rejected() -> None:
    event = order_event()
    headers = [(k, b"yesterday" if k == "timestamp" else v) for k, v in kafka_headers(event)]
    with pytest.raises(InvalidRecordError, match="timestamp"):
        ReceivedEvent.from_record(make_record(event, headers=headers))


def test_id_only_record_falls_back_to_key_and_record_timestamp() -> None:
    # What Debezium's EventRouter emits by default: just the id header.
    event_id = uuid.uuid4()
    record = make_record(
        headers=[("id", str(event_id).encode())], key=b"o-9", value=None, timestamp_ms=1_500
    )
    received = ReceivedEvent.from_record(record)
    assert received.id == event_id
    assert received.aggregate_id == "o-9"
    assert received.timestamp == datetime(1970, 1, 1, 0, 0, 1, 500000, tzinfo=UTC)
    assert (received.event_type, received.aggregate_type, received.payload) == ("", "", b"")
    assert received.headers == {}


def test_non_utf8_user_header_does_not_reject_the_event() -> None:
    event = order_event()
    record = make_record(event, headers=[*kafka_headers(event), ("bin", b"\xff")])
    assert ReceivedEvent.from_record(record).headers["bin"] == "\ufffd"


def test_dead_letter_headers_keep_the_original_and_replace_old_failures() -> None:
    event = order_event()
    original = [*kafka_headers(event), ("dlq.error", b"an older failure")]
    record = make_record(event, headers=original, topic="t", partition=2, offset=9)
    headers = dead_letter_headers(record, ValueError("boom"), attempts=3, group_id="g")
    assert headers[: len(original) - 1] == kafka_headers(event)
    dlq = {k: v for k, v in headers if k.startswith("dlq.")}
    assert dlq == {
        "dlq.error": b"boom",
        "dlq.error.type": b"builtins.ValueError",
        "dlq.attempts": b"3",
        "dlq.topic": b"t",
        "dlq.partition": b"2",
        "dlq.offset": b"9",
        "dlq.group": b"g",
    }


def test_null_header_values_count_as_absent() -> None:
    event = order_event()
    headers: list[tuple[str, bytes | None]] = [*kafka_headers(event), ("x", None)]
    record = make_record(event, headers=headers)  # type: ignore[arg-type]
    assert "x" not in ReceivedEvent.from_record(record).headers
    missing = make_record(event, headers=[("id", None)])  # type: ignore[list-item]
    with pytest.raises(InvalidRecordError, match="no 'id' header"):
        ReceivedEvent.from_record(missing)
