"""OutboxEvent: validation, serialisation and the shared encodings (no servers)."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from transactional_outbox import InvalidEventError, JsonSerializer, OutboxEvent, SerializationError
from transactional_outbox.event import (
    decode_headers,
    encode_headers,
    format_timestamp,
    kafka_headers,
    parse_timestamp,
    uuid7,
)

GOOD: dict[str, Any] = {
    "aggregate_type": "order",
    "aggregate_id": "42",
    "event_type": "OrderPlaced",
    "payload": {"total": 10},
}


def make(**changes: Any) -> OutboxEvent:
    return OutboxEvent.create(**{**GOOD, **changes})


@pytest.mark.parametrize("field", ["aggregate_type", "aggregate_id", "event_type"])
@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("", "must not be empty"),
        ("x" * 256, "at most 255"),
        (None, "must be a str"),
        ("bad\ud800", "UTF-8"),
    ],
)
def test_bad_name_fields_name_field_and_value(field: str, value: Any, reason: str) -> None:
    with pytest.raises(InvalidEventError) as info:
        make(**{field: value})
    assert info.value.field == field
    assert info.value.value == value
    assert f"invalid {field}=" in str(info.value)
    assert repr(value)[:20] in str(info.value)
    assert reason in str(info.value)


def test_255_characters_is_the_limit_and_counts_characters_not_bytes() -> None:
    event = make(aggregate_id="é" * 255)
    assert event.aggregate_id == "é" * 255


def test_int_aggregate_id_becomes_text_but_bool_is_rejected() -> None:
    assert make(aggregate_id=7).aggregate_id == "7"
    with pytest.raises(InvalidEventError, match="aggregate_id"):
        make(aggregate_id=True)


def test_unserialisable_payload_raises_serialization_error() -> None:
    payload = {"when": object()}
    with pytest.raises(SerializationError) as info:
        make(payload=payload)
    assert info.value.field == "payload"
    assert info.value.value is payload
    assert "invalid payload={'when': <object object" in str(info.value)
    with pytest.raises(SerializationError, match="payload"):
        make(payload=float("nan"))
    with pytest.raises(SerializationError, match="UTF-8"):
        make(payload="lone \udc80 surrogate")


@pytest.mark.parametrize(
    ("headers", "field", "value"),
    [
        ({1: "v"}, "headers", 1),
        ({"k": 2}, "headers['k']", 2),
        ({"k": None}, "headers['k']", None),
        ({"id": "x"}, "headers['id']", "x"),
        ({"k": "\ud800"}, "headers['k']", "\ud800"),
        ("k=v", "headers", "k=v"),
    ],
)
def test_bad_headers_name_field_and_value(headers: Any, field: str, value: Any) -> None:
    with pytest.raises(InvalidEventError) as info:
        make(headers=headers)
    assert (info.value.field, info.value.value) == (field, value)
    assert f"invalid {field}={value!r}" in str(info.value)


def test_payload_kinds() -> None:
    raw = bytes(range(256))
    assert make(payload=raw).payload == raw
    assert make(payload=bytearray(b"\x00\xff")).payload == b"\x00\xff"
    assert make(payload="héllo").payload == "héllo".encode()
    assert "content-type" not in make(payload=b"x").headers
    event = make(payload={"a": "é", "b": [1, 2]})
    assert event.payload == '{"a":"é","b":[1,2]}'.encode()
    assert event.headers == {"content-type": "application/json"}


def test_dataclass_payload_and_custom_serializer_default() -> None:
    @dataclasses.dataclass
    class Placed:
        total: Decimal

    ser = JsonSerializer(default=str)
    assert make(payload=Placed(Decimal("1.50")), serializer=ser).payload == b'{"total":"1.50"}'


def test_user_content_type_is_kept() -> None:
    event = make(headers={"Content-Type": "application/vnd.x+json"})
    assert event.headers == {"Content-Type": "application/vnd.x+json"}


def test_timestamp_is_utc() -> None:
    naive = datetime(2024, 5, 1, 12, 0, 0, 123456)
    assert make(timestamp=naive).timestamp == naive.replace(tzinfo=UTC)
    plus2 = datetime(2024, 5, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    assert make(timestamp=plus2).timestamp == datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert make().timestamp.tzinfo is UTC


def test_uuid7_is_version_7_and_strictly_increasing() -> None:
    ids = [uuid7() for _ in range(10_000)]
    assert all(i.version == 7 for i in ids)
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert make().id.version == 7
    explicit = uuid.UUID(int=1 << 8)
    assert make(id=explicit).id == explicit
    with pytest.raises(InvalidEventError, match="id"):
        make(id="not-a-uuid")


def test_header_and_timestamp_encodings_round_trip() -> None:
    headers = {"traceparent": "00-abc-01", "ü": "ß"}
    assert decode_headers(encode_headers(headers)) == headers
    assert decode_headers(None) == {} == decode_headers("")
    with pytest.raises(InvalidEventError):
        decode_headers("[1]")
    stamp = datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=UTC)
    assert parse_timestamp(format_timestamp(stamp)) == stamp


def test_kafka_headers_list_own_fields_then_user_headers() -> None:
    event = make(headers={"h": "v"})
    assert [k for k, _ in kafka_headers(event)] == [
        "id",
        "type",
        "aggregatetype",
        "aggregateid",
        "timestamp",
        "h",
        "content-type",
    ]
    assert dict(kafka_headers(event))["id"] == str(event.id).encode()


def test_repr_hides_the_payload() -> None:
    event = make(payload=b"secret-token")
    assert "secret-token" not in repr(event)
    assert "<12 bytes>" in repr(event)
