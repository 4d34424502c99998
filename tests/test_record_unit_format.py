"""The record contract (DESIGN §1/§2) and the code that must agree with it, without servers."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from transactional_outbox import InvalidEventError, OutboxEvent, outbox_table
from transactional_outbox.event import kafka_headers
from transactional_outbox.record_format import (
    COLUMNS,
    OWN_HEADERS,
    RESERVED_HEADERS,
    encode_headers,
    format_timestamp,
    id_text,
    parse_headers,
    parse_id,
    parse_timestamp,
    timestamp_text,
)
from transactional_outbox.relay.routing import TopicRouter, build_record

EVENT = OutboxEvent(
    id=uuid.uuid4(),
    aggregate_type="order",
    aggregate_id="o-1",
    event_type="created",
    payload=b"{}",
    headers={"content-type": "application/json"},
    timestamp=datetime(2026, 12, 1, 5, 6, 7, 89, tzinfo=UTC),
)


def test_the_table_has_the_contracts_columns_in_order() -> None:
    table = outbox_table(sa.MetaData())
    assert tuple(c.name for c in table.columns) == COLUMNS
    assert [c.name for c in table.columns if c.nullable] == ["headers"]
    assert [c.name for c in table.primary_key] == ["id"]


def test_headers_come_in_the_contracts_order_then_user_headers() -> None:
    for headers in (kafka_headers(EVENT), build_record(EVENT, TopicRouter()).headers):
        assert tuple(k for k, _ in headers[: len(OWN_HEADERS)]) == OWN_HEADERS
        assert headers[len(OWN_HEADERS) :] == [("content-type", b"application/json")]
    assert frozenset(OWN_HEADERS) == RESERVED_HEADERS


def test_id_text_is_the_canonical_uuid_and_parse_id_reads_text_or_raw_bytes() -> None:
    eid = uuid.uuid4()
    assert id_text(eid.bytes) == str(eid).encode()
    assert parse_id(str(eid).encode()) == eid == parse_id(eid.bytes)
    with pytest.raises(ValueError):
        parse_id(b"not-a-uuid")


def test_timestamp_text_from_second_and_microseconds_equals_format_timestamp() -> None:
    when = datetime(2026, 12, 1, 5, 6, 7, 89, tzinfo=UTC)
    text = format_timestamp(when)
    assert text == "2026-12-01T05:06:07.000089+00:00"
    assert timestamp_text(b"2026-12-01T05:06:07", 89) == text.encode()
    assert parse_timestamp(text) == when
    # Another offset is the same instant, written in UTC.
    assert format_timestamp(when.astimezone(timezone(timedelta(hours=2)))) == text
    with pytest.raises(ValueError):
        parse_timestamp("2026-12-01T05:06:07")


def test_headers_column_round_trips_and_names_the_column_when_bad() -> None:
    headers = {"a": "1", "ü": "ß"}
    assert encode_headers(headers) == '{"a":"1","ü":"ß"}'
    assert parse_headers(encode_headers(headers)) == headers
    assert parse_headers(None) == {} == parse_headers(b"")
    for bad in ("{", '["a"]', '{"a": 1}'):
        with pytest.raises(InvalidEventError) as info:
            parse_headers(bad)
        assert info.value.field == "headers"
