"""One trace from a request to the handler, on the stack: MariaDB, the relay, tansu, Redis.

A request span calls ``add_event``; the relay (``trace_publish``) publishes with a
PRODUCER span; a ``ConsumerRunner`` with ``@idempotent_consumer`` (Redis store)
handles each event in a CONSUMER span; the handler's own span is its child. All in
the request's trace, exported by the OpenTelemetry SDK's in-memory exporter.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
import redis.asyncio
import sqlalchemy as sa
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from sqlalchemy.orm import sessionmaker

from transactional_outbox import OutboxSession
from transactional_outbox.consumer import (
    AsyncRedisStore,
    ConsumerRunner,
    KafkaConnection,
    ReceivedEvent,
    RunnerSettings,
    idempotent_consumer,
)
from transactional_outbox.testing import capture_events

from ._consumer_helpers import publish
from ._otel import by_name, recording
from .relay_harness import relay_settings, running_relay, wait_until


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """The SDK with an in-memory exporter while the test runs."""
    with recording() as exporter:
        yield exporter


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


async def test_a_request_its_relay_hop_and_its_handler_are_one_trace(
    engine: sa.Engine,
    aredis: redis.asyncio.Redis,
    settings_kw: dict[str, Any],
    topic_prefix: str,
    redis_prefix: str,
    spans: InMemorySpanExporter,
) -> None:
    tracer = trace.get_tracer("tests")
    topic = topic_prefix + "order"
    factory = sessionmaker(engine, class_=OutboxSession)
    with (
        capture_events() as captured,
        tracer.start_as_current_span("POST /orders") as request,
        factory() as s,
    ):
        for order in (1, 2):
            s.add_event(aggregate_type="order", aggregate_id=order, event_type="Placed", payload={})
        s.commit()
    trace_id = request.get_span_context().trace_id
    request_id = request.get_span_context().span_id
    first, second = captured

    failures = {"2": 1}  # order 2 fails once: handled at its second attempt
    handled: list[str] = []

    @idempotent_consumer(store=AsyncRedisStore(aredis, prefix=redis_prefix), consumer_name="mail")
    async def on_order(event: ReceivedEvent) -> None:
        with tracer.start_as_current_span("send mail"):
            if failures.get(event.aggregate_id):
                failures[event.aggregate_id] -= 1
                raise RuntimeError("mail server busy")
            handled.append(event.aggregate_id)

    runner = ConsumerRunner(
        on_order,
        RunnerSettings(
            kafka=KafkaConnection(bootstrap_servers=settings_kw["kafka_bootstrap"]),
            group_id=topic_prefix + "mail",
            topics=[topic],
            backoff_initial_ms=10,
            backoff_max_ms=50,
            session_timeout_ms=1000,
            heartbeat_interval_ms=300,
        ),
    )
    async with running_relay(relay_settings(**settings_kw, trace_publish=True)) as relay:
        await wait_until(lambda: relay.stats.published >= 2, what="2 events published")
        task = asyncio.ensure_future(runner.run(install_signal_handlers=False))
        try:
            await wait_until(lambda: sorted(handled) == ["1", "2"], what=lambda: handled)
            # A redelivery of order 1 (as after a relay restart): skipped, in the trace too.
            await publish(settings_kw["kafka_bootstrap"], topic, [first], partition=None)

            def duplicate_seen() -> bool:
                process = by_name(spans.get_finished_spans(), "process ")
                return any(attrs(s).get("outbox.outcome") == "duplicate" for s in process)

            await wait_until(duplicate_seen, what="the duplicate's span")
        finally:
            runner.stop()
            await asyncio.wait_for(task, 30)
    assert sorted(handled) == ["1", "2"]  # the duplicate did not call the handler

    finished = spans.get_finished_spans()
    mine = [s for s in finished if s.context.trace_id == trace_id]
    sends = by_name(mine, "send " + topic)
    process = by_name(mine, "process " + topic)
    mails = by_name(mine, "send mail")
    # The relay's hop: one PRODUCER span per event, a child of the request.
    assert sorted(attrs(s)["messaging.message.id"] for s in sends) == sorted(
        str(e.id) for e in captured
    )
    for span in sends:
        assert span.kind is SpanKind.PRODUCER
        assert span.parent is not None and span.parent.span_id == request_id
        a = attrs(span)
        assert (a["messaging.system"], a["messaging.destination.name"]) == ("kafka", topic)
        assert isinstance(a["messaging.kafka.offset"], int)
        assert a["outbox.delay_ms"] >= 0
    # The handler's side: a CONSUMER span per delivery, a child of the request.
    by_outcome = sorted(
        (
            attrs(s)["messaging.kafka.message.key"],
            attrs(s)["outbox.outcome"],
            attrs(s)["outbox.attempt"],
        )
        for s in process
    )
    assert by_outcome == [("1", "duplicate", 0), ("1", "handled", 1), ("2", "handled", 2)]
    for span in process:
        assert span.kind is SpanKind.CONSUMER
        assert span.parent is not None and span.parent.span_id == request_id
        a = attrs(span)
        assert a["messaging.consumer.group.name"] == topic_prefix + "mail"
        assert a["messaging.destination.name"] == topic
        assert a["messaging.message.id"] in {str(first.id), str(second.id)}
        assert a["outbox.consumer_name"] == "mail"
    # The handler's own spans (3 calls: order 1, order 2 twice) are children of its span.
    ids = {s.context.span_id for s in process}
    assert len(mails) == 3
    assert all(m.parent is not None and m.parent.span_id in ids for m in mails)
