"""The outbox table (DESIGN §1): a Core ``Table`` factory and a declarative mixin.

Column names are Debezium's (``aggregatetype``, ``aggregateid``, ``type``) so
Debezium's EventRouter can read the table; Python keys are snake_case. Types
have variants so one definition creates the right DDL on MySQL/MariaDB
(BINARY/LONGBLOB/DATETIME(6)), PostgreSQL (BYTEA/TIMESTAMP) and SQLite.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import Mapped, declared_attr, mapped_column

from .record_format import COLUMNS

__all__ = ["DEFAULT_TABLE_NAME", "OutboxMixin", "outbox_table"]

DEFAULT_TABLE_NAME = "outbox"
"""Name of the outbox table unless configured otherwise."""

_MYSQL = ("mysql", "mariadb")

# InnoDB: the rows must be transactional. utf8mb4: MariaDB before 11.6 defaults
# to latin1, which cannot hold every aggregate id. Other dialects ignore these.
_TABLE_OPTIONS: dict[str, Any] = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4"}


def _id_type() -> sa.types.TypeEngine[bytes]:
    return sa.LargeBinary(16).with_variant(mysql.BINARY(16), *_MYSQL)


def _payload_type() -> sa.types.TypeEngine[bytes]:
    # Plain BLOB stops at 64 KiB on MySQL; LONGBLOB is what DESIGN §1 promises.
    return sa.LargeBinary().with_variant(mysql.LONGBLOB(), *_MYSQL)


def _timestamp_type() -> sa.types.TypeEngine[datetime]:
    # Naive UTC, as Debezium's reference schema; fsp=6 keeps microseconds on MySQL.
    return sa.DateTime().with_variant(mysql.DATETIME(fsp=6), *_MYSQL)


def _columns() -> list[sa.Column[Any]]:
    # Per column name: Python key, type, nullable. The order is the contract's.
    spec: dict[str, tuple[str, sa.types.TypeEngine[Any], bool]] = {
        "id": ("id", _id_type(), False),
        "aggregatetype": ("aggregate_type", sa.String(255), False),
        "aggregateid": ("aggregate_id", sa.String(255), False),
        "type": ("event_type", sa.String(255), False),
        "payload": ("payload", _payload_type(), False),
        "headers": ("headers", sa.Text(), True),
        "timestamp": ("timestamp", _timestamp_type(), False),
    }
    return [
        sa.Column(name, type_, key=key, nullable=nullable, primary_key=name == "id")
        for name in COLUMNS
        for key, type_, nullable in [spec[name]]
    ]


def outbox_table(
    metadata: sa.MetaData, *, name: str = DEFAULT_TABLE_NAME, schema: str | None = None
) -> sa.Table:
    """Define the outbox table on ``metadata`` and return it.

    Columns are reachable by their Python keys: ``table.c.aggregate_type``,
    ``table.c.aggregate_id``, ``table.c.event_type`` (the database names stay
    ``aggregatetype``, ``aggregateid`` and ``type``).
    """
    return sa.Table(name, metadata, *_columns(), schema=schema, **_TABLE_OPTIONS)


class OutboxMixin:
    """Declarative mixin mapping the outbox table, for apps that use ``DeclarativeBase``::

        class Outbox(OutboxMixin, Base):
            pass  # __tablename__ defaults to "outbox"; set it (and __table_args__) to change


        Session = sessionmaker(engine, class_=OutboxSession, outbox_table=Outbox.__table__)

    Mapping the class is optional: the session writes through Core, never the ORM.
    """

    @declared_attr.directive
    def __tablename__(cls) -> str:
        return DEFAULT_TABLE_NAME

    @declared_attr.directive
    def __table_args__(cls) -> dict[str, Any]:
        return dict(_TABLE_OPTIONS)

    id: Mapped[bytes] = mapped_column("id", _id_type(), primary_key=True)
    aggregate_type: Mapped[str] = mapped_column("aggregatetype", sa.String(255))
    aggregate_id: Mapped[str] = mapped_column("aggregateid", sa.String(255))
    event_type: Mapped[str] = mapped_column("type", sa.String(255))
    payload: Mapped[bytes] = mapped_column("payload", _payload_type())
    headers: Mapped[str | None] = mapped_column("headers", sa.Text())
    timestamp: Mapped[datetime] = mapped_column("timestamp", _timestamp_type())
