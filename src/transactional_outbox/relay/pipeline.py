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
import json
import logging
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pymysql
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ..exceptions import ConfigurationError, LeadershipLostError, PublishError
from .checkpoint import RedisCheckpointStore
from .checks import ServerInfo, check_server, resolve_start
from .config import RelaySettings, derive_server_id, mask_url
from .faults import check_kafka_login, mysql_misconfiguration, redis_misconfiguration
from .health import HealthServer, RelayMetrics
from .leadership import Lease, LeaseKeys
from .position import BinlogPosition
from .progress import BinlogHead, describe
from .publisher import KafkaPublisher, is_permanent
from .reader_process import ProcessSource
from .routing import KafkaRecord, event_of, record_id
from .rowdecoder import RejectedRow
from .source import BinlogSource, Channel, ChannelClosed, SourceSettings
from .topics import Topics, TopicWaitAborted
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
    last_event_ms: int | None = None  # timestamp of the newest event handed to Kafka
    # When Kafka last made progress while events were outstanding: an outage
    # shows as outstanding events and no acks, since aiokafka retries silently.
    last_progress_at: float = field(default_factory=time.monotonic)
    checkpoint: BinlogPosition | None = None
    checkpoint_saved_at: float | None = None
    dead_lettered: int = 0
    behind_bytes: int | None = None  # binlog bytes after the acknowledged position
    role: str = "starting"
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
        self._source: BinlogSource | ProcessSource | None = None
        self._failure: BaseException | None = None
        self._channel: Channel | None = None
        self._router = settings.router()
        self._publisher: KafkaPublisher | None = None
        self._topics: Topics | None = None
        self._lease: Lease | None = None
        self._lost = asyncio.Event()
        self._lost_reason = ""
        self._dead_letter_tasks: set[asyncio.Future[None]] = set()
        self._loop_tick = time.monotonic()
        self._health_server: HealthServer | None = None
        self.metrics = RelayMetrics()
        self.server: ServerInfo | None = None
        self.server_id = settings.server_id  # the replica id in use; chosen in _prepare

    def __repr__(self) -> str:
        return f"Relay(name={self.settings.relay_name!r}, stopping={self._stopping.is_set()})"

    # -- public ----------------------------------------------------------------

    def stop(self) -> None:
        """Stop reading, flush what is in flight, save the checkpoint, return from run()."""
        if not self._stopping.is_set():
            log.info("stopping: flushing in-flight events and saving the checkpoint")
        self._stopping.set()
        self._end_session()

    def _end_session(self) -> None:
        if self._topics is not None:
            self._topics.abort()
        if self._source is not None:
            self._source.stop()
        if self._channel is not None:
            self._channel.close()

    @property
    def checkpoint_position(self) -> BinlogPosition | None:
        """The newest position whose events are all acknowledged."""
        return None if self._watermark is None else self._watermark.position

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
        self._redis = aioredis.from_url(s.redis_url)
        keys = LeaseKeys.for_relay(s.key_prefix, s.relay_name)
        self._store = RedisCheckpointStore(self._redis, key=keys.checkpoint)
        self._lease = Lease(self._redis, keys, ttl_ms=s.lease_ttl_ms)
        if s.metrics_port:
            try:
                self._health_server = HealthServer(
                    host=s.metrics_host,
                    port=s.metrics_port,
                    metrics=self.metrics,
                    health=self.health,
                    loop_tick=lambda: self._loop_tick,
                )
            except OSError as exc:
                await self._redis.aclose()
                raise ConfigurationError(
                    "metrics_port", f"cannot serve on {s.metrics_host}:{s.metrics_port}: {exc}"
                ) from None
            self._health_server.start()
        background = [asyncio.create_task(self._tick_loop(), name="outbox-tick")]
        if s.progress_interval_seconds > 0:
            background.append(asyncio.create_task(self._progress_loop(), name="outbox-progress"))
        try:
            while await self._become_leader():
                try:
                    await self._lead()
                    return
                except LeadershipLostError as exc:
                    log.warning("lost leadership (%s): stopped publishing, now standby", exc)
                    self.stats.role = "standby"
        finally:
            for task in background:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if self._health_server is not None:
                self._health_server.stop()
            with contextlib.suppress(RedisError, OSError):
                await self._lease.release()
            await self._redis.aclose()

    # -- leadership ------------------------------------------------------------

    async def _become_leader(self) -> bool:
        """Wait until this relay holds the lease (True) or is stopped (False)."""
        assert self._lease is not None
        s = self.settings
        announced = False
        while not self._stopping.is_set():
            wait = s.lease_renew_ms / 1000
            try:
                if await self._lease.try_acquire():
                    self.stats.role = "leader"
                    self.stats.redis = "ok"
                    log.info(
                        "leader of relay %r (fencing token %s)", s.relay_name, self._lease.token
                    )
                    return True
                self.stats.redis = "ok"
                if not announced:
                    log.info("standby: another relay named %r leads", s.relay_name)
                    announced = True
                # Try again as soon as the leader's lease would lapse (a killed
                # leader cannot renew it), not a whole renew interval later.
                wait = min(wait, (await self._lease.remaining_ms() + 20) / 1000)
            except (RedisError, OSError) as exc:
                fatal = redis_misconfiguration(exc)
                if fatal is not None:
                    raise fatal from None
                self.stats.redis = "degraded"
                log.warning("cannot reach Redis for the lease (%s)", exc)
            self.stats.role = "standby"
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), wait)
        return False

    async def _renew_loop(self, over: asyncio.Event) -> None:
        assert self._lease is not None
        lease = self._lease
        interval = self.settings.lease_renew_ms / 1000
        while not over.is_set():
            await asyncio.sleep(interval)
            try:
                if not await lease.renew():
                    self._lose_lease("another relay holds the lease")
                    return
            except (RedisError, OSError) as exc:
                self.stats.redis = "degraded"
                log.warning("lease not renewed (%s)", exc)
            if not lease.held():
                self._lose_lease("the lease expired before it could be renewed")
                return

    def _lose_lease(self, why: str) -> None:
        if not self._lost.is_set():
            self._lost_reason = why
            self._lost.set()
            self._end_session()

    async def _lead(self) -> None:
        self._lost = asyncio.Event()
        self._lost_reason = ""
        start = await self._prepare()
        if start is None:
            return
        self._watermark = Watermark(start)
        # Besides cancelling them, tell the loops to end: a cancel that lands
        # inside a Redis call can be swallowed by the client (seen with
        # redis-py), and a loop left running keeps this relay from standing by.
        over = asyncio.Event()
        tasks = [
            asyncio.create_task(self._renew_loop(over), name="outbox-lease"),
            asyncio.create_task(self._save_loop(over), name="outbox-checkpoint"),
            asyncio.create_task(self._head_loop(over), name="outbox-binlog-head"),
        ]
        try:
            await self._supervise(start)
        finally:
            over.set()
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if not self._lost.is_set():
                await self._final_save()
        if self._lost.is_set():
            raise LeadershipLostError(self._lost_reason)

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
                fatal = mysql_misconfiguration(exc, s) or redis_misconfiguration(exc)
                if fatal is not None:
                    raise fatal from None
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
        self._choose_server_id(info)
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

    def _choose_server_id(self, info: ServerInfo) -> None:
        s = self.settings
        if s.server_id and s.server_id == info.server_id:
            raise ConfigurationError(
                "server_id",
                f"{s.server_id} is the server's own @@server_id; choose another (or 0 for a "
                "new one per start)",
            )
        if not s.server_id and self.server_id in (0, info.server_id):
            self.server_id = derive_server_id(s.relay_name, avoid=info.server_id)
        log.info(
            "binlog replica server_id %d (%s)",
            self.server_id,
            "--server-id" if s.server_id else "new for this start; --server-id sets one",
        )

    async def _resolve(self) -> tuple[ServerInfo, BinlogPosition, str]:
        s = self.settings
        assert self._store is not None
        checkpoint = await self._store.load()
        self.stats.redis = "ok"

        def blocking() -> tuple[ServerInfo, BinlogPosition, str]:
            # With the database: the server then says "unknown database" itself.
            conn = pymysql.connect(
                **s.mysql_connection_args(), database=s.schema, connect_timeout=10
            )
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
        while not self._stopping.is_set() and not self._lost.is_set():
            try:
                await self._session(position)
                return
            except _SessionFailed as exc:
                self.stats.kafka = "degraded"
                self.stats.kafka_errors += 1
                self.metrics.retries.inc()
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
                if self._lost.is_set():
                    return

    def _source_settings(self) -> SourceSettings:
        s = self.settings
        args = s.mysql_connection_args()
        assert self.server is not None
        return SourceSettings(
            host=args["host"],
            port=args["port"],
            user=args["user"],
            password=args["password"],
            server_id=self.server_id,
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
        producer_args = s.producer_args()
        # A refused login or certificate fails every retry: stop with exit code 2.
        await check_kafka_login(s, producer_args)
        topics = self._topics = Topics(
            producer_args,
            create=s.create_topics,
            partitions=s.topic_partitions,
            replication_factor=s.topic_replication_factor,
        )
        if self._stopping.is_set() or self._lost.is_set():
            topics.abort()
        publisher = KafkaPublisher(producer_args, topics)
        try:
            await publisher.start()
        except Exception as exc:
            await topics.close()
            raise _SessionFailed(str(exc)) from exc
        self.stats.kafka = "ok"
        self._publisher = publisher
        loop = asyncio.get_running_loop()
        channel = self._channel = Channel(loop, max_events=s.queue_max_events)
        use_gtid = s.resume_by_gtid or (start.file == "" and start.gtid is not None)
        reader = ProcessSource if s.reader == "process" else BinlogSource
        source = self._source = reader(
            self._source_settings(),
            channel,
            start,
            use_gtid=use_gtid,
            on_state=self._on_source_state,
            router=self._router,
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
            self._publisher = None
            self._topics = None
            with contextlib.suppress(Exception):
                await topics.close()
        failure = self._failure
        if isinstance(failure, TopicWaitAborted):
            return  # stopped (or lost the lease) while waiting for a topic
        if failure is not None:
            if is_permanent(failure):
                raise failure
            raise _SessionFailed(str(failure)) from failure

    async def _pump(self, channel: Channel, publisher: KafkaPublisher) -> None:
        wm = self._watermark
        lease = self._lease
        assert wm is not None and lease is not None
        stats = self.stats
        observe = self.metrics.batch_size.observe
        while True:
            batches = await channel.get()
            if self._failure is not None:
                return
            if not lease.held():
                # Checked before every drain: a paused leader resuming past its
                # lease publishes nothing more.
                self._lose_lease("the lease expired")
                return
            items: list[tuple[KafkaRecord, int]] = []
            if wm.outstanding == 0:
                stats.last_progress_at = time.monotonic()
            # Callbacks carry this session's watermark: a late answer to a batch
            # of a failed session must not ack tickets of the next one.
            on_done = partial(self._on_batch_done, wm)
            on_rejected = partial(self._on_rejected, wm)
            try:
                for batch in batches:
                    records = batch.records
                    if records:
                        observe(len(records))
                        ticket = wm.add_events(len(records))
                        for r in records:
                            if isinstance(r, RejectedRow):
                                # In stream order: what comes before it goes out first.
                                await publisher.publish(items, on_done, on_rejected)
                                items = []
                                await on_rejected(r, ticket, r.reason)
                            else:
                                items.append((r, ticket))
                        if items:
                            stats.last_event_ms = items[-1][0].timestamp_ms
                    if batch.commit is not None:
                        wm.commit(batch.commit)
                if items:
                    await publisher.publish(items, on_done, on_rejected)
            except Exception as exc:
                self._failure = exc
                return

    def _on_batch_done(
        self,
        wm: Watermark,
        runs: list[list[int]],
        records: list[KafkaRecord],
        error: BaseException | None,
    ) -> None:
        if wm is not self._watermark:
            return  # a batch of an earlier session: its events are being sent again
        if error is None:
            for ticket, count in runs:
                wm.ack(ticket, count)
            self.stats.published += len(records)
            self.stats.last_progress_at = time.monotonic()
            if self.stats.kafka == "degraded":
                self.stats.kafka = "ok"
                log.info("Kafka acknowledges events again")
            return
        self.metrics.publish_errors.inc()
        if is_permanent(error):
            if len(records) == 1 and self.settings.on_rejected == "dead-letter":
                ticket = runs[0][0]
                task = asyncio.ensure_future(
                    self._on_rejected(wm, records[0], ticket, f"{type(error).__name__}: {error}")
                )
                self._dead_letter_tasks.add(task)
                task.add_done_callback(self._dead_letter_tasks.discard)
                return
            what = (
                f"{type(error).__name__}: {error}"
                if len(records) == 1
                else f"Kafka refused a batch of {len(records)} events starting with this one "
                f"({type(error).__name__}: {error}); set max_request_size to the topic's "
                "max.message.bytes so oversized events are found before sending"
            )
            error = PublishError(record_id(records[0]), what)
        if self._failure is None:
            self._failure = error
            if self._channel is not None:
                self._channel.fail(error)

    async def _on_rejected(
        self, wm: Watermark, rejected: KafkaRecord | RejectedRow, ticket: int, reason: str
    ) -> None:
        """An event Kafka refuses for good, or a row that is no valid event: stop
        (raise) or dead-letter it, by policy."""
        s = self.settings
        if isinstance(rejected, RejectedRow):
            event_id = rejected.event_id or "(no valid id)"
            reason = f"invalid outbox row {rejected.where}: {reason}"
        else:
            event_id = record_id(rejected)
        if s.on_rejected != "dead-letter":
            raise PublishError(event_id, reason)
        publisher = self._publisher
        assert publisher is not None
        log.warning(
            "event %s rejected for good: %s; sent to %s", event_id, reason, s.dead_letter_topic
        )
        body: dict[str, Any] = {
            "id": rejected.event_id if isinstance(rejected, RejectedRow) else event_id
        }
        if isinstance(rejected, RejectedRow):
            key = (rejected.aggregate_id or rejected.event_id or "").encode()
            headers = [("dlq.reason", reason.encode())]
            body.update(aggregateid=rejected.aggregate_id)
        else:
            event = event_of(rejected)
            key = rejected.key
            headers = [*rejected.headers, ("dlq.reason", reason.encode())]
            body.update(
                aggregatetype=event.aggregate_type,
                aggregateid=event.aggregate_id,
                type=event.event_type,
                timestamp=event.timestamp.isoformat(),
                payload_bytes=len(event.payload),
                topic=rejected.topic,
            )
        body["reason"] = reason
        record = KafkaRecord(
            topic=s.dead_letter_topic,
            key=key,
            value=json.dumps(body).encode(),
            headers=headers,
            timestamp_ms=int(time.time() * 1000),
        )

        def sent(error: BaseException | None) -> None:
            if error is None:
                self.stats.dead_lettered += 1
                self.metrics.dead_lettered.inc()
                self._on_batch_done(wm, [[ticket, 1]], [], None)
                return
            # The dead-letter topic itself refused: stop rather than skip.
            failure = PublishError(event_id, f"{reason}; dead letter failed: {error}")
            if self._failure is None:
                self._failure = failure
                if self._channel is not None:
                    self._channel.fail(failure)

        try:
            await publisher.send_record(record, sent)
        except PublishError as exc:
            sent(exc)

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
        assert self._lease is not None
        if not await self._store.save(position, fence=self._lease):
            self._lose_lease("a newer leader took over: checkpoint write refused")
            return
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

    async def _save_loop(self, over: asyncio.Event) -> None:
        interval = self.settings.checkpoint_interval_ms / 1000
        while not over.is_set() and not self._lost.is_set():
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

    async def _head_loop(self, over: asyncio.Event) -> None:
        head = BinlogHead(self.settings.mysql_connection_args())
        try:
            while not over.is_set():
                await asyncio.to_thread(head.poll)
                wm = self._watermark
                self.stats.behind_bytes = head.behind(None if wm is None else wm.position)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(over.wait(), 1.0)
        finally:
            self.stats.behind_bytes = None
            await asyncio.to_thread(head.close)

    def last_event_age(self) -> float | None:
        """Seconds since the newest event handed to Kafka was written, if any."""
        ms = self.stats.last_event_ms
        return None if ms is None else max(time.time() - ms / 1000, 0.0)

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
        """One line: rate, how far behind the binlog head, last event's age, checkpoint,
        queue, server states."""
        st = self.stats
        depth = self._channel.depth if self._channel is not None else 0
        return (
            f"{rate:.0f} events/s, {st.published} published, "
            f"{describe(st.behind_bytes, self.last_event_age())}, "
            f"checkpoint {st.checkpoint or '-'}, queue {depth}, "
            f"mysql {st.mysql}, kafka {st.kafka}, redis {st.redis}"
        )

    async def _tick_loop(self) -> None:
        # Proves the loop runs (for /healthz) and moves counters into metrics in
        # bulk, keeping per-event work off the hot path.
        m, st = self.metrics, self.stats
        published = 0
        while True:
            self._loop_tick = time.monotonic()
            m.published.inc(st.published - published)
            published = st.published
            m.leader.set(1 if st.role == "leader" else 0)
            wm = self._watermark
            m.outstanding.set(wm.outstanding if wm is not None else 0)
            m.queue_depth.set(self._channel.depth if self._channel is not None else 0)
            age = self.last_event_age()
            if age is not None:
                m.last_event_age.set(age)
            m.behind_bytes.set(-1 if st.behind_bytes is None else st.behind_bytes)
            if st.checkpoint_saved_at is not None:
                m.checkpoint_age.set(time.monotonic() - st.checkpoint_saved_at)
            if st.checkpoint is not None:
                suffix = st.checkpoint.file.rsplit(".", 1)[-1]
                if suffix.isdigit():
                    m.binlog_file.set(int(suffix))
                m.binlog_pos.set(st.checkpoint.pos)
            for name in ("mysql", "kafka", "redis"):
                m.server_up.labels(name).set(1 if getattr(st, name) == "ok" else 0)
            await asyncio.sleep(0.5)

    def health(self) -> dict[str, Any]:
        """A snapshot of the relay's state; ``ready`` as ``/readyz`` reports it."""
        st = self.stats
        connected = st.mysql == st.kafka == st.redis == "ok"
        return {
            "ready": st.role == "standby" or (st.role == "leader" and connected),
            "role": st.role,
            "mysql": st.mysql,
            "kafka": st.kafka,
            "redis": st.redis,
            "published": st.published,
            "dead_lettered": st.dead_lettered,
            "checkpoint": str(st.checkpoint) if st.checkpoint else None,
        }
