"""Statement-logged writes to an outbox table stop the parser; other statements do not.

The statement matcher on SQL text (pure), then the parser on hand-built and
captured MariaDB events: the error names binlog_format, the table and where
the transaction starts and ends, and nothing of that transaction is committed
(what committed before it is still handed over).
"""

from __future__ import annotations

import pytest

from transactional_outbox.exceptions import OutboxError, ServerConfigurationError
from transactional_outbox.relay.mysql.binlog.events import BinlogParser
from transactional_outbox.relay.mysql.binlog.outboxtables import OutboxTables
from transactional_outbox.relay.mysql.binlog.statements import written_tables
from transactional_outbox.relay.position import BinlogPosition

from . import _binlog_bytes as B
from .test_relay_rowdecoder import ROUTER, encode_row, expected, row

COLS = B.OUTBOX_COLUMNS


@pytest.mark.parametrize(
    ("sql", "tables"),
    [
        ("INSERT INTO outbox VALUES (1)", [(None, "outbox")]),
        ("insert into OUTBOX values (1)", [(None, "OUTBOX")]),
        ("INSERT outbox SET a = 1", [(None, "outbox")]),
        ("INSERT LOW_PRIORITY IGNORE INTO app.outbox (a) VALUES (1)", [("app", "outbox")]),
        ("INSERT /* hi */ INTO `app` . `out``box` VALUES (1)", [("app", "out`box")]),
        ('INSERT INTO "app"."outbox" VALUES (1)', [("app", "outbox")]),
        ("/*!40000 INSERT */ INTO outbox VALUES (1)", [(None, "outbox")]),
        ("-- a comment\n# another\nREPLACE INTO outbox VALUES (1)", [(None, "outbox")]),
        ("INSERT INTO outbox_archive SELECT * FROM outbox", [(None, "outbox_archive")]),
        ("UPDATE outbox SET a = 1", [(None, "outbox")]),
        ("UPDATE LOW_PRIORITY IGNORE app.outbox SET a = 1", [("app", "outbox")]),
        (
            "UPDATE orders o JOIN outbox x ON o.id = x.id AND x.n IN (1, 2) SET o.a = 1",
            [(None, "orders"), (None, "outbox")],
        ),
        ("UPDATE orders, (SELECT id FROM outbox) s SET orders.a = s.id", [(None, "orders")]),
        ("UPDATE orders USE INDEX (outbox) SET a = 1", [(None, "orders")]),
        ("WITH c AS (SELECT 1) UPDATE outbox SET a = 1", [(None, "outbox")]),
        ("WITH c AS (SELECT * FROM outbox) SELECT * FROM c", []),
        ("DELETE FROM outbox WHERE id = 1", [(None, "outbox")]),
        ("DELETE QUICK IGNORE FROM app.outbox ORDER BY id LIMIT 1", [("app", "outbox")]),
        ("DELETE FROM outbox_old WHERE id IN (SELECT id FROM outbox)", [(None, "outbox_old")]),
        (
            "DELETE o FROM orders o JOIN outbox x USING (id)",
            [(None, "o"), (None, "orders"), (None, "outbox")],
        ),
        (
            "DELETE FROM a, b USING a JOIN b USING (id) WHERE 1",
            [(None, "a"), (None, "b"), (None, "a"), (None, "b")],
        ),
        (
            "LOAD DATA LOCAL INFILE '/tmp/x INTO TABLE y' IGNORE INTO TABLE outbox",
            [(None, "outbox")],
        ),
        ("load xml infile 'f' into table app.outbox", [("app", "outbox")]),
        # not writes of rows: transaction control, DDL, reads
        ("BEGIN", []),
        ("COMMIT", []),
        ("XA START X'786131',X'',1", []),
        ("SAVEPOINT s1", []),
        ("ALTER TABLE outbox ADD COLUMN x INT", []),
        ("CREATE TABLE outbox (id BINARY(16))", []),
        ("DROP TABLE outbox", []),
        ("TRUNCATE TABLE outbox", []),
        ("RENAME TABLE outbox TO outbox_old", []),
        ("SELECT * FROM outbox", []),
        ("", []),
    ],
)
def test_the_tables_a_statement_writes(sql: str, tables: list[object]) -> None:
    assert written_tables(sql) == tables


def outbox_tables(**kw: object) -> OutboxTables:
    args: dict[str, object] = {"schema": "app", "table": "outbox", "router": ROUTER, "layouts": {}}
    return OutboxTables(**{**args, **kw})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("sql", "db", "where"),
    [
        (b"INSERT INTO outbox VALUES (1)", b"app", "`app`.`outbox`"),
        (b"INSERT INTO Outbox VALUES (1)", b"APP", "`APP`.`Outbox`"),  # lower_case_table_names
        (b"INSERT INTO app.outbox VALUES (1)", b"other", "`app`.`outbox`"),
        (b"INSERT INTO outbox VALUES (1)", b"other", None),  # other.outbox
        (b"INSERT INTO other.outbox VALUES (1)", b"app", None),
        (b"INSERT INTO outbox_archive VALUES (1)", b"app", None),
        (b"INSERT INTO outbox2 VALUES (1)", b"app", None),
        (b"TRUNCATE outbox", b"app", None),
        (b"INSERT INTO app.outbox VALUES (1)", b"", "`app`.`outbox`"),
    ],
)
def test_an_outbox_table_is_matched_with_the_default_schema(
    sql: bytes, db: bytes, where: str | None
) -> None:
    assert outbox_tables().written(sql, db) == where


def test_many_tables_by_list_and_pattern() -> None:
    t = outbox_tables(tables=[("app", "outbox"), ("billing", "events")], pattern=r"t\d+\.outbox")
    assert t.written(b"INSERT INTO events VALUES (1)", b"billing") == "`billing`.`events`"
    assert t.written(b"INSERT INTO events VALUES (1)", b"app") is None
    assert t.written(b"INSERT INTO t7.OUTBOX VALUES (1)", b"x") == "`t7`.`OUTBOX`"
    assert t.written(b"INSERT INTO t7.outbox_x VALUES (1)", b"x") is None


def parser(*, mariadb: bool = True, gtid: str | None = None) -> BinlogParser:
    return BinlogParser(
        schema="app",
        table="outbox",
        router=ROUTER,
        start=BinlogPosition(file="bin.000001", pos=4, gtid=gtid),
        is_mariadb=mariadb,
        track_gtid=gtid is not None,
        layouts={},
    )


def committed_txn(seq: int, at: int, r: dict[str, object]) -> list[bytes]:
    """A one-event transaction of row ``r`` logged as rows, ending at ``at + 40``."""
    body = encode_row(r, COLS)
    return [
        B.mariadb_gtid(0, seq, log_pos=at + 10),
        B.table_map(70, "app", "outbox", log_pos=at + 20),
        B.write_rows(70, body, log_pos=at + 30),
        B.xid(seq, log_pos=at + 40),
    ]


def stops(p: BinlogParser, *evs: bytes) -> str:
    """Feed ``evs``; the binlog_format error's text (it must be raised)."""
    with pytest.raises(ServerConfigurationError) as info:
        p.feed(B.stream(B.format_description(checksum=True), *evs), 0)
    assert info.value.setting == "binlog_format"
    return str(info.value)


def test_a_statement_logged_insert_stops_at_its_transactions_end() -> None:
    p = parser(gtid="0-1-0")
    before = row(aggregateid="before")
    text = stops(
        p,
        *committed_txn(1, 100, before),
        B.mariadb_gtid(0, 2, log_pos=200),
        B.query("INSERT INTO outbox VALUES (0x01, 'o', 'a', 't', 'p', '{}', NOW())", log_pos=300),
        B.xid(2, log_pos=340),
        *committed_txn(3, 400, row()),
    )
    # one line naming the setting, the table, where it starts and where to start after it
    assert "\n" not in text
    assert "the transaction after bin.000001:140 wrote `app`.`outbox`" in text
    assert "(at bin.000001:" in text
    assert "binlog_format=ROW" in text and "--start-position bin.000001:340" in text
    # what committed before is still handed over; nothing of it or after it
    assert p.commits == 1
    records, at = p.take_committed()
    assert records == [expected(before)]
    assert at == BinlogPosition(file="bin.000001", pos=140, gtid="0-1-1")


def test_mixed_rows_and_a_statement_in_one_transaction_stop_with_none_of_it() -> None:
    p = parser()
    body = encode_row(row(aggregateid="row-logged"), COLS)
    stops(
        p,
        B.mariadb_gtid(0, 2, log_pos=200),
        B.table_map(70, "app", "outbox", log_pos=210),
        B.write_rows(70, body, log_pos=220),
        B.query("insert into `app`.`outbox` values (1)", db="other", log_pos=300),
        B.xid(2, log_pos=340),
    )
    assert p.commits == 0 and p.committed == 0


def test_mysql_statement_in_begin_commit_and_load_data_stop() -> None:
    stops(
        parser(mariadb=False),
        B.mysql_gtid(b"\x01" * 16, 5, log_pos=100),
        B.query("BEGIN", log_pos=150),
        B.query("REPLACE INTO outbox VALUES (1)", log_pos=200),
        B.query("COMMIT", log_pos=250),
    )
    stops(
        parser(),
        B.mariadb_gtid(0, 2, log_pos=200),
        B.query("LOAD DATA INFILE 'f' INTO TABLE outbox", load=True, log_pos=300),
        B.xid(2, log_pos=340),
    )


def test_a_statement_of_its_own_group_stops_at_once() -> None:
    text = stops(
        parser(),
        B.mariadb_gtid(0, 2, log_pos=200, standalone=True),
        B.query("DELETE FROM outbox", log_pos=300),
    )
    assert "--start-position bin.000001:300" in text


def test_statements_that_write_no_outbox_rows_pass() -> None:
    p = parser()
    evs = [B.format_description(checksum=True)]
    at = 100
    for sql, db in [
        ("TRUNCATE TABLE outbox", "app"),
        ("ALTER TABLE outbox ADD COLUMN x INT", "app"),
        ("INSERT INTO outbox_archive SELECT * FROM outbox", "app"),
        ("INSERT INTO outbox VALUES (1)", "other"),
        ("UPDATE orders SET a = 1", "app"),
        ("SAVEPOINT s1", "app"),
    ]:
        evs += [
            B.mariadb_gtid(0, at, log_pos=at, standalone=True),
            B.query(sql, db=db, log_pos=at + 5),
        ]
        at += 10
    # a statement-logged write rolled back (with non-transactional changes) lost nothing
    after = row()
    evs += [
        B.mariadb_gtid(0, 900, log_pos=900),
        B.query("INSERT INTO outbox VALUES (1)", log_pos=905),
        B.query("ROLLBACK", log_pos=910),
        *committed_txn(901, 1000, after),
    ]
    data = B.stream(*evs)
    assert p.feed(data, 0) == len(data)
    records, at_ = p.take_committed()
    assert records == [expected(after)] and at_.pos == 1040


def test_a_statement_logged_insert_as_mariadb_wrote_it() -> None:
    """MariaDB 10.11's own events for an INSERT of a STATEMENT session (db outbox)."""
    m = B.MARIADB_10_11
    p = BinlogParser(
        schema="outbox",
        table="xa_probe",
        router=ROUTER,
        start=BinlogPosition(file="mysql-bin.000002", pos=1445),
        is_mariadb=True,
        track_gtid=False,
        layouts={},
    )
    data = B.stream(B.format_description(checksum=True), m[1445], m[1487], m[1519], m[1626])
    with pytest.raises(ServerConfigurationError) as info:
        p.feed(data, 0)
    text = str(info.value)
    assert "after mysql-bin.000002:1445 wrote `outbox`.`xa_probe`" in text
    assert "(at mysql-bin.000002:1519)" in text
    assert "--start-position mysql-bin.000002:1657" in text


# MariaDB 10.11 with log_bin_compress=ON, a STATEMENT session, db app: GTID 0-1-6,
# QUERY_COMPRESSED "INSERT INTO outbox VALUES (1, 'xxx...')" (400 x), XID; log_pos
# 1157, 1272, 1303 in mysql-bin.000001.
COMPRESSED_INSERT = bytes.fromhex(
    "e23e116ba50100000073000000f8040000000007000000000000000300001a000000000001010000"
    "2054000000000603737464042d002d00e000617070008201b1789cf3f40b760d0a51f0f40bf157c8"
    "2f2d49caaf500873f409750d56d030d45150af1805830aa86b0200c36fc49d710b12eb"
)


def test_a_compressed_statement_is_read_too() -> None:
    p = parser()
    text = stops(
        p,
        B.mariadb_gtid(0, 6, log_pos=1157),
        COMPRESSED_INSERT,
        B.xid(16, log_pos=1303),
    )
    assert "`app`.`outbox`" in text and "bin.000001:1157" in text
    damaged = COMPRESSED_INSERT[:-30] + b"\x00" + COMPRESSED_INSERT[-29:]
    with pytest.raises(OutboxError, match="QUERY event at log_pos 1272 fails its CRC32"):
        parser().feed(B.stream(B.format_description(checksum=True), damaged), 0)
