"""The relay's state as one value: counters, server states, progress and health.

:class:`RelayStats` is the one record of what the relay did and how its
servers are; the Prometheus metrics (:mod:`.metrics`), the ``/readyz`` body
and the progress lines are views of it, read when asked for, never copies.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .position import Position

__all__ = ["LiveSession", "RelayStats", "describe"]

log = logging.getLogger("transactional_outbox.relay")


def describe(behind: int | None, last_event_age: float | None) -> str:
    """``behind 0 B, last event 12.3s ago``: the two figures as the progress line shows them."""
    shown_behind = "-" if behind is None else f"{behind} B"
    shown_age = "none yet" if last_event_age is None else f"{last_event_age:.1f}s ago"
    return f"behind {shown_behind}, last event {shown_age}"


class LiveSession(Protocol):
    """What the stats read from the running publish session."""

    @property
    def outstanding(self) -> int:
        """Events sent, not yet acknowledged."""
        ...

    @property
    def queue_depth(self) -> int:
        """Events read from the binlog, not yet taken."""
        ...


@dataclass(slots=True)
class RelayStats:
    """Counters and state for progress lines, health and metrics."""

    published: int = 0
    sessions: int = 0
    kafka_errors: int = 0  # sessions restarted after a Kafka error
    publish_errors: int = 0  # Kafka errors that failed a send
    redis_errors: int = 0
    checkpoints_saved: int = 0
    last_event_ms: int | None = None  # timestamp of the newest event handed to Kafka
    # When Kafka last made progress while events were outstanding: an outage
    # shows as outstanding events and no acks, since aiokafka retries silently.
    last_progress_at: float = field(default_factory=time.monotonic)
    kafka_down_since: float | None = None  # monotonic, while Kafka is reported down
    kafka_outages: int = 0
    canary: str = "off"  # off, ok, late (not back in time), failing (cannot be written)
    canary_alarms: int = 0
    canary_roundtrip: float | None = None  # seconds, the last canary's
    canaries_written: int = 0
    canaries_seen: int = 0
    checkpoint: Position | None = None
    checkpoint_saved_at: float | None = None
    dead_lettered: int = 0
    behind_bytes: int | None = None  # log (binlog, WAL) bytes after the acknowledged position
    slot_retained_bytes: int | None = None  # PostgreSQL: WAL the server keeps for the slot
    # The running publish session, read for its outstanding events and queue.
    session: LiveSession | None = None
    role: str = "starting"
    database: str = "starting"  # the source's connection
    database_kind: str = "mysql"  # names it in health, metrics and the progress line
    kafka: str = "starting"
    redis: str = "starting"
    started_at: float = field(default_factory=time.monotonic)
    # With many outbox tables: each table's events acknowledged (or dead-lettered),
    # counted as their batch is, by "schema.table". Empty with one table.
    by_table: dict[str, int] = field(default_factory=dict)

    def count_tables(self, tables: Iterable[tuple[str, str]]) -> None:
        """List each ``(schema, table)`` in :attr:`by_table` from the start (0 until its
        first event), as the many-tables metrics and ``/readyz`` show them."""
        for schema, table in tables:
            self.by_table.setdefault(f"{schema}.{table}", 0)

    @property
    def outstanding(self) -> int:
        """Events sent, not yet acknowledged (0 between sessions)."""
        return 0 if self.session is None else self.session.outstanding

    @property
    def queue_depth(self) -> int:
        """Events read from the binlog, not yet taken (0 between sessions)."""
        return 0 if self.session is None else self.session.queue_depth

    def last_event_age(self) -> float | None:
        """Seconds since the newest event handed to Kafka was written, if any."""
        ms = self.last_event_ms
        return None if ms is None else max(time.time() - ms / 1000, 0.0)

    def acked(self, count: int) -> None:
        """Kafka acknowledged ``count`` events: progress, and Kafka is up again."""
        self.published += count
        self.last_progress_at = time.monotonic()
        if self.kafka == "degraded":
            self.kafka_up("it acknowledges events again")

    def kafka_down(self, reason: str) -> None:
        """Report Kafka down: one ERROR line when an outage starts, none while it lasts."""
        if self.kafka == "degraded":
            return
        self.kafka = "degraded"
        self.kafka_outages += 1
        self.kafka_down_since = time.monotonic()
        log.error(
            "Kafka down: %s; the producer keeps retrying, the checkpoint holds, nothing is "
            "lost (one line now, one when it is back)",
            reason,
        )

    def kafka_up(self, how: str) -> None:
        """Report Kafka up: one INFO line if it was down."""
        since = self.kafka_down_since
        if self.kafka == "degraded" and since is not None:
            log.info("Kafka back after %.1fs: %s", time.monotonic() - since, how)
        self.kafka = "ok"
        self.kafka_down_since = None

    def unacknowledged_for(self) -> float:
        """Seconds Kafka has acknowledged nothing while events are outstanding (else 0)."""
        if self.outstanding == 0:
            return 0.0
        return max(time.monotonic() - self.last_progress_at, 0.0)

    def check_kafka_progress(self, timeout: float) -> None:
        """Report Kafka down if events are outstanding and none was acked for ``timeout`` s."""
        if self.kafka == "degraded":
            return
        stalled = self.unacknowledged_for()
        if stalled > timeout:
            self.kafka_down(
                f"nothing acknowledged for {stalled:.1f}s with {self.outstanding} events "
                "outstanding"
            )

    def progress_line(self, rate: float) -> str:
        """One line: rate, how far behind the log's head, last event's age, the WAL a
        PostgreSQL slot keeps, checkpoint, queue, server states."""
        tables = ""
        if self.by_table:
            tables = " (" + ", ".join(f"{t} {n}" for t, n in sorted(self.by_table.items())) + ")"
        slot = (
            "" if self.slot_retained_bytes is None else f"slot keeps {self.slot_retained_bytes} B, "
        )
        return (
            f"{rate:.0f} events/s, {self.published} published{tables}, "
            f"{describe(self.behind_bytes, self.last_event_age())}, {slot}"
            f"checkpoint {self.checkpoint or '-'}, queue {self.queue_depth}, "
            f"{self.database_kind} {self.database}, kafka {self._kafka_shown()}, redis {self.redis}"
            + ("" if self.canary == "off" else f", canary {self.canary}")
        )

    def _kafka_shown(self) -> str:
        since = self.kafka_down_since
        if self.kafka != "degraded" or since is None:
            return self.kafka
        shown = f"DOWN for {time.monotonic() - since:.0f}s"
        if self.outstanding:
            shown += (
                f" ({self.outstanding} unacknowledged, none for {self.unacknowledged_for():.0f}s)"
            )
        return shown

    async def log_progress(self, interval: float) -> None:
        """Log a progress line every ``interval`` seconds (until cancelled)."""
        last_count, last_time = self.published, time.monotonic()
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            count = self.published
            rate = (count - last_count) / max(now - last_time, 1e-9)
            last_count, last_time = count, now
            log.info("progress: %s", self.progress_line(rate))

    def health(self) -> dict[str, Any]:
        """A snapshot of the relay's state; ``ready`` as ``/readyz`` reports it."""
        connected = self.database == self.kafka == self.redis == "ok"
        since = self.kafka_down_since
        return {
            "ready": self.role == "standby"
            or (self.role == "leader" and connected and self.canary in ("off", "ok")),
            "role": self.role,
            self.database_kind: self.database,
            "kafka": self.kafka,
            "redis": self.redis,
            "published": self.published,
            **({"published_by_table": dict(self.by_table)} if self.by_table else {}),
            "dead_lettered": self.dead_lettered,
            "checkpoint": str(self.checkpoint) if self.checkpoint else None,
            "canary": self.canary,
            "kafka_unacknowledged_seconds": round(self.unacknowledged_for(), 3),
            "kafka_down_seconds": (None if since is None else round(time.monotonic() - since, 3)),
        }
