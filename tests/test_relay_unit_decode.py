"""Outbox rows, as the binlog reader returns them, to events (DESIGN §7; no servers)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from transactional_outbox.exceptions import InvalidEventError
from transactional_outbox.record_format import COLUMNS as REQUIRED_COLUMNS
from transactional_outbox.relay.mysql.decode import row_to_event

ID = bytes.fromhex("0190a6b23c4d7e5f8a9b0c1d2e3f4a5b")


def row(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": ID,
        "aggregatetype": "order",
        "aggregateid": "42",
        "type": "OrderPlaced",
        "payload": b'{"total": 10}',
        "headers": '{"content-type": "application/json", "trace": "t-1"}',
        "timestamp": datetime(2024, 5, 1, 12, 30, 45, 123456),
    }
    base.update(changes)
    return base


def as_the_reader_returns_it(raw: bytes) -> bytes | str:
    """mysql-replication strips trailing NULs of BINARY(16); the all-zero id is ''."""
    stripped = raw.rstrip(b"\x00")
    return stripped if stripped else ""


def test_required_columns() -> None:
    assert set(REQUIRED_COLUMNS) == set(row())


def test_row_to_event() -> None:
    e = row_to_event(row())
    assert e.id == uuid.UUID(bytes=ID)
    assert e.aggregate_type == "order"
    assert e.aggregate_id == "42"
    assert e.event_type == "OrderPlaced"
    assert e.payload == b'{"total": 10}'
    assert dict(e.headers) == {"content-type": "application/json", "trace": "t-1"}
    assert e.timestamp == datetime(2024, 5, 1, 12, 30, 45, 123456, tzinfo=UTC)


ID_SHAPES = [
    *(ID[: 16 - k] + b"\x00" * k for k in range(1, 16)),  # ends in 1..15 zero bytes
    b"\x00" * 16,
    b"\xff" * 16,
    b"\x00" * 15 + b"\x01",  # leading zeros are kept by the reader
    b"\x01" + b"\x00" * 14 + b"\x02",
    ID,
]


@pytest.mark.parametrize("raw", ID_SHAPES, ids=lambda b: b.hex())
def test_every_id_shape_is_restored_byte_exact(raw: bytes) -> None:
    e = row_to_event(row(id=as_the_reader_returns_it(raw)))
    assert e.id.bytes == raw
    assert e.id == uuid.UUID(bytes=raw)


@pytest.mark.parametrize("raw", ID_SHAPES, ids=lambda b: b.hex())
def test_full_width_ids_are_unchanged(raw: bytes) -> None:
    assert row_to_event(row(id=raw)).id.bytes == raw


def test_all_zero_id_arrives_as_empty_str() -> None:
    assert row_to_event(row(id="")).id == uuid.UUID(int=0)
    assert row_to_event(row(id=b"")).id == uuid.UUID(int=0)


def test_id_as_str_text_is_utf8_encoded() -> None:
    # the reader's UTF-8 fallback for a stripped id whose bytes happen to be valid UTF-8
    raw = "é".encode() + b"abc"
    e = row_to_event(row(id=raw.decode()))
    assert e.id.bytes == raw.ljust(16, b"\x00")


@pytest.mark.parametrize("bad", [b"\x01" * 17, None, 42, uuid.UUID(bytes=ID)])
def test_bad_id_is_rejected(bad: object) -> None:
    with pytest.raises(InvalidEventError) as info:
        row_to_event(row(id=bad))
    assert info.value.field == "id"


@pytest.mark.parametrize("payload", [b"", b"\x00\xff\x00", bytes(range(256)), b"x" * 100_000])
def test_payload_bytes_unchanged(payload: bytes) -> None:
    assert row_to_event(row(payload=payload)).payload == payload


def test_str_payload_is_utf8_encoded() -> None:
    assert row_to_event(row(payload='{"név": "Ω"}')).payload == '{"név": "Ω"}'.encode()


@pytest.mark.parametrize("payload", [None, 42, {"total": 10}])
def test_bad_payload_is_rejected(payload: object) -> None:
    with pytest.raises(InvalidEventError) as info:
        row_to_event(row(payload=payload))
    assert info.value.field == "payload"


def test_headers_json_is_decoded_in_order() -> None:
    e = row_to_event(row(headers='{"z": "1", "a": "2", "m": ""}'))
    assert list(e.headers.items()) == [("z", "1"), ("a", "2"), ("m", "")]
    assert row_to_event(row(headers=b'{"k": "v"}')).headers == {"k": "v"}


@pytest.mark.parametrize("headers", [None, ""])
def test_sql_null_or_empty_headers_mean_no_headers(headers: str | None) -> None:
    # The headers column is nullable (table.py): NULL is "no headers", not an error.
    assert row_to_event(row(headers=headers)).headers == {}


@pytest.mark.parametrize(
    "headers",
    [
        "null",  # JSON null, not SQL NULL
        "{not json",
        "[1, 2]",
        '"text"',
        '{"k": 1}',
        '{"k": null}',
        '{"k": {"nested": "x"}}',
        b"\xff\xfe",
    ],
)
def test_invalid_headers_json_is_rejected(headers: str | bytes) -> None:
    with pytest.raises(InvalidEventError) as info:
        row_to_event(row(headers=headers))
    assert info.value.field == "headers"
    assert str(info.value).startswith("invalid headers=")


@pytest.mark.parametrize("column", ["aggregatetype", "aggregateid", "type"])
@pytest.mark.parametrize("value", ["", None, b"", 42, "<missing>"])
def test_missing_or_empty_text_column_is_rejected(column: str, value: object) -> None:
    data = row()
    if value == "<missing>":
        del data[column]
    else:
        data[column] = value
    with pytest.raises(InvalidEventError) as info:
        row_to_event(data)
    assert info.value.field == column
    assert str(info.value).startswith(f"invalid {column}=")


@pytest.mark.parametrize(
    ("column", "field"),
    [("aggregatetype", "aggregate_type"), ("aggregateid", "aggregate_id"), ("type", "event_type")],
)
def test_text_column_bytes_are_utf8_decoded(column: str, field: str) -> None:
    e = row_to_event(row(**{column: "Ωmega".encode()}))
    assert getattr(e, field) == "Ωmega"  # in its own field, not just somewhere
    others = {"aggregate_type", "aggregate_id", "event_type"} - {field}
    assert all(getattr(e, other) != "Ωmega" for other in others)


@pytest.mark.parametrize("column", ["aggregatetype", "aggregateid", "type"])
def test_text_column_invalid_utf8_is_rejected(column: str) -> None:
    with pytest.raises(InvalidEventError, match="not valid UTF-8") as info:
        row_to_event(row(**{column: b"\xff\xfe"}))
    assert info.value.field == column


@pytest.mark.parametrize("column", ["id", "payload", "timestamp"])
def test_missing_column_is_rejected(column: str) -> None:
    data = row()
    del data[column]
    with pytest.raises(InvalidEventError) as info:
        row_to_event(data)
    assert info.value.field == column


def test_naive_timestamp_is_utc() -> None:
    e = row_to_event(row(timestamp=datetime(2024, 5, 1, 12, 0, 0, 999999)))
    assert e.timestamp == datetime(2024, 5, 1, 12, 0, 0, 999999, tzinfo=UTC)
    assert e.timestamp.tzinfo is UTC


def test_aware_timestamp_is_converted_to_utc() -> None:
    ts = datetime(2024, 5, 1, 14, 0, 0, 5, tzinfo=timezone(timedelta(hours=2)))
    e = row_to_event(row(timestamp=ts))
    assert e.timestamp == ts
    assert e.timestamp.utcoffset() == timedelta(0)
    assert e.timestamp.hour == 12


@pytest.mark.parametrize("ts", [None, "2024-05-01 12:00:00", 1714564800])
def test_bad_timestamp_is_rejected(ts: object) -> None:
    with pytest.raises(InvalidEventError) as info:
        row_to_event(row(timestamp=ts))
    assert info.value.field == "timestamp"
