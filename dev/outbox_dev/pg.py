"""A scratch PostgreSQL 15 with logical replication, for development, tests and benchmarks.

Debian's binaries (``/usr/lib/postgresql/15/bin``, package ``postgresql-15``); the
server refuses to run as root, so ``initdb`` and ``postgres`` run as the
``postgres`` user (``subprocess`` ``user=``, the same as ``su postgres -s /bin/sh
-c ...``) on a data directory it owns. The postmaster is this process's child,
so :meth:`ScratchPostgres.stop` can end it gracefully or by SIGKILL and reap it.

Configured as the relay needs it: ``wal_level=logical``, replication slots and
WAL senders, ``fsync=off`` (scratch data; a killed postmaster still loses
nothing the kernel holds). Local socket logins are ``trust``; TCP logins on
127.0.0.1 are ``trust`` or ``scram-sha-256`` (``auth=``). A role ``outbox``
(password ``outbox``, LOGIN REPLICATION) owns the database ``outbox``.

Only the standard library and psycopg (3) are used, no pytest and no SDK import.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"


def _find_bin() -> Path:
    """Debian's PostgreSQL binaries (the newest installed major version), installed with
    apt-get when there are none: the tests and the stack need no manual step on a fresh
    machine."""
    if "OUTBOX_PG_BIN" in os.environ:
        return Path(os.environ["OUTBOX_PG_BIN"])

    def installed() -> list[Path]:
        found = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "initdb").exists()]
        return sorted(found, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)

    if not installed():
        from outbox_dev.stack import apt_install

        apt_install("postgresql")
    found = installed()
    if not found:
        raise SystemExit("no PostgreSQL server binaries under /usr/lib/postgresql after install")
    return found[-1]


class _LazyBin:
    """The binaries' folder, looked up (and installed) on first use, not at import."""

    _path: Path | None = None

    def __truediv__(self, name: str) -> Path:
        if self._path is None:
            _LazyBin._path = _find_bin()
        assert self._path is not None
        return self._path / name


BIN = _LazyBin()
USER = "outbox"
PASSWORD = "outbox"
DATABASE = "outbox"
STACK_PORT = int(os.environ.get("OUTBOX_STACK_PG_PORT", "15432"))
OS_USER = "postgres"  # the server refuses root


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((HOST, port)) == 0


def _chown_tree(path: Path) -> None:
    shutil.chown(path, OS_USER, OS_USER)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            with contextlib.suppress(FileNotFoundError):
                shutil.chown(os.path.join(root, name), OS_USER, OS_USER)


class ScratchPostgres:
    """A PostgreSQL server of its own under ``workdir`` (created, owned by ``postgres``).

    ``start()`` initialises the cluster the first time and starts it;
    ``stop(kill=True)`` SIGKILLs the postmaster (a crash: recovery on the next
    start); ``destroy()`` stops it and removes ``workdir``.
    """

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        *,
        auth: str = "trust",
        max_replication_slots: int = 10,
        max_wal_senders: int = 10,
        settings: dict[str, str] | None = None,
    ) -> None:
        self.dir = Path(workdir)
        self.port = port or _free_port()
        self.auth = auth
        self.user = USER
        self.password = PASSWORD
        self.database = DATABASE
        self.settings = {
            "wal_level": "logical",
            "max_replication_slots": str(max_replication_slots),
            "max_wal_senders": str(max_wal_senders),
            "fsync": "off",
            "full_page_writes": "off",
            "max_connections": "200",
            "wal_sender_timeout": "60s",
            **(settings or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def data(self) -> Path:
        return self.dir / "data"

    @property
    def socket_dir(self) -> Path:
        return self.dir / "sock"

    @property
    def log_path(self) -> Path:
        return self.dir / "postgres.log"

    def url(self, database: str | None = None, *, driver: str = "") -> str:
        """A SQLAlchemy/libpq URL for the ``outbox`` role (``driver``: e.g. ``"psycopg"``)."""
        scheme = f"postgresql+{driver}" if driver else "postgresql"
        db = self.database if database is None else database
        return f"{scheme}://{self.user}:{self.password}@{HOST}:{self.port}/{db}"

    def dsn(self, database: str | None = None, **kw: object) -> str:
        """A libpq keyword DSN for the ``outbox`` role (extra keywords appended)."""
        db = self.database if database is None else database
        parts = {
            "host": HOST,
            "port": self.port,
            "user": self.user,
            "password": self.password,
            "dbname": db,
            **kw,
        }
        return " ".join(f"{k}={v}" for k, v in parts.items())

    def _run_as_postgres(self, args: list[str]) -> None:
        proc = subprocess.run(
            args, user=OS_USER, group=OS_USER, capture_output=True, check=False, cwd=self.dir
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {proc.stderr.decode(errors='replace')[-2000:]}")

    def _init(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        _chown_tree(self.dir)
        host_auth = "trust" if self.auth == "trust" else self.auth
        self._run_as_postgres(
            [
                str(BIN / "initdb"),
                "-D",
                str(self.data),
                "-U",
                OS_USER,
                "--auth-local=trust",
                f"--auth-host={host_auth}",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ]
        )

    def start(self, *, within: float = 30.0, detach: bool = False) -> None:
        """Start the server (initialising it the first time); returns once it takes logins.

        ``detach``: in a session of its own, so it outlives this process (the stack).
        """
        fresh = not (self.data / "PG_VERSION").exists()
        if fresh:
            self._init()
        args = [str(BIN / "postgres"), "-D", str(self.data), "-p", str(self.port)]
        opts = {
            "listen_addresses": HOST,
            "unix_socket_directories": str(self.socket_dir),
            **self.settings,
        }
        for key, value in opts.items():
            args += ["-c", f"{key}={value}"]
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it
        try:
            self.proc = subprocess.Popen(
                args,
                user=OS_USER,
                group=OS_USER,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.dir,
                start_new_session=detach,
            )
        finally:
            log.close()
        deadline = time.monotonic() + within
        while not self._ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log_path.read_text(errors="replace").splitlines()[-15:]
                raise RuntimeError("PostgreSQL did not start:\n" + "\n".join(tail))
            time.sleep(0.05)
        if fresh:
            self._bootstrap_roles()

    def _ready(self) -> bool:
        if not _port_open(self.port):
            return False
        proc = subprocess.run(
            [str(BIN / "pg_isready"), "-q", "-h", HOST, "-p", str(self.port)],
            check=False,
            capture_output=True,
        )
        return proc.returncode == 0

    def psql(self, sql: str, *, database: str = "postgres") -> str:
        """Run ``sql`` as the superuser over the local socket; the output (tuples only)."""
        proc = subprocess.run(
            [
                str(BIN / "psql"),
                "-X",
                "-q",
                "-t",
                "-A",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                str(self.socket_dir),
                "-p",
                str(self.port),
                "-U",
                OS_USER,
                "-d",
                database,
                "-c",
                sql,
            ],
            user=OS_USER,
            group=OS_USER,
            capture_output=True,
            check=False,
            cwd=self.dir,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"psql failed: {proc.stderr.decode(errors='replace')}")
        return proc.stdout.decode()

    def _bootstrap_roles(self) -> None:
        self.psql(f"CREATE ROLE {self.user} LOGIN REPLICATION PASSWORD '{self.password}'")
        self.psql(f"CREATE DATABASE {self.database} OWNER {self.user}")

    def stop(self, *, kill: bool = False) -> None:
        """Stop the server: fast shutdown, or SIGKILL (crash recovery on the next start)."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        if kill:
            # The postmaster's children exit when it dies; SIGKILL to the whole
            # group is not possible (same group as us), so kill them by parent.
            children = _children(proc.pid)
            proc.send_signal(signal.SIGKILL)
            for pid in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        else:
            proc.send_signal(signal.SIGINT)  # "fast" shutdown: disconnect clients, checkpoint
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        if kill:
            deadline = time.monotonic() + 10
            while _port_open(self.port) and time.monotonic() < deadline:
                time.sleep(0.02)
            (self.data / "postmaster.pid").unlink(missing_ok=True)

    def restart(self, *, kill: bool = False) -> None:
        """Stop (gracefully or by SIGKILL) and start again on the same port and data."""
        self.stop(kill=kill)
        self.start()

    def destroy(self) -> None:
        """Stop the server and remove its directory."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def connect(self, database: str | None = None, **kw: Any) -> Any:
        """A psycopg (3) connection as the ``outbox`` role, autocommit unless told."""
        import psycopg

        kw.setdefault("autocommit", True)
        return psycopg.connect(self.dsn(database), **kw)


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            line = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces, so split after ")".
        fields = line.rsplit(")", 1)[-1].split()
        if len(fields) > 1 and fields[1] == str(pid):
            out.append(int(entry.name))
    return out


def _reachable(path: Path) -> bool:
    """Whether the ``postgres`` OS user may pass through every directory above ``path``
    (one not made yet will be, with the default umask's search bits: not counted)."""
    user = pwd.getpwnam(OS_USER)
    for parent in Path(path).resolve().parents:
        if not parent.exists():
            continue
        st = parent.stat()
        if st.st_uid == user.pw_uid:
            bit = stat.S_IXUSR
        elif st.st_gid == user.pw_gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return False
    return True


def stack_pg_dir(state_dir: Path) -> Path:
    """Where the stack's PostgreSQL lives: ``state_dir``, unless the ``postgres`` user
    cannot reach it (a checkout in a private folder: ``mktemp -d``, a 0700 home), then
    a folder of the system's temporary directory named after it (the same every time)."""
    if _reachable(state_dir):
        return Path(state_dir)
    key = hashlib.sha1(str(Path(state_dir).resolve()).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"outbox-stack-pg-{key}"


def start_stack_pg(state_dir: Path, port: int = STACK_PORT) -> ScratchPostgres:
    """Start (or reuse) the dev stack's PostgreSQL under ``state_dir`` on ``port``.

    The stack's servers outlive the command that started them, so this one is
    detached from us (its own session): ``stop_stack_pg`` ends it by the pid
    file PostgreSQL writes.
    """
    server = ScratchPostgres(stack_pg_dir(state_dir), port)
    if _port_open(port) and (server.data / "postmaster.pid").exists():
        return server
    if _port_open(port):
        raise SystemExit(
            f"port {port} is taken by a process this stack did not start; "
            "set OUTBOX_STACK_PG_PORT to another port"
        )
    server.start(detach=True)
    return server


def stop_stack_pg(state_dir: Path) -> bool:
    """Stop the stack's PostgreSQL (fast shutdown); False if it was not running."""
    pid_file = stack_pg_dir(state_dir) / "data" / "postmaster.pid"
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return False
    try:
        os.kill(pid, signal.SIGINT)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    return True


def stack_env(port: int = STACK_PORT) -> dict[str, str]:
    """The stack's PostgreSQL URL as the relay will read it."""
    return {"OUTBOX_PG_URL": f"postgresql://{USER}:{PASSWORD}@{HOST}:{port}/{DATABASE}"}
