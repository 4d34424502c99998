"""The relay's Prometheus metrics: a view of :class:`RelayStats`, read at scrape time.

Counters and gauges are not copied from the stats on a timer: a collector
reads the stats when ``/metrics`` is scraped, so the two cannot disagree.
Only the batch-size histogram is observed on the hot path (one call per
source batch), since its buckets cannot be derived from counters.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .stats import RelayStats

__all__ = ["RelayMetrics"]


class _StatsCollector(Collector):
    def __init__(self, stats: RelayStats) -> None:
        self._stats = stats

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        st = self._stats

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(name, doc, value=value)

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, value=value)

        yield counter("outbox_relay_events_published", "Events acknowledged by Kafka", st.published)
        if st.by_table:
            by_table = CounterMetricFamily(
                "outbox_relay_table_events_published",
                "Events of each outbox table acknowledged by Kafka or dead-lettered, counted "
                "as their batch is (many outbox tables only)",
                labels=["table"],
            )
            for table, n in sorted(st.by_table.items()):
                by_table.add_metric([table], n)
            yield by_table
        yield counter(
            "outbox_relay_events_dead_lettered",
            "Events sent to the dead-letter topic",
            st.dead_lettered,
        )
        yield counter(
            "outbox_relay_publish_errors", "Kafka errors that failed a send", st.publish_errors
        )
        yield counter(
            "outbox_relay_session_retries",
            "Sessions restarted after a Kafka error",
            st.kafka_errors,
        )
        yield gauge(
            "outbox_relay_binlog_behind_bytes",
            "Bytes of binlog between the acknowledged position and the server's head "
            "(0 = caught up, -1 = unknown)",
            -1 if st.behind_bytes is None else st.behind_bytes,
        )
        age = st.last_event_age()
        yield gauge(
            "outbox_relay_last_event_age_seconds",
            "Now minus the timestamp of the last event handed to Kafka (grows while idle)",
            0.0 if age is None else age,
        )
        saved = st.checkpoint_saved_at
        yield gauge(
            "outbox_relay_checkpoint_age_seconds",
            "Seconds since the checkpoint was saved",
            0.0 if saved is None else time.monotonic() - saved,
        )
        yield gauge(
            "outbox_relay_queue_depth", "Events read from the binlog, not yet taken", st.queue_depth
        )
        yield gauge(
            "outbox_relay_events_outstanding", "Events sent, not yet acknowledged", st.outstanding
        )
        yield gauge(
            "outbox_relay_kafka_unacknowledged_seconds",
            "Seconds Kafka has acknowledged nothing while events are outstanding (0 = none "
            "outstanding; above ack_stall_ms Kafka is reported down)",
            st.unacknowledged_for(),
        )
        yield counter(
            "outbox_relay_kafka_outages",
            "Times Kafka was reported down (nothing acknowledged for ack_stall_ms, or a "
            "session failed)",
            st.kafka_outages,
        )
        if st.canary != "off":
            yield gauge(
                "outbox_relay_canary_ok",
                "1 while canary events come back through the binlog in time and can be written",
                st.canary == "ok",
            )
            yield counter("outbox_relay_canary_alarms", "Canary alarms raised", st.canary_alarms)
            yield gauge(
                "outbox_relay_canary_roundtrip_seconds",
                "Write-to-seen time of the last canary event that came back",
                st.canary_roundtrip or 0.0,
            )
        yield gauge("outbox_relay_leader", "1 while this relay leads", st.role == "leader")
        file_index, pos = 0, 0
        # The position's own fields: a binlog file and offset, or an LSN.
        file, lsn = getattr(st.checkpoint, "file", None), getattr(st.checkpoint, "lsn", None)
        if isinstance(file, str):
            suffix = file.rsplit(".", 1)[-1]
            file_index = int(suffix) if suffix.isdigit() else 0
            pos = getattr(st.checkpoint, "pos", 0)
        if isinstance(lsn, int):
            yield gauge("outbox_relay_checkpoint_lsn", "The checkpoint's LSN (PostgreSQL)", lsn)
            yield gauge(
                "outbox_relay_slot_retained_bytes",
                "WAL PostgreSQL keeps for the relay's slot (-1: unknown)",
                -1 if st.slot_retained_bytes is None else st.slot_retained_bytes,
            )
        yield gauge(
            "outbox_relay_binlog_file_index",
            "Numeric suffix of the checkpoint's binlog file",
            file_index,
        )
        yield gauge(
            "outbox_relay_binlog_position", "Offset of the checkpoint in its binlog file", pos
        )
        up = GaugeMetricFamily(
            "outbox_relay_server_up", "1 if the server is reachable", labels=["server"]
        )
        for name, state in (
            (st.database_kind, st.database),
            ("kafka", st.kafka),
            ("redis", st.redis),
        ):
            up.add_metric([name], 1 if state == "ok" else 0)
        yield up


class RelayMetrics:
    """The relay's metrics, in a registry of their own (several relays per process in tests)."""

    def __init__(self, stats: RelayStats) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_StatsCollector(stats))
        self.batch_size = Histogram(
            "outbox_relay_batch_size",
            "Events handed to the producer per source batch",
            buckets=(1, 2, 5, 10, 50, 100, 500, 1000, 5000),
            registry=self.registry,
        )

    def render(self) -> bytes:
        """The exposition text."""
        return generate_latest(self.registry)
