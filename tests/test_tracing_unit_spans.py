"""OpenTelemetry spans of the consuming side and the relay, without servers.

The attributes (semantic conventions 1.44 names), the span tree (parent =
the event's ``traceparent``), the outcome and attempt of each delivery through the
decorator and through the runner's batch path (claim store and inbox batch), and
what happens without OpenTelemetry installed (nothing, and no error).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from aiokafka.structs import TopicPartition
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from transactional_outbox import OutboxEvent
from transactional_outbox._otel import trace_headers
from transactional_outbox.consumer import (
    AsyncInMemoryStore,
    AsyncSqlStore,
    InMemoryStore,
    KafkaConnection,
    OffsetWatermark,
    ReceivedEvent,
    RunnerSettings,
    idempotent_consumer,
    inbox_table,
)
from transactional_outbox.consumer.attempts import Attempts
from transactional_outbox.consumer.batch import BatchHandler
from transactional_outbox.consumer.tracing import event_attributes
from transactional_outbox.relay.routing import KafkaRecord
from transactional_outbox.relay.tracing import record_attributes

from ._consumer_helpers import make_record, order_event
from ._otel import by_name, recording


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """The SDK with an in-memory exporter while the test runs."""
    with recording() as exporter:
        yield exporter


TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
ROOT = Path(__file__).resolve().parent.parent


def traced_event(n: int = 1, **kwargs: Any) -> OutboxEvent:
    return order_event(n, headers={"traceparent": TRACEPARENT}, **kwargs)


def received(event: OutboxEvent, offset: int = 7) -> ReceivedEvent:
    return ReceivedEvent.from_record(
        make_record(event, topic="outbox.event.order", partition=2, offset=offset)
    )


def test_consumer_attributes_follow_the_messaging_conventions() -> None:
    event = traced_event(3)
    assert event_attributes(received(event), group="billing", consumer_name="stats") == {
        "messaging.system": "kafka",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.message.id": str(event.id),
        "messaging.destination.name": "outbox.event.order",
        "messaging.destination.partition.id": "2",
        "messaging.kafka.offset": 7,
        "messaging.kafka.message.key": "o-3",
        "messaging.consumer.group.name": "billing",
        "outbox.event_type": "OrderPlaced",
        "outbox.consumer_name": "stats",
    }
    # Not read from Kafka (a handler's unit test): no place, no group.
    bare = event_attributes(ReceivedEvent.from_event(event))
    assert bare.keys() == {
        "messaging.system",
        "messaging.operation.type",
        "messaging.operation.name",
        "messaging.message.id",
        "messaging.kafka.message.key",
        "outbox.event_type",
    }


def test_producer_attributes_follow_the_messaging_conventions() -> None:
    record = KafkaRecord(
        topic="outbox.event.order",
        key=b"o-1",
        value=b"{}",
        headers=[("id", b"0190a0a0-0000-7000-8000-000000000001"), ("type", b"Placed")],
        timestamp_ms=0,
    )
    assert record_attributes(record, 3, 41) == {
        "messaging.system": "kafka",
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
        "messaging.destination.name": "outbox.event.order",
        "messaging.destination.partition.id": "3",
        "messaging.kafka.offset": 41,
        "messaging.kafka.message.key": "o-1",
        "messaging.message.id": "0190a0a0-0000-7000-8000-000000000001",
        "outbox.event_type": "Placed",
    }
    assert "messaging.kafka.offset" not in record_attributes(record, 3)


def test_decorated_handler_runs_in_a_consumer_span_under_the_events_trace(
    spans: InMemorySpanExporter,
) -> None:
    inner: list[Any] = []
    written: list[str] = []
    calls = 0

    @idempotent_consumer(store=InMemoryStore(), consumer_name="stats")
    def handle(event: ReceivedEvent) -> None:
        nonlocal calls
        calls += 1
        from opentelemetry import trace

        inner.append(trace.get_current_span().get_span_context())
        written.append(trace_headers()["traceparent"])  # what add_event would put on an event
        if event.aggregate_id == "o-2":
            raise ValueError("boom")

    first, failing = received(traced_event(1)), received(traced_event(2))
    assert handle(first) is True
    assert handle(first) is False  # the duplicate: no handler call
    with pytest.raises(ValueError):
        handle(failing)
    assert calls == 2
    done, duplicate, failed = by_name(spans.get_finished_spans(), "process ")
    for span in (done, duplicate, failed):
        assert span.name == "process outbox.event.order"
        assert span.kind is SpanKind.CONSUMER
        assert span.parent is not None
        assert (format(span.context.trace_id, "032x"), format(span.parent.span_id, "016x")) == (
            TRACE_ID,
            PARENT_ID,
        )
    assert done.attributes is not None and duplicate.attributes and failed.attributes
    assert (done.attributes["outbox.outcome"], done.attributes["outbox.attempt"]) == ("handled", 1)
    assert done.attributes["messaging.message.id"] == str(first.id)
    assert duplicate.attributes["outbox.outcome"] == "duplicate"
    assert failed.attributes["outbox.outcome"] == "failed"
    assert failed.status.status_code is StatusCode.ERROR
    assert [e.name for e in failed.events] == ["exception"]
    # The handler's own spans would be children of the consumer span, and an event
    # it writes continues the trace from it.
    assert inner[0].span_id == done.context.span_id
    assert written[0] == f"00-{TRACE_ID}-{format(done.context.span_id, '016x')}-01"


def settings(**overrides: Any) -> RunnerSettings:
    values: dict[str, Any] = {
        "kafka": KafkaConnection(bootstrap_servers="127.0.0.1:1"),
        "group_id": "billing",
        "topics": ["outbox.event.order"],
        "dead_letter_topic": "dlq",
        "max_attempts": 3,
        "backoff_initial_ms": 1,
        "backoff_max_ms": 2,
    }
    values.update(overrides)
    return RunnerSettings(**values)


async def run_batch(handler: Any, events: list[OutboxEvent]) -> None:
    """One fetched batch through the runner's BatchHandler (no broker needed)."""
    tp = TopicPartition("outbox.event.order", 0)
    records = [make_record(e, partition=0, offset=i) for i, e in enumerate(events)]

    async def call(event: ReceivedEvent) -> None:
        await handler(event)

    stopping = asyncio.Event()
    attempts = Attempts(settings(), call, stopping, None)
    batches = BatchHandler(handler, attempts, max_concurrency=4, stopping=stopping, revoking=set())
    mark = OffsetWatermark()
    mark.add(r.offset for r in records)
    await batches.handle({tp: records}, {tp: mark})
    assert mark.commit_offset() == len(records)  # every record done


def outcomes(spans: Any) -> list[tuple[str, str, int]]:
    return sorted(
        (
            s.attributes["messaging.kafka.message.key"],
            s.attributes["outbox.outcome"],
            s.attributes["outbox.attempt"],
        )
        for s in by_name(spans.get_finished_spans(), "process outbox")
        if s.attributes is not None and "messaging.message.id" in s.attributes
    )


async def test_runner_batch_spans_say_handled_duplicate_and_the_attempt(
    spans: InMemorySpanExporter,
) -> None:
    failures = {"o-3": 1}  # fails once, then succeeds

    @idempotent_consumer(store=AsyncInMemoryStore(), consumer_name="stats")
    async def handle(event: ReceivedEvent) -> None:
        if failures.get(event.aggregate_id, 0) > 0:
            failures[event.aggregate_id] -= 1
            raise ValueError("once")

    one, two, three = traced_event(1), traced_event(2), traced_event(3)
    await run_batch(handle, [one, two])
    await run_batch(handle, [one, three])  # `one` again: done in the store
    assert outcomes(spans) == [
        ("o-1", "duplicate", 0),
        ("o-1", "handled", 1),
        ("o-2", "handled", 1),
        ("o-3", "handled", 2),
    ]
    for span in by_name(spans.get_finished_spans(), "process outbox"):
        assert span.kind is SpanKind.CONSUMER
        assert span.parent is not None and format(span.parent.span_id, "016x") == PARENT_ID
        assert span.attributes is not None
        assert span.attributes["messaging.consumer.group.name"] == "billing"
    [retried] = [
        s
        for s in spans.get_finished_spans()
        if s.attributes and s.attributes.get("messaging.kafka.message.key") == "o-3"
    ]
    assert [(e.name, e.attributes and e.attributes["outbox.attempt"]) for e in retried.events] == [
        ("exception", 1)
    ]


@pytest.fixture
async def sqlite(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    eng = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'inbox.db'}")
    async with eng.begin() as conn:
        await conn.run_sync(inbox_table(sa.MetaData()).create)
    yield eng
    await eng.dispose()


async def test_inbox_batch_transaction_links_every_events_trace(
    sqlite: AsyncEngine, spans: InMemorySpanExporter
) -> None:
    store = AsyncSqlStore(async_sessionmaker(sqlite), batch_transactions=True, batch_concurrency=1)

    @idempotent_consumer(store=store, consumer_name="stats")
    async def handle(event: ReceivedEvent, session: Any) -> None:
        if event.aggregate_id == "o-2" and not failed:
            failed.append(event.id)
            raise ValueError("once")

    failed: list[Any] = []
    untraced = order_event(3)  # no traceparent: no link
    events = [traced_event(1), traced_event(2), untraced]
    await run_batch(handle, events)
    await run_batch(handle, events)  # all done now: skipped
    assert outcomes(spans) == [
        ("o-1", "duplicate", 0),
        ("o-1", "handled", 1),
        ("o-2", "duplicate", 0),
        ("o-2", "failed", 1),  # its call in the batch transaction
        ("o-2", "handled", 2),  # retried on its own
        ("o-3", "duplicate", 0),
        ("o-3", "handled", 1),
    ]
    batch_spans = [
        s
        for s in spans.get_finished_spans()
        if s.attributes and "messaging.batch.message_count" in s.attributes
    ]
    assert batch_spans, "the batch transaction has a span"
    first = batch_spans[0]
    assert first.attributes is not None
    assert first.attributes["messaging.batch.message_count"] == 3
    assert [format(link.context.span_id, "016x") for link in first.links] == [PARENT_ID] * 2


NO_OTEL = textwrap.dedent(
    """
    import asyncio, sys
    sys.modules["opentelemetry"] = None  # as if not installed: importing it fails
    from transactional_outbox import ConfigurationError, OutboxEvent
    from transactional_outbox.consumer import (
        AsyncInMemoryStore, ReceivedEvent, idempotent_consumer)
    from transactional_outbox.consumer.tracing import consumer_tracer
    from transactional_outbox.relay import RelaySettings

    assert consumer_tracer() is None
    seen = []

    @idempotent_consumer(store=AsyncInMemoryStore())
    async def handle(event):
        seen.append(event.id)

    event = ReceivedEvent.from_event(OutboxEvent.create(
        aggregate_type="order", aggregate_id=1, event_type="Placed", payload={},
        headers={"traceparent": TRACEPARENT}))
    assert asyncio.run(handle(event)) is True
    assert asyncio.run(handle(event)) is False
    assert seen == [event.id]
    try:
        RelaySettings.from_env({}, mysql_url="mysql://u@h/db", redis_url="redis://h",
                               kafka_bootstrap_servers="h:9092", trace_publish=True)
    except ConfigurationError as exc:
        print("refused:", exc)
    print("opentelemetry imported:", "opentelemetry.trace" in sys.modules)
    """
)


def test_without_opentelemetry_nothing_is_traced_and_nothing_fails() -> None:
    script = f"TRACEPARENT = {TRACEPARENT!r}\n{NO_OTEL}"
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("refused: trace_publish"), lines
    assert "opentelemetry" in lines[0] and "otel" in lines[0]
    assert lines[1] == "opentelemetry imported: False"


API_ONLY = """
import asyncio
from opentelemetry import trace
from transactional_outbox import OutboxEvent
from transactional_outbox._otel import trace_headers
from transactional_outbox.consumer import AsyncInMemoryStore, ReceivedEvent, idempotent_consumer

written = []

@idempotent_consumer(store=AsyncInMemoryStore())
async def handle(event):
    written.append(trace_headers().get("traceparent"))

event = ReceivedEvent.from_event(OutboxEvent.create(
    aggregate_type="order", aggregate_id=1, event_type="Placed", payload={},
    headers={"traceparent": TRACEPARENT}))
asyncio.run(handle(event))
from transactional_outbox.consumer.tracing import consumer_tracer
assert consumer_tracer() is None
print(type(trace.get_tracer_provider()).__name__, written[0])
"""


def test_with_the_api_alone_and_no_sdk_the_consumer_makes_no_span() -> None:
    script = f"TRACEPARENT = {TRACEPARENT!r}\n{API_ONLY}"
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert out.returncode == 0, out.stderr
    # No SDK: no span (it would record nothing), so nothing to carry on either.
    assert out.stdout.split() == ["ProxyTracerProvider", "None"]
