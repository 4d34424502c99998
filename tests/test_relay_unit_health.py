"""Kafka outage reporting and the library log limit (no servers)."""

from __future__ import annotations

import logging
import time

import pytest

from transactional_outbox.relay.logs import RateLimitFilter
from transactional_outbox.relay.stats import RelayStats


class _Session:
    def __init__(self, outstanding: int) -> None:
        self.outstanding = outstanding
        self.queue_depth = 0


def _record(
    name: str, level: int = logging.ERROR, msg: str = "Unable connect"
) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, None, None)


def test_idle_relay_is_never_reported_down() -> None:
    stats = RelayStats(kafka="ok", last_progress_at=time.monotonic() - 3600)
    stats.check_kafka_progress(5.0)
    assert stats.kafka == "ok" and stats.unacknowledged_for() == 0


def test_outage_reported_once_and_recovery_once(caplog: pytest.LogCaptureFixture) -> None:
    stats = RelayStats(kafka="ok", session=_Session(20))
    stats.last_progress_at = time.monotonic() - 10
    with caplog.at_level(logging.INFO, logger="transactional_outbox.relay"):
        stats.check_kafka_progress(5.0)
        stats.check_kafka_progress(5.0)
        stats.kafka_down("a session failed")  # a second cause during the same outage
        assert stats.kafka == "degraded" and stats.kafka_outages == 1
        assert not stats.health()["ready"] and stats.health()["kafka_down_seconds"] is not None
        assert "kafka DOWN for" in stats.progress_line(0.0)
        stats.acked(20)
        stats.acked(5)
    downs = [r for r in caplog.records if r.getMessage().startswith("Kafka down:")]
    backs = [r for r in caplog.records if r.getMessage().startswith("Kafka back after")]
    assert len(downs) == 1 and downs[0].levelno == logging.ERROR
    assert "nothing acknowledged for 10" in downs[0].getMessage()
    assert len(backs) == 1 and backs[0].levelno == logging.INFO
    assert stats.kafka == "ok" and stats.health()["kafka_down_seconds"] is None


def test_recent_acks_keep_kafka_up() -> None:
    stats = RelayStats(kafka="ok", session=_Session(5000))
    stats.acked(1)
    stats.check_kafka_progress(5.0)
    assert stats.kafka == "ok"


def test_rate_limit_passes_one_library_line_per_interval_and_counts_the_rest() -> None:
    now = [100.0]
    limit = RateLimitFilter(interval=60.0, clock=lambda: now[0])
    assert limit.filter(_record("aiokafka"))
    assert not any(limit.filter(_record("aiokafka.conn")) for _ in range(500))
    assert limit.suppressed == 500
    # The relay's own lines, and the library's below WARNING, always pass.
    assert limit.filter(_record("transactional_outbox.relay"))
    assert limit.filter(_record("aiokafka", logging.INFO))
    now[0] += 61  # the interval is over
    passed = _record("aiokafka.producer.sender", msg="Got error %s")
    passed.args = ("x",)
    assert limit.filter(passed)
    assert passed.getMessage() == (
        "Got error x [500 more aiokafka line(s) held back; at most one every 60s]"
    )
    assert limit.suppressed == 0 and limit.suppressed_total == 500
