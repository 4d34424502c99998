"""The relay, the example api-server and the example consumer as child processes."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
from pathlib import Path

from outbox_dev import stack
from outbox_dev.scratch import free_port

from .console import DemoError
from .resources import DemoResources

PY = sys.executable


def _die_with_parent() -> None:
    """In the child: get SIGTERM if the demo itself dies (Linux), so nothing is orphaned."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Child:
    """A child process (relay, api-server, consumer) logging to a file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log: Path) -> None:
        self.name, self.args, self.env, self.log = name, args, env, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, pids: list[int], **extra_env: str) -> None:
        """Start it (again), appending its pid to ``pids``."""
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                self.args,
                cwd=stack.ROOT,
                env={**self.env, **extra_env},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                # Own session: Ctrl-C reaches only the demo, which stops children in order.
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        pids.append(self.proc.pid)

    @property
    def running(self) -> bool:
        """Started and not exited."""
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, wait; SIGKILL only if it does not stop in time. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def tail(self, lines: int = 15) -> str:
        """The last lines of its log, indented for the demo's output."""
        try:
            text = self.log.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return "\n".join("      " + line for line in text)


class DemoProcesses:
    """The run's three children, configured for its resources; logs under ``logs``."""

    def __init__(self, res: DemoResources, logs: Path) -> None:
        base = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_")}
        base["PYTHONUNBUFFERED"] = "1"
        port = free_port()
        self.api = f"http://127.0.0.1:{port}"
        bind = ["--host", "127.0.0.1", "--port", str(port)]
        self.pids: list[int] = []  # every child process started (for the summary)
        relay_env = {
            **base,
            "OUTBOX_DATABASE_URL": res.url(res.db),
            "OUTBOX_REDIS_URL": res.redis_url,
            "OUTBOX_KAFKA_BOOTSTRAP_SERVERS": res.kafka,
            "OUTBOX_ENABLE_IDEMPOTENCE": "false",  # the local tansu broker has no idempotence
            **res.relay_settings,  # where it starts (and PostgreSQL: its slot)
            "OUTBOX_TOPIC_TEMPLATE": res.topic_template,
            "OUTBOX_RELAY_NAME": res.relay_name,
            "OUTBOX_KEY_PREFIX": res.key_prefix,
            "OUTBOX_CHECKPOINT_INTERVAL_MS": "200",
            "OUTBOX_HEARTBEAT_MS": "1000",
            "OUTBOX_LINGER_MS": "1",
        }
        api_env = {
            **base,
            "ORDERS_DATABASE_URL": res.url(res.db, res.server.async_driver),
            "ORDERS_OUTBOX_MODE": res.outbox_mode,
        }
        if res.outbox_mode == "message":
            # The api-server's events are logical decoding messages (prefix "outbox"):
            # the relay reads those besides the (then empty) table.
            relay_env["OUTBOX_PG_MESSAGE_PREFIXES"] = "outbox"
        self.consumer_env = {
            **base,
            "STATS_DATABASE_URL": res.url(res.read_db, res.server.async_driver),
            "OUTBOX_KAFKA_BOOTSTRAP_SERVERS": res.kafka,
            "ORDERS_TOPIC": res.topic,
            "CONSUMER_GROUP": res.group,
            # tansu: group joins take half the session timeout; keep it short.
            "CONSUMER_SESSION_TIMEOUT_MS": "1000",
            "CONSUMER_HEARTBEAT_INTERVAL_MS": "300",
        }
        self.children = {
            "relay": Child(
                "relay",
                [PY, "-m", "transactional_outbox.relay"],
                relay_env,
                logs / "relay.log",
            ),
            "api-server": Child(
                "api-server",
                [PY, "-m", "uvicorn", "app:app", "--app-dir", "examples/api-server", *bind],
                api_env,
                logs / "api-server.log",
            ),
            "consumer": Child(
                "consumer",
                [PY, "examples/consumer/consumer.py"],
                self.consumer_env,
                logs / "consumer.log",
            ),
        }

    def start(self) -> None:
        """Start all three."""
        for child in self.children.values():
            child.start(self.pids)

    def check(self, relay_up: bool) -> None:
        """Raise :class:`DemoError` with its log if a child exited (the relay: if it should
        be up)."""
        for name, child in self.children.items():
            if name == "relay" and not relay_up:
                continue
            if child.proc is not None and not child.running:
                raise DemoError(
                    f"the {name} exited with code {child.proc.returncode}; its log:\n"
                    + child.tail()
                )

    def stop(self) -> dict[str, int | None]:
        """SIGTERM each started child, writers first; their exit codes by name."""
        codes = {}
        for name in ("api-server", "relay", "consumer"):  # stop writing first
            child = self.children[name]
            if child.proc is not None:
                codes[name] = child.stop()
        return codes
