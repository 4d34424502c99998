"""Keeping a library's per-attempt errors out of the relay's log.

While a broker is down, aiokafka logs every failed attempt (``Unable connect to
node ...``, ``Got error produce response ...``): ~20 lines a second per broker
here through a cut proxy, 5,000-9,000 a second reported on Apache Kafka. The
relay reports the outage itself, once when it starts and once when it ends
(:meth:`.RelayStats.kafka_down`), so the library's lines add nothing but
volume: :class:`RateLimitFilter` lets one through every few seconds and says
how many it held back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

__all__ = ["RateLimitFilter", "limit_library_logs"]


class RateLimitFilter(logging.Filter):
    """Passes at most one WARNING-or-worse record every ``interval`` seconds from the
    loggers under ``prefixes`` (all together); the next one passed carries the count
    of those held back. Other records pass untouched."""

    def __init__(
        self,
        prefixes: tuple[str, ...] = ("aiokafka",),
        interval: float = 5.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self._clock = clock
        self.prefixes = prefixes
        self.interval = interval
        self.suppressed = 0  # held back since the last one passed
        self.suppressed_total = 0
        self._last = float("-inf")
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        """Whether ``record`` is logged (annotated with the count held back before it)."""
        if record.levelno < logging.WARNING or not record.name.startswith(self.prefixes):
            return True
        now = self._clock()
        with self._lock:
            if now - self._last < self.interval:
                self.suppressed += 1
                self.suppressed_total += 1
                return False
            held, self.suppressed, self._last = self.suppressed, 0, now
        if held:
            record.msg = (
                f"{record.getMessage()} [{held} more {self.prefixes[0]} line(s) held back; "
                f"at most one every {self.interval:g}s]"
            )
            record.args = None
        return True


def limit_library_logs(interval: float = 5.0) -> RateLimitFilter:
    """Install a :class:`RateLimitFilter` for aiokafka on every handler of the root
    logger (call after configuring logging); returns it."""
    limit = RateLimitFilter(interval=interval)
    for handler in logging.getLogger().handlers:
        handler.addFilter(limit)
    return limit
