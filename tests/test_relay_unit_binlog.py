"""The binlog parser and dump packets, on bytes built by hand (no server).

MySQL 8 formats (GTID event 33, v2 rows events with extra data, QUERY BEGIN,
COM_BINLOG_DUMP_GTID) cannot be produced here (no MySQL server installs), so
they are built from the documented layouts; MariaDB ones too, beside the
stack tests that read real MariaDB binlogs.
"""

from __future__ import annotations

import struct
import uuid

import pytest

from transactional_outbox.exceptions import OutboxError, ServerConfigurationError
from transactional_outbox.relay.mysql.binlog.events import BinlogParser, DumpEnded, ServerError
from transactional_outbox.relay.mysql.binlog.protocol import (
    binlog_dump,
    binlog_dump_gtid,
    encode_mysql_gtid_set,
    register_slave,
)
from transactional_outbox.relay.mysql.binlog.tablemap import TableLayout
from transactional_outbox.relay.mysql.rowdecoder import ColumnSpec, RejectedRow
from transactional_outbox.relay.position import BinlogPosition

from . import _binlog_bytes as B
from .test_relay_rowdecoder import ROUTER, encode_row, expected, row

COLS = B.OUTBOX_COLUMNS
SID = uuid.UUID("3e11fa47-71ca-11e1-9e33-c80aa9429562")


def parser(
    *, mariadb: bool = True, gtid: str | None = None, skip: int = 0, cap: int = 2000, **kw: object
) -> BinlogParser:
    return BinlogParser(
        schema="app",
        table="outbox",
        router=ROUTER,
        start=BinlogPosition(file="bin.000001", pos=4, gtid=gtid),
        is_mariadb=mariadb,
        track_gtid=gtid is not None,
        layouts=kw.pop("layouts", {}),  # type: ignore[arg-type]
        cap=cap,
        skip=skip,
    )


def one_event_txn(
    r: dict[str, object], seq: int, at: int, *, checksum: bool = True
) -> tuple[list[bytes], int]:
    """A one-event transaction as the SDK writes it on MariaDB, from log position ``at``."""
    kw = {"checksum": checksum}
    body = encode_row(r, COLS)
    evs = [
        B.mariadb_gtid(0, seq, log_pos=at + 100, **kw),
        B.table_map(70, "app", "outbox", log_pos=at + 200, **kw),
        B.write_rows(70, body, log_pos=at + 300, **kw),
        B.table_map(70, "app", "outbox", log_pos=at + 400, **kw),
        B.delete_rows(70, body, log_pos=at + 500, **kw),
        B.xid(seq, log_pos=at + 600, **kw),
    ]
    return evs, at + 600


def run(p: BinlogParser, data: bytes) -> tuple[list[object], list[BinlogPosition]]:
    """Feed ``data``; collect the records and positions handed over."""
    records: list[object] = []
    positions = []
    pos = p.feed(data, 0)
    while (pos < len(data) and len(p.records) >= 2000) or p.commits:
        if p.commits:
            got, at = p.take_committed()
            records += got
            positions.append(at)
        pos = p.feed(data, pos)
    assert pos == len(data)
    return records, positions


@pytest.mark.parametrize("checksum", [True, False], ids=["crc32", "none"])
def test_mariadb_one_event_transactions(checksum: bool) -> None:
    rows = [row(aggregateid=f"a{i}") for i in range(3)]
    evs = [B.rotate("bin.000001", checksum=checksum), B.format_description(checksum=checksum)]
    at = 1000
    for i, r in enumerate(rows):
        txn, at = one_event_txn(r, 40 + i, at, checksum=checksum)
        evs += txn
    p = parser(gtid="0-1-39,1-2-3")
    records, positions = run(p, B.stream(*evs))
    assert records == [expected(r) for r in rows]
    assert positions[-1] == BinlogPosition(file="bin.000001", pos=at, gtid="0-1-42,1-2-3")


def test_mysql8_gtid_begin_and_v2_rows_with_extra_data() -> None:
    r = row()
    body = encode_row(r, COLS)
    evs = [
        B.rotate("binlog.000007", checksum=False),  # MySQL's fake rotate: no checksum
        B.format_description(checksum=True, server="8.4.3"),
        B.mysql_gtid(SID.bytes, 6, log_pos=200),
        B.query("BEGIN", log_pos=300),
        B.table_map(90, "app", "outbox", log_pos=400),
        # extra data: a partition-info field (type 1, one byte) as MySQL 8 writes it
        B.write_rows(90, body, log_pos=500, v2=True, extra=b"\x01\x00\x03"),
        B.event(31, bytes(20), log_pos=600),  # UPDATE_ROWS v2 of it: skipped unread
        B.xid(9, log_pos=700),
    ]
    p = parser(mariadb=False, gtid=f"{SID}:1-5")
    records, positions = run(p, B.stream(*evs))
    assert records == [expected(r)]
    assert positions == [BinlogPosition(file="binlog.000007", pos=700, gtid=f"{SID}:1-6")]


def test_mysql_gtids_of_many_commits_are_merged_once_per_hand_over() -> None:
    evs = [B.format_description(checksum=True)]
    for n in range(6, 26):
        evs += [B.mysql_gtid(SID.bytes, n, log_pos=n * 10), B.xid(n, log_pos=n * 10 + 5)]
    evs += [B.mysql_gtid(SID.bytes, 40, log_pos=900), B.xid(40, log_pos=905)]
    p = parser(mariadb=False, gtid=f"{SID}:1-5")
    p.feed(B.stream(*evs), 0)
    assert p.commits == 21
    _, at = p.take_committed()
    assert at.gtid == f"{SID}:1-25:40" and at.pos == 905


def test_other_tables_ddl_commit_query_and_rollback() -> None:
    r1, r2 = row(aggregateid="kept"), row(aggregateid="rolled-back")
    evs = [
        B.format_description(checksum=True),
        # another table's rows, under an id the outbox will reuse later
        B.mariadb_gtid(0, 1, log_pos=100),
        B.table_map(5, "app", "orders", [ColumnSpec("n", 3)], log_pos=110),
        B.write_rows(5, b"\x00\x01\x00\x00\x00", 1, log_pos=120),
        B.xid(1, log_pos=130),
        # DDL: a transaction of its own, no XID
        B.mariadb_gtid(0, 2, log_pos=140, standalone=True),
        B.query("ALTER TABLE orders ADD x INT", log_pos=150),
        # a group ended by QUERY COMMIT (non-transactional tables in it)
        B.mariadb_gtid(0, 3, log_pos=160),
        B.table_map(6, "app", "outbox", log_pos=170),
        B.write_rows(6, encode_row(r1, COLS), log_pos=180),
        B.query("COMMIT", log_pos=190),
        # a group rolled back: its outbox row was never committed
        B.mariadb_gtid(0, 4, log_pos=200),
        B.table_map(6, "app", "outbox", log_pos=210),
        B.write_rows(6, encode_row(r2, COLS), log_pos=220),
        B.query("ROLLBACK", log_pos=230),
        # the outbox's old id now maps another table: its rows are not outbox rows
        B.mariadb_gtid(0, 5, log_pos=240),
        B.table_map(6, "app", "orders", [ColumnSpec("n", 3)], log_pos=250),
        B.write_rows(6, b"\x00\x01\x00\x00\x00", 1, log_pos=260),
        B.xid(5, log_pos=270),
    ]
    p = parser(gtid="0-1-0")
    data = B.stream(*evs)
    assert p.feed(data, 0) == len(data)
    assert p.commits == 5
    records, at = p.take_committed()
    assert records == [expected(r1)]
    assert at == BinlogPosition(file="bin.000001", pos=270, gtid="0-1-5")


def test_ddl_positions_are_commit_points() -> None:
    evs = [
        B.format_description(checksum=False),
        B.mariadb_gtid(0, 7, log_pos=100, standalone=True, checksum=False),
        B.query("CREATE TABLE t (a INT)", log_pos=150, checksum=False),
    ]
    p = parser(gtid="0-1-6")
    p.feed(B.stream(*evs), 0)
    assert p.take_committed() == ([], BinlogPosition(file="bin.000001", pos=150, gtid="0-1-7"))


def test_byte_by_byte_reads_give_the_same_result() -> None:
    rows = [row(aggregateid=str(i), payload=b"p" * 300) for i in range(4)]
    evs = [B.rotate("bin.000001"), B.format_description(checksum=True)]
    at = 1000
    for i, r in enumerate(rows):
        txn, at = one_event_txn(r, i + 1, at)
        evs += txn
    data = B.stream(*evs)
    p = parser()
    buf, pos, records = b"", 0, []
    for k in range(len(data)):
        buf += data[k : k + 1]
        pos = p.feed(buf, pos)
        if p.commits:
            records += p.take_committed()[0]
    assert pos == len(buf) and records == [expected(r) for r in rows]


def test_rotate_forgets_table_ids() -> None:
    r = row()
    evs = [
        B.format_description(checksum=True),
        B.table_map(70, "app", "outbox", log_pos=100),
        B.rotate("bin.000002", log_pos=200),
        B.format_description(checksum=True),
        B.write_rows(70, encode_row(r, COLS), log_pos=300),  # no map in this file: not ours
        B.xid(1, log_pos=400),
    ]
    p = parser()
    records, positions = run(p, B.stream(*evs))
    assert records == [] and positions == [BinlogPosition(file="bin.000002", pos=400)]


def test_a_changed_table_map_is_parsed_again_the_same_one_is_not() -> None:
    layouts: dict[bytes, TableLayout] = {}
    cols_b = [*COLS, ColumnSpec("tenant", 3)]
    evs = [
        B.format_description(checksum=True),
        B.table_map(70, "app", "outbox", log_pos=100),
        B.table_map(71, "app", "outbox", log_pos=200),
        B.table_map(72, "app", "outbox", cols_b, log_pos=300),
    ]
    p = parser(layouts=layouts)
    p.feed(B.stream(*evs), 0)
    assert len(layouts) == 2
    tables = p.outbox.ids
    assert tables[70] is tables[71] and tables[72] is not tables[70]
    r = row()
    rows = encode_row(r, COLS)
    # 8 columns: a 1-byte null bitmap still; the extra INT is stepped over.
    body = rows + b"\x2a\x00\x00\x00"
    evs = [B.write_rows(72, body, 8, log_pos=400), B.xid(1, log_pos=500)]
    p.feed(B.stream(*evs), 0)
    assert p.take_committed()[0] == [expected(r)]


def test_a_bad_crc_on_a_new_table_map_is_an_error() -> None:
    tm = bytearray(B.table_map(70, "app", "outbox", log_pos=100))
    tm[-1] ^= 0xFF
    p = parser()
    with pytest.raises(OutboxError, match="CRC32"):
        p.feed(B.stream(B.format_description(checksum=True), bytes(tm)), 0)


def test_missing_column_names_name_the_setting() -> None:
    evs = [
        B.format_description(checksum=True),
        B.table_map(70, "app", "outbox", log_pos=1, names=False),
    ]
    with pytest.raises(ServerConfigurationError, match="binlog_row_metadata"):
        parser().feed(B.stream(*evs), 0)


@pytest.mark.parametrize("etype", [166, 169])
def test_compressed_outbox_rows_fail_loudly(etype: int) -> None:
    evs = [
        B.format_description(checksum=True),
        B.table_map(70, "app", "outbox", log_pos=100),
        B.write_rows(70, b"zz", log_pos=200, etype=etype),
    ]
    with pytest.raises(ServerConfigurationError, match="log_bin_compress"):
        parser().feed(B.stream(*evs), 0)


def test_compressed_mysql_transactions_fail_loudly() -> None:
    evs = [B.format_description(checksum=True), B.event(40, b"\x00" * 10, log_pos=100)]
    with pytest.raises(ServerConfigurationError, match="binlog_transaction_compression"):
        parser().feed(B.stream(*evs), 0)


def test_compressed_rows_of_another_table_and_untracked_tagged_gtids_pass_unread() -> None:
    evs = [
        B.format_description(checksum=True),
        B.table_map(71, "app", "orders", log_pos=100),
        B.write_rows(71, b"zz", log_pos=200, etype=166),
        B.event(42, b"\x00" * 40, log_pos=300),  # a tagged GTID (MySQL 8.3+)
        B.xid(1, log_pos=400),
    ]
    records, positions = run(parser(mariadb=False), B.stream(*evs))
    assert records == [] and [p.pos for p in positions] == [400]


def test_tagged_gtids_fail_loudly_when_tracking_gtids() -> None:
    evs = [B.format_description(checksum=True), B.event(42, b"\x00" * 40, log_pos=100)]
    with pytest.raises(OutboxError, match="tagged GTIDs"):
        parser(mariadb=False, gtid=f"{SID}:1-5").feed(B.stream(*evs), 0)


def test_error_and_eof_packets() -> None:
    error = b"\xff" + struct.pack("<H", 1236) + b"#HY000Could not find first log file name"
    data = struct.pack("<I", len(error))[:3] + b"\x01" + error
    with pytest.raises(ServerError) as info:
        parser().feed(data, 0)
    assert info.value.args == (1236, "Could not find first log file name")
    eof = b"\xfe\x00\x00\x02\x00"
    with pytest.raises(DumpEnded):
        parser().feed(struct.pack("<I", len(eof))[:3] + b"\x01" + eof, 0)


def test_rows_handed_over_before_a_reconnect_are_skipped_once() -> None:
    rows = [row(aggregateid=str(i)) for i in range(3)]
    body = b"".join(encode_row(r, COLS) for r in rows)
    evs = [
        B.format_description(checksum=True),
        B.table_map(70, "app", "outbox", log_pos=100),
        B.write_rows(70, body, log_pos=200),
        B.xid(1, log_pos=300),
        B.table_map(70, "app", "outbox", log_pos=400),
        B.write_rows(70, body, log_pos=500),
        B.xid(2, log_pos=600),
    ]
    records, _ = run(parser(skip=2), B.stream(*evs))
    assert records == [expected(r) for r in [rows[2], *rows]]


def test_a_full_batch_stops_the_feed_and_open_rows_can_be_taken() -> None:
    rows = [row(aggregateid=str(i)) for i in range(5)]
    evs = [B.format_description(checksum=True), B.table_map(70, "app", "outbox", log_pos=100)]
    evs += [B.write_rows(70, encode_row(r, COLS), log_pos=200 + i) for i, r in enumerate(rows)]
    data = B.stream(*evs)
    p = parser(cap=2)
    pos = p.feed(data, 0)
    assert pos < len(data) and p.open_rows == 2 and p.commits == 0
    assert p.take_open() == [expected(r) for r in rows[:2]]


def test_rejected_rows_say_where_they_are() -> None:
    bad = row(headers="{not json")
    evs = [B.format_description(checksum=True)]
    evs += one_event_txn(row(), 1, 1000)[0]
    evs += one_event_txn(bad, 2, 2000)[0]
    records, _ = run(parser(), B.stream(*evs))
    assert isinstance(records[1], RejectedRow)
    assert records[1].where == "of `app`.`outbox` in the transaction after bin.000001:1600"


def test_an_event_over_16_mb_spans_packets() -> None:
    r = row(payload=b"\x01" * (17 * 1024 * 1024))
    ev = B.write_rows(70, encode_row(r, COLS), log_pos=500)
    payload = b"\x00" + ev
    chunks = [payload[i : i + 0xFFFFFF] for i in range(0, len(payload), 0xFFFFFF)]
    if len(chunks[-1]) == 0xFFFFFF:
        chunks.append(b"")
    big = b"".join(struct.pack("<I", len(c))[:3] + b"\x00" + c for c in chunks)
    head = B.stream(
        B.format_description(checksum=True), B.table_map(70, "app", "outbox", log_pos=1)
    )
    tail = B.stream(B.xid(1, log_pos=600))
    records, _ = run(parser(), head + big + tail)
    assert records == [expected(r)]


# -- dump packets ----------------------------------------------------------------


def test_register_slave_and_binlog_dump_packets() -> None:
    assert register_slave(7) == (
        bytes([18, 0, 0, 0]) + b"\x15" + struct.pack("<I", 7) + b"\0\0\0" + bytes(10)
    )
    dump = binlog_dump(9, "bin.000003", 1234)
    assert dump[3] == 0 and dump[4] == 0x12
    assert dump[5:] == struct.pack("<IHI", 1234, 0, 9) + b"bin.000003"
    assert int.from_bytes(dump[:3], "little") == len(dump) - 4


def test_mysql_gtid_set_encoding_matches_the_documented_layout() -> None:
    text = "3E11FA47-71CA-11E1-9E33-C80AA9429562:1-5:7,0a0b0c0d-0000-0000-0000-000000000001:3"
    got = encode_mysql_gtid_set(text)
    sid_a = uuid.UUID("0a0b0c0d-0000-0000-0000-000000000001").bytes
    want = struct.pack("<Q", 2)
    want += sid_a + struct.pack("<Q", 1) + struct.pack("<QQ", 3, 4)
    want += SID.bytes + struct.pack("<Q", 2) + struct.pack("<QQQQ", 1, 6, 7, 8)
    assert got == want
    packet = binlog_dump_gtid(11, text)
    body = packet[4:]
    assert body[0] == 0x1E
    flags, server_id, name_len = struct.unpack_from("<HII", body, 1)
    assert (flags, server_id, name_len) == (0x04, 11, 0)
    pos, size = struct.unpack_from("<QI", body, 11)
    assert (pos, size) == (4, len(want)) and body[23:] == want


def test_tagged_gtids_cannot_be_sent() -> None:
    with pytest.raises(OutboxError, match="tagged"):
        encode_mysql_gtid_set(f"{SID}:tag_a:1-3")


def test_events_the_relay_does_not_need_are_skipped_without_moving_positions() -> None:
    r = row()
    txn, at = one_event_txn(r, 9, 1000)
    evs = [
        B.rotate("bin.000001"),
        B.format_description(checksum=True),
        B.event(163, struct.pack("<IB", 1, 0) + struct.pack("<IIQ", 0, 1, 8), log_pos=0),
        B.event(161, struct.pack("<I", 10) + b"bin.000001", log_pos=300),  # BINLOG_CHECKPOINT
        B.event(27, b"bin.000001", log_pos=900),  # heartbeat
        txn[0],
        B.event(160, b"INSERT INTO outbox ...", log_pos=1150),  # ANNOTATE_ROWS
        *txn[1:],
        B.event(41, b"\x00" * 12, log_pos=0),  # MySQL's heartbeat v2
    ]
    records, positions = run(parser(gtid="0-1-8"), B.stream(*evs))
    assert records == [expected(r)]
    assert positions == [BinlogPosition(file="bin.000001", pos=at, gtid="0-1-9")]


def test_configuration_errors_reach_the_relay_from_the_reader_process_intact() -> None:
    # The relay's exit code depends on the type (2 for a misconfigured server).
    from transactional_outbox.relay.mysql.reader_process import _portable

    error = _portable(ServerConfigurationError("log_bin_compress", "set it OFF"))
    assert type(error) is ServerConfigurationError
    assert str(error) == "log_bin_compress: set it OFF" and error.setting == "log_bin_compress"
