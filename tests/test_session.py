"""OutboxSession on real MariaDB: what reaches the binlog, in which order, and what does not."""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from transactional_outbox import (
    ConfigurationError,
    InvalidEventError,
    OutboxEvent,
    OutboxMixin,
    OutboxSession,
    SerializationError,
    enable_outbox,
    outbox_table,
)
from transactional_outbox._outbox_sql import DELETE_CHUNK
from transactional_outbox.event import encode_headers

from . import _binlog
from ._binlog import count_rows, create_outbox, position
from .conftest import Stack

# mysql-replication's own connection code, not ours.
pytestmark = pytest.mark.filterwarnings("ignore:'db' is deprecated:DeprecationWarning")

# Ids that mysql-replication returns short (DESIGN §7), and a payload that is not UTF-8.
ZERO_TAIL_ID = uuid.UUID(bytes=b"\x01" * 14 + b"\x00\x00")
ALL_ZERO_ID = uuid.UUID(int=0)
OWN_TRACEPARENT = "00-" + "1" * 32 + "-" + "2" * 16 + "-01"
BINARY_PAYLOAD = bytes(range(256)) + b"\x00\xff\xfe\x80\x00"


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(primary_key=True)
    total: Mapped[int]


def expected(event: OutboxEvent) -> dict[str, Any]:
    """The binlog row an event must produce: its columns, byte for byte."""
    return {
        "id": event.id.bytes,
        "aggregatetype": event.aggregate_type,
        "aggregateid": event.aggregate_id,
        "type": event.event_type,
        "payload": event.payload,
        "headers": _encode(event.headers),
        "timestamp": event.timestamp.replace(tzinfo=None),
    }


def _encode(headers: Any) -> str:
    return encode_headers(headers)


def add(session: Any, name: str, **kw: Any) -> OutboxEvent:
    event: OutboxEvent = session.add_event(
        aggregate_type="order",
        aggregate_id="42",
        event_type=name,
        payload=kw.pop("payload", {}),
        **kw,
    )
    return event


@pytest.fixture
def outbox(engine: sa.Engine) -> sa.Table:
    Base.metadata.create_all(engine)
    return create_outbox(engine)


@pytest.fixture
def factory(outbox: sa.Table, engine: sa.Engine) -> sessionmaker[OutboxSession]:
    return sessionmaker(engine, class_=OutboxSession)


class Reader:
    """Binlog rows of this test's database since the reader was made."""

    def __init__(self, stack: Stack, database: str) -> None:
        self.stack, self.database = stack, database
        self.start = position(stack)

    def read(self, table: str = "outbox") -> _binlog.Binlog:
        return _binlog.read(self.stack, self.database, self.start, table)

    def types(self) -> list[str]:
        return [row["type"] for row in self.read().inserted]


@pytest.fixture
def binlog(stack: Stack, database: str, outbox: sa.Table) -> Reader:
    return Reader(stack, database)


def test_commit_writes_exact_rows_to_binlog_and_leaves_table_empty(
    factory: sessionmaker[OutboxSession], binlog: Reader, engine: sa.Engine, outbox: sa.Table
) -> None:
    with factory() as session:
        session.add(Order(id=1, total=10))
        events = [
            add(session, "Zero", id=ALL_ZERO_ID, payload=BINARY_PAYLOAD),
            add(session, "ZeroTail", id=ZERO_TAIL_ID, payload=b"\x00"),
            add(session, "Json", payload={"total": 10, "note": "é"}, headers={"k": "v"}),
            add(session, "Text", payload="plain ü"),
        ]
        session.commit()
    log = binlog.read()
    assert log.inserted == [expected(e) for e in events]
    assert [row["id"] for row in log.deleted] == [e.id.bytes for e in events]
    assert count_rows(engine, outbox) == 0
    with engine.connect() as conn:
        assert conn.execute(sa.select(Order.total)).scalar_one() == 10


def test_events_alone_are_written_at_commit(
    factory: sessionmaker[OutboxSession], binlog: Reader
) -> None:
    # No ORM change: Session.commit() would not flush; the events must still go out.
    with factory.begin() as session:
        add(session, "A")
        add(session, "B")
    assert binlog.types() == ["A", "B"]


def test_binlog_order_is_call_order_across_flushes(
    factory: sessionmaker[OutboxSession], binlog: Reader
) -> None:
    with factory() as session:
        add(session, "1")
        session.add(Order(id=1, total=1))
        add(session, "2")
        session.flush()
        add(session, "3")
        session.add(Order(id=2, total=2))
        session.execute(sa.select(Order)).all()  # autoflush
        add(session, "4")
        add(session, "5")
        session.commit()
    assert binlog.types() == ["1", "2", "3", "4", "5"]


def test_rollback_writes_nothing(factory: sessionmaker[OutboxSession], binlog: Reader) -> None:
    with factory() as session:
        add(session, "flushed")
        session.add(Order(id=1, total=1))
        session.flush()
        add(session, "buffered")
        session.rollback()
        session.commit()
        add(session, "later")
        session.commit()
    assert binlog.types() == ["later"]


def test_rollback_or_close_right_after_add_event_discards_it(
    factory: sessionmaker[OutboxSession], binlog: Reader
) -> None:
    session = factory()
    add(session, "rolled-back")
    session.rollback()
    session.commit()
    add(session, "closed")
    session.close()
    session.commit()
    assert binlog.types() == []


def test_savepoint_rollback_drops_inner_events_and_keeps_outer(
    factory: sessionmaker[OutboxSession], binlog: Reader
) -> None:
    with factory() as session:
        add(session, "outer-before")
        savepoint = session.begin_nested()
        add(session, "inner-flushed")
        session.flush()
        add(session, "inner-buffered")
        savepoint.rollback()
        add(session, "outer-after")
        with session.begin_nested():
            add(session, "released")
        session.commit()
    assert binlog.types() == ["outer-before", "outer-after", "released"]


def test_released_savepoint_inside_rolled_back_savepoint_is_dropped(
    factory: sessionmaker[OutboxSession], binlog: Reader
) -> None:
    with factory() as session:
        add(session, "outer")
        outer_sp = session.begin_nested()
        add(session, "sp1")
        with session.begin_nested():
            add(session, "sp2-released")
        add(session, "sp1-buffered")
        outer_sp.rollback()
        with pytest.raises(ZeroDivisionError), session.begin_nested():
            add(session, "failed-block")
            raise ZeroDivisionError
        add(session, "last")
        session.commit()
    assert binlog.types() == ["outer", "last"]


def test_failed_flush_in_savepoint_drops_its_events(
    factory: sessionmaker[OutboxSession], binlog: Reader
) -> None:
    with factory() as session:
        session.add(Order(id=1, total=1))
        add(session, "kept")
        session.flush()
        with pytest.raises(sa.exc.IntegrityError), session.begin_nested():
            add(session, "dropped")
            session.add(Order(id=1, total=2))  # duplicate key
        session.commit()
    assert binlog.types() == ["kept"]


def count_statements(engine: sa.Engine, factory: sessionmaker[OutboxSession], n: int) -> int:
    statements: list[str] = []

    def record(*args: Any) -> None:
        statements.append(args[2])

    session = factory()
    session.connection()  # check out the connection before counting
    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        for i in range(n):
            add(session, f"E{i}", payload={"i": i})
        session.commit()
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)
        session.close()
    return len(statements)


def test_one_statement_per_flush_and_one_delete_per_chunk_of_ids(
    factory: sessionmaker[OutboxSession], engine: sa.Engine, outbox: sa.Table, stack: Stack
) -> None:
    # MariaDB + PyMySQL: 1 and 10 events are one compound statement (INSERT + DELETE,
    # one round trip); 10,000 events are one executemany INSERT (multi-row INSERTs of
    # ~1 MB) and one DELETE per DELETE_CHUNK ids.
    assert count_statements(engine, factory, 1) == 1
    assert count_statements(engine, factory, 10) == 1
    assert count_statements(engine, factory, 10_000) == 1 + 10_000 // DELETE_CHUNK
    assert count_rows(engine, outbox) == 0


@pytest.mark.parametrize("events", [1, 2, 5, 40, DELETE_CHUNK + 1])
def test_writers_with_several_events_do_not_wait_on_each_others_rows(
    factory: sessionmaker[OutboxSession], engine: sa.Engine, outbox: sa.Table, events: int
) -> None:
    # MariaDB plans DELETE ... WHERE id IN (a, b) on the near-empty outbox table as a
    # full scan, which waits on any other transaction's uncommitted outbox rows: two
    # such writers deadlock. Each writer must lock only its own rows.
    other = factory()
    try:
        for i in range(3):
            add(other, f"Other{i}")
        other.flush()  # uncommitted rows (inserted, then deleted) held by `other`
        with factory() as session:
            session.connection().exec_driver_sql("SET SESSION innodb_lock_wait_timeout = 1")
            for i in range(events):
                add(session, f"Mine{i}")
            session.commit()  # a scan would fail here with 1205 (lock wait timeout)
    finally:
        other.rollback()
        other.close()
    assert count_rows(engine, outbox) == 0


BAD_EVENTS = [
    ({"aggregate_type": ""}, "aggregate_type", ""),
    ({"aggregate_type": "t" * 256}, "aggregate_type", "t" * 256),
    ({"aggregate_id": ""}, "aggregate_id", ""),
    ({"aggregate_id": "i" * 256}, "aggregate_id", "i" * 256),
    ({"event_type": ""}, "event_type", ""),
    ({"event_type": "e" * 256}, "event_type", "e" * 256),
    ({"payload": {1, 2}}, "payload", {1, 2}),
    ({"headers": {3: "v"}}, "headers", 3),
    ({"headers": {"k": 4}}, "headers['k']", 4),
]


@pytest.mark.parametrize(("bad", "field", "value"), BAD_EVENTS)
def test_invalid_event_raises_at_add_event_and_writes_nothing(
    factory: sessionmaker[OutboxSession],
    binlog: Reader,
    bad: dict[str, Any],
    field: str,
    value: Any,
) -> None:
    good: dict[str, Any] = {
        "aggregate_type": "order",
        "aggregate_id": "1",
        "event_type": "E",
        "payload": {},
    }
    with factory() as session:
        with pytest.raises(InvalidEventError) as info:
            session.add_event(**{**good, **bad})
        session.commit()
    assert (info.value.field, info.value.value) == (field, value)
    assert f"invalid {field}=" in str(info.value)
    if field == "payload":
        assert isinstance(info.value, SerializationError)
    assert binlog.read().inserted == []


def test_add_events_revalidates_built_events(
    factory: sessionmaker[OutboxSession], binlog: Reader
) -> None:
    good = OutboxEvent.create(aggregate_type="a", aggregate_id="1", event_type="Good", payload=b"")
    forged = OutboxEvent(
        id=uuid.uuid4(),
        aggregate_type="a",
        aggregate_id="",
        event_type="Bad",
        payload=b"",
        timestamp=good.timestamp,
    )
    with factory() as session:
        with pytest.raises(InvalidEventError, match="aggregate_id"):
            session.add_events([good, forged])
        with pytest.raises(InvalidEventError, match="must be an OutboxEvent"):
            session.add_events([{"event_type": "x"}])  # type: ignore[list-item]
        session.commit()
        session.add_events([good])
        session.commit()
    assert binlog.read().inserted == [expected(good)]


def test_keep_rows_keeps_them_and_default_deletes(
    engine: sa.Engine, outbox: sa.Table, binlog: Reader
) -> None:
    keeping = sessionmaker(engine, class_=OutboxSession, outbox_keep_rows=True)
    with keeping.begin() as session:
        kept = add(session, "Kept", id=ZERO_TAIL_ID, payload=BINARY_PAYLOAD)
    with sessionmaker(engine, class_=OutboxSession).begin() as session:
        add(session, "Deleted")
    with engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(sa.select(outbox))]
    assert rows == [expected(kept)]
    assert rows[0]["id"] == ZERO_TAIL_ID.bytes and rows[0]["payload"] == BINARY_PAYLOAD
    log = binlog.read()
    assert [r["type"] for r in log.inserted] == ["Kept", "Deleted"]
    assert [r["type"] for r in log.deleted] == ["Deleted"]


class AuditedSession(Session):
    def audit(self) -> str:
        return "audited"


def test_enable_outbox_on_existing_sessionmaker(
    engine: sa.Engine, stack: Stack, database: str
) -> None:
    table = create_outbox(engine, name="events_out")
    factory = sessionmaker(engine, class_=AuditedSession, expire_on_commit=False)
    begun: list[Session] = []
    sa.event.listen(factory, "after_begin", lambda s, *a: begun.append(s))
    reader = Reader(stack, database)
    enabled = enable_outbox(factory, table=table, keep_rows=True)
    assert enabled is factory
    with enabled.begin() as session:
        assert session.audit() == "audited"
        assert isinstance(session, OutboxSession)
        add(session, "Custom")
    assert begun  # the factory's own listeners still fire
    assert count_rows(engine, table) == 1
    assert [r["type"] for r in reader.read("events_out").inserted] == ["Custom"]
    with pytest.raises(ConfigurationError, match="factory"):
        enable_outbox(object())  # type: ignore[call-overload]


def test_declarative_outbox_class_as_table(engine: sa.Engine, stack: Stack, database: str) -> None:
    class Mapped_(DeclarativeBase):
        pass

    class Outbox(OutboxMixin, Mapped_):
        __tablename__ = "decl_outbox"

    Mapped_.metadata.create_all(engine)
    factory = sessionmaker(
        engine, class_=OutboxSession, outbox_table=Outbox.__table__, outbox_keep_rows=True
    )
    with factory.begin() as session:
        event = add(session, "Declared")
    with factory() as session:
        row = session.scalars(sa.select(Outbox)).one()
    assert (row.id, row.event_type, row.aggregate_type) == (event.id.bytes, "Declared", "order")


def test_table_without_outbox_columns_is_refused(engine: sa.Engine) -> None:
    other = sa.Table("other", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True))
    with pytest.raises(ConfigurationError, match="type"):
        OutboxSession(engine, outbox_table=other)


def test_write_failure_is_not_silent(engine: sa.Engine, binlog: Reader) -> None:
    missing = outbox_table(sa.MetaData(), name="no_such_table")
    with OutboxSession(engine, outbox_table=missing) as session:
        add(session, "Lost?")
        with pytest.raises(sa.exc.ProgrammingError):
            session.commit()
        session.rollback()
        session.commit()  # nothing left to write after the rollback
    assert binlog.read("no_such_table").inserted == []


def test_event_added_during_commit_after_the_write_warns(
    factory: sessionmaker[OutboxSession],
) -> None:
    session = factory()

    @sa.event.listens_for(session, "before_commit")
    def late(s: Session) -> None:
        if not s.in_nested_transaction():
            add(s, "TooLate")

    add(session, "OnTime")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        session.commit()
    assert any("NOT written" in str(w.message) for w in caught)
    session.close()


@pytest.fixture
def tracer() -> Iterator[trace.Tracer]:
    yield TracerProvider().get_tracer("tests")


def test_active_span_adds_traceparent(
    factory: sessionmaker[OutboxSession], binlog: Reader, tracer: trace.Tracer
) -> None:
    with factory() as session:
        add(session, "NoSpan")
        with tracer.start_as_current_span("place-order") as span:
            traced = add(session, "Traced")
            add(session, "Own", headers={"traceparent": OWN_TRACEPARENT})
        session.commit()
    ctx = span.get_span_context()
    parent = f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"
    assert traced.headers == {"content-type": "application/json", "traceparent": parent}
    rows = {r["type"]: r["headers"] for r in binlog.read().inserted}
    assert rows["Traced"] == _encode(traced.headers)
    assert rows["NoSpan"] == '{"content-type":"application/json"}'
    assert rows["Own"] == _encode(
        {"traceparent": OWN_TRACEPARENT, "content-type": "application/json"}
    )
    assert "tracestate" not in rows["Traced"]


def test_tracestate_is_added_when_present(factory: sessionmaker[OutboxSession]) -> None:
    remote = SpanContext(
        trace_id=0xABC,
        span_id=0xDEF,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
        trace_state=TraceState([("vendor", "value")]),
    )
    with factory() as session, trace.use_span(NonRecordingSpan(remote)):
        event = add(session, "Remote", payload=b"")
        built = OutboxEvent.create(
            aggregate_type="a", aggregate_id="1", event_type="B", payload=b""
        )
        session.add_events([built])
        pending = list(session._outbox_pending)
    expected_headers = {
        "traceparent": f"00-{0xABC:032x}-{0xDEF:016x}-01",
        "tracestate": "vendor=value",
    }
    assert event.headers == expected_headers
    assert pending[1].headers == expected_headers


def test_sqlite_in_memory() -> None:
    engine = sa.create_engine("sqlite://")
    table = outbox_table(sa.MetaData())
    table.create(engine)
    with OutboxSession(engine, outbox_keep_rows=True) as session:
        kept = add(session, "Kept", payload=BINARY_PAYLOAD)
        session.commit()
    with OutboxSession(engine) as session:
        add(session, "Deleted")
        session.commit()
    with engine.connect() as conn:
        rows = conn.execute(sa.select(table)).all()
    assert [(r.id, r.event_type, r.payload, r.timestamp) for r in rows] == [
        (kept.id.bytes, "Kept", BINARY_PAYLOAD, kept.timestamp.replace(tzinfo=None))
    ]
    engine.dispose()
