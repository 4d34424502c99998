"""OutboxEvent: validation, serialisation and the shared encodings (no servers)."""

from __future__ import annotations

import dataclasses
import enum
import json
import uuid
from datetime import UTC, date, datetime, time, timedelta, timezone
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
    odd = object()
    with pytest.raises(SerializationError) as info:
        make(payload={"when": odd})
    assert info.value.field == "payload['when']"
    assert info.value.value is odd
    assert "invalid payload['when']=<object object" in str(info.value)
    assert "type builtins.object cannot be serialised" in str(info.value)
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


# -- the default serializer's mapping (README "Payloads") ---------------------------------


class Colour(enum.Enum):
    RED = "red"
    BLUE = 2


@dataclasses.dataclass
class Line:
    sku: str
    price: Decimal
    added: datetime


def test_everyday_types_have_a_json_form() -> None:
    paris = timezone(timedelta(hours=2))
    uid = uuid.UUID("0190f0e2-7a4b-7c3d-8e9f-0123456789ab")
    payload = {
        "balance": Decimal("10.00"),
        "tiny": Decimal("0.1000000000000000000000000001"),
        "at": datetime(2024, 5, 1, 14, 0, 0, 250000, tzinfo=paris),
        "naive": datetime(2024, 5, 1, 12, 0),
        "day": date(2024, 5, 1),
        "clock": time(9, 30, 5),
        "id": uid,
        "colour": Colour.RED,
        "number": Colour.BLUE,
        "line": Line("A-1", Decimal("2.50"), datetime(2024, 1, 2, tzinfo=UTC)),
        "nested": [(Decimal("1"), uid)],
    }
    body = json.loads(make(payload=payload).payload)
    assert body == {
        "balance": "10.00",
        "tiny": "0.1000000000000000000000000001",
        "at": "2024-05-01T14:00:00.250000+02:00",
        "naive": "2024-05-01T12:00:00",
        "day": "2024-05-01",
        "clock": "09:30:05",
        "id": "0190f0e2-7a4b-7c3d-8e9f-0123456789ab",
        "colour": "red",
        "number": 2,
        "line": {"sku": "A-1", "price": "2.50", "added": "2024-01-02T00:00:00+00:00"},
        "nested": [["1", "0190f0e2-7a4b-7c3d-8e9f-0123456789ab"]],
    }


def test_a_dataclass_at_the_top_level() -> None:
    body = make(payload=Line("A", Decimal("1.5"), datetime(2024, 1, 1))).payload
    assert body == b'{"sku":"A","price":"1.5","added":"2024-01-01T00:00:00"}'


def test_pydantic_models_dump_in_json_mode() -> None:
    pydantic = pytest.importorskip("pydantic")

    class Order(pydantic.BaseModel):  # type: ignore[misc,name-defined]
        id: uuid.UUID
        total: Decimal
        at: datetime

    uid = uuid.uuid4()
    order = Order(id=uid, total=Decimal("3.10"), at=datetime(2024, 1, 1, tzinfo=UTC))
    expected = {"id": str(uid), "total": "3.10", "at": "2024-01-01T00:00:00Z"}
    assert json.loads(make(payload=order).payload) == expected
    assert json.loads(make(payload={"orders": [order]}).payload) == {"orders": [expected]}


def test_an_unknown_type_names_its_type_and_path() -> None:
    class Money:
        pass

    bad = Money()
    payload = {"lines": [{"price": 1}, {"price": 2}, {"price": bad}]}
    with pytest.raises(SerializationError) as info:
        make(payload=payload)
    assert info.value.field == "payload['lines'][2]['price']"
    assert info.value.value is bad
    assert "Money" in str(info.value)
    with pytest.raises(SerializationError) as info:
        make(payload=[Line("A", bad, datetime(2024, 1, 1))])  # type: ignore[arg-type]
    assert info.value.field == "payload[0]['price']"
    with pytest.raises(SerializationError) as info:
        make(payload={"tags": {"a", "b"}})
    assert info.value.field == "payload['tags']" and "set" in str(info.value)


def test_a_user_default_still_applies_to_other_types() -> None:
    class Money:
        def __str__(self) -> str:
            return "1 EUR"

    ser = JsonSerializer(default=str)
    assert make(payload={"m": Money()}, serializer=ser).payload == b'{"m":"1 EUR"}'
