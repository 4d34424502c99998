"""The relay's HTTP endpoints: ``/metrics``, ``/healthz``, ``/readyz``.

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

from prometheus_client.exposition import CONTENT_TYPE_LATEST

from ..exceptions import ConfigurationError
from .metrics import RelayMetrics

__all__ = ["HealthServer"]


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

    @classmethod
    def serve(
        cls,
        *,
        host: str,
        port: int,
        metrics: RelayMetrics,
        health: Callable[[], dict[str, Any]],
        loop_tick: Callable[[], float],
    ) -> HealthServer:
        """A started server; a port that cannot be bound is a :class:`ConfigurationError`."""
        try:
            server = cls(host=host, port=port, metrics=metrics, health=health, loop_tick=loop_tick)
        except OSError as exc:
            raise ConfigurationError(
                "metrics_port", f"cannot serve on {host}:{port}: {exc}"
            ) from None
        server.start()
        return server

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
