"""Binlog events built by hand from the documented layouts, for the pure parser tests.

MariaDB and MySQL 8 event formats (MySQL source ``libbinlogevents``, MariaDB
``log_event.h``): a 19-byte header, the type's post-header, the body, and a
CRC32 of all that when the file's FORMAT_DESCRIPTION says so.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence

from transactional_outbox.relay.mysql.rowdecoder import BLOB, DATETIME2, STRING, VARCHAR, ColumnSpec

TS = 1_764_000_000


def event(
    etype: int, body: bytes, *, log_pos: int, checksum: bool = True, server_id: int = 1
) -> bytes:
    """One event: header, body, and a CRC32 of both when ``checksum``."""
    size = 19 + len(body) + (4 if checksum else 0)
    raw = struct.pack("<IBIIIH", TS, etype, server_id, size, log_pos, 0) + body
    if checksum:
        raw += struct.pack("<I", zlib.crc32(raw))
    return raw


def packet(ev: bytes, seq: int = 1) -> bytes:
    """The MySQL packet the server sends an event in: an OK byte, then the event."""
    payload = b"\x00" + ev
    return struct.pack("<I", len(payload))[:3] + bytes([seq & 0xFF]) + payload


def stream(*events: bytes) -> bytes:
    """The dump reply for ``events``."""
    return b"".join(packet(ev, i) for i, ev in enumerate(events))


def format_description(*, checksum: bool, server: str = "10.11.6-MariaDB") -> bytes:
    """FORMAT_DESCRIPTION: post-header lengths for types 1..171, then the checksum algorithm."""
    post = bytearray(171)
    post[19 - 1] = 8  # TABLE_MAP
    for t in (23, 24, 25):
        post[t - 1] = 8  # rows v1
    for t in (30, 31, 32):
        post[t - 1] = 10  # rows v2
    body = struct.pack("<H", 4) + server.encode().ljust(50, b"\0") + struct.pack("<IB", 0, 19)
    body += bytes(post) + bytes([1 if checksum else 0])
    if checksum:
        return event(15, body, log_pos=0, checksum=True)
    # With checksums off the event still ends in four (unused) checksum bytes.
    return event(15, body + b"\0\0\0\0", log_pos=0, checksum=False)


def rotate(file: str, pos: int = 4, *, log_pos: int = 0, checksum: bool = True) -> bytes:
    """ROTATE to ``file``:``pos`` (log_pos 0: the fake rotate that opens a dump)."""
    return event(4, struct.pack("<Q", pos) + file.encode(), log_pos=log_pos, checksum=checksum)


def mariadb_gtid(
    domain: int,
    seq: int,
    *,
    server_id: int = 1,
    log_pos: int,
    standalone: bool = False,
    xa: tuple[int, bytes, bytes] | None = None,
    completed: bool = False,
    **kw: bool,
) -> bytes:
    """MariaDB GTID_EVENT (162): seq_no(8) domain_id(4) flags2(1), padded to 19 bytes;
    with ``xa`` the group of an XA PREPARE (flags2 64) or, ``completed``, of its
    outcome (128), the xid after the flags: format_id(4) gtrid_len(1) bqual_len(1) data."""
    flags = (1 if standalone else 0) | (0 if xa is None else 128 if completed else 64)
    body = struct.pack("<QIB", seq, domain, flags)
    if xa is None:
        body += bytes(6)
    else:
        fmt, gtrid, bqual = xa
        body += struct.pack("<iBB", fmt, len(gtrid), len(bqual)) + gtrid + bqual
    return event(162, body, log_pos=log_pos, server_id=server_id, **kw)


def xa_prepare(
    xid: tuple[int, bytes, bytes], *, one_phase: bool = False, log_pos: int, **kw: bool
) -> bytes:
    """XA_PREPARE_LOG_EVENT (38): one_phase(1) format_id(4) gtrid_len(4) bqual_len(4) data."""
    fmt, gtrid, bqual = xid
    body = struct.pack("<BiII", one_phase, fmt, len(gtrid), len(bqual)) + gtrid + bqual
    return event(38, body, log_pos=log_pos, **kw)


def mysql_gtid(sid: bytes, gno: int, *, log_pos: int, **kw: bool) -> bytes:
    """MySQL GTID_LOG_EVENT (33): flags(1) sid(16) gno(8) lt_type(1) last_committed(8) seq(8)."""
    body = b"\x01" + sid + struct.pack("<qBqq", gno, 2, 0, 1)
    return event(33, body, log_pos=log_pos, **kw)


def query(sql: str, *, db: str = "app", log_pos: int, load: bool = False, **kw: bool) -> bytes:
    """QUERY_EVENT: thread_id(4) exec_time(4) db_len(1) error(2) status_len(2) status db NUL sql.

    ``load``: EXECUTE_LOAD_QUERY (18) instead, LOAD DATA logged as a statement,
    whose post-header has 13 more bytes (file_id, fn_pos_start, fn_pos_end, dup).
    """
    status = b"\x00\x00\x00\x00\x00"  # Q_FLAGS2_CODE with 0
    body = struct.pack("<IIBHH", 7, 0, len(db), 0, len(status))
    if load:
        body += struct.pack("<IIIB", 1, 0, 0, 0)
    body += status + db.encode() + b"\0"
    return event(18 if load else 2, body + sql.encode(), log_pos=log_pos, **kw)


def xid(n: int, *, log_pos: int, **kw: bool) -> bytes:
    """XID_EVENT: the commit of an InnoDB transaction."""
    return event(16, struct.pack("<Q", n), log_pos=log_pos, **kw)


OUTBOX_COLUMNS = [
    ColumnSpec("id", STRING, max_length=16),
    ColumnSpec("aggregatetype", VARCHAR, max_length=1020),
    ColumnSpec("aggregateid", VARCHAR, max_length=1020),
    ColumnSpec("type", VARCHAR, max_length=1020),
    ColumnSpec("payload", BLOB, length_size=4),
    ColumnSpec("headers", BLOB, length_size=2),
    ColumnSpec("timestamp", DATETIME2, fsp=6),
]


def _meta(col: ColumnSpec) -> bytes:
    if col.type == STRING:
        return bytes([STRING, col.max_length])
    if col.type == VARCHAR:
        return struct.pack("<H", col.max_length)
    if col.type == BLOB:
        return bytes([col.length_size])
    if col.type == DATETIME2:
        return bytes([col.fsp])
    if col.type == 3:  # LONG: no metadata
        return b""
    raise AssertionError(col)


def table_map(
    table_id: int,
    schema: str,
    table: str,
    columns: Sequence[ColumnSpec] = OUTBOX_COLUMNS,
    *,
    log_pos: int,
    names: bool = True,
    **kw: bool,
) -> bytes:
    """TABLE_MAP_EVENT with binlog_row_metadata=FULL column names (optional metadata 4)."""
    s, t = schema.encode(), table.encode()
    body = table_id.to_bytes(6, "little") + b"\x01\x00"
    body += bytes([len(s)]) + s + b"\0" + bytes([len(t)]) + t + b"\0"
    body += bytes([len(columns)]) + bytes(c.type for c in columns)
    meta = b"".join(_meta(c) for c in columns)
    body += bytes([len(meta)]) + meta + b"\xff" * ((len(columns) + 7) // 8)
    if names:
        value = b"".join(bytes([len(c.name)]) + c.name.encode() for c in columns)
        body += b"\x01\x01\x00"  # SIGNEDNESS, ignored by the relay
        body += b"\x04" + bytes([len(value)]) + value
    return event(19, body, log_pos=log_pos, **kw)


def write_rows(
    table_id: int,
    rows: bytes,
    ncols: int = 7,
    *,
    log_pos: int,
    v2: bool = False,
    extra: bytes = b"",
    etype: int | None = None,
    **kw: bool,
) -> bytes:
    """WRITE_ROWS v1 (MariaDB, 23) or v2 (MySQL, 30, with its extra-data field)."""
    body = table_id.to_bytes(6, "little") + b"\x01\x00"
    if v2:
        body += struct.pack("<H", 2 + len(extra)) + extra
    body += bytes([ncols]) + ((1 << ncols) - 1).to_bytes((ncols + 7) // 8, "little") + rows
    return event(etype or (30 if v2 else 23), body, log_pos=log_pos, **kw)


def delete_rows(table_id: int, rows: bytes, *, log_pos: int, **kw: bool) -> bytes:
    """DELETE_ROWS v1: the relay never reads its body."""
    body = table_id.to_bytes(6, "little") + b"\x01\x00" + b"\x07\x7f" + rows
    return event(25, body, log_pos=log_pos, **kw)


# Events as MariaDB 10.11 wrote them (checksums on) in mysql-bin.000002, for
# ``XA START 'xa1'; INSERT; XA END; XA PREPARE; XA ROLLBACK`` and the same with
# ``'xa2','bq',7`` and XA COMMIT (into another table, outbox.xa_probe), then an
# INSERT of a session with binlog_format=STATEMENT. Keyed by the offset each
# starts at; its log_pos is where it ends.
MARIADB_10_11 = {
    k: bytes.fromhex(v)
    for k, v in {
        # GTID 0-1-60017, flags2 0x4c (PREPARED_XA | TRANSACTIONAL | ALLOW_PARALLEL), xid 'xa1'
        385: "8038116ba2010000002f000000b0010000080071ea000000000000000000004c010000000300"
        "78613101ffe31c4194",
        # QUERY XA END X'786131',X'',1
        545: "8038116b02010000005b0000007c020000080027000000000000000600001a00000000000101"
        "00002054000000000603737464042d002d00e0006f7574626f7800584120454e442058273738"
        "36313331272c5827272c31da8d8fd8",
        # XA_PREPARE X'786131',X'',1
        636: "8038116b260100000027000000a302000000000001000000030000000000000078613190f44207",
        # GTID 0-1-60018, flags2 0x8d (COMPLETED_XA | STANDALONE | ...), xid 'xa1'
        675: "8038116ba2010000002d000000d0020000080072ea000000000000000000008d0100000003"
        "0078613135b8c253",
        # QUERY XA ROLLBACK X'786131',X'',1
        720: "8038116b02010000006000000030030000080027000000000000000600001a000000000001"
        "0100002054000000000603737464042d002d00e0006f7574626f7800584120524f4c4c424143"
        "4b205827373836313331272c5827272c31c85d8801",
        # GTID 0-1-60019, PREPARED_XA, xid 'xa2','bq',7
        816: "8038116ba2010000003100000061030000080073ea000000000000000000004c0700000003"
        "02786132627101ffe9714350",
        # QUERY XA END X'786132',X'6271',7
        978: "8038116b02010000005f00000031040000080027000000000000000600001a000000000001"
        "0100002054000000000603737464042d002d00e0006f7574626f7800584120454e4420582737"
        "3836313332272c582736323731272c3761fda6db",
        # XA_PREPARE X'786132',X'6271',7
        1073: "8038116b2601000000290000005a040000000000070000000300000002000000786132627127832c2d",
        # GTID 0-1-60020, COMPLETED_XA, xid 'xa2','bq',7
        1114: "8038116ba2010000002f00000089040000080074ea000000000000000000008d070000000302"
        "78613262714c32c3f5",
        # QUERY XA COMMIT X'786132',X'6271',7
        1161: "8038116b020100000062000000eb040000080027000000000000000600001a000000000001"
        "0100002054000000000603737464042d002d00e0006f7574626f7800584120434f4d4d495420"
        "5827373836313332272c582736323731272c37959e418f",
        # GTID 0-1-60022 (an ordinary transaction), INTVAR, then QUERY
        # "INSERT INTO xa_probe (v) VALUES ('st')" in db outbox (binlog_format=STATEMENT)
        1445: "8038116ba2010000002a000000cf050000080076ea000000000000000000000c000000000000"
        "fe50623d",
        1487: "8038116b050100000020000000ef0500000000020500000000000000c0866bca",
        1519: "8038116b02010000006b0000005a060000000027000000000000000600001a00000000000101"
        "00002054000000000603737464042d002d00e0006f7574626f7800494e5345525420494e544f"
        "2078615f70726f6265202876292056414c5545532028277374272978706deb",
        # XID
        1626: "8038116b10010000001f00000079060000000001aa030000000000a095d8d8",
    }.items()
}
