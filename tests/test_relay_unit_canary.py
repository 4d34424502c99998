"""The canary's bookkeeping and its routing (no servers)."""

from __future__ import annotations

import logging

import pytest

from transactional_outbox.exceptions import ConfigurationError
from transactional_outbox.relay.canary import Canary, CanarySettings
from transactional_outbox.relay.config import RelaySettings
from transactional_outbox.relay.metrics import RelayMetrics
from transactional_outbox.relay.routing import CANARY_AGGREGATE_TYPE, CANARY_TOPIC, TopicRouter
from transactional_outbox.relay.stats import RelayStats

BASE = {
    "database_url": "mysql+pymysql://relay:s3cret@db:3306/shop",
    "redis_url": "redis://r:6379/0",
    "kafka_bootstrap_servers": "k:9092",
}


NOW = [1000.0]


def _canary(timeout_ms: int = 1000) -> tuple[Canary, RelayStats]:
    settings = RelaySettings.from_env({}, **BASE, canary_timeout_ms=timeout_ms)
    stats = RelayStats(kafka="ok", database="ok", behind_bytes=0)
    return Canary(settings, stats, clock=lambda: NOW[0]), stats


def test_canary_settings_from_the_environment_and_off_by_default() -> None:
    assert RelaySettings.from_env({}, **BASE).canary is None
    env = {"OUTBOX_CANARY_INTERVAL_MS": "500", "OUTBOX_CANARY_MYSQL_URL": "mysql://u:pw@p/x"}
    canary = RelaySettings.from_env(env, **BASE).canary
    assert canary == CanarySettings(interval_ms=500, mysql_url="mysql://u:pw@p/x")
    assert "pw" not in repr(canary) and "pw" not in repr(RelaySettings.from_env(env, **BASE))
    with pytest.raises(ConfigurationError, match="canary_timeout_ms"):
        RelaySettings.from_env({}, **BASE, canary_timeout_ms=0)


def test_the_canary_type_routes_to_no_legal_topic_whatever_the_overrides() -> None:
    router = TopicRouter(
        template="x.{aggregatetype}",
        overrides={"shop.outbox:*": "everything", CANARY_AGGREGATE_TYPE: "oops"},
    )
    assert router.topic(CANARY_AGGREGATE_TYPE, "shop", "outbox") == CANARY_TOPIC
    assert router.topic("order", "shop", "outbox") == "everything"


def test_canaries_back_in_order_keep_it_ok() -> None:
    canary, stats = _canary()
    for i in range(3):
        canary.expect(f"c{i}", "`shop`.`outbox`")
    for i in range(3):
        canary.seen(f"c{i}")
    canary.seen("another-relays-canary")
    canary.check()
    assert stats.canary == "ok" and stats.canaries_seen == 3 and stats.canary_roundtrip is not None


def test_a_late_canary_alarms_once_and_recovery_logs_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    canary, stats = _canary(timeout_ms=1000)
    canary.expect("c0", "`shop`.`outbox`")
    NOW[0] += 1.5  # older than the timeout
    stats.behind_bytes = 5000  # but the relay is behind: it may still come, no alarm yet
    canary.check()
    assert stats.canary == "ok"
    stats.behind_bytes = 0
    with caplog.at_level(logging.INFO, logger="transactional_outbox.relay"):
        canary.check()
        canary.check()
        assert stats.canary == "late" and stats.canary_alarms == 1
        assert not stats.health()["ready"] and "canary late" in stats.progress_line(0)
        canary.seen("c0")  # came back after all (slow replica)
    assert stats.canary == "ok"
    lines = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert [level for level, _ in lines] == [logging.ERROR, logging.INFO], lines
    assert "has not come back" in lines[0][1] and "`shop`.`outbox`" in lines[0][1]


def test_a_canary_skipped_before_a_later_one_is_an_alarm(caplog: pytest.LogCaptureFixture) -> None:
    canary, stats = _canary(timeout_ms=60_000)
    for i in range(3):
        canary.expect(f"c{i}", "`shop`.`outbox`")
    with caplog.at_level(logging.ERROR, logger="transactional_outbox.relay"):
        canary.seen("c2")  # c0 and c1 never will: rows were skipped meanwhile
    assert stats.canary == "late"
    assert "c0" in caplog.records[0].getMessage() and "2 missing" in caplog.records[0].getMessage()
    canary.expect("c3", "`shop`.`outbox`")
    canary.seen("c3")
    assert stats.canary == "ok"


def test_a_canary_needs_a_listed_table() -> None:
    settings = RelaySettings.from_env(
        {}, **BASE, outbox_table_pattern=r"[a-z]+\.outbox", canary_interval_ms=100
    )
    with pytest.raises(ConfigurationError, match=r"canary_interval_ms.*outbox_tables"):
        Canary(settings, RelayStats())


def test_metrics_show_the_outage_and_the_canary() -> None:
    _, stats = _canary()
    stats.kafka_down("test")
    text = RelayMetrics(stats).render().decode()
    assert 'outbox_relay_server_up{server="kafka"} 0.0' in text
    assert "outbox_relay_kafka_outages_total 1.0" in text
    assert "outbox_relay_kafka_unacknowledged_seconds 0.0" in text
    assert "outbox_relay_canary_ok 1.0" in text
    assert "outbox_relay_canary_alarms_total 0.0" in text
    assert "canary" not in RelayMetrics(RelayStats()).render().decode()  # off: not shown
