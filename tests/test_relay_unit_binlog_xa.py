"""Prepared XA transactions: their outbox rows wait for the outcome (pure parser).

MariaDB's events are the ones its 10.11 server wrote (``B.MARIADB_10_11``),
around hand-built outbox rows; MySQL's are built from the documented layout
(an ``XA START`` query opens the group, XA_PREPARE ends it, a later ``XA
COMMIT``/``XA ROLLBACK`` query decides it).
"""

from __future__ import annotations

import pytest

from transactional_outbox.exceptions import OutboxError
from transactional_outbox.relay.mysql.binlog.events import BinlogParser
from transactional_outbox.relay.position import BinlogPosition

from . import _binlog_bytes as B
from .test_relay_rowdecoder import ROUTER, encode_row, expected, row

COLS = B.OUTBOX_COLUMNS
M = B.MARIADB_10_11
FILE = "mysql-bin.000002"


def parser(*, mariadb: bool = True, gtid: str | None = None, **kw: object) -> BinlogParser:
    return BinlogParser(
        schema="app",
        table="outbox",
        router=ROUTER,
        start=BinlogPosition(file=FILE, pos=4, gtid=gtid),
        is_mariadb=mariadb,
        track_gtid=gtid is not None,
        layouts={},
        **kw,  # type: ignore[arg-type]
    )


def outbox_rows(rs: list[dict[str, object]], at: int) -> list[bytes]:
    return [
        B.table_map(70, "app", "outbox", log_pos=at),
        B.write_rows(70, b"".join(encode_row(r, COLS) for r in rs), log_pos=at + 1),
    ]


def plain_txn(r: dict[str, object], seq: int, at: int) -> list[bytes]:
    """An ordinary one-event transaction ending at ``at + 3``."""
    return [
        B.mariadb_gtid(0, seq, log_pos=at),
        *outbox_rows([r], at + 1),
        B.xid(seq, log_pos=at + 3),
    ]


def feed_all(p: BinlogParser, *evs: bytes) -> tuple[list[object], list[BinlogPosition]]:
    """Feed, handing over after every event: records and commit positions handed over."""
    records: list[object] = []
    positions: list[BinlogPosition] = []
    data = B.stream(B.format_description(checksum=True), *evs)
    pos = 0
    while pos < len(data):
        pos = p.feed(data[: pos + 1 + int.from_bytes(data[pos : pos + 3], "little") + 3], pos)
        if p.commits:
            got, at = p.take_committed()
            records += got
            positions.append(at)
    return records, positions


def test_mariadb_prepare_then_rollback_is_never_published() -> None:
    rolled_back, other = row(aggregateid="rolled-back"), row(aggregateid="other")
    p = parser(gtid="0-1-60016")
    records, positions = feed_all(
        p,
        M[385],  # GTID of the XA PREPARE group, xid 'xa1'
        *outbox_rows([rolled_back], 500),
        M[545],  # XA END
        M[636],  # XA_PREPARE
        *plain_txn(other, 60100, 660),  # committed while 'xa1' waits
        M[675],  # GTID of the outcome
        M[720],  # XA ROLLBACK X'786131',X'',1
    )
    assert records == [expected(other)]
    before = BinlogPosition(file=FILE, pos=4, gtid="0-1-60016")
    # While 'xa1' waits every commit position is the one before it; then on.
    assert positions[:-1] == [before] * (len(positions) - 1)
    assert positions[-1] == BinlogPosition(file=FILE, pos=816, gtid="0-1-60018")
    assert not p.holding


def test_mariadb_prepare_then_commit_publishes_at_the_commit_in_commit_order() -> None:
    xa, first, between = row(aggregateid="xa"), row(aggregateid="first"), row(aggregateid="b")
    p = parser(gtid="0-1-0")
    records, positions = feed_all(
        p,
        *plain_txn(first, 10, 700),
        M[816],  # GTID, xid 'xa2','bq',7
        *outbox_rows([xa, xa], 900),
        M[978],
        M[1073],  # XA_PREPARE
        *plain_txn(between, 60019, 1080),
        M[1114],
        M[1161],  # XA COMMIT X'786132',X'6271',7
    )
    assert records == [expected(first), expected(between), expected(xa), expected(xa)]
    assert positions[0] == BinlogPosition(file=FILE, pos=703, gtid="0-1-10")
    assert all(at.pos == 703 for at in positions[1:-1])  # held before 'xa2'
    assert positions[-1] == BinlogPosition(file=FILE, pos=1259, gtid="0-1-60020")


def test_a_held_group_resumes_where_a_new_parser_reads_it_again() -> None:
    """A restart between PREPARE and COMMIT: the checkpoint is before the PREPARE,
    so the next parser (from there) reads the rows again and publishes them."""
    xa = row(aggregateid="xa")
    prepare = [M[816], *outbox_rows([xa], 900), M[978], M[1073]]
    p = parser(gtid="0-1-0")
    records, positions = feed_all(p, *plain_txn(row(), 5, 700), *prepare)
    resume = positions[-1]
    assert resume == BinlogPosition(file=FILE, pos=703, gtid="0-1-5") and p.holding
    again = parser(gtid=resume.gtid)
    records, positions = feed_all(again, *prepare, M[1114], M[1161])
    assert records == [expected(xa)] and positions[-1].pos == 1259


def test_rows_of_a_prepared_group_are_never_handed_over_before_the_outcome() -> None:
    """A group larger than a batch: open rows of an XA group are not for take_open."""
    rs = [row(aggregateid=str(i)) for i in range(5)]
    p = parser(cap=2)
    data = B.stream(B.format_description(checksum=True), M[816], *outbox_rows(rs, 900))
    assert p.feed(data, 0) == len(data)
    assert p.open_rows == 0 and not p.full and p.take_open() == []
    rest = B.stream(M[978], M[1073], M[1114], M[1161])
    p.feed(rest, 0)
    assert p.take_committed()[0] == [expected(r) for r in rs]


def mysql_xa(
    rs: list[dict[str, object]], gno: int, at: int, *, one_phase: bool = False
) -> list[bytes]:
    xid = (1, b"order-7", b"")
    return [
        B.mysql_gtid(b"\x01" * 16, gno, log_pos=at),
        B.query("XA START X'6f726465722d37',X'',1", log_pos=at + 1),
        *outbox_rows(rs, at + 2),
        B.query("XA END X'6f726465722d37',X'',1", log_pos=at + 4),
        B.xa_prepare(xid, one_phase=one_phase, log_pos=at + 5),
    ]


@pytest.mark.parametrize("committed", [True, False], ids=["commit", "rollback"])
def test_mysql_xa_outcome(committed: bool) -> None:
    xa, other = row(aggregateid="xa"), row(aggregateid="other")
    p = parser(mariadb=False)
    verb = "COMMIT" if committed else "ROLLBACK"
    records, positions = feed_all(
        p,
        *mysql_xa([xa], 1, 100),
        B.mysql_gtid(b"\x01" * 16, 2, log_pos=200),
        B.query("BEGIN", log_pos=201),
        *outbox_rows([other], 202),
        B.xid(2, log_pos=204),
        B.mysql_gtid(b"\x01" * 16, 3, log_pos=300),
        B.query(f"XA {verb} X'6f726465722d37',X'',1", log_pos=301),
    )
    assert records == [expected(other)] + ([expected(xa)] if committed else [])
    assert [at.pos for at in positions] == [4] * (len(positions) - 1) + [301]


def test_mysql_xa_commit_one_phase_is_an_ordinary_commit() -> None:
    xa = row()
    records, positions = feed_all(parser(mariadb=False), *mysql_xa([xa], 1, 100, one_phase=True))
    assert records == [expected(xa)] and positions[-1].pos == 105


def test_outcomes_of_groups_not_held_are_commit_points_and_unreadable_ones_stop() -> None:
    p = parser()
    records, positions = feed_all(p, M[1114], M[1161])  # its PREPARE was before the start
    assert records == [] and positions[-1].pos == 1259
    with pytest.raises(OutboxError, match="XA transaction id"):
        feed_all(parser(), B.query("XA COMMIT 'not as a server logs it'", log_pos=50))


def test_many_tables_count_held_rows_when_released() -> None:
    xa = row()
    p = parser(tables=[("app", "outbox"), ("app", "other")])
    records, _ = feed_all(p, M[816], *outbox_rows([xa], 900), M[978], M[1073], M[1114], M[1161])
    assert records == [expected(xa)] and p.handed_tables == {"app.outbox": 1}
