"""Helpers for relay tests: write outbox rows, run a relay, read what reached Kafka."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pymysql
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from transactional_outbox.event import OutboxEvent, encode_headers
from transactional_outbox.relay import Relay, RelaySettings

from .conftest import OUTBOX_DDL as OUTBOX_DDL  # re-exported for test modules
from .polling import wait_until as wait_until  # the suite's one poll-until helper

ROOT = Path(__file__).resolve().parent.parent


INSERT = (
    "INSERT INTO `{table}` (id, aggregatetype, aggregateid, type, payload, headers, `timestamp`)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s)"
)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_event(
    aggregate_type: str = "order",
    aggregate_id: str = "1",
    event_type: str = "Happened",
    payload: bytes = b"{}",
    *,
    id: uuid.UUID | None = None,
    headers: dict[str, str] | None = None,
) -> OutboxEvent:
    """An event with a microsecond timestamp, as the table stores it."""
    return OutboxEvent(
        id=id or uuid.uuid4(),
        aggregate_type=aggregate_type,
        aggregate_id=aggregate_id,
        event_type=event_type,
        payload=payload,
        headers=headers or {},
        timestamp=datetime.now(UTC),
    )


def write_events(
    conn: pymysql.Connection,
    events: Sequence[OutboxEvent],
    *,
    table: str = "outbox",
    rollback: bool = False,
    also: Callable[[Any], None] | None = None,
) -> None:
    """Insert then delete ``events`` in one transaction (the SDK's write pattern)."""
    with conn.cursor() as cur:
        cur.execute("BEGIN")
        if also is not None:
            also(cur)
        if events:
            cur.executemany(
                INSERT.format(table=table),
                [
                    (
                        e.id.bytes,
                        e.aggregate_type,
                        e.aggregate_id,
                        e.event_type,
                        e.payload,
                        encode_headers(e.headers),
                        e.timestamp.replace(tzinfo=None),
                    )
                    for e in events
                ],
            )
            cur.execute(
                f"DELETE FROM `{table}` WHERE id IN ({','.join(['%s'] * len(events))})",
                [e.id.bytes for e in events],
            )
        cur.execute("ROLLBACK" if rollback else "COMMIT")


def relay_settings(
    *,
    mysql_url: Any,
    redis_url: str,
    kafka_bootstrap: str,
    topic_prefix: str,
    redis_prefix: str,
    start_position: str = "earliest",
    **overrides: Any,
) -> RelaySettings:
    """Settings for a relay isolated to one test's database, topics and keys."""
    values: dict[str, Any] = {
        "database_url": mysql_url.render_as_string(hide_password=False),
        "redis_url": redis_url,
        "kafka_bootstrap_servers": kafka_bootstrap,
        "topic_template": topic_prefix + "{aggregatetype}",
        # A checkpoint topic per test: a start reads its topic to the end.
        "checkpoint_topic": re.sub(r"[^A-Za-z0-9._-]", "", topic_prefix) + "checkpoints",
        "key_prefix": redis_prefix,
        "relay_name": "test",
        "server_id": 100_000 + (uuid.uuid4().int % 1_000_000),
        "enable_idempotence": False,  # tansu has no idempotent producer (DESIGN §5)
        "checkpoint_interval_ms": 100,
        "heartbeat_ms": 1000,
        "progress_interval_ms": 0,
        "start_position": start_position,
        "linger_ms": 1,
        # A killed relay holds its lease until the TTL: keep restarts in tests quick.
        "lease_ttl_ms": 2000,
        "lease_renew_ms": 500,
    }
    values.update(overrides)
    # Flat names (kafka_bootstrap_servers, ...) as the relay's variables and flags spell them.
    return RelaySettings.from_env({}, **values)


@contextlib.asynccontextmanager
async def running_relay(settings: RelaySettings) -> AsyncIterator[Relay]:
    """Run a relay in this event loop; stop it cleanly on exit."""
    relay = Relay(settings)
    task = asyncio.create_task(relay.run())
    try:
        yield relay
    finally:
        relay.stop()
        await asyncio.wait_for(task, 30)


class Collector:
    """Reads every partition of some topics from the start, without a group."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.records: list[ConsumerRecord[bytes, bytes]] = []
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._assigned: set[TopicPartition] = set()

    async def __aenter__(self) -> Collector:
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            fetch_max_wait_ms=50,
        )
        await self._consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        assert self._consumer is not None
        await self._consumer.stop()

    async def watch(self, topics: Iterable[str]) -> None:
        """Start reading ``topics`` (created if missing) from offset 0."""
        assert self._consumer is not None
        topics = list(topics)
        await ensure_topics(self.bootstrap, topics)
        parts: set[TopicPartition] = set(self._assigned)
        consumer = self._consumer
        found: dict[str, set[int]] = {}

        async def partitions_known() -> bool:
            # The consumer's own metadata covers only assigned topics.
            metadata = await consumer._client.fetch_all_metadata()
            for topic in topics:
                found[topic] = metadata.partitions_for_topic(topic) or set()
            return all(found.values())

        await wait_until(
            partitions_known,
            within=10,
            what=lambda: f"partitions of {[t for t in topics if not found.get(t)]}",
        )
        for topic in topics:
            parts |= {TopicPartition(topic, p) for p in found[topic]}
        # Re-assigning forgets positions: keep the old partitions where they were.
        kept = {tp: await self._consumer.position(tp) for tp in self._assigned}
        self._consumer.assign(sorted(parts))
        for tp in parts:
            self._consumer.seek(tp, kept.get(tp, 0))
        self._assigned = parts
        if self._task is None:
            self._task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        assert self._consumer is not None
        while True:
            batch = await self._consumer.getmany(timeout_ms=100)
            for tp in sorted(batch):
                self.records.extend(batch[tp])

    def ids(self) -> list[str]:
        """The ``id`` header of every record read, in read order."""
        return [dict(r.headers)["id"].decode() for r in self.records]

    async def wait_for(self, count: int, within: float = 30.0) -> None:
        """Wait until at least ``count`` records were read."""
        await wait_until(
            lambda: len(self.records) >= count,
            within=within,
            what=lambda: f"{count} records (have {len(self.records)})",
        )


async def ensure_topics(bootstrap: str, topics: Iterable[str], partitions: int = 4) -> None:
    """Create topics (several partitions, so per-key order is really tested)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        new = [NewTopic(t, partitions, 1) for t in topics if t not in existing]
        if new:
            await admin.create_topics(new)
    finally:
        await admin.close()


class RelayProcess:
    """``python -m transactional_outbox.relay`` as a child process, for kill tests."""

    def __init__(self, settings: RelaySettings, log_path: Path) -> None:
        self.settings = settings
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        from transactional_outbox.relay.config import env_var

        env = dict(os.environ)
        s = self.settings
        for name in (
            "database_url",
            "redis_url",
            "topic_template",
            "key_prefix",
            "checkpoint_topic",
            "relay_name",
            "server_id",
            "checkpoint_interval_ms",
            "heartbeat_ms",
            "start_position",
            "linger_ms",
            "progress_interval_ms",
            "lease_ttl_ms",
            "lease_renew_ms",
            "metrics_port",
            "reconnect_max_ms",
            "reader",
            "outbox_tables",
            "outbox_table_pattern",
            "on_rejected",
            "dead_letter_topic",
            "pg_slot",
            "pg_publication",
            "pg_message_prefixes",
            "pg_other_message_prefixes",
            "ignore_checkpoint",
        ):
            value = getattr(s, name)
            env[env_var(name)] = ",".join(value) if isinstance(value, tuple) else str(value)
        env[env_var("kafka_bootstrap_servers")] = str(s.kafka.bootstrap_servers)
        env[env_var("enable_idempotence")] = "false"
        return env

    def start(self, *, own_group: bool = False) -> None:
        """Start it; with ``own_group``, as the leader of a new process group
        (signal the group with ``os.killpg``)."""
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "transactional_outbox.relay"],
                env=self.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=own_group,
            )

    def kill(self, sig: int = signal.SIGKILL) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(30)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")
