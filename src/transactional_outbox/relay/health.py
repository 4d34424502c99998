"""Metrics (Prometheus) and health endpoints for the relay.

The HTTP server runs in its own thread on purpose: if the asyncio loop is
stuck, ``/healthz`` can still answer, and answers 503, instead of timing out.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["HealthServer", "RelayMetrics"]


class RelayMetrics:
    """The relay's metrics, in a registry of their own (several relays per process in tests)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.published = Counter(
            "outbox_relay_events_published", "Events acknowledged by Kafka", registry=r
        )
        self.dead_lettered = Counter(
            "outbox_relay_events_dead_lettered", "Events sent to the dead-letter topic", registry=r
        )
        self.publish_errors = Counter(
            "outbox_relay_publish_errors", "Kafka errors that failed a send", registry=r
        )
        self.retries = Counter(
            "outbox_relay_session_retries", "Sessions restarted after a Kafka error", registry=r
        )
        self.batch_size = Histogram(
            "outbox_relay_batch_size",
            "Events handed to the producer per source batch",
            buckets=(1, 2, 5, 10, 50, 100, 500, 1000, 5000),
            registry=r,
        )
        self.behind_bytes = Gauge(
            "outbox_relay_binlog_behind_bytes",
            "Bytes of binlog between the acknowledged position and the server's head "
            "(0 = caught up, -1 = unknown)",
            registry=r,
        )
        self.last_event_age = Gauge(
            "outbox_relay_last_event_age_seconds",
            "Now minus the timestamp of the last event handed to Kafka (grows while idle)",
            registry=r,
        )
        self.checkpoint_age = Gauge(
            "outbox_relay_checkpoint_age_seconds",
            "Seconds since the checkpoint was saved",
            registry=r,
        )
        self.queue_depth = Gauge(
            "outbox_relay_queue_depth", "Events read from the binlog, not yet taken", registry=r
        )
        self.outstanding = Gauge(
            "outbox_relay_events_outstanding", "Events sent, not yet acknowledged", registry=r
        )
        self.leader = Gauge("outbox_relay_leader", "1 while this relay leads", registry=r)
        self.binlog_file = Gauge(
            "outbox_relay_binlog_file_index",
            "Numeric suffix of the checkpoint's binlog file",
            registry=r,
        )
        self.binlog_pos = Gauge(
            "outbox_relay_binlog_position",
            "Offset of the checkpoint in its binlog file",
            registry=r,
        )
        self.server_up = Gauge(
            "outbox_relay_server_up", "1 if the server is reachable", ["server"], registry=r
        )

    def render(self) -> bytes:
        """The exposition text."""
        return generate_latest(self.registry)


class HealthServer:
    """``/metrics``, ``/healthz`` and ``/readyz`` on a thread.

    ``health`` returns the relay's state; ``loop_tick`` the monotonic time the
    event loop last ticked.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        metrics: RelayMetrics,
        health: Callable[[], dict[str, Any]],
        loop_tick: Callable[[], float],
        stuck_after: float = 10.0,
    ) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer._serve(self)

            def log_message(self, format: str, *args: Any) -> None:  # quiet: probes are frequent
                pass

        self._metrics = metrics
        self._health = health
        self._loop_tick = loop_tick
        self._stuck_after = stuck_after
        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="outbox-health", daemon=True
        )

    def start(self) -> None:
        """Serve in the background."""
        self._thread.start()

    def stop(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()

    def _serve(self, req: BaseHTTPRequestHandler) -> None:
        path = req.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(req, 200, self._metrics.render(), CONTENT_TYPE_LATEST)
            return
        state = self._health()
        if path == "/healthz":
            stuck = time.monotonic() - self._loop_tick()
            ok = stuck < self._stuck_after
            body = {"status": "ok" if ok else "stuck", "loop_lag_seconds": round(stuck, 3)}
            self._json(req, 200 if ok else 503, body)
        elif path == "/readyz":
            self._json(req, 200 if state["ready"] else 503, state)
        else:
            self._send(req, 404, b"not found\n", "text/plain")

    def _json(self, req: BaseHTTPRequestHandler, code: int, body: dict[str, Any]) -> None:
        self._send(req, code, json.dumps(body).encode(), "application/json")

    @staticmethod
    def _send(req: BaseHTTPRequestHandler, code: int, body: bytes, ctype: str) -> None:
        req.send_response(code)
        req.send_header("Content-Type", ctype)
        req.send_header("Content-Length", str(len(body)))
        req.end_headers()
        req.wfile.write(body)
