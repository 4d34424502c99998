"""OpenTelemetry CONSUMER spans for handled events, when OpenTelemetry is installed.

Each event the runner or ``@idempotent_consumer`` handles runs in one span whose
parent is the event's ``traceparent`` header (the request that wrote it), named
``process {topic}``, with the messaging semantic-convention attributes and our
own: ``outbox.outcome`` (``handled``, ``duplicate``: skipped by deduplication,
``failed``) and ``outbox.attempt`` (how many times the handler was called for
this delivery). A transaction of many events (an inbox store's batch) gets a
span of its own with a link to each event's trace, since one parent cannot fit.

OpenTelemetry is optional: without it, or without an SDK set up, :func:`consumer_tracer`
is ``None`` and nothing here runs (the callers test that once).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from .received import ReceivedEvent

__all__ = [
    "ATTEMPT",
    "DUPLICATE",
    "FAILED",
    "HANDLED",
    "NO_SPAN",
    "OUTCOME",
    "ConsumerTracer",
    "EventSpan",
    "consumer_tracer",
    "current_event_span",
    "event_attributes",
]

OUTCOME = "outbox.outcome"
"""Span attribute: what became of the event in this delivery (one of the three below)."""
ATTEMPT = "outbox.attempt"
"""Span attribute: the handler calls made for the event in this delivery (0: none)."""
HANDLED, DUPLICATE, FAILED = "handled", "duplicate", "failed"

_CURRENT: contextvars.ContextVar[EventSpan | None] = contextvars.ContextVar(
    "transactional_outbox_event_span", default=None
)


def event_attributes(
    event: ReceivedEvent, *, group: str | None = None, consumer_name: str | None = None
) -> dict[str, str | int]:
    """The OpenTelemetry messaging attributes of handling ``event``.

    Names of semantic conventions 1.44 (Python's ``opentelemetry-semantic-conventions``
    0.66, what Python's Kafka instrumentations emit); 1.45 renames the Kafka ones
    (``kafka.offset``, ``messaging.system.name``): messaging conventions are not stable.

    Where the event was read (topic, partition, offset) is left out when it was
    not read from Kafka; ``group`` is the Kafka consumer group.
    """
    attributes: dict[str, str | int] = {
        "messaging.system": "kafka",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.message.id": str(event.id),
    }
    if event.topic:
        attributes["messaging.destination.name"] = event.topic
    if event.partition >= 0:
        attributes["messaging.destination.partition.id"] = str(event.partition)
    if event.offset >= 0:
        attributes["messaging.kafka.offset"] = event.offset
    if event.aggregate_id:
        attributes["messaging.kafka.message.key"] = event.aggregate_id
    if group:
        attributes["messaging.consumer.group.name"] = group
    if event.event_type:
        attributes["outbox.event_type"] = event.event_type
    if consumer_name:
        attributes["outbox.consumer_name"] = consumer_name
    return attributes


class EventSpan:
    """One event's span while it is handled: the outcome and attempts are set on it."""

    __slots__ = ("_error", "event_id", "last", "span")

    def __init__(self, event_id: Any, span: Any, error_status: Any = None) -> None:
        self.event_id = event_id
        """The id of the event the span is about."""
        self.span = span
        """The OpenTelemetry span."""
        self.last: str | None = None
        """The outcome set last (``None``: none yet)."""
        self._error = error_status

    def attempt(self, number: int) -> None:
        """The handler is being called for the ``number``-th time in this delivery."""
        self.span.set_attribute(ATTEMPT, number)

    def outcome(self, outcome: str) -> None:
        """Set the outcome (``handled``, ``duplicate``, ``failed``)."""
        self.last = outcome
        self.span.set_attribute(OUTCOME, outcome)

    def duplicate(self) -> None:
        """Skipped without a handler call: the event was done (or is a copy in the batch)."""
        self.outcome(DUPLICATE)
        self.span.set_attribute(ATTEMPT, 0)

    def failed(self, error: BaseException, attempt: int) -> None:
        """An attempt raised ``error``: an exception event on the span, outcome ``failed``."""
        self.span.record_exception(error, attributes={ATTEMPT: attempt})
        self.outcome(FAILED)

    def end(self, outcome: str | None = None, error: BaseException | None = None) -> None:
        """End the span, with ``outcome`` if given; a ``failed`` one gets the ERROR status.

        ``error``: the first attempt raised it.
        """
        if error is not None:
            self.failed(error, 1)
        if outcome is not None:
            self.outcome(outcome)
        if self.last == FAILED:
            self.span.set_status(self._error)
        self.span.end()


class _NoSpan(EventSpan):
    """Stands for a span when there is none (no OpenTelemetry): every call does nothing."""

    def attempt(self, number: int) -> None:
        pass

    def outcome(self, outcome: str) -> None:
        pass

    def duplicate(self) -> None:
        pass

    def failed(self, error: BaseException, attempt: int) -> None:
        pass

    def end(self, outcome: str | None = None, error: BaseException | None = None) -> None:
        pass


NO_SPAN: EventSpan = _NoSpan(None, None)
"""An :class:`EventSpan` that records nothing (the runner's, without OpenTelemetry)."""


class ConsumerTracer:
    """Starts the spans; made by :func:`consumer_tracer` when OpenTelemetry is installed."""

    def __init__(self, trace: Any, propagator: Any, tracer: Any) -> None:
        from opentelemetry import context

        self._context = context
        self._trace = trace
        self.provider = trace.get_tracer_provider
        """The process's tracer provider now."""
        self.proxy = trace.ProxyTracerProvider
        """The API's provider while no SDK is set up."""
        self._propagator = propagator
        self._tracer = tracer
        self._kind = trace.SpanKind.CONSUMER
        self._error = trace.Status(trace.StatusCode.ERROR)

    def parent(self, headers: Mapping[str, str]) -> Any:
        """The context named by ``headers``' ``traceparent`` (else the current one).

        The current one too when its span is of the same trace: a framework's span
        that continued the event's trace (FastStream's telemetry middleware) is then
        our span's parent, rather than a sibling.
        """
        context = self._propagator.extract(headers)
        current = self._trace.get_current_span().get_span_context()
        if current.is_valid:
            named = self._trace.get_current_span(context).get_span_context()
            if named.trace_id == current.trace_id:
                return None
        return context

    def start(
        self, event: ReceivedEvent, *, group: str | None = None, consumer_name: str | None = None
    ) -> EventSpan:
        """Start ``event``'s span (not made current; see :meth:`span`); end it with :meth:`end`."""
        span = self._tracer.start_span(
            f"process {event.topic}" if event.topic else "process",
            context=self.parent(event.headers),
            kind=self._kind,
        )
        # Without an SDK the span only carries the context on (an event the handler
        # writes continues the trace): no attributes to build (bench/relay_tracing.py).
        if span.is_recording():
            span.set_attributes(event_attributes(event, group=group, consumer_name=consumer_name))
            span.set_attribute(ATTEMPT, 1)
        return EventSpan(event.id, span, self._error)

    @contextlib.contextmanager
    def use(self, state: EventSpan) -> Iterator[EventSpan]:
        """Make ``state``'s span the current one (the handler's own spans are its children)."""
        token = _CURRENT.set(state)
        # attach/detach rather than trace.use_span: the same, without its exception
        # handling (ours is in span()), ~2 µs a record less.
        attached = self._context.attach(self._trace.set_span_in_context(state.span))
        try:
            yield state
        finally:
            self._context.detach(attached)
            _CURRENT.reset(token)

    @contextlib.contextmanager
    def span(
        self, event: ReceivedEvent, *, group: str | None = None, consumer_name: str | None = None
    ) -> Iterator[EventSpan]:
        """Handle ``event`` in its span, current inside; an escaping exception is ``failed``."""
        state = self.start(event, group=group, consumer_name=consumer_name)
        try:
            with self.use(state):
                yield state
        except BaseException as exc:
            state.span.record_exception(exc)
            state.end(FAILED)
            raise
        state.end()

    @contextlib.contextmanager
    def batch(self, events: Sequence[ReceivedEvent], *, group: str | None = None) -> Iterator[None]:
        """A span for one transaction of many events, linked to each event's trace."""
        links = []
        for event in events:
            context = self._trace.get_current_span(self.parent(event.headers)).get_span_context()
            if context.is_valid:
                links.append(self._trace.Link(context, {"messaging.message.id": str(event.id)}))
        attributes: dict[str, str | int] = {
            "messaging.system": "kafka",
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.batch.message_count": len(events),
        }
        topics = {e.topic for e in events}
        topic = topics.pop() if len(topics) == 1 else ""
        if topic:
            attributes["messaging.destination.name"] = topic
        if group:
            attributes["messaging.consumer.group.name"] = group
        with self._tracer.start_as_current_span(
            f"process {topic}" if topic else "process",
            kind=self._kind,
            attributes=attributes,
            links=links,
        ):
            yield


@functools.cache
def _installed() -> ConsumerTracer | None:
    try:
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import (
            TraceContextTextMapPropagator,
        )
    except ImportError:
        return None
    from importlib.metadata import PackageNotFoundError, version

    try:
        own = version("transactional-outbox")
    except PackageNotFoundError:  # pragma: no cover - run from a source tree
        own = None
    # The W3C propagator itself: the relay carries traceparent/tracestate by contract.
    return ConsumerTracer(
        trace, TraceContextTextMapPropagator(), trace.get_tracer("transactional_outbox", own)
    )


def consumer_tracer() -> ConsumerTracer | None:
    """The tracer of the consuming side, or ``None``: OpenTelemetry is not installed, or
    no SDK is set up (the API's own provider, whose spans record nothing).

    The API alone would still cost ~7 µs a record (the context parsed and attached,
    bench/relay_tracing.py: a quarter of the runner's own cost), for spans no one
    records. The runner asks once, when it starts; the decorator at each call.
    """
    tracer = _installed()
    if tracer is None or isinstance(tracer.provider(), tracer.proxy):
        return None
    return tracer


def current_event_span(event_id: Any) -> EventSpan | None:
    """The span the runner opened for ``event_id``, when the decorated handler runs in it."""
    state = _CURRENT.get()
    return state if state is not None and state.event_id == event_id else None
