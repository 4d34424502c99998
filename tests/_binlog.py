"""Test helpers: read what a test's transactions wrote to the shared binlog."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.row_event import DeleteRowsEvent, WriteRowsEvent

from transactional_outbox import outbox_table

from .conftest import Stack

Position = tuple[str, int]


@dataclass(frozen=True)
class Binlog:
    """Outbox row events of one database, from a position to the end of the binlog."""

    inserted: list[dict[str, Any]]
    deleted: list[dict[str, Any]]


def position(stack: Stack) -> Position:
    """The current end of the binlog: read from here to see what comes next."""
    with stack.mysql_connect() as conn, conn.cursor() as cur:
        cur.execute("SHOW MASTER STATUS")
        log_file, log_pos = cur.fetchone()[:2]
    return log_file, log_pos


def _fix(values: dict[str, Any]) -> dict[str, Any]:
    # DESIGN §7: mysql-replication strips trailing 0x00 from BINARY(16) (the
    # all-zero id comes back as '').
    out = dict(values)
    raw = out["id"]
    out["id"] = (raw.encode("latin-1") if isinstance(raw, str) else raw).ljust(16, b"\0")
    # And it returns an empty LONGBLOB as the str ''.
    if out.get("payload") == "":
        out["payload"] = b""
    return out


def read(stack: Stack, database: str, start: Position, table: str = "outbox") -> Binlog:
    """Every INSERTed and DELETEd row of ``database``.``table`` after ``start``."""
    url = stack.mysql_url
    reader = BinLogStreamReader(
        connection_settings={
            "host": url.host,
            "port": url.port,
            "user": url.username,
            "password": url.password,
        },
        server_id=4300 + (hash(database) % 500),
        log_file=start[0],
        log_pos=start[1],
        resume_stream=True,
        blocking=False,
        only_schemas=[database],
        only_tables=[table],
        only_events=[WriteRowsEvent, DeleteRowsEvent],
    )
    inserted: list[dict[str, Any]] = []
    deleted: list[dict[str, Any]] = []
    try:
        for event in reader:
            target = inserted if isinstance(event, WriteRowsEvent) else deleted
            target.extend(_fix(row["values"]) for row in event.rows)
    finally:
        reader.close()
    return Binlog(inserted, deleted)


def create_outbox(engine: sa.Engine, *, name: str = "outbox") -> sa.Table:
    """Create the outbox table in the engine's database and return it."""
    table = outbox_table(sa.MetaData(), name=name)
    table.create(engine)
    return table


def count_rows(engine: sa.Engine, table: sa.Table) -> int:
    """Rows currently in ``table``."""
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
