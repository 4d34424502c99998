"""The database a demo run writes to: the stack's MariaDB or its PostgreSQL.

Each kind knows the URLs the children need, how to create and drop the run's two
databases, and where the relay starts reading: on MariaDB the binlog's end after
the migrations; on PostgreSQL a publication and a replication slot of the run's own,
created after the migrations (so nothing a request commits can come before it) and
dropped at the end (a slot left behind makes PostgreSQL keep its WAL forever).
"""

from __future__ import annotations

import time
from typing import Any

import pymysql
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from outbox_dev import stack
from outbox_dev.pg import ScratchPostgres

__all__ = ["KINDS", "DemoDatabase", "MySQLDatabase", "PostgresDatabase"]


class DemoDatabase:
    """What the demo needs of a database server; one subclass per kind."""

    name = ""  # as the demo prints it
    kind = ""  # the --database value
    sync_driver = ""
    async_driver = ""
    env_var = ""  # the stack's variable with the server's URL

    def __init__(self, env: dict[str, str]) -> None:
        self.server = make_url(env[self.env_var])

    @property
    def address(self) -> str:
        """host:port."""
        return f"{self.server.host}:{self.server.port}"

    def url(self, database: str, driver: str | None = None) -> str:
        """The SQLAlchemy URL of ``database``, password included (for the children)."""
        drivername = driver or self.sync_driver
        return self.server.set(drivername=drivername, database=database).render_as_string(
            hide_password=False
        )

    def query(self, database: str, sql: str) -> list[tuple[Any, ...]]:
        """The rows of ``sql`` run in ``database`` (a connection of its own)."""
        engine = sa.create_engine(self.url(database), poolclass=NullPool)
        try:
            with engine.connect() as conn:
                return [tuple(row) for row in conn.execute(sa.text(sql))]
        finally:
            engine.dispose()

    def create(self, names: list[str]) -> None:
        """Create the run's databases (before the migrations)."""

    def relay_start(self, database: str, slot: str) -> tuple[str, dict[str, str]]:
        """Fix where the relay starts (after the migrations, before any request); the
        position as the demo prints it and the relay's settings for it."""
        raise NotImplementedError

    def drop(self, names: list[str], slot: str) -> None:
        """Drop the run's databases (and slot), after the children stopped."""
        raise NotImplementedError


class MySQLDatabase(DemoDatabase):
    """The stack's MariaDB: the relay tails its binlog."""

    name, kind, env_var = "MariaDB", "mysql", "OUTBOX_MYSQL_URL"
    sync_driver, async_driver = "mysql+pymysql", "mysql+asyncmy"

    def connect(self) -> pymysql.Connection:  # type: ignore[type-arg]
        """A PyMySQL connection to the server (no default database)."""
        u = self.server
        return pymysql.connect(
            host=u.host, port=u.port or 3306, user=u.username, password=u.password or ""
        )

    def relay_start(self, database: str, slot: str) -> tuple[str, dict[str, str]]:
        # Where the binlog ends now, after the migrations: the relay starts here. This is
        # "latest" taken before the relay starts, so no request can slip in between.
        with self.connect() as conn, conn.cursor() as cur:
            cur.execute("SHOW MASTER STATUS")
            log_file, log_pos = cur.fetchone()[:2]
        position = f"{log_file}:{log_pos}"
        return f"binlog {position}", {"OUTBOX_START_POSITION": position}

    def drop(self, names: list[str], slot: str) -> None:
        with self.connect() as conn, conn.cursor() as cur:
            for name in names:
                cur.execute(f"DROP DATABASE IF EXISTS `{name}`")


class PostgresDatabase(DemoDatabase):
    """The stack's PostgreSQL 15 (wal_level=logical): the relay reads a replication slot.

    The stack's ``outbox`` role may log in and replicate but not create databases: the
    run's databases are created (owned by it) and dropped by the superuser, over the
    server's local socket (trust logins, see ``outbox_dev.pg``).
    """

    name, kind, env_var = "PostgreSQL", "postgresql", "OUTBOX_PG_URL"
    sync_driver, async_driver = "postgresql+psycopg", "postgresql+psycopg"

    def superuser(self) -> Any:
        """An autocommit psycopg connection as ``postgres`` to the ``postgres`` database."""
        import psycopg

        service = next(svc for svc in stack.SERVICES if isinstance(svc, stack.Postgres))
        sock = ScratchPostgres(service.pg_dir, service.port).socket_dir
        return psycopg.connect(
            host=str(sock),
            port=self.server.port,
            user="postgres",
            dbname="postgres",
            autocommit=True,
        )

    def create(self, names: list[str]) -> None:
        with self.superuser() as conn:
            for name in names:
                conn.execute(f'CREATE DATABASE "{name}" OWNER "{self.server.username}"')

    def relay_start(self, database: str, slot: str) -> tuple[str, dict[str, str]]:
        # The publication first: pgoutput looks it up as of each change it decodes, so it
        # must be older than the slot. The slot starts at the WAL's end now, after the
        # migrations, before the relay and the api-server start: no request comes earlier.
        engine = sa.create_engine(
            self.url(database), poolclass=NullPool, isolation_level="AUTOCOMMIT"
        )
        try:
            with engine.connect() as conn:
                conn.execute(sa.text(f"CREATE PUBLICATION {slot} FOR TABLE public.outbox"))
                lsn = conn.execute(
                    sa.text(
                        f"SELECT lsn FROM pg_create_logical_replication_slot('{slot}', 'pgoutput')"
                    )
                ).scalar_one()
        finally:
            engine.dispose()
        settings = {
            "OUTBOX_PG_SLOT": slot,
            "OUTBOX_PG_PUBLICATION": slot,
            "OUTBOX_PG_CREATE": "false",  # the demo made both
            "OUTBOX_START_POSITION": "latest",  # the slot's position
        }
        return f"slot {slot} at LSN {lsn}", settings

    def drop(self, names: list[str], slot: str) -> None:
        with self.superuser() as conn:
            # The relay's connection may end a moment after the relay: a slot in use
            # cannot be dropped. One still in use after a few seconds (a relay that would
            # not stop) has its connection ended: the demo leaves no slot behind.
            deadline = time.monotonic() + 5
            while True:
                row = conn.execute(
                    "SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", (slot,)
                ).fetchone()
                if row is None:
                    break
                if row[0] is None:
                    conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
                    break
                if time.monotonic() > deadline:
                    conn.execute("SELECT pg_terminate_backend(%s)", (row[0],))
                time.sleep(0.05)
            for name in names:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


KINDS: dict[str, type[DemoDatabase]] = {cls.kind: cls for cls in (MySQLDatabase, PostgresDatabase)}
