"""One demo run's own resources on the local stack: databases, topic, Redis keys.

Every name is derived from a fresh run id, so runs never share anything; ``remove()``
deletes what the run made (the stack itself stays up).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pymysql
import redis.asyncio
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from sqlalchemy.engine import make_url

from outbox_dev import stack

from .console import DemoError, say

EXAMPLES = stack.ROOT / "examples"
PARTITIONS = 3


def load_module(name: str, path: Path) -> Any:
    """Import the file at ``path`` as module ``name`` (the examples are not a package)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class DemoResources:
    """The run's names, and the databases, topic and Redis keys made under them."""

    def __init__(self) -> None:
        self.run_id = uuid.uuid4().hex[:6]
        self.db = f"demo_{self.run_id}"
        self.read_db = f"demo_{self.run_id}_read"
        prefix = f"demo_{self.run_id}"
        self.topic_template = prefix + ".outbox.event.{aggregatetype}"
        self.topic = prefix + ".outbox.event.order"
        self.relay_name = f"demo-{self.run_id}"
        self.key_prefix = f"outbox:demo:{self.run_id}:"
        self.group = f"demo-{self.run_id}-customer-stats"
        self.created_dbs = False

    def start_stack(self) -> None:
        """Start the local stack (if it is down) and take its addresses."""
        out = subprocess.run(
            [sys.executable, "-m", "outbox_dev.stack", "start"], capture_output=True, text=True
        )
        if out.returncode != 0:
            raise DemoError(f"the local stack did not start:\n{out.stdout}{out.stderr}")
        env = stack.env_vars()
        self.mysql = make_url(env["OUTBOX_MYSQL_URL"])
        self.redis_url = env["OUTBOX_REDIS_URL"]
        self.kafka = env["OUTBOX_KAFKA_BOOTSTRAP_SERVERS"]
        say(
            f"[1/5] Local stack up: MariaDB {self.mysql.host}:{self.mysql.port} (binlog on),"
            f" Redis {self.redis_url.split('//')[1]}, Kafka-compatible broker {self.kafka}"
        )

    def url(self, database: str, driver: str = "mysql+pymysql") -> str:
        """The SQLAlchemy URL of ``database`` on the stack, password included (for children)."""
        return self.mysql.set(drivername=driver, database=database).render_as_string(
            hide_password=False
        )

    def connect(self) -> pymysql.Connection:  # type: ignore[type-arg]
        """A PyMySQL connection to the stack's MariaDB (no default database)."""
        u = self.mysql
        return pymysql.connect(
            host=u.host, port=u.port or 3306, user=u.username, password=u.password or ""
        )

    def migrate(self, logs: Path) -> None:
        """Create and migrate both databases; ``start_position``: the binlog's end after."""
        migrate = load_module("demo_migrate", EXAMPLES / "migrate.py")
        self.created_dbs = True
        urls = {
            "ORDERS_DATABASE_URL": self.url(self.db),
            "STATS_DATABASE_URL": self.url(self.read_db),
        }
        migrate.migrate(urls, quiet=True)
        # Where the binlog ends now, after the migrations: the relay starts here. This is
        # "latest" taken before the relay starts, so no request can slip in between.
        with self.connect() as conn, conn.cursor() as cur:
            cur.execute("SHOW MASTER STATUS")
            log_file, log_pos = cur.fetchone()[:2]
        self.start_position = f"{log_file}:{log_pos}"
        say(f"[2/5] Databases created and migrated with alembic (logs of everything: {logs})")
        say(f"        {self.db:<16} orders + outbox           (api-server writes here)")
        say(f"        {self.read_db:<16} outbox_inbox + customer_stats (consumer writes here)")

    async def create_topic(self) -> None:
        """The run's topic, with ``PARTITIONS`` partitions."""
        admin = AIOKafkaAdminClient(bootstrap_servers=self.kafka)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(self.topic, PARTITIONS, 1)])
        finally:
            await admin.close()

    def read_model(self) -> dict[str, Any]:
        """The consumer's ``customer_stats`` rows, by customer."""
        with self.connect() as conn, conn.cursor() as cur:
            cur.execute(
                f"SELECT customer_id, orders, total_amount, cancelled"
                f" FROM `{self.read_db}`.customer_stats ORDER BY customer_id"
            )
            rows = cur.fetchall()
        return {c: {"orders": o, "total_amount": str(t), "cancelled": x} for c, o, t, x in rows}

    def inbox_rows(self) -> int:
        """How many events the consumer's inbox recorded."""
        with self.connect() as conn, conn.cursor() as cur:
            cur.execute(f"SELECT COUNT(*) FROM `{self.read_db}`.outbox_inbox")
            return int(cur.fetchone()[0])

    async def remove(self) -> None:
        """Delete the run's topic, Redis keys and databases."""
        with contextlib.suppress(Exception):
            admin = AIOKafkaAdminClient(bootstrap_servers=self.kafka)
            await admin.start()
            try:
                await asyncio.wait_for(admin.delete_topics([self.topic]), 5)
            finally:
                await admin.close()
        with contextlib.suppress(Exception):
            client = redis.asyncio.Redis.from_url(self.redis_url)
            try:
                keys = [k async for k in client.scan_iter(match=self.key_prefix + "*")]
                if keys:
                    await client.delete(*keys)
            finally:
                await client.aclose()
        if self.created_dbs:
            with self.connect() as conn, conn.cursor() as cur:
                for db in (self.db, self.read_db):
                    cur.execute(f"DROP DATABASE IF EXISTS `{db}`")
        say("Removed the demo's databases, topic and Redis keys. The stack is still up")
        say("(./dev/stack stop stops it).")
