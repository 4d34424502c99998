"""The outbox table: DDL on each dialect, keys, and the real MariaDB column types."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.schema import CreateTable

from transactional_outbox import OutboxMixin, outbox_table

from .conftest import Stack


def ddl(table: sa.Table, dialect: sa.Dialect) -> str:
    return " ".join(str(CreateTable(table).compile(dialect=dialect)).split())


@pytest.mark.parametrize(
    ("dialect", "expected"),
    [
        (
            mysql.dialect(),
            "id BINARY(16) NOT NULL, aggregatetype VARCHAR(255) NOT NULL, "
            "aggregateid VARCHAR(255) NOT NULL, type VARCHAR(255) NOT NULL, "
            "payload LONGBLOB NOT NULL, headers TEXT, timestamp DATETIME(6) NOT NULL",
        ),
        (
            sa.create_engine("mariadb+pymysql://").dialect,
            "id BINARY(16) NOT NULL, aggregatetype VARCHAR(255) NOT NULL, "
            "aggregateid VARCHAR(255) NOT NULL, type VARCHAR(255) NOT NULL, "
            "payload LONGBLOB NOT NULL, headers TEXT, timestamp DATETIME(6) NOT NULL",
        ),
        (
            postgresql.dialect(),
            "id BYTEA NOT NULL, aggregatetype VARCHAR(255) NOT NULL, "
            "aggregateid VARCHAR(255) NOT NULL, type VARCHAR(255) NOT NULL, "
            "payload BYTEA NOT NULL, headers TEXT, "
            "timestamp TIMESTAMP WITHOUT TIME ZONE NOT NULL",
        ),
        (
            sqlite.dialect(),
            "id BLOB NOT NULL, aggregatetype VARCHAR(255) NOT NULL, "
            "aggregateid VARCHAR(255) NOT NULL, type VARCHAR(255) NOT NULL, "
            "payload BLOB NOT NULL, headers TEXT, timestamp DATETIME NOT NULL",
        ),
    ],
    ids=["mysql", "mariadb", "postgresql", "sqlite"],
)
def test_ddl_per_dialect(dialect: sa.Dialect, expected: str) -> None:
    text = ddl(outbox_table(sa.MetaData()), dialect)
    assert f"CREATE TABLE outbox ( {expected}, PRIMARY KEY (id) )" in text


def test_name_schema_and_snake_case_keys() -> None:
    table = outbox_table(sa.MetaData(), name="events_out", schema="shop")
    assert table.fullname == "shop.events_out"
    assert table.c.keys() == [
        "id",
        "aggregate_type",
        "aggregate_id",
        "event_type",
        "payload",
        "headers",
        "timestamp",
    ]
    assert [c.name for c in table.c] == [
        "id",
        "aggregatetype",
        "aggregateid",
        "type",
        "payload",
        "headers",
        "timestamp",
    ]
    assert "CREATE TABLE shop.events_out" in ddl(table, postgresql.dialect())


def test_declarative_mixin_maps_the_same_table() -> None:
    class Base(DeclarativeBase):
        pass

    class Outbox(OutboxMixin, Base):
        pass

    class Renamed(OutboxMixin, Base):
        __tablename__ = "my_outbox"

    core = ddl(outbox_table(sa.MetaData()), mysql.dialect())
    assert ddl(Outbox.__table__, mysql.dialect()) == core
    assert Renamed.__table__.name == "my_outbox"
    assert Outbox.aggregate_type.property.columns[0].name == "aggregatetype"
    assert Outbox.event_type.property.columns[0].name == "type"


def test_mariadb_creates_the_contract_types(stack: Stack, database: str, engine: sa.Engine) -> None:
    outbox_table(sa.MetaData()).create(engine)
    with stack.mysql_connect(database) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT column_name, column_type, is_nullable, column_key FROM"
            " information_schema.columns WHERE table_schema = %s AND table_name = 'outbox'"
            " ORDER BY ordinal_position",
            (database,),
        )
        columns = [tuple(row) for row in cur.fetchall()]
        cur.execute(
            "SELECT engine, table_collation FROM information_schema.tables"
            " WHERE table_schema = %s AND table_name = 'outbox'",
            (database,),
        )
        engine_name, collation = cur.fetchone()
    assert columns == [
        ("id", "binary(16)", "NO", "PRI"),
        ("aggregatetype", "varchar(255)", "NO", ""),
        ("aggregateid", "varchar(255)", "NO", ""),
        ("type", "varchar(255)", "NO", ""),
        ("payload", "longblob", "NO", ""),
        ("headers", "text", "YES", ""),
        ("timestamp", "datetime(6)", "NO", ""),
    ]
    assert engine_name == "InnoDB"
    assert collation.startswith("utf8mb4")
