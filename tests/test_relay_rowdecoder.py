"""The outbox row decoder: synthetic rows, and the library's own decoding as the oracle."""

from __future__ import annotations

import json
import random
import uuid
from datetime import UTC, datetime, timedelta

import pymysql
import pytest
from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.row_event import WriteRowsEvent

from transactional_outbox import InvalidEventError, OutboxEvent
from transactional_outbox.relay.mysql.decode import row_to_event
from transactional_outbox.relay.mysql.rowdecoder import (
    BLOB,
    DATETIME2,
    STRING,
    VARCHAR,
    ColumnSpec,
    RejectedRow,
    RowMemo,
    decode_rows,
    decode_rows_generic,
    plan_for,
)
from transactional_outbox.relay.routing import KafkaRecord, TopicRouter, build_record, event_of

from . import _binlog, _binlog_bytes, _own_reader
from .conftest import Stack
from .relay_harness import OUTBOX_DDL, make_event, write_events

COLUMNS = _binlog_bytes.OUTBOX_COLUMNS


def pack_datetime(ts: datetime, fsp: int) -> bytes:
    packed = (1 << 39) | ((ts.year * 13 + ts.month) << 22) | (ts.day << 17)
    packed |= (ts.hour << 12) | (ts.minute << 6) | ts.second
    out = packed.to_bytes(5, "big")
    if fsp:
        digits = ts.microsecond // 10 ** (6 - fsp)
        if fsp % 2:
            digits *= 10
        out += digits.to_bytes((fsp + 1) // 2, "big")
    return out


def encode_row(values: dict[str, object], columns: list[ColumnSpec]) -> bytes:
    """Encode one row as the server writes it into a WRITE_ROWS event."""
    nulls = 0
    body = b""
    for i, col in enumerate(columns):
        value = values[col.name]
        if value is None:
            nulls |= 1 << i
            continue
        if col.type == DATETIME2:
            assert isinstance(value, datetime)
            body += pack_datetime(value, col.fsp)
            continue
        raw = value.encode() if isinstance(value, str) else bytes(value)  # type: ignore[arg-type]
        if col.type == STRING:
            raw = raw.rstrip(b"\x00")  # the server strips fixed-width padding
        size = col.length_size if col.type == BLOB else (1 if col.max_length <= 255 else 2)
        body += len(raw).to_bytes(size, "little") + raw
    return nulls.to_bytes((len(columns) + 7) // 8, "little") + body


def row(**over: object) -> dict[str, object]:
    base: dict[str, object] = {
        "id": uuid.uuid4().bytes,
        "aggregatetype": "order",
        "aggregateid": "o-1",
        "type": "Placed",
        "payload": b'{"a":1}',
        "headers": '{"k":"v"}',
        "timestamp": datetime(2026, 11, 27, 20, 1, 2, 345678, tzinfo=UTC),
    }
    base.update(over)
    return base


ROUTER = TopicRouter(template="t.{aggregatetype}")


def expected(r: dict[str, object]) -> KafkaRecord:
    """The record the relay must send for row ``r``: built the slow, obvious way."""
    raw_headers = r["headers"]
    return build_record(
        OutboxEvent(
            id=uuid.UUID(bytes=r["id"]),  # type: ignore[arg-type]
            aggregate_type=str(r["aggregatetype"]),
            aggregate_id=str(r["aggregateid"]),
            event_type=str(r["type"]),
            payload=r["payload"],  # type: ignore[arg-type]
            headers={} if raw_headers is None else json.loads(raw_headers),  # type: ignore[arg-type]
            timestamp=r["timestamp"],  # type: ignore[arg-type]
        ),
        ROUTER,
    )


def test_decodes_a_run_of_varied_rows() -> None:
    plan = plan_for(COLUMNS)
    assert plan is not None
    rows = [
        row(),
        row(id=b"\x00" * 16),
        row(id=b"\xff" * 15 + b"\x00"),
        row(payload=b""),
        row(payload=bytes(range(256)) * 300),
        row(headers=None),
        row(aggregateid="ü" * 255, type="Ünïcødé"),
        row(timestamp=datetime(2026, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)),
        row(timestamp=datetime(1970, 1, 1, tzinfo=UTC)),
        row(timestamp=datetime(1969, 12, 31, 23, 59, 59, 999500, tzinfo=UTC)),
        row(timestamp=datetime(1000, 1, 1, tzinfo=UTC)),
        row(headers='{"b":"2","a":"ü"}'),
        *[row(timestamp=datetime(2026, 11, 27, 20, 1, 2, us, tzinfo=UTC)) for us in (0, 1, 999)],
    ]
    data = b"".join(encode_row(r, COLUMNS) for r in rows)
    records = decode_rows(data, plan, RowMemo(ROUTER))
    assert records == [expected(r) for r in rows]
    for rec, r in zip(records, rows, strict=True):
        assert isinstance(rec, KafkaRecord)
        ev = event_of(rec)
        assert ev.id.bytes == r["id"]
        assert ev.aggregate_type == r["aggregatetype"]
        assert ev.aggregate_id == r["aggregateid"]
        assert ev.event_type == r["type"]
        assert ev.payload == r["payload"]
        assert dict(ev.headers) == ({} if r["headers"] is None else json.loads(r["headers"]))  # type: ignore[arg-type]
        assert ev.timestamp == r["timestamp"]


@pytest.mark.parametrize("fsp", range(7))
def test_every_fractional_precision(fsp: int) -> None:
    cols = [*COLUMNS[:-1], ColumnSpec("timestamp", DATETIME2, fsp=fsp)]
    plan = plan_for(cols)
    assert plan is not None
    ts = datetime(2025, 2, 28, 1, 2, 3, 123456, tzinfo=UTC)
    r = row(timestamp=ts)
    [rec] = decode_rows(encode_row(r, cols), plan, RowMemo(ROUTER))
    kept = 123456 // 10 ** (6 - fsp) * 10 ** (6 - fsp)
    assert rec == expected({**r, "timestamp": ts.replace(microsecond=kept)})


def test_short_varchar_uses_a_one_byte_length_and_columns_can_be_reordered() -> None:
    cols = [
        ColumnSpec("timestamp", DATETIME2, fsp=6),
        ColumnSpec("type", VARCHAR, max_length=200),
        ColumnSpec("payload", BLOB, length_size=3),
        ColumnSpec("id", STRING, max_length=16),
        ColumnSpec("aggregateid", VARCHAR, max_length=100),
        ColumnSpec("headers", BLOB, length_size=2),
        ColumnSpec("aggregatetype", VARCHAR, max_length=300),
        ColumnSpec("note", VARCHAR, max_length=40),
    ]
    plan = plan_for(cols)
    assert plan is not None
    r = row(note="extra columns are skipped")
    [rec] = decode_rows(encode_row(r, cols), plan, RowMemo(ROUTER))
    assert rec == expected(r)


def test_no_plan_for_unknown_types_or_missing_columns() -> None:
    assert plan_for([*COLUMNS, ColumnSpec("seq", 3)]) is None  # INT: library decodes
    assert plan_for(COLUMNS[:-1]) is None  # no timestamp column
    assert plan_for([ColumnSpec("id", BLOB, length_size=2), *COLUMNS[1:]]) is None


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"headers": "{not json"}, "headers"),
        ({"headers": '{"a": 1}'}, "headers"),
        ({"aggregatetype": None}, "aggregatetype"),
        ({"type": b"\xff\xfe"}, "type"),
        ({"aggregateid": b"\xc3"}, "aggregateid"),
        ({"aggregateid": ""}, "aggregateid"),
        ({"payload": None}, "payload"),
        ({"id": b"\x01" * 17}, "id"),
    ],
)
def test_invalid_values_become_rejected_rows_naming_the_column(
    over: dict[str, object], field: str
) -> None:
    plan = plan_for(COLUMNS)
    assert plan is not None
    good = row()
    bad = row(**over)
    out = decode_rows(
        encode_row(good, COLUMNS) + encode_row(bad, COLUMNS) + encode_row(good, COLUMNS),
        plan,
        RowMemo(ROUTER),
    )
    assert out[0] == out[2] == expected(good)
    assert isinstance(out[1], RejectedRow)
    if field != "id":
        assert out[1].event_id == str(uuid.UUID(bytes=bad["id"]))  # type: ignore[arg-type]
    assert f"invalid {field}=" in out[1].reason


def test_truncated_row_is_an_error() -> None:
    plan = plan_for(COLUMNS)
    assert plan is not None
    with pytest.raises(InvalidEventError):
        decode_rows(encode_row(row(), COLUMNS)[:-3], plan, RowMemo(ROUTER))


def test_matches_the_library_on_real_binlog_rows(stack: Stack, database: str) -> None:
    conn: pymysql.Connection = stack.mysql_connect(database)
    with conn.cursor() as cur:
        cur.execute(OUTBOX_DDL.format(table="outbox"))
    start = _binlog.position(stack)
    events = [
        make_event(id=uuid.UUID(bytes=b"\x00" * 16)),
        make_event(id=uuid.UUID(bytes=b"\x12" * 8 + b"\x00" * 8), payload=b""),
        make_event(aggregate_id="ä" * 200, headers={"x": "ÿ" * 1000}),
        make_event(payload=bytes(range(256)) * 1000),
        *[make_event(aggregate_id=str(i)) for i in range(200)],
    ]
    for k in range(0, len(events), 50):
        write_events(conn, events[k : k + 50])
    conn.close()
    url = stack.mysql_url
    reader = BinLogStreamReader(
        connection_settings={
            "host": url.host,
            "port": url.port,
            "user": url.username,
            "password": url.password,
        },
        server_id=4999,
        log_file=start[0],
        log_pos=start[1],
        resume_stream=True,
        blocking=False,
        only_schemas=[database],
        only_tables=["outbox"],
        only_events=[WriteRowsEvent],
    )
    slow = []
    try:
        for ev in reader:
            slow.extend(build_record(row_to_event(r["values"]), ROUTER) for r in ev.rows)
    finally:
        reader.close()
    # The relay's own reader (protocol, parser, generated decoder) against the library.
    fast, _ = _own_reader.read_records(stack, database, start, ROUTER)
    assert fast == slow
    assert fast == [build_record(e, ROUTER) for e in events]


def random_value(rng: random.Random, col: ColumnSpec) -> object:
    """A value for ``col``: NULL, empty, bad UTF-8, bad JSON or plain, at random."""
    roll = rng.random()
    if roll < 0.06:
        return None
    if col.type == DATETIME2:
        if roll < 0.08:
            return datetime(1000, 1, 1, tzinfo=UTC)
        return datetime(2026, 11, 27, tzinfo=UTC) + timedelta(microseconds=rng.randrange(10**12))
    if col.name == "id":
        return bytes(rng.randrange(256) for _ in range(16)).rstrip(b"\x00") or b"\x00"
    if roll < 0.09:
        return b""
    if roll < 0.11:
        return b"\xff\xfe"
    if col.name == "headers":
        if roll < 0.13:
            return b"{not json"
        return rng.choice(['{"k":"v"}', "{}", '{"a":"1","b":"ü"}'])
    if col.name == "payload":
        return bytes(rng.randrange(256) for _ in range(rng.choice([0, 1, 200, 300, 70_000])))
    limit = 200 if col.max_length <= 255 else 300
    return "".join(rng.choice("abcü€-") for _ in range(rng.randrange(1, limit // 4)))


@pytest.mark.parametrize("seed", range(40))
def test_generated_decoder_matches_the_generic_one(seed: int) -> None:
    rng = random.Random(seed)
    cols = [
        ColumnSpec("id", STRING, max_length=16),
        ColumnSpec("aggregatetype", VARCHAR, max_length=rng.choice([100, 1020])),
        ColumnSpec("aggregateid", VARCHAR, max_length=rng.choice([255, 1020])),
        ColumnSpec("type", VARCHAR, max_length=rng.choice([200, 1020])),
        ColumnSpec("payload", BLOB, length_size=rng.choice([2, 3, 4])),
        ColumnSpec("headers", BLOB, length_size=rng.choice([1, 2, 3])),
        ColumnSpec("timestamp", DATETIME2, fsp=rng.randrange(7)),
    ]
    cols += [ColumnSpec(f"extra{k}", VARCHAR, max_length=40) for k in range(rng.randrange(3))]
    rng.shuffle(cols)
    plan = plan_for(cols)
    assert plan is not None and plan.decoder is not None
    rows = []
    for _ in range(30):
        values = {c.name: random_value(rng, c) for c in cols}
        if values["payload"] is not None and len(values["payload"]) >= 256 ** min(
            c.length_size for c in cols if c.name == "payload"
        ):
            values["payload"] = b"p"
        if values["headers"] is not None and len(values["headers"]) > 200:
            values["headers"] = "{}"
        rows.append(encode_row(values, cols))
    data = b"".join(rows)
    generated = decode_rows(data, plan, RowMemo(ROUTER))
    assert generated == decode_rows_generic(data, plan, RowMemo(ROUTER))
    assert len(generated) == 30
    assert any(isinstance(r, KafkaRecord) for r in generated)
    assert any(isinstance(r, RejectedRow) for r in generated)
    for cut in (1, 7, len(rows[0]) // 2):  # a truncated body fails the same way in both
        with pytest.raises(InvalidEventError, match="truncated"):
            decode_rows(data[:-cut], plan, RowMemo(ROUTER))
        with pytest.raises(InvalidEventError, match="truncated"):
            decode_rows_generic(data[:-cut], plan, RowMemo(ROUTER))


def test_each_layout_is_generated_once() -> None:
    # A plan is asked for per transaction (each one starts with a table map):
    # generating the decoder each time cost ~1.5 ms, a limit of ~600 transactions/s.
    first = plan_for(list(COLUMNS))
    again = plan_for(
        [ColumnSpec(c.name, c.type, c.max_length, c.length_size, c.fsp) for c in COLUMNS]
    )
    other = plan_for([*COLUMNS[:-1], ColumnSpec("timestamp", DATETIME2, fsp=3)])
    assert first is not None and again is not None and other is not None
    assert again.decoder is first.decoder
    assert other.decoder is not first.decoder
