"""Publish sessions' callbacks and the relay's setup, without servers."""

from __future__ import annotations

from transactional_outbox.relay import BinlogPosition, KafkaConnection, Relay, RelaySettings
from transactional_outbox.relay.leadership import Lease, LeaseKeys
from transactional_outbox.relay.pipeline import database_for
from transactional_outbox.relay.publish_session import PublishSession
from transactional_outbox.relay.routing import TopicRouter, build_record
from transactional_outbox.relay.stats import RelayStats
from transactional_outbox.relay.term import LeaderTerm

from .test_relay_unit_routing import event as make_event

CONN = {
    "database_url": "mysql+pymysql://outbox:pw@127.0.0.1:13306/outbox",
    "kafka": KafkaConnection(bootstrap_servers="127.0.0.1:19092"),
    "redis_url": "redis://127.0.0.1:16379/0",
}
P1 = BinlogPosition(file="mysql-bin.000001", pos=100)
P2 = BinlogPosition(file="mysql-bin.000001", pos=200)


def _session(stats: RelayStats, start: BinlogPosition = P1) -> PublishSession:
    settings = RelaySettings(**CONN)
    term = LeaderTerm(
        Lease(None, LeaseKeys.for_relay("t", "r"), ttl_ms=1000), renew_ms=100, stats=stats
    )  # type: ignore[arg-type]
    return PublishSession(
        settings,
        start,
        database=database_for(settings),
        router=settings.router(),
        term=term,
        stats=stats,
    )


async def test_a_late_answer_from_an_earlier_session_does_not_ack_the_current_one() -> None:
    stats = RelayStats()
    old, new = _session(stats), _session(stats)
    old.watermark.add_events(1)
    ticket = new.watermark.add_events(1)
    new.watermark.commit(P2)
    # The earlier session's batch (same ticket number) is answered late: it
    # reaches the earlier session only, by construction.
    old.on_batch_done([[ticket, 1]], [], None)
    assert (new.watermark.outstanding, new.watermark.position) == (1, P1)
    new.on_batch_done([[ticket, 1]], [], None)
    assert (new.watermark.outstanding, new.watermark.position) == (0, P2)


async def test_an_error_from_an_earlier_session_is_not_this_sessions_failure() -> None:
    stats = RelayStats()
    old, new = _session(stats), _session(stats)
    old.on_batch_done([[0, 1]], [], TimeoutError("late"))
    assert new.failure is None
    assert isinstance(old.failure, TimeoutError)
    assert stats.publish_errors == 1


async def test_acks_count_as_published_and_bring_kafka_back() -> None:
    stats = RelayStats(kafka="degraded")
    session = _session(stats)
    ticket = session.watermark.add_events(2)
    record = build_record(make_event(), TopicRouter())
    session.on_batch_done([[ticket, 2]], [record, record], None)
    assert (stats.published, stats.kafka, session.outstanding) == (2, "ok", 0)


async def test_a_taken_metrics_port_is_a_configuration_error_naming_it() -> None:
    import socket

    import pytest

    from transactional_outbox import ConfigurationError

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ConfigurationError) as info:
            await Relay(RelaySettings(**CONN, metrics_port=port)).run()
    assert info.value.setting == "metrics_port" and str(port) in str(info.value)
