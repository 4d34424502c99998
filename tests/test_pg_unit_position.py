"""The PostgreSQL relay's position and checkpoint form, and its settings (no server)."""

from __future__ import annotations

import json
import logging

import pytest

from transactional_outbox import CheckpointError, ConfigurationError
from transactional_outbox.relay import RelaySettings
from transactional_outbox.relay.position import BinlogPosition, decode_checkpoint
from transactional_outbox.relay.postgres.position import LsnPosition

BASE = {"redis_url": "redis://r:6379/0", "kafka_bootstrap_servers": "k:9092"}
PG = "postgresql://relay:s3cret@db:5432/shop"


def test_checkpoint_is_versioned_json_naming_the_cluster_and_round_trips() -> None:
    position = LsnPosition(lsn=(1 << 32) + 0x1948948, system="7301", timeline=1)
    data = json.loads(position.encode())
    assert data["v"] == 2 and data["db"] == "postgresql" and data["lsn"] == "1/1948948"
    assert data["system"] == "7301" and data["timeline"] == 1
    assert decode_checkpoint(position.encode()) == position
    assert str(position) == "1/1948948" and position.resumable
    assert not LsnPosition(lsn=0).resumable


@pytest.mark.parametrize(
    "raw",
    [
        '{"v": 2, "db": "postgresql", "lsn": "nope"}',
        '{"v": 2, "db": "postgresql", "lsn": "0/10", "timeline": 0}',
        '{"v": 2, "db": "oracle", "lsn": "0/10"}',
    ],
)
def test_a_foreign_checkpoint_is_an_error_never_a_guess(raw: str) -> None:
    with pytest.raises(CheckpointError):
        decode_checkpoint(raw)


def test_a_binlog_checkpoint_still_reads_as_one() -> None:
    position = BinlogPosition(file="mysql-bin.000002", pos=400, gtid="0-1-5", server="x")
    assert decode_checkpoint(position.encode()) == position


def test_database_url_names_the_kind_and_postgres_defaults() -> None:
    s = RelaySettings.from_env({}, **BASE, database_url=PG, relay_name="Shop-1")
    assert s.database_kind == "postgresql" and s.schema == "public"
    assert s.tables == (("public", "outbox"),)
    assert s.slot_name == s.publication_name == "outbox_relay_shop_1"
    assert "s3cret" not in repr(s)


def test_the_old_mysql_url_works_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    url = "mysql+pymysql://u:pw@h/app"
    s = RelaySettings.from_env({"OUTBOX_MYSQL_URL": url}, **BASE)
    assert s.database_url == url and s.database_kind == "mysql" and s.schema == "app"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "OUTBOX_DATABASE_URL" in warnings[0]
    caplog.clear()
    # Beside the new name (a shell exporting both), the old one is ignored: the new wins.
    s = RelaySettings.from_env({"OUTBOX_MYSQL_URL": url, "OUTBOX_DATABASE_URL": PG}, **BASE)
    assert s.database_url == PG and s.database_kind == "postgresql"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "ignored" in warnings[0]
    caplog.clear()
    RelaySettings.from_env({"OUTBOX_MYSQL_URL": url, "OUTBOX_DATABASE_URL": url}, **BASE)
    assert [r for r in caplog.records if r.levelno == logging.WARNING] == []
    # A higher source wins whichever name it uses: the old flag beats the new variable.
    s = RelaySettings.from_cli(
        ["--mysql-url", url, "--redis-url", "redis://r", "--kafka-bootstrap-servers", "k:1"],
        {"OUTBOX_DATABASE_URL": PG},
    )
    assert s.database_url == url
    s = RelaySettings.from_cli(
        ["--database-url", PG, "--redis-url", "redis://r", "--kafka-bootstrap-servers", "k:1"],
        {"OUTBOX_MYSQL_URL": url},
    )
    assert s.database_url == PG


@pytest.mark.parametrize(
    ("kw", "setting"),
    [
        ({"database_url": "oracle://h/x"}, "database_url"),
        ({"database_url": "postgresql://h/"}, "database_url"),
        ({"database_url": PG, "start_position": "mysql-bin.000001:4"}, "start_position"),
        ({"database_url": PG, "canary_interval_ms": 1000}, "canary_interval_ms"),
        ({"database_url": PG, "pg_slot": "Bad-Name"}, "pg_slot"),
        ({"database_url": PG, "outbox_table": ""}, "outbox_table"),
        (
            {"database_url": "mysql+pymysql://h/db", "pg_message_prefixes": "x"},
            "pg_message_prefixes",
        ),
        ({"database_url": "mysql+pymysql://h/db", "pg_publication": "p"}, "pg_publication"),
        (
            {"database_url": PG, "pg_message_prefixes": "a,b", "pg_other_message_prefixes": "b"},
            "pg_other_message_prefixes",
        ),
    ],
)
def test_settings_a_postgres_relay_cannot_use_name_themselves(
    kw: dict[str, object], setting: str
) -> None:
    with pytest.raises(ConfigurationError) as info:
        RelaySettings.from_env({}, **BASE, **kw)  # type: ignore[arg-type]
    assert info.value.setting == setting


def test_message_only_outbox_needs_no_table() -> None:
    s = RelaySettings.from_env(
        {}, **BASE, database_url=PG, outbox_table="", pg_message_prefixes="billing, shop"
    )
    assert s.tables == () and s.pg_message_prefixes == ("billing", "shop")


def test_progress_line_and_health_name_postgresql_and_the_wal_the_slot_keeps() -> None:
    from transactional_outbox.relay.stats import RelayStats

    stats = RelayStats(database_kind="postgresql", database="ok", slot_retained_bytes=123)
    line = stats.progress_line(0)
    assert "slot keeps 123 B" in line and "postgresql ok" in line and "mysql" not in line
    assert stats.health()["postgresql"] == "ok" and "mysql" not in stats.health()
    assert "slot keeps" not in RelayStats().progress_line(0)
