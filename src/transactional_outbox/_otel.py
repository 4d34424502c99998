"""W3C trace context for new events, when OpenTelemetry is installed.

OpenTelemetry is optional: imported on first use, and its absence means no
trace headers, never an error.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

__all__ = ["trace_headers"]


@functools.cache
def _injector() -> Callable[[], dict[str, str]] | None:
    try:
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import (
            TraceContextTextMapPropagator,
        )
    except ImportError:
        return None
    # The W3C propagator itself, not the globally configured one: the headers
    # are named traceparent/tracestate by contract, whatever the app's own
    # propagation format is.
    propagator = TraceContextTextMapPropagator()

    def inject() -> dict[str, str]:
        if not trace.get_current_span().get_span_context().is_valid:
            return {}
        carrier: dict[str, str] = {}
        propagator.inject(carrier)
        return carrier

    return inject


def trace_headers() -> dict[str, str]:
    """``traceparent`` (and ``tracestate`` if non-empty) of the active span, or ``{}``."""
    inject = _injector()
    return {} if inject is None else inject()
