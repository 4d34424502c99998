"""Helpers for the PostgreSQL source's tests: a scratch server, a database per test,
a sink that collects batches, and the records expected of events."""

from __future__ import annotations

import os
import tempfile
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import sqlalchemy as sa

from outbox_dev.pg import ScratchPostgres
from transactional_outbox import OutboxEvent
from transactional_outbox.relay.postgres import (
    PgBatch,
    PgConnectParams,
    PgSource,
    PgSourceSettings,
    PgWire,
    ensure_publication,
    ensure_slot,
)
from transactional_outbox.relay.routing import KafkaRecord, TopicRouter
from transactional_outbox.relay.rowrecord import RejectedRow
from transactional_outbox.testing import to_record

OUTBOX_DDL = """
CREATE TABLE {name} (
  id bytea PRIMARY KEY,
  aggregatetype varchar(255) NOT NULL,
  aggregateid varchar(255) NOT NULL,
  type varchar(255) NOT NULL,
  payload bytea NOT NULL,
  headers text,
  "timestamp" timestamp NOT NULL
)
"""


def start_server(*, main: bool = False, **kw: object) -> ScratchPostgres:
    """A scratch PostgreSQL in a fresh directory, on a free port (``main``: the session's
    server, on ``OUTBOX_TEST_PG_PORT`` when set)."""
    workdir = Path(tempfile.mkdtemp(prefix="outbox-pg-"))
    port = int(os.environ.get("OUTBOX_TEST_PG_PORT", "0")) if main else None
    server = ScratchPostgres(workdir, port or None, **kw)  # type: ignore[arg-type]
    try:
        server.start()
    except BaseException:
        server.destroy()
        raise
    return server


def expected(event: OutboxEvent, table: str) -> KafkaRecord:
    """The record the relay must publish for ``event`` read from ``table`` (schema.table)."""
    r = to_record(event, outbox_table=table)
    assert r.key is not None and r.value is not None
    return KafkaRecord(r.topic, r.key, r.value, list(r.headers), r.timestamp)


@dataclass
class ListSink:
    """Collects the source's batches (the relay's channel, without asyncio)."""

    batches: list[PgBatch] = field(default_factory=list)
    error: BaseException | None = None
    closed: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def put(self, batch: PgBatch) -> bool:
        with self.lock:
            self.batches.append(batch)
        return not self.closed

    def fail(self, error: BaseException) -> None:
        self.error = error

    def close(self) -> None:
        self.closed = True

    @property
    def records(self) -> list[KafkaRecord | RejectedRow]:
        with self.lock:
            return [r for b in self.batches for r in b.records]

    def commits(self) -> list[int]:
        with self.lock:
            return [b.commit for b in self.batches if b.commit is not None]


@dataclass
class PgDb:
    """One test's database on the scratch server, with its publication and slot names."""

    server: ScratchPostgres
    name: str
    engine: sa.Engine
    slot: str
    publication: str
    sources: list[PgSource] = field(default_factory=list)

    @property
    def params(self) -> PgConnectParams:
        return PgConnectParams.from_url(self.server.url(self.name))

    def wire(self) -> PgWire:
        return PgWire(self.params)

    def sql(self, statement: str) -> list[tuple[str | None, ...]]:
        conn = self.wire()
        try:
            return conn.query(statement)
        finally:
            conn.close()

    def prepare(self, tables: list[tuple[str, str]], *, ran_before: bool = False) -> None:
        """The publication for ``tables`` and the slot (created)."""
        conn = self.wire()
        try:
            ensure_publication(conn, self.publication, tables, create=True)
            ensure_slot(conn, self.slot, ran_before=ran_before, create=True)
        finally:
            conn.close()

    def source(
        self,
        tables: list[tuple[str, str]],
        *,
        prefixes: tuple[str, ...] = (),
        start: int = 0,
        sink: ListSink | None = None,
        chunk_events: int = 2000,
    ) -> tuple[PgSource, ListSink]:
        sink = sink or ListSink()
        settings = PgSourceSettings(
            connect=self.params,
            slot=self.slot,
            publication=self.publication,
            tables=tuple(tables),
            prefixes=prefixes,
            chunk_events=chunk_events,
            status_interval_seconds=0.1,
            idle_commit_seconds=0.1,
            reconnect_delay_seconds=0.1,
            max_reconnect_delay_seconds=0.5,
        )
        source = PgSource(settings, sink, start, router=TopicRouter())
        self.sources.append(source)
        source.start()
        return source, sink

    def stop_sources(self) -> None:
        for source in self.sources:
            source.stop()
            source.join(10)
        self.sources.clear()

    def confirmed_flush(self) -> int:
        from transactional_outbox.relay.postgres import parse_lsn

        rows = self.sql(
            f"SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '{self.slot}'"
        )
        return parse_lsn(str(rows[0][0]))


def make_db(server: ScratchPostgres) -> Iterator[PgDb]:
    """A fresh database owned by the ``outbox`` role; dropped with its slot afterwards."""
    name = "t_" + uuid.uuid4().hex[:12]
    server.psql(f"CREATE DATABASE {name} OWNER outbox")
    engine = sa.create_engine(server.url(name, driver="psycopg"), pool_pre_ping=True)
    db = PgDb(server, name, engine, slot=f"slot_{name}", publication=f"pub_{name}")
    try:
        yield db
    finally:
        db.stop_sources()
        engine.dispose()
        server.psql(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
            f"WHERE database = '{name}' AND NOT active"
        )
        server.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


_SHARED: list[ScratchPostgres] = []


@pytest.fixture(scope="session")
def pg() -> Iterator[ScratchPostgres]:
    """The scratch PostgreSQL of these tests (SCRAM logins over TCP, as in production).

    Each test module imports this fixture, which makes one fixture per module:
    they share one server (one port when ``OUTBOX_TEST_PG_PORT`` is set).
    """
    if not _SHARED:
        slots = {"max_replication_slots": 40, "max_wal_senders": 40}
        _SHARED.append(start_server(main=True, auth="scram-sha-256", **slots))
    try:
        yield _SHARED[0]
    finally:
        # Session fixtures end together, after the last test: the first stops it.
        if _SHARED:
            _SHARED.pop().destroy()


@pytest.fixture
def db(pg: ScratchPostgres) -> Iterator[PgDb]:
    """A database of this test's own on the scratch server."""
    yield from make_db(pg)
