"""What the outbox session sends on MariaDB, and the row bytes it puts on the binlog.

A flush is one compound statement (INSERT + DELETE) while it is small, else an
executemany INSERT and one DELETE per chunk of ids; either way the WRITE_ROWS row
images must be byte for byte those of a plain Core INSERT of the same values (what
the SDK sent before), sync (PyMySQL) and async (asyncmy).
"""

from __future__ import annotations

import struct
import uuid
import zlib
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.orm import Session, sessionmaker

from transactional_outbox import AsyncOutboxSession, OutboxEvent, OutboxSession, outbox_table
from transactional_outbox._outbox_sql import DELETE_CHUNK, ONE_STATEMENT_MAX_BYTES
from transactional_outbox.event import encode_headers
from transactional_outbox.relay.mysql.binlog.protocol import DumpConnection

from ._binlog import Position, count_rows, position
from .conftest import Stack

TABLE_MAP, WRITE_V1, WRITE_V2 = 19, 23, 30
ZERO_TAIL = uuid.UUID(bytes=b"\x07" * 14 + b"\x00\x00")
ODD_PAYLOAD = bytes(range(256)) + b"\\'\"%s%%\x00"


def row_images(stack: Stack, start: Position, schema: str) -> dict[str, bytes]:
    """The WRITE_ROWS row bytes of each table of ``schema`` from ``start``, concatenated
    (the column-count and bitmap prefix and the table id left out)."""
    url = stack.mysql_url
    dump = DumpConnection(
        {"host": url.host, "port": url.port, "user": url.username, "password": url.password},
        server_id=5100 + hash(schema) % 300,
        is_mariadb=True,
        heartbeat_seconds=1.0,
        read_timeout=10.0,
        file=start[0],
        pos=start[1],
        blocking=False,
    )
    names: dict[int, str] = {}
    out: dict[str, bytes] = {}
    buf = b""
    try:
        while True:
            while len(buf) >= 4 and len(buf) >= 4 + int.from_bytes(buf[:3], "little"):
                n = int.from_bytes(buf[:3], "little")
                payload, buf = buf[4 : 4 + n], buf[4 + n :]
                if payload[0] == 0xFE and n < 9:
                    return out
                ev = payload[1:]
                if zlib.crc32(ev[:-4]) == struct.unpack("<I", ev[-4:])[0]:
                    ev = ev[:-4]
                _take(ev, schema, names, out)
            buf += dump.recv()
    finally:
        dump.close()


def _take(ev: bytes, schema: str, names: dict[int, str], out: dict[str, bytes]) -> None:
    etype, body = ev[4], ev[19:]
    table_id = int.from_bytes(body[:6], "little")
    if etype == TABLE_MAP:
        slen = body[8]
        if body[9 : 9 + slen].decode() == schema:
            tlen = body[10 + slen]
            names[table_id] = body[11 + slen : 11 + slen + tlen].decode()
    elif etype in (WRITE_V1, WRITE_V2) and table_id in names:
        p = 8 if etype == WRITE_V1 else 8 + int.from_bytes(body[8:10], "little")
        columns = body[p]  # < 251: one byte
        rows = body[p + 1 + (columns + 7) // 8 :]
        out[names[table_id]] = out.get(names[table_id], b"") + rows


def values(event: OutboxEvent) -> dict[str, Any]:
    """The Core insert parameters of ``event``, as the SDK sent them before."""
    return {
        "id": event.id.bytes,
        "aggregate_type": event.aggregate_type,
        "aggregate_id": event.aggregate_id,
        "event_type": event.event_type,
        "payload": event.payload,
        "headers": encode_headers(event.headers),
        "timestamp": event.timestamp.astimezone(UTC).replace(tzinfo=None),
    }


def some_events(n: int, payload: bytes = ODD_PAYLOAD) -> list[OutboxEvent]:
    first = [
        OutboxEvent.create(
            id=ZERO_TAIL,
            aggregate_type="order",
            aggregate_id="é-1",
            event_type="Zero",
            payload=b"",
            timestamp=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),  # no microseconds
        )
    ]
    rest = [
        OutboxEvent.create(
            aggregate_type="order",
            aggregate_id=i,
            event_type=f"E{i}",
            payload=payload,
            headers={"k": "v'%s"} if i % 2 else None,
        )
        for i in range(n - 1)
    ]
    return first + rest


@pytest.fixture
def tables(engine: sa.Engine) -> tuple[sa.Table, sa.Table]:
    meta = sa.MetaData()
    pair = outbox_table(meta), outbox_table(meta, name="outbox_ref")
    meta.create_all(engine)
    return pair


SIZES = {
    "one": (1, ODD_PAYLOAD),
    "compound": (40, ODD_PAYLOAD),
    "over the event count": (DELETE_CHUNK + 1, b"{}"),
    "over the byte size": (3, b"x" * (ONE_STATEMENT_MAX_BYTES // 2)),
}


@pytest.mark.parametrize("size", SIZES.values(), ids=SIZES.keys())
def test_sync_rows_are_byte_identical_to_a_plain_insert(
    engine: sa.Engine,
    tables: tuple[sa.Table, sa.Table],
    stack: Stack,
    database: str,
    size: tuple[int, bytes],
) -> None:
    outbox, ref = tables
    events = some_events(*size)
    start = position(stack)
    with OutboxSession(engine) as session:
        session.add_events(events)
        session.commit()
    with engine.begin() as conn:
        conn.execute(sa.insert(ref), [values(e) for e in events])
    images = row_images(stack, start, database)
    assert images["outbox"] == images["outbox_ref"]
    assert count_rows(engine, outbox) == 0


@pytest.mark.parametrize("size", SIZES.values(), ids=SIZES.keys())
async def test_async_rows_are_byte_identical_to_a_plain_insert(
    async_engine: AsyncEngine,
    engine: sa.Engine,
    tables: tuple[sa.Table, sa.Table],
    stack: Stack,
    database: str,
    size: tuple[int, bytes],
) -> None:
    outbox, ref = tables
    events = some_events(*size)
    start = position(stack)
    async with async_sessionmaker(async_engine, class_=AsyncOutboxSession)() as session:
        session.add_events(events)
        await session.commit()
    with engine.begin() as conn:
        conn.execute(sa.insert(ref), [values(e) for e in events])
    images = row_images(stack, start, database)
    assert images["outbox"] == images["outbox_ref"]
    assert count_rows(engine, outbox) == 0


@pytest.fixture
def other_schema(stack: Stack) -> Any:
    name = f"s_{uuid.uuid4().hex[:10]}"
    with stack.mysql_connect() as conn, conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}`")
    yield name
    with stack.mysql_connect() as conn, conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS `{name}`")


SCHEMA_WAYS: dict[str, Callable[[sa.Engine, str], tuple[sa.Table, sessionmaker[Session]]]] = {
    "table schema": lambda engine, schema: (
        (t := outbox_table(sa.MetaData(), schema=schema)),
        sessionmaker(engine, class_=OutboxSession, outbox_table=t),
    ),
    "schema_translate_map": lambda engine, schema: (
        (t := outbox_table(sa.MetaData(), schema="app")),
        sessionmaker(
            engine.execution_options(schema_translate_map={"app": schema}),
            class_=OutboxSession,
            outbox_table=t,
        ),
    ),
}


@pytest.mark.parametrize("way", SCHEMA_WAYS.values(), ids=SCHEMA_WAYS.keys())
@pytest.mark.parametrize("n", [1, 40, DELETE_CHUNK + 1])
def test_outbox_table_in_another_schema(
    engine: sa.Engine,
    stack: Stack,
    other_schema: str,
    way: Callable[[sa.Engine, str], tuple[sa.Table, sessionmaker[Session]]],
    n: int,
) -> None:
    table, factory = way(engine, other_schema)
    real = outbox_table(sa.MetaData(), schema=other_schema)
    real.create(engine)
    start = position(stack)
    with factory.begin() as session:
        session.add_events(some_events(n, b"{}"))  # type: ignore[attr-defined]
    assert count_rows(engine, real) == 0
    assert len(row_images(stack, start, other_schema)["outbox"]) > 0
    assert table.name == "outbox"


@pytest.mark.parametrize("n", [1, 40, DELETE_CHUNK + 1])
def test_table_name_with_percent_and_colon(
    engine: sa.Engine, stack: Stack, database: str, n: int
) -> None:
    # The compound statement goes through the driver's "%" formatting, the chunked
    # DELETE through text(), which reads ":name" as a parameter.
    table = outbox_table(sa.MetaData(), name="out%s:i0")
    table.create(engine)
    start = position(stack)
    with OutboxSession(engine, outbox_table=table) as session:
        session.add_events(some_events(n, b"{}"))
        session.commit()
    assert count_rows(engine, table) == 0
    assert len(row_images(stack, start, database)["out%s:i0"]) > 0
