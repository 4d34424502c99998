"""Many outbox tables (issue 19), the pure parts: settings, routing, the parser on
hand-built binlog bytes, per-table counts through the watermark and the stats."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from transactional_outbox import KafkaConnection
from transactional_outbox.exceptions import ConfigurationError
from transactional_outbox.relay.channel import SourceBatch
from transactional_outbox.relay.config import RelaySettings
from transactional_outbox.relay.deadletter import dead_letter_record, rejection_reason
from transactional_outbox.relay.metrics import RelayMetrics
from transactional_outbox.relay.mysql.binlog.events import BinlogParser
from transactional_outbox.relay.mysql.reader_process import decode_message, encode_batch
from transactional_outbox.relay.mysql.rowdecoder import ColumnSpec, RejectedRow
from transactional_outbox.relay.position import BinlogPosition
from transactional_outbox.relay.routing import KafkaRecord, TopicRouter
from transactional_outbox.relay.stats import RelayStats
from transactional_outbox.relay.watermark import Watermark

from . import _binlog_bytes as B
from .test_relay_rowdecoder import encode_row, row

CONN = {
    "database_url": "mysql+pymysql://outbox:pw@127.0.0.1:13306/outbox",
    "kafka": KafkaConnection(bootstrap_servers="127.0.0.1:19092"),
    "redis_url": "redis://127.0.0.1:16379/0",
}
COLS = B.OUTBOX_COLUMNS
ROUTER = TopicRouter(template="t.{schema}.{aggregatetype}")


def settings(**kw: Any) -> RelaySettings:
    return RelaySettings(**{**CONN, **kw})


# -- settings ----------------------------------------------------------------------


def test_one_table_by_default_unchanged() -> None:
    s = settings()
    assert not s.multi_table
    assert s.tables == (("outbox", "outbox"),)
    assert s.table_pattern is None


def test_outbox_tables_from_env_and_flags() -> None:
    s = RelaySettings.from_env({**_env(), "OUTBOX_OUTBOX_TABLES": " a.outbox, b.events ,"})
    assert s.outbox_tables == ("a.outbox", "b.events")
    assert s.tables == (("a", "outbox"), ("b", "events"))
    assert s.multi_table
    s = RelaySettings.from_cli(
        ["--outbox-tables", "c.o", "--outbox-table-pattern", r"mt_\w+\.outbox"], _env()
    )
    assert s.tables == (("c", "o"),)
    assert s.table_pattern is not None and s.table_pattern.fullmatch("mt_x.outbox")
    # Text given as a keyword is split like the variable's value.
    assert settings(outbox_tables="x.y,z.w").outbox_tables == ("x.y", "z.w")


def test_pattern_alone_needs_no_database_in_the_url() -> None:
    s = settings(database_url="mysql+pymysql://u:p@h:3306", outbox_table_pattern=r".*\.outbox")
    assert s.tables == ()


@pytest.mark.parametrize("name", ["outbox", "a.b.c", ".b", "a.", "."])
def test_bad_table_name_names_outbox_tables(name: str) -> None:
    with pytest.raises(ConfigurationError, match="outbox_tables") as err:
        settings(outbox_tables=(name,))
    assert repr(name) in str(err.value)


def test_bad_pattern_names_the_setting_and_value() -> None:
    with pytest.raises(ConfigurationError, match=r"outbox_table_pattern.*'\(a'"):
        settings(outbox_table_pattern="(a")


@pytest.mark.parametrize("kw", [{"outbox_schema": "s"}, {"outbox_table": "events"}])
@pytest.mark.parametrize("many", [{"outbox_tables": ("a.b",)}, {"outbox_table_pattern": "a"}])
def test_many_tables_with_one_table_settings_is_an_error(
    kw: dict[str, str], many: dict[str, Any]
) -> None:
    with pytest.raises(ConfigurationError) as err:
        settings(**kw, **many)
    text = str(err.value)
    assert "outbox_tables" in text and "outbox_schema" in text and "outbox_table " in text


def _env() -> dict[str, str]:
    return {
        "OUTBOX_DATABASE_URL": str(CONN["database_url"]),
        "OUTBOX_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:19092",
        "OUTBOX_REDIS_URL": str(CONN["redis_url"]),
    }


# -- routing -----------------------------------------------------------------------


def test_template_schema_and_table_placeholders() -> None:
    r = TopicRouter(template="{schema}.{table}.{aggregatetype}")
    assert r.topic("order", "shop", "outbox") == "shop.outbox.order"
    assert r.topic("order", "crm", "outbox") == "crm.outbox.order"


def test_override_precedence_table_and_type_then_table_then_type() -> None:
    r = TopicRouter(
        template="ev.{schema}.{aggregatetype}",
        overrides={
            "order": "orders",
            "shop.outbox:*": "shop-all",
            "shop.outbox:order": "shop-orders",
            "crm.outbox:order": "crm-orders",
        },
    )
    assert r.topic("order", "shop", "outbox") == "shop-orders"
    assert r.topic("customer", "shop", "outbox") == "shop-all"
    assert r.topic("order", "crm", "outbox") == "crm-orders"
    assert r.topic("customer", "crm", "outbox") == "ev.crm.customer"
    assert r.topic("order", "billing", "outbox") == "orders"
    assert r.topic("order") == "orders"  # no table: type overrides as before


def test_a_type_key_with_a_colon_but_no_table_stays_a_type() -> None:
    r = TopicRouter(overrides={"urn:order": "orders", "a.b.c:x": "abc"})
    assert r.topic("urn:order", "s", "t") == "orders"
    assert r.topic("a.b.c:x", "s", "t") == "abc"


def test_bad_template_placeholder_names_topic_template() -> None:
    with pytest.raises(ConfigurationError, match=r"topic_template.*schema"):
        TopicRouter(template="x.{database}")


def test_bad_table_override_topic_names_topic_overrides() -> None:
    with pytest.raises(ConfigurationError, match=r"topic_overrides.*shop\.outbox:order"):
        TopicRouter(overrides={"shop.outbox:order": "bad topic"})


# -- the parser ----------------------------------------------------------------------


def parser(**kw: Any) -> BinlogParser:
    return BinlogParser(
        schema="",
        table="",
        router=ROUTER,
        start=BinlogPosition(file="bin.000001", pos=4),
        is_mariadb=True,
        track_gtid=False,
        layouts={},
        **kw,
    )


def txn(seq: int, at: int, *writes: tuple[int, str, str, bytes]) -> list[bytes]:
    """One transaction: a TABLE_MAP and WRITE_ROWS per (table id, schema, table, rows)."""
    evs = [B.mariadb_gtid(0, seq, log_pos=at + 10)]
    for i, (tid, schema, table, rows) in enumerate(writes):
        evs.append(B.table_map(tid, schema, table, log_pos=at + 20 + i * 20))
        evs.append(B.write_rows(tid, rows, log_pos=at + 30 + i * 20))
    evs.append(B.xid(seq, log_pos=at + 100))
    return evs


def stream(*events: bytes) -> bytes:
    """The dump reply for ``events``, after the file's FORMAT_DESCRIPTION (checksums on)."""
    return B.stream(B.format_description(checksum=True), *events)


def feed_all(p: BinlogParser, data: bytes) -> list[tuple[list[Any], dict[str, int] | None]]:
    out = []
    pos = p.feed(data, 0)
    while p.commits:
        records, _ = p.take_committed()
        out.append((records, p.handed_tables))
        pos = p.feed(data, pos)
    assert pos == len(data)
    return out


def test_two_listed_tables_and_a_pattern_route_by_schema_and_count_by_table() -> None:
    a, b, c, other = (row(aggregateid=f"a-{i}") for i in range(4))
    data = stream(
        *txn(1, 1000, (70, "s1", "outbox", encode_row(a, COLS))),
        # One transaction writing two services' outbox tables, and an unrelated table
        # with the same layout: only the outbox tables' rows count.
        *txn(
            2,
            2000,
            (71, "s2", "outbox", encode_row(b, COLS)),
            (72, "other", "outbox", encode_row(other, COLS)),
            (73, "mt_new", "outbox", encode_row(c, COLS)),
        ),
    )
    p = parser(tables=(("s1", "outbox"), ("s2", "outbox")), pattern=r"mt_\w+\.outbox")
    got = feed_all(p, data)
    records = [r for batch, _ in got for r in batch]
    assert [r.topic for r in records] == ["t.s1.order", "t.s2.order", "t.mt_new.order"]
    assert [r.key for r in records] == [b"a-0", b"a-1", b"a-2"]
    # Both commits in one hand-over (both were read before the first take).
    assert got[0][1] == {"s1.outbox": 1, "s2.outbox": 1, "mt_new.outbox": 1}


def test_counts_split_at_the_commit_and_across_open_hand_overs() -> None:
    rows = [row(aggregateid=f"k{i}") for i in range(5)]
    data = stream(
        *txn(1, 1000, (70, "s1", "outbox", encode_row(rows[0], COLS))),
        B.mariadb_gtid(0, 2, log_pos=2010),
        B.table_map(71, "s2", "outbox", log_pos=2020),
        B.write_rows(71, b"".join(encode_row(r, COLS) for r in rows[1:4]), log_pos=2030),
    )
    p = parser(tables=(("s1", "outbox"), ("s2", "outbox")))
    p.feed(data, 0)
    records, _ = p.take_committed()
    assert len(records) == 1 and p.handed_tables == {"s1.outbox": 1}
    assert len(p.take_open()) == 3 and p.handed_tables == {"s2.outbox": 3}


def test_a_table_id_remapped_to_another_table_stops_being_read() -> None:
    a, b = row(aggregateid="a"), row(aggregateid="b")
    data = stream(
        *txn(1, 1000, (70, "s1", "outbox", encode_row(a, COLS))),
        *txn(2, 2000, (70, "elsewhere", "outbox", encode_row(b, COLS))),
        *txn(3, 3000, (70, "s2", "outbox", encode_row(b, COLS))),
    )
    got = feed_all(parser(tables=(("s1", "outbox"), ("s2", "outbox"))), data)
    assert [r.topic for batch, _ in got for r in batch] == ["t.s1.order", "t.s2.order"]


def test_pattern_evaluated_once_per_name() -> None:
    p = parser(pattern=r"s\d\.outbox")
    real = p.outbox.pattern
    assert real is not None
    seen: list[str] = []

    class Spy:
        def fullmatch(self, text: str) -> Any:
            seen.append(text)
            return real.fullmatch(text)

    p.outbox.pattern = Spy()  # type: ignore[assignment]
    evs = []
    for i in range(1, 7):
        evs += txn(i, 1000 * i, (70 + i % 2, f"s{i % 2}", "outbox", encode_row(row(), COLS)))
        evs += txn(i, 1000 * i + 500, (80, "noise", "orders", encode_row(row(), COLS)))
    got = feed_all(p, stream(*evs))
    assert len([r for batch, _ in got for r in batch]) == 6
    assert sorted(seen) == ["noise.orders", "s0.outbox", "s1.outbox"]


def test_pattern_matched_table_with_wrong_columns_rejects_rows_naming_the_table(
    caplog: pytest.LogCaptureFixture,
) -> None:
    wrong = [c for c in COLS if c.name != "payload"] + [ColumnSpec("body", 252, length_size=4)]
    bad = row(aggregateid="bad")
    bad["body"] = bad.pop("payload")
    data = stream(
        B.mariadb_gtid(0, 1, log_pos=1010),
        B.table_map(90, "mt_bad", "outbox", wrong, log_pos=1020),
        B.write_rows(90, encode_row(bad, wrong), log_pos=1030),
        B.xid(1, log_pos=1100),
    )
    got = feed_all(parser(pattern=r"mt_\w+\.outbox"), data)
    [[rejected]] = [batch for batch, _ in got]
    assert isinstance(rejected, RejectedRow)
    assert rejected.table == "mt_bad.outbox"
    assert rejected.aggregate_id == "bad"
    reason = rejection_reason(rejected, rejected.reason)
    assert "`mt_bad`.`outbox`" in reason and "payload" in reason
    assert "`mt_bad`.`outbox` cannot hold outbox events" in caplog.text
    letter = dead_letter_record(rejected, reason, topic="dlq", now_ms=1)
    assert b'"table": "mt_bad.outbox"' in letter.value


def test_one_table_parser_keeps_its_topic_placeholders() -> None:
    p = BinlogParser(
        schema="app",
        table="outbox",
        router=TopicRouter(template="{schema}.{table}.{aggregatetype}"),
        start=BinlogPosition(file="bin.000001", pos=4),
        is_mariadb=True,
        track_gtid=False,
        layouts={},
    )
    got = feed_all(p, stream(*txn(1, 1000, (70, "app", "outbox", encode_row(row(), COLS)))))
    assert got[0][0][0].topic == "app.outbox.order"
    assert got[0][1] is None  # one table: no per-table counts


# -- counts through the pipe, the watermark and the views -------------------------


def test_counts_cross_the_reader_pipe() -> None:
    record = KafkaRecord("t", b"k", b"v", [("id", str(uuid.uuid4()).encode())], 1)
    batch = SourceBatch([record], BinlogPosition(file="f", pos=9), {"a.o": 1})
    kind, back = decode_message(encode_batch(batch))
    assert kind == "batch" and back.tables == {"a.o": 1} and back.records == [record]


def test_watermark_counts_tables_when_their_segment_is_acknowledged() -> None:
    done: dict[str, int] = {}
    wm = Watermark(BinlogPosition(file="f", pos=4), done)
    t1 = wm.add_events(3, {"a.o": 2, "b.o": 1})
    wm.commit(BinlogPosition(file="f", pos=10))
    t2 = wm.add_events(1, {"b.o": 1})
    wm.ack(t2)
    assert done == {}  # the first segment still waits
    wm.ack(t1, 3)
    assert done == {"a.o": 2, "b.o": 1}  # the second is still open (no commit yet)
    wm.commit(BinlogPosition(file="f", pos=20))
    assert done == {"a.o": 2, "b.o": 2}


def test_progress_line_and_metrics_break_counts_down_by_table() -> None:
    stats = RelayStats()
    assert "published," in stats.progress_line(0.0)  # one table: the line as before
    assert b"table_events" not in RelayMetrics(stats).render()
    stats.by_table.update({"s2.outbox": 80, "s1.outbox": 120})
    stats.published = 200
    assert "200 published (s1.outbox 120, s2.outbox 80)," in stats.progress_line(0.0)
    text = RelayMetrics(stats).render().decode()
    assert 'outbox_relay_table_events_published_total{table="s1.outbox"} 120.0' in text
    assert stats.health()["published_by_table"] == {"s1.outbox": 120, "s2.outbox": 80}


def test_a_pattern_matched_table_is_announced_once_across_connections(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Each binlog connection gets a new parser; the source shares the set of tables
    # already logged, so a reconnect does not log them again.
    caplog.set_level("INFO", logger="transactional_outbox")
    data = stream(*txn(1, 1000, (70, "mt_a", "outbox", encode_row(row(), COLS))))
    announced: set[str] = set()
    for _ in range(3):  # three connections
        got = feed_all(parser(pattern=r"mt_\w+\.outbox", announced=announced), data)
        assert len(got[0][0]) == 1
    assert caplog.text.count("reading outbox table `mt_a`.`outbox`") == 1
    assert announced == {"mt_a.outbox"}
