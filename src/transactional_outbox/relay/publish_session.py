"""One publish session: a source (binlog, WAL) and a Kafka producer, from a start position.

A :class:`PublishSession` owns its source, channel, publisher, watermark and
failure. Kafka's answers come back as callbacks bound to the session that
sent the batch, so a late answer to a failed session touches only that
session's watermark, never the next one's. :meth:`PublishSession.run`
returns when stopped and raises when the session failed:
:class:`SessionFailed` for what a new session from the watermark may fix,
another :class:`Exception` for what it cannot (a purged binlog, a lost
slot, an event Kafka refuses for good under the ``stop`` policy).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from ..exceptions import PublishError
from .channel import Channel, ChannelClosed
from .config import RelaySettings
from .database import Database, Source
from .deadletter import dead_letter_record, rejected_event_id, rejection_reason
from .faults import check_kafka_login
from .position import Position
from .publisher import KafkaPublisher, is_permanent
from .routing import KafkaRecord, TopicRouter, record_id
from .rowrecord import RejectedRow
from .stats import RelayStats
from .term import LeaderTerm
from .topics import Topics, TopicWaitAborted
from .watermark import Watermark

__all__ = ["PublishSession", "SessionFailed"]

log = logging.getLogger("transactional_outbox.relay")


class SessionFailed(Exception):
    """Kafka failed this session; start a new one from the watermark."""


class PublishSession:
    """Reads from ``start`` and publishes until stopped or failed; see the module doc."""

    def __init__(
        self,
        settings: RelaySettings,
        start: Position,
        *,
        database: Database,
        router: TopicRouter,
        term: LeaderTerm,
        stats: RelayStats,
        observe_batch: Callable[[float], None] = lambda n: None,
        canary_seen: Callable[[str], None] = lambda event_id: None,
    ) -> None:
        self.settings = settings
        self.start = start
        # A fresh watermark: events still outstanding from a failed session
        # will be read and sent again.
        self.watermark = Watermark(start, stats.by_table if settings.multi_table else None)
        self.failure: BaseException | None = None
        self._database = database
        self._router = router
        self._term = term
        self._stats = stats
        self._observe_batch = observe_batch
        self._canary_seen = canary_seen
        self._stopped = False
        self._topics: Topics | None = None
        self._source: Source | None = None
        self._channel: Channel | None = None
        self._publisher: KafkaPublisher | None = None
        self._dead_letter_tasks: set[asyncio.Future[None]] = set()
        self._checks: set[asyncio.Future[None]] = set()
        # The source lost its connection since it last had one; a later session's
        # first connection is a reconnect too (its server is checked again).
        self._reconnecting = stats.sessions > 0
        self._loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"PublishSession(start={self.start}, stopped={self._stopped})"

    @property
    def source(self) -> Source | None:
        """The source while the session runs."""
        return self._source

    def confirm(self, position: Position) -> None:
        """``position`` is checkpointed: the source may let its server release the log
        before it (a PostgreSQL slot)."""
        if self._source is not None:
            self._source.confirm(position)

    @property
    def outstanding(self) -> int:
        """Events sent, not yet acknowledged."""
        return self.watermark.outstanding

    @property
    def queue_depth(self) -> int:
        """Events read from the source, not yet taken (0 once the session ended)."""
        return 0 if self._channel is None else self._channel.depth

    def stop(self) -> None:
        """Stop reading; :meth:`run` flushes what is in flight and returns."""
        self._stopped = True
        if self._topics is not None:
            self._topics.abort()
        if self._source is not None:
            self._source.stop()
        if self._channel is not None:
            self._channel.close()

    async def run(self) -> None:
        """Publish until stopped (return) or failed (raise); see the module doc."""
        s = self.settings
        self._stats.sessions += 1
        producer_args = s.producer_args()
        # A refused login or certificate fails every retry: stop with exit code 2.
        await check_kafka_login(s, producer_args)
        topics = self._topics = Topics(
            producer_args,
            create=s.create_topics,
            partitions=s.topic_partitions,
            replication_factor=s.topic_replication_factor,
        )
        if self._stopped:
            topics.abort()
        publisher = KafkaPublisher(
            producer_args, topics, on_canary=self._on_canary, trace=s.trace_publish
        )
        try:
            await publisher.start()
        except Exception as exc:
            await topics.close()
            raise SessionFailed(str(exc)) from exc
        self._stats.kafka_up("the producer connected")
        self._publisher = publisher
        self._loop = asyncio.get_running_loop()
        channel = self._channel = Channel(self._loop, max_events=s.queue_max_events)
        source = self._source = self._database.open_source(
            self.start, channel, router=self._router, on_state=self._on_source_state
        )
        if self._stopped:
            channel.close()
        source.start()
        watch = self._database.watch(self.start, channel.fail)
        try:
            await self._pump(channel, publisher)
        except ChannelClosed:
            pass  # stopped
        except Exception as exc:
            if exc is not self.failure:
                raise  # the source's own error: fatal
            # else a publish failure woke the pump; handled below
        finally:
            if watch is not None:
                watch.cancel()
            source.stop()
            await asyncio.to_thread(source.join, s.heartbeat_ms * 3 / 1000 + 5)
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
        failure = self.failure
        if isinstance(failure, TopicWaitAborted):
            return  # stopped (or lost the lease) while waiting for a topic
        if failure is not None:
            if is_permanent(failure):
                raise failure
            raise SessionFailed(str(failure)) from failure

    def _fail(self, error: BaseException) -> None:
        if self.failure is None:
            self.failure = error
            if self._channel is not None:
                self._channel.fail(error)

    async def _pump(self, channel: Channel, publisher: KafkaPublisher) -> None:
        wm, term, stats = self.watermark, self._term, self._stats
        observe = self._observe_batch
        on_done, on_rejected = self.on_batch_done, self._on_rejected
        while True:
            batches = await channel.get()
            if self.failure is not None:
                return
            if not term.lease.held():
                # Checked before every drain: a paused leader resuming past its
                # lease publishes nothing more.
                term.lose("the lease expired")
                return
            items: list[tuple[KafkaRecord, int]] = []
            if wm.outstanding == 0:
                stats.last_progress_at = time.monotonic()
            try:
                for batch in batches:
                    records = batch.records
                    if records:
                        observe(len(records))
                        ticket = wm.add_events(len(records), batch.tables)
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
                self.failure = exc
                return

    def on_batch_done(
        self, runs: list[list[int]], records: list[KafkaRecord], error: BaseException | None
    ) -> None:
        """Kafka's answer to one batch this session sent (the publisher's callback)."""
        wm = self.watermark
        if error is None:
            for ticket, count in runs:
                wm.ack(ticket, count)
            self._stats.acked(len(records))
            return
        self._stats.publish_errors += 1
        if is_permanent(error):
            if len(records) == 1 and self.settings.on_rejected == "dead-letter":
                reason = f"{type(error).__name__}: {error}"
                task = asyncio.ensure_future(self._on_rejected(records[0], runs[0][0], reason))
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
        self._fail(error)

    async def _on_rejected(
        self, rejected: KafkaRecord | RejectedRow, ticket: int, reason: str
    ) -> None:
        """An event Kafka refuses for good, or a row that is no valid event: stop
        (raise) or dead-letter it, by policy."""
        s = self.settings
        event_id = rejected_event_id(rejected)
        reason = rejection_reason(rejected, reason)
        if s.on_rejected != "dead-letter":
            raise PublishError(event_id, reason)
        publisher = self._publisher
        assert publisher is not None
        log.warning(
            "event %s rejected for good: %s; sent to %s", event_id, reason, s.dead_letter_topic
        )
        record = dead_letter_record(
            rejected, reason, topic=s.dead_letter_topic, now_ms=int(time.time() * 1000)
        )

        def sent(error: BaseException | None) -> None:
            if error is None:
                self._stats.dead_lettered += 1
                self.on_batch_done([[ticket, 1]], [], None)
                return
            # The dead-letter topic itself refused: stop rather than skip.
            self._fail(PublishError(event_id, f"{reason}; dead letter failed: {error}"))

        try:
            await publisher.send_record(record, sent)
        except PublishError as exc:
            sent(exc)

    def _on_canary(self, record: KafkaRecord, ticket: int) -> None:
        # Never sent: done at once, so the checkpoint can pass it.
        self.watermark.ack(ticket, 1)
        self._canary_seen(record_id(record))

    def _on_source_state(self, state: str) -> None:
        # Called from the source's thread. After a reconnect, check again that the
        # outbox rows reach the log read (the address may lead to another server).
        self._stats.database = "ok" if state == "connected" else "degraded"
        if state != "connected":
            self._reconnecting = True
        elif self._reconnecting and self._channel is not None and self._loop is not None:
            self._reconnecting = False
            self._loop.call_soon_threadsafe(self._recheck, self._channel)

    def _recheck(self, channel: Channel) -> None:
        task = self._database.recheck(channel.fail)
        if task is None:
            return
        self._checks.add(task)
        task.add_done_callback(self._checks.discard)
