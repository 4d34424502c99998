"""An in-memory OpenTelemetry exporter, the process's tracer provider while a test runs.

``recording()`` sets the provider (one SDK provider and exporter, the same every
time: tracers already handed out keep pointing at it) and unsets it afterwards, so
the rest of the suite runs without an SDK, as a plain install does (the consumer makes
no spans then). Unsetting uses OpenTelemetry's globals, as its own test utilities do.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.util._once import Once

_exporter = InMemorySpanExporter()
_provider = TracerProvider()
_provider.add_span_processor(SimpleSpanProcessor(_exporter))


def _unset() -> None:
    trace._TRACER_PROVIDER_SET_ONCE = Once()  # type: ignore[attr-defined]
    trace._TRACER_PROVIDER = None  # type: ignore[attr-defined]


@contextmanager
def recording() -> Iterator[InMemorySpanExporter]:
    """The SDK set up with an in-memory exporter (cleared) inside the block."""
    _unset()
    trace.set_tracer_provider(_provider)
    _exporter.clear()
    try:
        yield _exporter
    finally:
        _exporter.clear()
        _unset()


def by_name(
    spans: tuple[ReadableSpan, ...] | list[ReadableSpan], prefix: str
) -> list[ReadableSpan]:
    """The spans whose name starts with ``prefix``, in the order they ended."""
    return [s for s in spans if s.name.startswith(prefix)]
