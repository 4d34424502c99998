"""``transactional_outbox.faststream`` with FastStream's in-memory broker (no servers):
a batch subscriber is refused in one line, and with FastStream's own telemetry middleware
our CONSUMER span is the child of FastStream's span (one trace, no sibling)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from faststream.kafka import KafkaBroker, TestKafkaBroker
from faststream.kafka.opentelemetry import KafkaTelemetryMiddleware
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from transactional_outbox import OutboxEvent
from transactional_outbox.consumer import AsyncInMemoryStore, ReceivedEvent
from transactional_outbox.faststream import exactly_once
from transactional_outbox.testing import to_record

from ._otel import recording


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """The SDK with an in-memory exporter while the test runs."""
    with recording() as exporter:
        yield exporter


def relayed(event: OutboxEvent, topic: str) -> dict[str, object]:
    record = to_record(event, topic_template=topic)
    return {
        "message": record.value,
        "topic": record.topic,
        "key": record.key,
        "headers": {name: value.decode() for name, value in record.headers},
    }


async def test_our_span_nests_under_faststreams_span_of_the_same_trace(
    spans: InMemorySpanExporter,
) -> None:
    broker = KafkaBroker(
        middlewares=[KafkaTelemetryMiddleware(tracer_provider=trace.get_tracer_provider())]
    )
    handled = []

    @broker.subscriber("orders", group_id="g")
    @exactly_once(store=AsyncInMemoryStore())
    async def on_order(event: ReceivedEvent) -> None:
        handled.append(event.id)

    event = OutboxEvent.create(aggregate_type="order", aggregate_id=1, event_type="P", payload={})
    writer = trace.get_tracer("tests")
    async with TestKafkaBroker(broker) as test_broker:
        # FastStream's middleware sends its own traceparent, a child of the writer's span.
        with writer.start_as_current_span("writer") as span:
            await test_broker.publish(**relayed(event, "orders"))
            await test_broker.publish(**relayed(event, "orders"))
    trace_id = span.get_span_context().trace_id
    assert handled == [event.id]
    finished = spans.get_finished_spans()
    ours = [
        s
        for s in finished
        if s.name == "process orders" and s.attributes and "outbox.outcome" in s.attributes
    ]
    assert [s.attributes and s.attributes["outbox.outcome"] for s in ours] == [
        "handled",
        "duplicate",
    ]
    by_id = {s.context.span_id: s for s in finished}
    for span in ours:
        assert span.context.trace_id == trace_id
        assert span.parent is not None
        parent = by_id.get(span.parent.span_id)
        assert parent is not None, "the parent is FastStream's span, not the remote writer"
        # FastStream's process span, not its publish span (the traceparent's).
        assert parent.kind is SpanKind.CONSUMER
        assert parent.attributes is not None and "outbox.outcome" not in parent.attributes


async def test_a_batch_subscriber_is_refused() -> None:
    broker = KafkaBroker()
    errors: list[BaseException] = []

    @broker.subscriber("orders", group_id="g", batch=True)
    @exactly_once(store=AsyncInMemoryStore())
    async def on_orders(event: ReceivedEvent) -> None:
        raise AssertionError("not called")

    event = OutboxEvent.create(aggregate_type="order", aggregate_id=1, event_type="P", payload={})
    async with TestKafkaBroker(broker) as test_broker:
        with pytest.raises(Exception) as caught:
            await test_broker.publish(**relayed(event, "orders"))
        errors.append(caught.value)
    assert "batch" in str(errors[0])
