"""A Kafka outage as an operator sees it: /readyz, the progress line, metrics and the log.

The relay runs as ``python -m transactional_outbox.relay`` (its own logging setup)
against a broker reached through a TCP proxy; cutting the proxy is the outage.
"""

from __future__ import annotations

import asyncio
import json
import signal
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from outbox_dev.tcp_proxy import TcpProxy

from .relay_harness import (
    Collector,
    RelayProcess,
    free_port,
    make_event,
    relay_settings,
    wait_until,
    write_events,
)
from .test_relay_faults import kafka_proxy  # noqa: F401 (a fixture)


class _Relay(RelayProcess):
    def env(self) -> dict[str, str]:
        return {**super().env(), "OUTBOX_ACK_STALL_MS": "2000"}


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def _ready(port: int) -> dict[str, Any]:
    code, body = _get(port, "/readyz")
    return json.loads(body) if code in (200, 503) else {}


def _progress_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if " progress: " in line]


async def test_kafka_outage_is_reported_once_logged_briefly_and_loses_nothing(
    conn: Any,
    settings_kw: dict[str, Any],
    topic_prefix: str,
    kafka_proxy: TcpProxy,  # noqa: F811
    tmp_path: Path,
) -> None:
    bootstrap = f"127.0.0.1:{kafka_proxy.port}"
    port = free_port()
    settings = relay_settings(
        **{**settings_kw, "kafka_bootstrap": bootstrap},
        progress_interval_ms=300,
        metrics_port=port,
    )
    relay = _Relay(settings, tmp_path / "relay.log")
    first = [make_event(aggregate_id=str(i % 3)) for i in range(10)]
    during = [make_event(aggregate_id=str(i % 3)) for i in range(30)]
    async with Collector(bootstrap) as col:
        await col.watch([topic_prefix + "order"])
        relay.start()
        try:
            write_events(conn, first)
            await col.wait_for(10, within=60)
            await wait_until(
                lambda: _ready(port).get("kafka") == "ok", within=30, what="ready, kafka ok"
            )
            # Idle and caught up: still ok, nothing unacknowledged.
            assert _ready(port)["kafka_unacknowledged_seconds"] == 0

            kafka_proxy.cut()
            for k in range(0, 30, 10):
                write_events(conn, during[k : k + 10])

            def down() -> bool:
                state = _ready(port)
                return state.get("kafka") == "degraded" and state.get("ready") is False

            # Within ack_stall_ms (2 s) and a checkpoint tick; well before the 40 s
            # request timeout that used to be the only signal.
            await wait_until(down, within=30, what="/readyz saying Kafka is down")
            code, metrics = await asyncio.to_thread(_get, port, "/metrics")
            assert 'outbox_relay_server_up{server="kafka"} 0.0' in metrics
            assert "outbox_relay_kafka_outages_total 1.0" in metrics
            await wait_until(
                lambda: any("kafka DOWN for" in line for line in _progress_lines(relay.log())),
                within=30,
                what="a progress line saying Kafka is down",
            )
            # Let the outage last a few more progress lines, so the library has time
            # to log many failed attempts.
            seen = len(_progress_lines(relay.log()))
            await wait_until(
                lambda: len(_progress_lines(relay.log())) >= seen + 10,
                within=60,
                what="ten more progress lines during the outage",
            )
            kafka_proxy.restore()
            await wait_until(
                lambda: {str(e.id) for e in first + during} <= set(col.ids()),
                within=90,
                what="every event after the outage",
            )
            await wait_until(
                lambda: _ready(port).get("kafka") == "ok", within=30, what="kafka ok again"
            )
        finally:
            code = relay.kill(signal.SIGTERM)
    assert code == 0, relay.log()[-3000:]
    log = relay.log()
    lines = log.splitlines()
    downs = [line for line in lines if "Kafka down:" in line]
    backs = [line for line in lines if "Kafka back after" in line]
    assert len(downs) == 1 and " ERROR " in downs[0], downs
    assert len(backs) == 1 and " INFO " in backs[0], backs
    library = [line for line in lines if " aiokafka" in line]
    # One line every 5 s at most during an outage of a few seconds (without the
    # limit: ~20 a second here).
    assert len(library) <= 6, "\n".join(library)
    assert any("held back" in line for line in library) or len(library) <= 2
