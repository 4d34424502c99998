"""PRODUCER spans for published events (``trace_publish``), when OpenTelemetry is installed.

With ``trace_publish`` on, each event that carries a ``traceparent`` header (written
by ``add_event`` inside a span) gets a PRODUCER span named ``send {topic}``, a child
of that trace: it starts when its batch is handed to the producer and ends when
Kafka answers, with the messaging semantic-convention attributes (topic, partition,
offset, message id, key) and ``outbox.delay_ms``, the time from the event's
timestamp to Kafka's acknowledgement: the hop through the relay. Events without a
``traceparent`` get no span (there is no trace to continue).

Off by default: the spans are built in the batch's done callback, on the relay's
event loop (BENCHMARKS "Tracing": the cost measured with ``bench/relay_tracing.py``).
The relay only calls the OpenTelemetry API; an exporter is the process's to set up
(e.g. ``opentelemetry-instrument outbox-relay ...`` with the ``OTEL_*`` variables).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from ..exceptions import ConfigurationError
from .routing import KafkaRecord

__all__ = ["PublishTracer", "publish_tracer", "record_attributes"]

_TRACE_HEADERS = ("traceparent", "tracestate")


def record_attributes(
    record: KafkaRecord, partition: int, offset: int | None = None
) -> dict[str, str | int]:
    """The messaging attributes of sending ``record`` to ``partition`` (at ``offset``)."""
    attributes: dict[str, str | int] = {
        "messaging.system": "kafka",
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
        "messaging.destination.name": record.topic,
        "messaging.destination.partition.id": str(partition),
    }
    if offset is not None:
        attributes["messaging.kafka.offset"] = offset
    if record.key:
        attributes["messaging.kafka.message.key"] = record.key.decode("utf-8", "replace")
    for name, value in record.headers:
        if name == "id":
            attributes["messaging.message.id"] = value.decode("ascii", "replace")
        elif name == "type":
            attributes["outbox.event_type"] = value.decode("utf-8", "replace")
    return attributes


class PublishTracer:
    """Turns Kafka's answer to a batch into one PRODUCER span per traced event."""

    def __init__(self, trace: Any, propagator: Any, tracer: Any) -> None:
        self._trace = trace
        self._propagator = propagator
        self._tracer = tracer
        self._kind = trace.SpanKind.PRODUCER
        self._error = trace.Status(trace.StatusCode.ERROR)

    def watch(self, fut: Any, partition: int, records: Sequence[KafkaRecord]) -> None:
        """Trace ``records``, just handed to the producer as one batch answered by ``fut``."""
        started = time.time_ns()
        fut.add_done_callback(lambda f: self.answered(f, partition, records, started))

    def answered(
        self, fut: Any, partition: int, records: Sequence[KafkaRecord], started: int
    ) -> None:
        """End the batch's spans: ``fut`` (a batch's future) is done."""
        if isinstance(self._trace.get_tracer_provider(), self._trace.ProxyTracerProvider):
            return  # no SDK set up (yet): the spans would record nothing
        error = None
        base = None
        if fut.cancelled():
            error = RuntimeError("send cancelled")
        elif fut.exception() is not None:
            error = fut.exception()
        else:
            base = getattr(fut.result(), "offset", None)
        now = time.time_ns()
        for i, record in enumerate(records):
            carrier = {
                n: v.decode("ascii", "replace") for n, v in record.headers if n in _TRACE_HEADERS
            }
            if "traceparent" not in carrier:
                continue
            span = self._tracer.start_span(
                f"send {record.topic}",
                context=self._propagator.extract(carrier),
                kind=self._kind,
                start_time=started,
            )
            if span.is_recording():  # no SDK: nothing to build
                offset = None if base is None else base + i
                span.set_attributes(record_attributes(record, partition, offset))
                span.set_attribute("outbox.delay_ms", now // 1_000_000 - record.timestamp_ms)
            if error is not None:
                span.record_exception(error)
                span.set_status(self._error)
            span.end(end_time=now)


def publish_tracer() -> PublishTracer:
    """The relay's tracer; raises :class:`ConfigurationError` without OpenTelemetry."""
    try:
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import (
            TraceContextTextMapPropagator,
        )
    except ImportError:
        raise ConfigurationError(
            "trace_publish",
            "true needs OpenTelemetry: install transactional-outbox[otel] (opentelemetry-api)",
        ) from None
    return PublishTracer(
        trace, TraceContextTextMapPropagator(), trace.get_tracer("transactional_outbox.relay")
    )
