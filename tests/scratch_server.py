"""Throw-away MariaDB servers for tests that change server settings or restart it.

They run beside the shared stack on their own ports, so changing a global
variable, purging binlogs or restarting cannot disturb other tests.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pymysql

from outbox_dev import stack


@dataclass
class ScratchServer:
    server: stack.MariaDB
    port: int

    def connect(self, database: str | None = None, **kw: object) -> pymysql.Connection:
        args: dict[str, object] = {
            "host": "127.0.0.1",
            "port": self.port,
            "user": stack.MYSQL_USER,
            "password": stack.MYSQL_PASSWORD,
            "database": database,
            "autocommit": True,
        }
        args.update(kw)
        return pymysql.connect(**args)  # type: ignore[arg-type]

    def url(self, database: str, user: str = "outbox", password: str = "outbox") -> str:
        return f"mysql+pymysql://{user}:{password}@127.0.0.1:{self.port}/{database}"

    def restart(self) -> None:
        self.server.stop()
        self.server.start()

    def stop(self) -> None:
        self.server.stop()

    def start(self) -> None:
        self.server.start()


@contextmanager
def scratch_mariadb(name: str, port: int, *, log_bin: bool = True) -> Iterator[ScratchServer]:
    """A fresh MariaDB with the stack's flags (or without the binlog), removed afterwards."""
    server = stack.MariaDB(name, port)
    if not log_bin:
        server.flags = [f for f in stack.MARIADB_FLAGS if not f.startswith("--log-bin")]
    server.stop()
    shutil.rmtree(server.dir, ignore_errors=True)
    server.start()
    try:
        yield ScratchServer(server, port)
    finally:
        server.stop()
        shutil.rmtree(server.dir, ignore_errors=True)
