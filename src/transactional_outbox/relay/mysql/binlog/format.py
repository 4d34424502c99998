"""The binlog wire format: event type codes, packet status, checksums, and the
server settings whose events the relay does not read. Pure.

Shared by the event parser (:mod:`.events`) and its tests. Layouts from MySQL's
``libbinlogevents`` and MariaDB's ``log_event.h``.
"""

from __future__ import annotations

import struct
import zlib

from ....exceptions import OutboxError, ServerConfigurationError

__all__ = [
    "DumpEnded",
    "ServerError",
    "checksum_size",
    "crc_ok",
    "giant_payload",
    "query_statement",
    "rotate_file",
    "status",
    "uncompressed",
    "unread_error",
    "verify",
]

U16 = struct.Struct("<H").unpack_from
U32 = struct.Struct("<I").unpack_from
U64 = struct.Struct("<Q").unpack_from

# Event types (MySQL binlog_event.h, MariaDB log_event.h).
QUERY, ROTATE, FORMAT_DESCRIPTION, XID = 2, 4, 15, 16
EXECUTE_LOAD_QUERY = 18  # LOAD DATA logged as a statement: a QUERY with 13 more post-header bytes
QUERY_COMPRESSED = 165  # MariaDB log_bin_compress: a QUERY whose statement is compressed
QUERIES = frozenset({QUERY, EXECUTE_LOAD_QUERY, QUERY_COMPRESSED})
XA_PREPARE = 38  # the end of a prepared XA transaction's group (MySQL 5.7+, MariaDB 10.5+)
TABLE_MAP = 19
WRITE_V1, UPDATE_V1, DELETE_V1 = 23, 24, 25  # MariaDB
WRITE_V2, UPDATE_V2, DELETE_V2 = 30, 31, 32  # MySQL 5.6+
MYSQL_GTID, MYSQL_GTID_TAGGED, TRANSACTION_PAYLOAD = 33, 42, 40
MARIADB_GTID = 162
MARIADB_WRITE_COMPRESSED = (166, 169)
SKIPPED_ROWS = frozenset({UPDATE_V1, DELETE_V1, UPDATE_V2, DELETE_V2, 167, 168, 170, 171})
HOT = frozenset({TABLE_MAP, WRITE_V1, WRITE_V2, XID, MARIADB_GTID}) | SKIPPED_ROWS
UNREAD = frozenset({*MARIADB_WRITE_COMPRESSED, TRANSACTION_PAYLOAD, MYSQL_GTID_TAGGED})
MDB_GTID = struct.Struct("<QIB").unpack_from
FL_STANDALONE = 1  # MariaDB GTID flags2: a statement outside any transaction (DDL)
FL_PREPARED_XA = 64  # MariaDB GTID flags2: the group of an XA PREPARE
ARTIFICIAL = 0x20  # header flag LOG_EVENT_ARTIFICIAL_F: made up by the server (fake ROTATE)
# The events whose content a parser acts on, checked against their CRC32 when
# the file has checksums (with ROTATE, see the parser; outbox maps and rows
# where decoded), and their names for the error.
VERIFIED = {
    XID: "XID",
    MARIADB_GTID: "GTID",
    MYSQL_GTID: "GTID",
    QUERY: "QUERY",
    EXECUTE_LOAD_QUERY: "QUERY",
    QUERY_COMPRESSED: "QUERY",
    XA_PREPARE: "XA_PREPARE",
}
# The CRC32 of any bytes followed by their own CRC32 (little-endian): an event
# checks in one crc32 call over all of it, no unpacking (~25% less per check).
CRC_RESIDUE = 0x2144DF1C
GIANT = 0xFFFFFF  # a packet of this length continues in the next one


class ServerError(Exception):
    """The server answered the dump with an error packet: ``(code, message)``."""


class DumpEnded(Exception):
    """The server ended the dump (EOF packet): only in non-blocking mode."""


def status(buf: bytes, at: int, end: int) -> None:
    """A non-OK packet inside the dump: an error, or the end of a non-blocking dump."""
    if buf[at] == 0xFF:
        code = U16(buf, at + 1)[0]
        text = buf[at + 3 : end]
        if text[:1] == b"#":
            text = text[6:]
        raise ServerError(code, text.decode("utf-8", "replace"))
    if buf[at] == 0xFE and end - at < 9:
        raise DumpEnded
    raise ServerError(2027, f"malformed packet in the binlog stream (status 0x{buf[at]:02x})")


def crc_ok(buf: bytes, ev: int, end: int) -> bool:
    """Whether the event ``buf[ev:end]`` ends in the CRC32 of the rest."""
    return bool(zlib.crc32(buf[ev : end - 4]) == U32(buf, end - 4)[0])


def verify(buf: bytes, ev: int, end: int, what: str) -> None:
    """Raise :class:`OutboxError` unless the event ends in a good CRC32."""
    if not crc_ok(buf, ev, end):
        raise OutboxError(
            f"binlog {what} event at log_pos {U32(buf, ev + 13)[0]} fails its CRC32 checksum"
        )


def giant_payload(buf: bytes, pos: int) -> tuple[bytes, int] | None:
    """The payload of a packet chain over 16 MB at ``pos`` and the position after
    it; None until every packet of it is in ``buf``."""
    parts = []
    end = len(buf)
    while True:
        if pos + 4 > end:
            return None
        plen = buf[pos] | (buf[pos + 1] << 8) | (buf[pos + 2] << 16)
        if pos + 4 + plen > end:
            return None
        parts.append(buf[pos + 4 : pos + 4 + plen])
        pos += 4 + plen
        if plen < GIANT:
            return b"".join(parts), pos


def rotate_file(buf: bytes, ev: int, end: int) -> str:
    """The file a ROTATE event names: position(8) then the name. The fake rotate
    that opens a dump may or may not end in a checksum, whatever the file's
    setting: tell by the CRC."""
    body_end = end
    if end - ev >= 27 + 4 and crc_ok(buf, ev, end):
        body_end = end - 4
    return buf[ev + 27 : body_end].decode()


def query_statement(buf: bytes, ev: int, end: int, post: int = 13) -> tuple[bytes, bytes]:
    """A QUERY event's statement and default schema (its ``db``); ``end``
    excludes any checksum.

    Post-header: thread_id(4) exec_time(4) db_len(1) error_code(2)
    status_len(2) (``post`` 26: EXECUTE_LOAD_QUERY's 13 more bytes); then the
    status variables, the db name and a NUL.
    """
    db = ev + 19 + post + U16(buf, ev + 30)[0]
    db_end = db + buf[ev + 27]
    return buf[db_end + 1 : end], buf[db:db_end]


def uncompressed(data: bytes, where: str) -> bytes:
    """The text of a MariaDB compressed event's part (``log_bin_compress``).

    header(1): 0x80 | the byte count of the length (bits 4-6, the algorithm,
    0 = zlib); the uncompressed length, big-endian; zlib data (MariaDB's
    ``binlog_buf_compress``, checked on 10.11's bytes).
    """
    n = data[0] & 0x07
    if data[0] & 0xF0 != 0x80 or not 1 <= n <= 4:
        raise OutboxError(f"{where}: unknown compression header 0x{data[0]:02x}")
    size = int.from_bytes(data[1 : 1 + n], "big")
    try:
        out = zlib.decompress(data[1 + n :])
    except zlib.error as exc:
        raise OutboxError(f"{where}: cannot uncompress it ({exc})") from exc
    if len(out) != size:
        raise OutboxError(f"{where}: uncompressed to {len(out)} bytes, not {size}")
    return out


def unread_error(etype: int, outbox: str | None, track_gtid: bool) -> OutboxError | None:
    """The error for an event of :data:`UNREAD` type, or None if it may pass unread.

    Compressed rows matter only of an outbox table (``outbox``: the table the
    event's id names, None if not one); tagged GTIDs only when tracking GTIDs.
    """
    if etype in MARIADB_WRITE_COMPRESSED:
        if outbox is None:
            return None
        return ServerConfigurationError(
            "log_bin_compress",
            f"the server wrote compressed rows of {outbox}, which the relay "
            "does not read; set log_bin_compress=OFF",
        )
    if etype == TRANSACTION_PAYLOAD:
        return ServerConfigurationError(
            "binlog_transaction_compression",
            "the server writes compressed transactions, which the relay does not read; "
            "set binlog_transaction_compression=OFF",
        )
    if track_gtid:
        return OutboxError(
            "the binlog has tagged GTIDs (MySQL 8.3+), which the relay cannot track; "
            "resume by file and position (resume_by_gtid off) or stop tagging"
        )
    return None


def checksum_size(buf: bytes, ev: int, end: int, file: str) -> int:
    """Trailing checksum bytes of the events of a file, from its FORMAT_DESCRIPTION.

    binlog_version(2) server_version(50) created(4) header_len(1)
    post_header_len[n] checksum_alg(1) checksum(4): the last two are always
    there since MySQL 5.6.1 / MariaDB 5.3. Post-header lengths the parser
    relies on are checked too.
    """
    alg = buf[end - 5]
    if alg not in (0, 1):
        raise OutboxError(f"unknown binlog checksum algorithm {alg} in {file}")
    if alg == 1:
        verify(buf, ev, end, "FORMAT_DESCRIPTION")
    post = ev + 19 + 57
    for etype, expect in ((TABLE_MAP, 8), (WRITE_V1, 8), (WRITE_V2, 10)):
        at = post + etype - 1
        if at < end - 5 and buf[at] != expect:
            raise OutboxError(
                f"{file}: event type {etype} has a {buf[at]}-byte post-header, "
                f"the relay reads {expect}; this server's binlog format is not supported"
            )
    return 4 if alg == 1 else 0
