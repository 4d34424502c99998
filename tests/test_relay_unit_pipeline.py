"""Pipeline callbacks, without servers."""

from __future__ import annotations

from transactional_outbox.relay import BinlogPosition, Relay, RelaySettings
from transactional_outbox.relay.watermark import Watermark

CONN = {
    "mysql_url": "mysql+pymysql://outbox:pw@127.0.0.1:13306/outbox",
    "kafka_bootstrap_servers": "127.0.0.1:19092",
    "redis_url": "redis://127.0.0.1:16379/0",
}
P1 = BinlogPosition(file="mysql-bin.000001", pos=100)
P2 = BinlogPosition(file="mysql-bin.000001", pos=200)


async def test_a_late_answer_from_an_earlier_session_does_not_ack_the_current_one() -> None:
    relay = Relay(RelaySettings(**CONN))
    old, new = Watermark(P1), Watermark(P1)
    old.add_events(1)
    ticket = new.add_events(1)
    new.commit(P2)
    relay._watermark = new
    # The earlier session's batch (same ticket number) is answered late.
    relay._on_batch_done(old, [[ticket, 1]], [], None)
    assert (new.outstanding, new.position) == (1, P1)
    assert relay.stats.published == 0
    relay._on_batch_done(new, [[ticket, 1]], [], None)
    assert (new.outstanding, new.position) == (0, P2)


async def test_an_error_from_an_earlier_session_is_not_this_sessions_failure() -> None:
    relay = Relay(RelaySettings(**CONN))
    old, new = Watermark(P1), Watermark(P1)
    relay._watermark = new
    relay._on_batch_done(old, [[0, 1]], [], TimeoutError("late"))
    assert relay._failure is None


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
