"""The relay: a supervisor over leader terms and publish sessions, in one asyncio process.

A *term* (:mod:`.term`) is one tenure as leader. Within it, a *session*
(:mod:`.publish_session`) is one source plus one producer, started from a
position. When Kafka fails in a way its own retries did not fix, the session
ends and a new one starts from the last position whose events were all
acknowledged: events after it are sent again (at-least-once) and nothing is
skipped. Errors that a retry cannot fix (a purged binlog, a lost slot, an
event Kafka refuses for good) end :meth:`Relay.run` with an :class:`OutboxError`.
What is specific to MySQL or PostgreSQL lives behind :mod:`.database`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from functools import partial
from typing import Any

from redis.exceptions import RedisError

from .._redis_client import async_client, parse_redis_url
from ..exceptions import LeadershipLostError
from .canary import Canary
from .checkpoint import RedisCheckpointStore
from .checkpoint_topic import KafkaCheckpointTopic
from .checkpointer import Checkpointer
from .checkpoints import CheckpointStores
from .config import RelaySettings
from .database import Database, follow_head
from .health import HealthServer
from .leadership import Lease, LeaseKeys
from .metrics import RelayMetrics
from .position import Position
from .publish_session import PublishSession, SessionFailed
from .stats import RelayStats
from .term import LeaderTerm, wait_for_lease

__all__ = ["Relay", "RelayStats", "database_for"]

log = logging.getLogger("transactional_outbox.relay")


class Relay:
    """Runs the relay until :meth:`stop` is called or a fatal error occurs.

    ``await relay.run()`` returns after a clean stop (in-flight events
    flushed, checkpoint saved) and raises an :class:`OutboxError` subclass on
    a fatal error, after saving the checkpoint reached so far.
    """

    def __init__(self, settings: RelaySettings) -> None:
        self.settings = settings
        self.stats = RelayStats()
        self.metrics = RelayMetrics(self.stats)
        self.database = database_for(settings)
        self.stats.database_kind = self.database.kind
        self.session: PublishSession | None = None  # the current (or last) publish session
        self._stopping = asyncio.Event()
        self._router = settings.router()
        self._loop_tick = time.monotonic()
        self._health_server: HealthServer | None = None
        on = settings.canary is not None and settings.canary.interval_ms > 0
        self.canary = Canary(settings, self.stats) if on else None

    def __repr__(self) -> str:
        return f"Relay(name={self.settings.relay_name!r}, stopping={self._stopping.is_set()})"

    def stop(self) -> None:
        """Stop reading, flush what is in flight, save the checkpoint, return from run()."""
        if not self._stopping.is_set():
            log.info("stopping: flushing in-flight events and saving the checkpoint")
        self._stopping.set()
        self._end_session()

    @property
    def server(self) -> Any:
        """What the last start learnt about the database server (None before it)."""
        return self.database.server

    def _end_session(self) -> None:
        if self.session is not None:
            self.session.stop()

    @property
    def checkpoint_position(self) -> Position | None:
        """The newest position whose events are all acknowledged."""
        return None if self.session is None else self.session.watermark.position

    @property
    def health_port(self) -> int | None:
        """The port of the metrics/health server, if it runs."""
        return None if self._health_server is None else self._health_server.port

    async def run(self) -> None:
        """Wait for leadership, check the servers, resolve the start, relay until stopped.

        A relay that loses its lease stops publishing at once and waits to lead
        again; :meth:`stop` ends it cleanly.
        """
        s = self.settings
        kafka_copy = _checkpoint_topic(s)  # a bad Kafka setting fails here, before any server
        if s.metrics_port:
            self._health_server = HealthServer.serve(
                host=s.metrics_host,
                port=s.metrics_port,
                metrics=self.metrics,
                health=self.stats.health,
                loop_tick=lambda: self._loop_tick,
            )
        target = parse_redis_url(s.redis_url, setting="redis_url")
        rds = async_client(target)  # one server, a Sentinel service or a cluster
        keys = LeaseKeys.for_relay(s.key_prefix, s.relay_name, cluster=target.cluster)
        lease = Lease(rds, keys, ttl_ms=s.lease_ttl_ms, target=target)
        store = CheckpointStores(
            RedisCheckpointStore(rds, key=keys.checkpoint),
            kafka_copy,
            lease,
            relay_name=s.relay_name,
        )
        background = [asyncio.create_task(self._tick_loop(), name="outbox-tick")]
        if s.progress_interval_ms > 0:
            progress = self.stats.log_progress(s.progress_interval_ms / 1000)
            background.append(asyncio.create_task(progress, name="outbox-progress"))
        try:
            while await wait_for_lease(
                lease,
                name=s.relay_name,
                renew_ms=s.lease_renew_ms,
                stats=self.stats,
                stopping=self._stopping,
            ):
                try:
                    await self._lead(store, lease)
                    return
                except LeadershipLostError as exc:
                    log.warning("lost leadership (%s): stopped publishing, now standby", exc)
                    self.stats.role = "standby"
        finally:
            for task in background:
                await _cancel(task)
            if self._health_server is not None:
                self._health_server.stop()
            with contextlib.suppress(RedisError, OSError):
                await lease.release()
            if store.kafka is not None:
                await store.kafka.close()
            await rds.aclose()

    async def _lead(self, store: CheckpointStores, lease: Lease) -> None:
        s = self.settings
        term = LeaderTerm(
            lease, renew_ms=s.lease_renew_ms, stats=self.stats, on_lost=self._end_session
        )
        # The term renews the lease from the moment it is held: the startup checks take
        # ~0.8 s here (server checks, Kafka and Redis probes), longer than a short lease
        # TTL, and a lease left unrenewed meanwhile expired under the starting relay
        # (bench/recovery.py --quick, lease 1 s: it lost and retook it every second).
        async with term:
            start = await self.database.prepare_start(store, self.stats, self._stopping)
            if start is None:
                return  # stopping
            if term.lost.is_set():
                raise LeadershipLostError(term.reason)
            self.session = None
            checkpointer = Checkpointer(
                store, term, self.stats, lambda: self.checkpoint_position, on_saved=self._confirm
            )
            over = asyncio.Event()  # ends the loops even if a cancel is swallowed in Redis
            tasks = [
                asyncio.create_task(
                    checkpointer.run(
                        over,
                        interval=s.checkpoint_interval_ms / 1000,
                        kafka_timeout=s.ack_stall_ms / 1000,
                    ),
                    name="outbox-checkpoint",
                ),
                asyncio.create_task(
                    follow_head(
                        self.database.head(self.stats),
                        lambda: self.checkpoint_position,
                        partial(setattr, self.stats, "behind_bytes"),
                        over,
                    ),
                    name="outbox-log-head",
                ),
            ]
            if self.canary is not None:
                tasks.append(asyncio.create_task(self.canary.run(over), name="outbox-canary"))
            try:
                await self._supervise(start, term)
            finally:
                over.set()
                for task in tasks:
                    await _cancel(task)
                if not term.lost.is_set():
                    await checkpointer.final_save()
                    if self.stats.checkpoint is not None and not term.lost.is_set():
                        # The source is stopped: its last status update is behind the
                        # final save (a PostgreSQL slot would keep that WAL until restart).
                        await self.database.release(self.stats.checkpoint)
                await checkpointer.abandon()
        if term.lost.is_set():
            raise LeadershipLostError(term.reason)

    def _confirm(self, position: Position) -> None:
        # Only a fenced checkpoint write that succeeded confirms: a stale leader whose
        # write is refused never lets a PostgreSQL slot forget what it did not publish.
        if self.session is not None:
            self.session.confirm(position)

    async def _supervise(self, start: Position, term: LeaderTerm) -> None:
        delay = 0.5
        position = start
        while not self._stopping.is_set() and not term.lost.is_set():
            session = self.session = self.stats.session = PublishSession(
                self.settings,
                position,
                database=self.database,
                router=self._router,
                term=term,
                stats=self.stats,
                observe_batch=self.metrics.batch_size.observe,
                canary_seen=self.canary.seen if self.canary is not None else lambda event_id: None,
            )
            try:
                await session.run()
                return
            except SessionFailed as exc:
                self.stats.kafka_down(f"{exc.__cause__ or exc}")
                self.stats.kafka_errors += 1
                position = session.watermark.position or position
                log.warning(
                    "Kafka error (%s); resending from %s in %.1fs",
                    exc.__cause__ or exc,
                    position,
                    delay,
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
                delay = min(delay * 2, self.settings.reconnect_max_ms / 1000)

    async def _tick_loop(self) -> None:
        # Proves the loop runs, for /healthz (which answers from another thread).
        while True:
            self._loop_tick = time.monotonic()
            await asyncio.sleep(0.5)


def database_for(settings: RelaySettings) -> Database:
    """The :class:`~.database.Database` that ``settings.database_url`` names."""
    if settings.database_kind == "postgresql":
        from .postgres.database import PostgresDatabase

        return PostgresDatabase(settings)
    from .mysql.database import MySQLDatabase

    return MySQLDatabase(settings)


def _checkpoint_topic(s: RelaySettings) -> KafkaCheckpointTopic | None:
    """The Kafka copy of the checkpoint, unless ``checkpoint_topic`` is empty."""
    if not s.checkpoint_topic:
        return None
    return KafkaCheckpointTopic(
        s.producer_args(),
        topic=s.checkpoint_topic,
        key=f"{s.key_prefix}{s.relay_name}",
        create=s.create_topics,
        replication_factor=s.topic_replication_factor,
        timeout_ms=min(s.request_timeout_ms, 30_000),
    )


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
