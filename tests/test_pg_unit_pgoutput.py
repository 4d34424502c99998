"""The pgoutput parser (relay/postgres/pgoutput.py) on captured and hand-built stream bytes."""

from __future__ import annotations

import struct
import uuid
from datetime import UTC, datetime

import pytest

from transactional_outbox import ConfigurationError, OutboxEvent
from transactional_outbox._pg_message import encode_message
from transactional_outbox.record_format import encode_headers
from transactional_outbox.relay.postgres import PgOutputParser
from transactional_outbox.relay.postgres.layout import BYTEA, JSONB, TEXT, TIMESTAMP, UUID
from transactional_outbox.relay.postgres.records import PG_EPOCH_MICROS
from transactional_outbox.relay.postgres.wire import PgServerError
from transactional_outbox.relay.routing import KafkaRecord, TopicRouter
from transactional_outbox.relay.rowrecord import RejectedRow
from transactional_outbox.testing import to_record

# Captured from PostgreSQL 15.20 (Debian), pgoutput proto_version 1, binary, messages:
# one transaction of INSERT + DELETE of the event below in public.outbox (bytea id,
# varchar names, bytea payload, text headers, timestamp), an INSERT into another table,
# and pg_logical_emit_message(true, 'outbox', encode_message(event)); keepalives around.
CAPTURED = bytes.fromhex(
    "64000000166b0000000001949d98000304b666c28d51006400000032770000000001949d980000000001949d"
    "98000304b666c28e5642000000000194a028000304b666c27cdd000002d964000000ae770000000000000000"
    "0000000000000000000304b666c28ebe52000040027075626c6963006f7574626f78006400070169640000"
    "000011ffffffff00616767726567617465747970650000000413000001030061676772656761746569640000"
    "000413000001030074797065000000041300000103007061796c6f61640000000011ffffffff006865616465"
    "72730000000019ffffffff0074696d657374616d70000000045affffffff64000000a1770000000001949d98"
    "0000000001949d98000304b666c28efa49000040024e000762000000100190a0b0c0d07e0f8a0b0c0d0e0f10"
    "0062000000056f7264657262000000023432620000000b4f72646572506c61636564620000000c7b22746f74"
    "616c223a31307d62000000237b22636f6e74656e742d74797065223a226170706c69636174696f6e2f6a736f"
    "6e227d62000000080002cdaf2f0b8f35640000009677000000000194a028000000000194a028000304b666c2"
    "8f1a4d01000000000194a0286f7574626f780000000064010190a0b0c0d07e0f8a0b0c0d0e0f100000062ab0"
    "6a436f3500056f7264657200023432000b4f72646572506c61636564000000237b22636f6e74656e742d7479"
    "7065223a226170706c69636174696f6e2f6a736f6e227d7b22746f74616c223a31307d640000003777000000"
    "000194a058000000000194a058000304b666c28f2c4300000000000194a028000000000194a058000304b666"
    "c27cdd64000000166b000000000194a058000304b666c28f3e00"
)
CAPTURED_EVENT = OutboxEvent(
    id=uuid.UUID("0190a0b0-c0d0-7e0f-8a0b-0c0d0e0f1000"),
    aggregate_type="order",
    aggregate_id="42",
    event_type="OrderPlaced",
    payload=b'{"total":10}',
    headers={"content-type": "application/json"},
    timestamp=datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
)
CAPTURED_COMMIT_END = 0x194A058
COLUMNS = ["id", "aggregatetype", "aggregateid", "type", "payload", "headers", "timestamp"]
VARCHAR = 1043


def expected(event: OutboxEvent, table: str = "public.outbox") -> KafkaRecord:
    r = to_record(event, outbox_table=table)
    assert r.key is not None and r.value is not None
    return KafkaRecord(r.topic, r.key, r.value, list(r.headers), r.timestamp)


def parser(**kw: object) -> PgOutputParser:
    args: dict[str, object] = {
        "router": TopicRouter(),
        "tables": frozenset({"public.outbox"}),
        "prefixes": frozenset({"outbox"}),
        "database": "app",
    }
    args.update(kw)
    return PgOutputParser(**args)  # type: ignore[arg-type]


def test_captured_stream_gives_the_row_and_the_message_as_the_same_record() -> None:
    p = parser()
    assert p.feed(CAPTURED) == len(CAPTURED)
    records, lsn, tables = p.take_committed()
    assert lsn == CAPTURED_COMMIT_END
    assert records[0] == expected(CAPTURED_EVENT)
    assert records[1] == expected(CAPTURED_EVENT, "app.outbox")  # {table} = the prefix
    assert tables == {"public.outbox": 1, "app.outbox": 1}
    assert p.wal_end == CAPTURED_COMMIT_END and not p.in_txn


def test_captured_stream_fed_in_pieces_parses_the_same() -> None:
    for cut in range(1, len(CAPTURED)):
        p = parser()
        pos = p.feed(CAPTURED[:cut])
        rest = CAPTURED[:cut][pos:] + CAPTURED[cut:]
        assert p.feed(rest) == len(rest)
        assert p.take_committed()[0] == [
            expected(CAPTURED_EVENT),
            expected(CAPTURED_EVENT, "app.outbox"),
        ]


# -- hand-built messages ------------------------------------------------------


def copy_data(body: bytes) -> bytes:
    return b"d" + struct.pack("!I", len(body) + 4) + body


def xlog(message: bytes, lsn: int = 0) -> bytes:
    return copy_data(b"w" + struct.pack("!QQq", lsn, lsn, 0) + message)


def begin() -> bytes:
    return xlog(b"B" + struct.pack("!QqI", 100, 0, 7))


def commit(end: int) -> bytes:
    return xlog(b"C" + struct.pack("!BQQq", 0, end - 8, end, 0))


def relation(relid: int, columns: list[tuple[str, int]], table: str = "outbox") -> bytes:
    body = b"R" + struct.pack("!I", relid) + b"public\0" + table.encode() + b"\0d"
    body += struct.pack("!H", len(columns))
    for name, oid in columns:
        body += b"\1" + name.encode() + b"\0" + struct.pack("!Ii", oid, -1)
    return xlog(body)


def insert(relid: int, values: list[bytes | None], kind: bytes = b"b") -> bytes:
    body = b"I" + struct.pack("!I", relid) + b"N" + struct.pack("!H", len(values))
    for v in values:
        body += b"n" if v is None else kind + struct.pack("!I", len(v)) + v
    return xlog(body)


def message(content: bytes, prefix: bytes = b"outbox", transactional: bool = True) -> bytes:
    body = b"M" + bytes([1 if transactional else 0]) + struct.pack("!Q", 5) + prefix + b"\0"
    return xlog(body + struct.pack("!I", len(content)) + content)


def keepalive(wal_end: int, reply: bool) -> bytes:
    return copy_data(b"k" + struct.pack("!QqB", wal_end, 0, 1 if reply else 0))


def pg_time(event: OutboxEvent) -> bytes:
    micros = (event.timestamp - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds()
    return struct.pack("!q", round(micros * 1_000_000) - PG_EPOCH_MICROS)


def row(event: OutboxEvent, *, jsonb: bool = False) -> list[bytes | None]:
    headers = encode_headers(event.headers).encode() if event.headers else None
    payload = b"\x01" + event.payload if jsonb else event.payload
    return [
        event.id.bytes,
        event.aggregate_type.encode(),
        event.aggregate_id.encode(),
        event.event_type.encode(),
        payload,
        headers,
        pg_time(event),
    ]


def event(n: int, **kw: object) -> OutboxEvent:
    args: dict[str, object] = {
        "aggregate_type": "order",
        "aggregate_id": str(n),
        "event_type": "Placed",
        "payload": b'{"n": %d}' % n,
        "timestamp": datetime(2024, 2, 29, 23, 59, 59, 999_999, tzinfo=UTC),
    }
    args.update(kw)
    return OutboxEvent.create(**args)  # type: ignore[arg-type]


OURS = list(zip(COLUMNS, [BYTEA, VARCHAR, VARCHAR, TEXT, BYTEA, TEXT, TIMESTAMP], strict=True))
DEBEZIUM = [("id", UUID), ("aggregatetype", VARCHAR), ("aggregateid", VARCHAR), ("type", VARCHAR)]
DEBEZIUM += [("timestamp", TIMESTAMP), ("payload", JSONB), ("tracingspancontext", VARCHAR)]
DEBEZIUM += [("headers", TEXT)]


def test_ours_and_debeziums_layouts_give_the_same_record() -> None:
    e = event(1, payload=b'{"a": 1}', headers={"h": "v"})
    for columns, jsonb in ((OURS, False), (DEBEZIUM, True)):
        values = dict(zip(COLUMNS, row(e, jsonb=jsonb), strict=True))
        values["tracingspancontext"] = b"x"
        p = parser()
        stream = relation(16384, columns) + begin()
        stream += insert(16384, [values[name] for name, _ in columns]) + commit(500)
        assert p.feed(stream) == len(stream)
        records, lsn, _ = p.take_committed()
        assert (records, lsn) == ([expected(e)], 500)


def test_ids_ending_in_zero_bytes_and_non_utf8_payloads_pass_unchanged() -> None:
    e = event(2, id=uuid.UUID(bytes=b"\x01" + bytes(15)), payload=b"\xff\x00\xfe")
    p = parser()
    stream = relation(1, OURS) + begin() + insert(1, row(e)) + commit(900)
    p.feed(stream)
    assert p.take_committed()[0] == [expected(e)]


def test_a_table_of_the_wrong_shape_turns_its_rows_into_rejected_rows_naming_the_column() -> None:
    columns = [(c, TEXT if c == "timestamp" else o) for c, o in OURS]
    p = parser()
    stream = relation(1, columns) + begin() + insert(1, row(event(3))) + commit(900)
    p.feed(stream)
    (rejected,) = p.take_committed()[0]
    assert isinstance(rejected, RejectedRow)
    assert "'timestamp'" in rejected.reason and rejected.table == "public.outbox"


def test_bad_rows_are_rejected_with_their_id_not_skipped() -> None:
    e = event(4)
    values = row(e)
    values[2] = b"\xff"  # aggregateid not UTF-8
    short = row(e)
    short[0] = b"\x01" * 15
    p = parser()
    stream = relation(1, OURS) + begin() + insert(1, values) + insert(1, short) + commit(10)
    p.feed(stream)
    first, second = p.take_committed()[0]
    assert isinstance(first, RejectedRow) and "aggregateid" in first.reason
    assert first.event_id == str(e.id)
    assert isinstance(second, RejectedRow) and "id" in second.reason


def test_text_format_values_are_rejected_not_misread() -> None:
    p = parser()
    stream = relation(1, OURS) + begin() + insert(1, row(event(5)), kind=b"t") + commit(10)
    p.feed(stream)
    (rejected,) = p.take_committed()[0]
    assert isinstance(rejected, RejectedRow) and "text format" in rejected.reason


def test_changes_of_other_tables_are_skipped_and_a_partition_described_too_is_harmless() -> None:
    # Through the root, pgoutput describes the root and then the partition the row went
    # to, and sends the insert under the root's relid; a table the publication gained
    # is skipped here (the publication watch stops the relay for it).
    e, other = event(8), event(9)
    p = parser()
    stream = begin() + relation(1, OURS) + relation(2, OURS, table="outbox_p1")
    stream += insert(1, row(e)) + relation(3, OURS, table="other") + insert(3, row(other))
    p.feed(stream + commit(90))
    records, lsn, _ = p.take_committed()
    assert lsn == 90 and records == [expected(e)]


def test_messages_of_other_prefixes_are_ignored_and_bad_ones_rejected() -> None:
    e = event(6)
    p = parser(other_prefixes=frozenset({"someone-else"}))
    stream = begin() + message(encode_message(e), b"someone-else") + message(b"\x02junk")
    stream += message(b"not an event", b"pglogical") + message(encode_message(e)[:40], b"x")
    stream += message(encode_message(e)[:30]) + message(encode_message(e)) + commit(77)
    p.feed(stream)
    records, lsn, _ = p.take_committed()
    assert lsn == 77 and len(records) == 3
    assert isinstance(records[0], RejectedRow) and "version 1" in records[0].reason
    assert isinstance(records[1], RejectedRow) and "truncated" in records[1].reason
    assert records[2] == expected(e, "app.outbox")


def test_an_outbox_event_under_an_unlisted_prefix_stops_before_its_transaction() -> None:
    e = event(11)
    p = parser()
    with pytest.raises(ConfigurationError, match="pg_message_prefixes") as info:
        p.feed(begin() + message(encode_message(e), b"orders") + commit(99))
    assert f"'orders' holds an outbox event (id {e.id}" in str(info.value)
    assert "pg_other_message_prefixes" in str(info.value)
    assert p.take_committed() == ([], None, {})  # nothing of that transaction handed over
    # Written outside a transaction it was never an SDK event: not this check's.
    parser().feed(message(encode_message(e), b"orders", transactional=False))


def test_a_non_transactional_message_is_rejected() -> None:
    p = parser()
    p.feed(message(encode_message(event(7)), transactional=False))
    (rejected,) = p.take_committed()[0]
    assert isinstance(rejected, RejectedRow) and "not transactional" in rejected.reason


def test_open_transaction_rows_stay_until_commit_and_cap_stops_feeding() -> None:
    p = parser(cap=3)
    rows = b"".join(insert(1, row(event(i))) for i in range(5))
    stream = relation(1, OURS) + begin() + rows + commit(1234)
    pos = p.feed(stream)
    assert len(p.records) == 3 and p.committed == 0 and p.in_txn
    assert p.take_committed() == ([], None, {})
    part, tables = p.take_open()
    assert len(part) == 3 and tables == {"public.outbox": 3}
    assert p.feed(stream, pos) == len(stream)
    records, lsn, _ = p.take_committed()
    assert (len(records), lsn) == (2, 1234)


def test_keepalive_sets_wal_end_and_asks_for_a_reply() -> None:
    p = parser()
    p.feed(keepalive(4242, reply=True))
    assert (p.wal_end, p.reply_requested) == (4242, True)


def test_an_error_response_in_the_stream_raises_it() -> None:
    body = b"SERROR\0C55006\0Mreplication slot is active\0\0"
    with pytest.raises(PgServerError, match="55006"):
        parser().feed(b"E" + struct.pack("!I", len(body) + 4) + body)
