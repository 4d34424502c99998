"""Every event whose content the parser acts on is checked against its CRC32.

A position landing inside an event, or bytes damaged on the way, must not be
read as a GTID, a commit, a statement or a file name: with checksums on
(FORMAT_DESCRIPTION), a mismatch stops the parser loudly.
"""

from __future__ import annotations

import pytest

from transactional_outbox.exceptions import OutboxError
from transactional_outbox.relay.mysql.binlog.events import BinlogParser
from transactional_outbox.relay.position import BinlogPosition

from . import _binlog_bytes as B
from .test_relay_rowdecoder import ROUTER

SID = b"\x3e" * 16


def parser(*, mariadb: bool = True) -> BinlogParser:
    return BinlogParser(
        schema="app",
        table="outbox",
        router=ROUTER,
        start=BinlogPosition(file="bin.000001", pos=4, gtid="0-1-0" if mariadb else None),
        is_mariadb=mariadb,
        track_gtid=mariadb,
        layouts={},
    )


def damaged(ev: bytes, at: int = 20) -> bytes:
    """``ev`` with one body byte changed and its checksum left as it was."""
    return ev[:at] + bytes([ev[at] ^ 0x01]) + ev[at + 1 :]


EVENTS = {
    "MariaDB GTID": B.mariadb_gtid(0, 5, log_pos=100),
    "MariaDB GTID of an XA PREPARE": B.mariadb_gtid(0, 5, log_pos=100, xa=(1, b"x", b"")),
    "MySQL GTID": B.mysql_gtid(SID, 5, log_pos=100),
    "XID": B.xid(5, log_pos=100),
    "QUERY BEGIN": B.query("BEGIN", log_pos=100),
    "QUERY DDL": B.query("ALTER TABLE outbox ADD x INT", log_pos=100),
    "QUERY XA COMMIT": B.query("XA COMMIT X'01',X'',1", log_pos=100),
    "EXECUTE_LOAD_QUERY": B.query("LOAD DATA INFILE 'f' INTO TABLE t", load=True, log_pos=100),
    "XA_PREPARE": B.xa_prepare((1, b"x", b""), log_pos=100),
    "ROTATE": B.rotate("bin.000002", log_pos=100),
}


@pytest.mark.parametrize("name", list(EVENTS))
def test_a_damaged_event_stops_the_parser(name: str) -> None:
    ev = EVENTS[name]
    mariadb = name != "MySQL GTID"
    good = B.stream(B.format_description(checksum=True), ev)
    p = parser(mariadb=mariadb)
    assert p.feed(good, 0) == len(good)  # intact, it passes
    bad = B.stream(B.format_description(checksum=True), damaged(ev))
    with pytest.raises(OutboxError, match=r"event at log_pos \d+ fails its CRC32 checksum"):
        parser(mariadb=mariadb).feed(bad, 0)


def test_a_damaged_format_description_stops_the_parser() -> None:
    fd = B.format_description(checksum=True)
    with pytest.raises(OutboxError, match=r"FORMAT_DESCRIPTION event .* CRC32"):
        parser().feed(B.stream(damaged(fd, 25)), 0)


def test_a_commit_in_the_middle_of_a_batch_is_checked_too() -> None:
    """The inline path of the usual one-event transaction: GTID and XID."""
    evs = [B.format_description(checksum=True)]
    for seq in range(1, 4):
        evs += [B.mariadb_gtid(0, seq, log_pos=seq * 10), B.xid(seq, log_pos=seq * 10 + 5)]
    evs[-1] = damaged(evs[-1])
    p = parser()
    with pytest.raises(OutboxError, match="XID event at log_pos 35 fails"):
        p.feed(B.stream(*evs), 0)
    assert p.commits == 2  # the ones before it


def test_without_checksums_nothing_is_checked_and_the_fake_rotate_may_lack_one() -> None:
    evs = [
        B.rotate("bin.000001", checksum=False),  # the fake rotate opening a dump
        B.format_description(checksum=False),
        B.mariadb_gtid(0, 1, log_pos=100, checksum=False),
        B.xid(1, log_pos=110, checksum=False),
    ]
    p = parser()
    data = B.stream(*evs)
    assert p.feed(data, 0) == len(data) and p.commits == 1
    # a fake rotate (log_pos 0) without a checksum in a file that has them
    data = B.stream(B.format_description(checksum=True), B.rotate("bin.000002", checksum=False))
    p = parser()
    assert p.feed(data, 0) == len(data) and p.file == "bin.000002"
