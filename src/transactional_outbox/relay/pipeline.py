"""The relay: binlog source → publisher → low-watermark checkpoint, in one asyncio process.

A *session* is one source thread plus one producer, started from a position.
When Kafka fails in a way its own retries did not fix, the session is torn
down and a new one starts from the last position whose events were all
acknowledged: events after it are sent again (at-least-once) and nothing is
skipped. Errors that a retry cannot fix (a purged binlog, an event Kafka
refuses for good) end :meth:`Relay.run` with an :class:`OutboxError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

import pymysql
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ..exceptions import OutboxError
from .checkpoint import RedisCheckpointStore
from .checks import ServerInfo, check_server, resolve_start
from .config import RelaySettings, mask_url
from .position import BinlogPosition
from .publisher import KafkaPublisher, is_permanent
from .routing import build_record
from .source import BinlogSource, Channel, ChannelClosed, SourceSettings
from .watermark import Watermark

__all__ = ["Relay", "RelayStats"]

log = logging.getLogger("transactional_outbox.relay")


@dataclass(slots=True)
class RelayStats:
    """Counters and state for progress lines and health."""

    published: int = 0
    sessions: int = 0
    kafka_errors: int = 0
    redis_errors: int = 0
    checkpoints_saved: int = 0
    last_event_at: datetime | None = None
    # When Kafka last made progress while events were outstanding: an outage
    # shows as outstanding events and no acks, since aiokafka retries silently.
    last_progress_at: float = field(default_factory=time.monotonic)
    checkpoint: BinlogPosition | None = None
    checkpoint_saved_at: float | None = None
    mysql: str = "starting"
    kafka: str = "starting"
    redis: str = "starting"
    started_at: float = field(default_factory=time.monotonic)


class _SessionFailed(Exception):
    """Kafka failed this session; start a new one from the watermark."""


class Relay:
    """Runs the relay until :meth:`stop` is called or a fatal error occurs.

    ``await relay.run()`` returns after a clean stop (in-flight events
    flushed, checkpoint saved) and raises an :class:`OutboxError` subclass on
    a fatal error, after saving the checkpoint reached so far.
    """

    def __init__(self, settings: RelaySettings) -> None:
        self.settings = settings
        self.stats = RelayStats()
        self._stopping = asyncio.Event()
        self._redis: aioredis.Redis | None = None
        self._store: RedisCheckpointStore | None = None
        self._watermark: Watermark | None = None
        self._source: BinlogSource | None = None
        self._failure: BaseException | None = None
        self._channel: Channel | None = None
        self._router = settings.router()
        self.server: ServerInfo | None = None

    def __repr__(self) -> str:
        return f"Relay(name={self.settings.relay_name!r}, stopping={self._stopping.is_set()})"

    # -- public ----------------------------------------------------------------

    def stop(self) -> None:
        """Stop reading, flush what is in flight, save the checkpoint, return from run()."""
        if not self._stopping.is_set():
            log.info("stopping: flushing in-flight events and saving the checkpoint")
        self._stopping.set()
        if self._source is not None:
            self._source.stop()
        if self._channel is not None:
            self._channel.close()

    @property
    def checkpoint_position(self) -> BinlogPosition | None:
        """The newest position whose events are all acknowledged."""
        return None if self._watermark is None else self._watermark.position

    async def run(self) -> None:
        """Check the servers, resolve the start, then relay until stopped."""
        s = self.settings
        self._redis = aioredis.from_url(s.redis_url)
        self._store = RedisCheckpointStore(self._redis, key=s.checkpoint_key)
        saver: asyncio.Task[None] | None = None
        progress: asyncio.Task[None] | None = None
        try:
            start = await self._prepare()
            if start is None:
                return
            self._watermark = Watermark(start)
            saver = asyncio.create_task(self._save_loop(), name="outbox-checkpoint")
            if s.progress_interval_seconds > 0:
                progress = asyncio.create_task(self._progress_loop(), name="outbox-progress")
            await self._supervise(start)
        finally:
            for task in (saver, progress):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            if self._watermark is not None:
                await self._final_save()
            await self._redis.aclose()

    # -- startup ---------------------------------------------------------------

    async def _prepare(self) -> BinlogPosition | None:
        s = self.settings
        assert self._store is not None
        delay = 0.5
        while True:
            try:
                info, start, why = await self._resolve()
                break
            except (pymysql.err.OperationalError, RedisError, OSError) as exc:
                if isinstance(exc, pymysql.err.OperationalError) and exc.args[0] not in (
                    2003,
                    2006,
                    2013,
                ):
                    raise
                log.warning("cannot reach a server yet (%s); retrying in %.1fs", exc, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
                if self._stopping.is_set():
                    return None
                delay = min(delay * 2, s.reconnect_max_seconds)
        self.server = info
        log.info(
            "relay %r: %s at %s, outbox `%s`.`%s`, Kafka %s, Redis %s; starting at %s (%s)",
            s.relay_name,
            info.version,
            f"{s.mysql_connection_args()['host']}:{s.mysql_connection_args()['port']}",
            s.schema,
            s.outbox_table,
            s.kafka_bootstrap_servers,
            mask_url(s.redis_url),
            start,
            why,
        )
        return start

    async def _resolve(self) -> tuple[ServerInfo, BinlogPosition, str]:
        s = self.settings
        assert self._store is not None
        checkpoint = await self._store.load()
        self.stats.redis = "ok"

        def blocking() -> tuple[ServerInfo, BinlogPosition, str]:
            conn = pymysql.connect(**s.mysql_connection_args(), connect_timeout=10)
            try:
                info = check_server(conn, schema=s.schema, table=s.outbox_table)
                start, why = resolve_start(
                    conn,
                    info,
                    checkpoint=checkpoint,
                    policy=s.start_policy(),
                    ignore_checkpoint=s.ignore_checkpoint,
                )
                return info, start, why
            finally:
                conn.close()

        return await asyncio.to_thread(blocking)

    # -- sessions ----------------------------------------------------------------

    async def _supervise(self, start: BinlogPosition) -> None:
        delay = 0.5
        position = start
        while not self._stopping.is_set():
            try:
                await self._session(position)
                return
            except _SessionFailed as exc:
                self.stats.kafka = "degraded"
                self.stats.kafka_errors += 1
                assert self._watermark is not None
                position = self._watermark.position or position
                log.warning(
                    "Kafka error (%s); resending from %s in %.1fs",
                    exc.__cause__ or exc,
                    position,
                    delay,
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
                delay = min(delay * 2, self.settings.reconnect_max_seconds)

    def _source_settings(self) -> SourceSettings:
        s = self.settings
        args = s.mysql_connection_args()
        assert self.server is not None
        return SourceSettings(
            host=args["host"],
            port=args["port"],
            user=args["user"],
            password=args["password"],
            server_id=s.effective_server_id,
            schema=s.schema,
            table=s.outbox_table,
            is_mariadb=self.server.is_mariadb,
            heartbeat_seconds=s.heartbeat_seconds,
            max_reconnect_delay_seconds=s.reconnect_max_seconds,
            idle_commit_seconds=min(1.0, s.checkpoint_interval_ms / 1000),
        )

    async def _session(self, start: BinlogPosition) -> None:
        s = self.settings
        self.stats.sessions += 1
        # A fresh watermark: events still outstanding from a failed session
        # will be read and sent again.
        self._watermark = Watermark(start)
        self._failure = None
        publisher = KafkaPublisher(s.producer_args())
        try:
            await publisher.start()
        except Exception as exc:
            raise _SessionFailed(str(exc)) from exc
        self.stats.kafka = "ok"
        loop = asyncio.get_running_loop()
        channel = self._channel = Channel(loop, max_events=s.queue_max_events)
        use_gtid = s.resume_by_gtid or (start.file == "" and start.gtid is not None)
        source = self._source = BinlogSource(
            self._source_settings(),
            channel,
            start,
            use_gtid=use_gtid,
            on_state=self._on_source_state,
        )
        if self._stopping.is_set():
            channel.close()
        source.start()
        try:
            await self._pump(channel, publisher)
        except ChannelClosed:
            pass  # stop() was called
        except Exception as exc:
            if exc is not self._failure:
                raise  # the source's own error: fatal
            # else a publish failure woke the pump; handled below
        finally:
            source.stop()
            await asyncio.to_thread(source.join, s.heartbeat_seconds * 3 + 5)
            self._source = None
            self._channel = None
            try:
                await asyncio.wait_for(publisher.flush(), s.request_timeout_ms / 1000 + 5)
            except Exception as exc:  # answered or not, the watermark holds
                log.warning("flush at session end failed: %s", exc)
            with contextlib.suppress(Exception):
                await publisher.stop()
        failure = self._failure
        if failure is not None:
            if is_permanent(failure):
                raise failure
            raise _SessionFailed(str(failure)) from failure

    async def _pump(self, channel: Channel, publisher: KafkaPublisher) -> None:
        wm = self._watermark
        assert wm is not None
        router = self._router
        stats = self.stats
        while True:
            batches = await channel.get()
            for batch in batches:
                if self._failure is not None:
                    return
                events = batch.events
                if events:
                    if wm.outstanding == 0:
                        stats.last_progress_at = time.monotonic()
                    ticket = wm.add_events(len(events))
                    on_done = partial(self._on_done, wm, ticket)
                    for event in events:
                        try:
                            await publisher.send(
                                build_record(event, router), str(event.id), on_done
                            )
                        except OutboxError as exc:
                            self._failure = exc
                            return
                        except Exception as exc:
                            self._failure = exc
                            return
                    stats.last_event_at = events[-1].timestamp
                if batch.commit is not None:
                    wm.commit(batch.commit)

    def _on_done(self, wm: Watermark, ticket: int, error: BaseException | None) -> None:
        if error is None:
            wm.ack(ticket)
            self.stats.published += 1
            self.stats.last_progress_at = time.monotonic()
            if self.stats.kafka == "degraded":
                self.stats.kafka = "ok"
                log.info("Kafka acknowledges events again")
            return
        if self._failure is None:
            self._failure = error
            if self._channel is not None:
                self._channel.fail(error)

    def _on_source_state(self, state: str) -> None:
        self.stats.mysql = "ok" if state == "connected" else "degraded"

    # -- checkpoint ----------------------------------------------------------------

    async def _save_once(self) -> None:
        assert self._store is not None
        wm = self._watermark
        if wm is None or wm.position is None or not wm.position.file:
            return
        position = wm.position
        if position == self.stats.checkpoint:
            return
        await self._store.save(position)
        self.stats.checkpoint = position
        self.stats.checkpoint_saved_at = time.monotonic()
        self.stats.checkpoints_saved += 1
        self.stats.redis = "ok"

    def _check_kafka_progress(self) -> None:
        wm, st = self._watermark, self.stats
        if wm is None or wm.outstanding == 0 or st.kafka == "degraded":
            return
        stalled = time.monotonic() - st.last_progress_at
        if stalled > self.settings.request_timeout_ms / 1000:
            st.kafka = "degraded"
            log.warning(
                "Kafka has acknowledged nothing for %.1fs with %d events outstanding; "
                "the producer keeps retrying, the checkpoint holds",
                stalled,
                wm.outstanding,
            )

    async def _save_loop(self) -> None:
        interval = self.settings.checkpoint_interval_ms / 1000
        while True:
            await asyncio.sleep(interval)
            self._check_kafka_progress()
            try:
                await self._save_once()
            except (RedisError, OSError) as exc:
                self.stats.redis = "degraded"
                self.stats.redis_errors += 1
                log.warning("checkpoint not saved (%s); retrying", exc)

    async def _final_save(self) -> None:
        for attempt in range(5):
            try:
                await self._save_once()
                if self.stats.checkpoint is not None:
                    log.info("checkpoint saved at %s", self.stats.checkpoint)
                return
            except (RedisError, OSError) as exc:
                log.warning("final checkpoint save failed (%s), attempt %d/5", exc, attempt + 1)
                await asyncio.sleep(0.2 * 2**attempt)
        log.error("checkpoint not saved at shutdown; a restart resends events since the last one")

    # -- progress ------------------------------------------------------------------

    async def _progress_loop(self) -> None:
        interval = self.settings.progress_interval_seconds
        last_count, last_time = self.stats.published, time.monotonic()
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            count = self.stats.published
            rate = (count - last_count) / max(now - last_time, 1e-9)
            last_count, last_time = count, now
            log.info("progress: %s", self.progress_line(rate))

    def progress_line(self, rate: float) -> str:
        """One line: rate, lag, checkpoint, queue, server states."""
        st = self.stats
        lag = "-"
        if st.last_event_at is not None:
            lag = f"{(datetime.now(UTC) - st.last_event_at).total_seconds():.2f}s"
        depth = self._channel.depth if self._channel is not None else 0
        return (
            f"{rate:.0f} events/s, {st.published} published, lag {lag}, "
            f"checkpoint {st.checkpoint or '-'}, queue {depth}, "
            f"mysql {st.mysql}, kafka {st.kafka}, redis {st.redis}"
        )

    def health(self) -> dict[str, Any]:
        """A snapshot of the relay's state for health endpoints."""
        st = self.stats
        return {
            "mysql": st.mysql,
            "kafka": st.kafka,
            "redis": st.redis,
            "published": st.published,
            "checkpoint": str(st.checkpoint) if st.checkpoint else None,
        }
