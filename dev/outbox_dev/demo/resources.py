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

import redis.asyncio
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from outbox_dev import stack

from .console import DemoError, say
from .databases import KINDS, DemoDatabase

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
    """The run's names, and the databases, topic and Redis keys made under them, on the
    stack's ``database`` (``mysql`` or ``postgresql``)."""

    def __init__(self, database: str = "mysql", outbox_mode: str = "table") -> None:
        self.kind = database
        self.outbox_mode = outbox_mode
        self.run_id = uuid.uuid4().hex[:6]
        self.db = f"demo_{self.run_id}"
        self.read_db = f"demo_{self.run_id}_read"
        prefix = f"demo_{self.run_id}"
        self.topic_template = prefix + ".outbox.event.{aggregatetype}"
        self.topic = prefix + ".outbox.event.order"
        self.relay_name = f"demo-{self.run_id}"
        self.key_prefix = f"outbox:demo:{self.run_id}:"
        self.group = f"demo-{self.run_id}-customer-stats"
        self.slot = f"demo_{self.run_id}"  # PostgreSQL: the relay's slot and publication
        self.relay_settings: dict[str, str] = {}
        self.created_dbs = False
        self._server: DemoDatabase | None = None

    @property
    def server(self) -> DemoDatabase:
        """The database server of the run (once the stack is up)."""
        assert self._server is not None, "stack not started yet"
        return self._server

    def start_stack(self) -> None:
        """Start the local stack (if it is down) and take its addresses."""
        out = subprocess.run(
            [sys.executable, "-m", "outbox_dev.stack", "start"], capture_output=True, text=True
        )
        if out.returncode != 0:
            raise DemoError(f"the local stack did not start:\n{out.stdout}{out.stderr}")
        env = stack.env_vars()
        self._server = KINDS[self.kind](env)
        self.redis_url = env["OUTBOX_REDIS_URL"]
        self.kafka = env["OUTBOX_KAFKA_BOOTSTRAP_SERVERS"]
        extra = " (binlog on)" if self.kind == "mysql" else " (wal_level=logical)"
        say(
            f"[1/5] Local stack up: {self.server.name} {self.server.address}{extra},"
            f" Redis {self.redis_url.split('//')[1]}, Kafka-compatible broker {self.kafka}"
        )

    def url(self, database: str, driver: str | None = None) -> str:
        """The SQLAlchemy URL of ``database`` on the stack, password included (for children)."""
        return self.server.url(database, driver)

    def migrate(self, logs: Path) -> None:
        """Create and migrate both databases, then fix where the relay starts
        (``start_position``, ``relay_settings``): after the migrations."""
        migrate = load_module("demo_migrate", EXAMPLES / "migrate.py")
        self.created_dbs = True
        self.server.create([self.db, self.read_db])
        urls = {
            "ORDERS_DATABASE_URL": self.url(self.db),
            "STATS_DATABASE_URL": self.url(self.read_db),
        }
        migrate.migrate(urls, quiet=True)
        self.start_position, self.relay_settings = self.server.relay_start(self.db, self.slot)
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
        rows = self.server.query(
            self.read_db,
            "SELECT customer_id, orders, total_amount, cancelled"
            " FROM customer_stats ORDER BY customer_id",
        )
        return {c: {"orders": o, "total_amount": str(t), "cancelled": x} for c, o, t, x in rows}

    def inbox_rows(self) -> int:
        """How many events the consumer's inbox recorded."""
        return int(self.server.query(self.read_db, "SELECT COUNT(*) FROM outbox_inbox")[0][0])

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
            await asyncio.to_thread(self.server.drop, [self.db, self.read_db], self.slot)
        slot = " and replication slot" if self.kind == "postgresql" else ""
        say(f"Removed the demo's databases{slot}, topic and Redis keys. The stack is still up")
        say("(./dev/stack stop stops it).")
