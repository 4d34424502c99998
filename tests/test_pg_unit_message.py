"""The table-less outbox message (``_pg_message``, version 1): its bytes and its record."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from transactional_outbox import OutboxEvent
from transactional_outbox._pg_message import EMIT, VERSION, emit_params, encode_message
from transactional_outbox.relay.postgres.records import OutboxMemo, record_of_message
from transactional_outbox.relay.routing import TopicRouter
from transactional_outbox.testing import to_record

EVENT = OutboxEvent(
    id=uuid.UUID("0190a0b0-c0d0-7e0f-8a0b-0c0d0e0f1000"),
    aggregate_type="order",
    aggregate_id="42",
    event_type="OrderPlaced",
    payload=b"\x00{}\xff",
    headers={"content-type": "application/json"},
    timestamp=datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
)


def test_version_1_layout_byte_by_byte() -> None:
    micros = 1735787045678901  # 2025-01-02T03:04:05.678901Z
    headers = b'{"content-type":"application/json"}'
    assert encode_message(EVENT) == (
        bytes([VERSION])
        + EVENT.id.bytes
        + micros.to_bytes(8, "big", signed=True)
        + b"\x00\x05order\x00\x0242\x00\x0bOrderPlaced"
        + len(headers).to_bytes(4, "big")
        + headers
        + b"\x00{}\xff"
    )


def test_no_headers_is_a_zero_length() -> None:
    bare = OutboxEvent(**{**_fields(EVENT), "headers": {}})
    assert encode_message(bare)[-8:-4] == bytes(4)


def test_the_relay_reads_a_message_as_the_record_of_its_event() -> None:
    memo = OutboxMemo(TopicRouter(), schema="app", table="outbox")
    for e in (EVENT, OutboxEvent(**{**_fields(EVENT), "headers": {}})):
        r = to_record(e, outbox_table="app.outbox")
        assert record_of_message(encode_message(e), memo) == (
            r.topic,
            r.key,
            r.value,
            list(r.headers),
            r.timestamp,
        )


def test_timestamps_before_1970_round_trip() -> None:
    old = OutboxEvent(**{**_fields(EVENT), "timestamp": datetime(1969, 12, 31, 23, 59, 59, 1, UTC)})
    memo = OutboxMemo(TopicRouter(), schema="", table="")
    r = to_record(old)
    assert record_of_message(encode_message(old), memo)[3] == list(r.headers)


def test_emit_params_keep_order_and_prefix() -> None:
    events = [EVENT, OutboxEvent(**{**_fields(EVENT), "aggregate_id": "43"})]
    params = emit_params(events, "billing")
    assert [p["prefix"] for p in params] == ["billing", "billing"]
    assert [p["content"] for p in params] == [encode_message(e) for e in events]
    assert "pg_logical_emit_message(true," in str(EMIT)


def _fields(e: OutboxEvent) -> dict[str, object]:
    return {
        "id": e.id,
        "aggregate_type": e.aggregate_type,
        "aggregate_id": e.aggregate_id,
        "event_type": e.event_type,
        "payload": e.payload,
        "headers": e.headers,
        "timestamp": e.timestamp,
    }
