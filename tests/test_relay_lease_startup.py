"""The leader renews its lease while it starts, not only once it publishes."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from transactional_outbox.relay.mysql import startup

from .relay_harness import Collector, make_event, relay_settings, running_relay, write_events


async def test_the_lease_is_renewed_while_the_leader_starts(
    conn: Any,
    settings_kw: dict[str, Any],
    topic_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Startup (server checks, Kafka and Redis probes) took ~0.8 s here; with a 1 s lease
    # the lease expired before the first renewal and the relay lost and retook it every
    # second without publishing. A startup of three TTLs makes that certain.
    real = startup.prepare_start
    starts: list[float] = []

    async def slow_start(*args: Any, **kwargs: Any) -> Any:
        starts.append(1.5)
        await asyncio.sleep(1.5)  # a slow server answering the startup checks
        return await real(*args, **kwargs)

    monkeypatch.setattr(startup, "prepare_start", slow_start)
    event = make_event(aggregate_id="a")
    write_events(conn, [event])
    settings = relay_settings(**settings_kw, lease_ttl_ms=500, lease_renew_ms=150)
    caplog.set_level(logging.INFO, logger="transactional_outbox")
    async with Collector(settings_kw["kafka_bootstrap"]) as col:
        await col.watch([topic_prefix + "order"])
        async with running_relay(settings):
            await col.wait_for(1)
    assert [dict(r.headers)["id"].decode() for r in col.records] == [str(event.id)]
    lost = [r.getMessage() for r in caplog.records if "lost leadership" in r.getMessage()]
    assert lost == []
    # The slow start ran, once: the lease held through it (a lost lease starts again).
    assert starts == [1.5]
