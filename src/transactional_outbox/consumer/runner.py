"""``ConsumerRunner``: consume outbox topics in a group, handle, retry, dead-letter, commit.

Offsets are committed only after their records were handled (or dead-lettered),
so a crash redelivers; the handler's deduplication (``@idempotent_consumer``)
turns those redeliveries into no-ops. Records of one key are handled in order;
different keys (of any partition) concurrently, up to ``max_concurrency``; a
partition's committed offset is its lowest record not yet done (a watermark).
What a fetched batch goes through is in ``batch``; a record's retries in ``attempts``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import signal
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeAlias

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError, IllegalStateError
from aiokafka.structs import ConsumerRecord, TopicPartition

from .attempts import Attempts
from .batch import BatchHandler
from .received import ReceivedEvent
from .settings import RunnerSettings
from .watermark import OffsetWatermark

__all__ = ["ConsumerRunner", "Handler"]

logger = logging.getLogger("transactional_outbox.consumer")

Handler: TypeAlias = (
    Callable[[ReceivedEvent], Awaitable[object]] | Callable[[ReceivedEvent], object]
)
"""What the runner calls per record: ``async def`` (awaited) or plain (run in a thread)."""

_SIGNALS = (signal.SIGTERM, signal.SIGINT)

# The next batch is fetched, decoded and claimed while the previous one runs, so
# neither a fetch round trip nor the slowest key of a batch holds everything up.
_BATCHES_IN_FLIGHT = 4


class ConsumerRunner:
    """Run ``handler`` on every record of the subscribed topics, until stopped.

    ::

        runner = ConsumerRunner(on_order, RunnerSettings(
            kafka=KafkaConnection(bootstrap_servers="localhost:9092"), group_id="billing",
            topics=["outbox.event.order"], dead_letter_topic="{topic}.dlq"))
        asyncio.run(runner.run())        # until SIGTERM/SIGINT

    The handler receives a :class:`ReceivedEvent`; decorate it with
    :func:`idempotent_consumer` so redeliveries are skipped. Per record:

    - no valid ``id`` header: dead-lettered without calling the handler (no
      dead-letter topic: the runner stops with
      :class:`~transactional_outbox.InvalidRecordError`);
    - the handler raises: retried with backoff up to ``max_attempts``, then
      dead-lettered and its key moves on (no dead-letter topic: the
      runner stops with :class:`~transactional_outbox.ConsumerError`).

    A handler decorated with :func:`idempotent_consumer` is deduplicated a
    fetched batch at a time (one store call to claim or check the batch's ids,
    one to mark them done); records of different keys run concurrently, up to
    ``settings.max_concurrency``, records of one key in order.

    Stopping (:meth:`stop`, SIGTERM, SIGINT) lets running handlers finish,
    abandons backoff waits (those records are redelivered later), commits the
    offsets of every handled record and leaves the group. A runner runs once.
    """

    def __init__(self, handler: Handler, settings: RunnerSettings) -> None:
        self.handler = handler
        self.settings = settings
        self._is_async = inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
            getattr(handler, "__call__", None)  # noqa: B004 - async callable objects
        )
        self._stopping = asyncio.Event()
        self._started = False
        self._pending: dict[TopicPartition, int] = {}  # next offset to commit, per partition
        self._revoking: set[TopicPartition] = set()
        self._idle = asyncio.Event()  # no batch is being handled
        self._idle.set()
        self._commit_lock = asyncio.Lock()
        self._consumer: Any = None
        self._producer: Any = None
        self._batches: BatchHandler | None = None
        self._committing: asyncio.Task[None] | None = None
        # Per partition: which fetched offsets are done (records finish out of order).
        self._marks: dict[TopicPartition, OffsetWatermark] = {}
        self._last_mark: dict[TopicPartition, int] = {}
        self._running: set[asyncio.Task[None]] = set()  # batches being handled
        self._failure: BaseException | None = None

    def __repr__(self) -> str:
        return f"ConsumerRunner(handler={self.handler!r}, settings={self.settings!r})"

    @property
    def assignment(self) -> frozenset[TopicPartition]:
        """The partitions this runner owns right now (empty until it joined its group)."""
        if self._consumer is None:
            return frozenset()
        return frozenset(self._consumer.assignment())

    def stop(self) -> None:
        """Ask the runner to stop gracefully; :meth:`run` returns once it has."""
        self._stopping.set()

    async def run(self, *, install_signal_handlers: bool = True) -> None:
        """Consume until :meth:`stop` (or SIGTERM/SIGINT when signal handlers are installed).

        Returns after a graceful stop. Raises if a record can be neither
        handled nor dead-lettered (see the class docstring), after committing
        what was handled.
        """
        if self._started:
            raise RuntimeError("a ConsumerRunner runs once; make a new one")
        self._started = True
        loop = asyncio.get_running_loop()
        installed = []
        if install_signal_handlers:
            for sig in _SIGNALS:
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.add_signal_handler(sig, self._on_signal, sig)
                    installed.append(sig)
        s = self.settings
        consumer = AIOKafkaConsumer(**s.consumer_kwargs())
        producer = AIOKafkaProducer(**s.producer_kwargs()) if s.dead_letter_topic else None
        self._consumer, self._producer = consumer, producer
        attempts = Attempts(s, self._call, self._stopping, producer)
        self._batches = BatchHandler(
            self.handler,
            attempts,
            max_concurrency=s.max_concurrency,
            stopping=self._stopping,
            revoking=self._revoking,
        )
        try:
            if producer is not None:
                await producer.start()
            await consumer.start()
            try:
                consumer.subscribe(
                    topics=list(s.topics),
                    pattern=s.subscription_pattern(),
                    listener=_Listener(self),
                )
                logger.info("consumer runner started: %r", s)
                await self._loop(consumer)
            finally:
                try:
                    await self._commit()
                finally:
                    await consumer.stop()
        finally:
            if producer is not None:
                await producer.stop()
            for sig in installed:
                loop.remove_signal_handler(sig)
            logger.info("consumer runner stopped (group %s)", s.group_id)

    def _on_signal(self, sig: signal.Signals) -> None:
        logger.info("received %s: stopping after the running handlers finish", sig.name)
        self.stop()

    async def _loop(self, consumer: Any) -> None:
        batches = self._batches
        assert batches is not None
        running = self._running
        try:
            while not self._stopping.is_set():
                if len(running) >= _BATCHES_IN_FLIGHT:
                    await asyncio.wait(set(running), return_when=asyncio.FIRST_COMPLETED)
                    continue
                batch = await self._poll(consumer)
                if not batch:
                    continue
                marks = {tp: self._mark(tp, records) for tp, records in batch.items()}
                task = asyncio.ensure_future(batches.handle(batch, marks))
                self._idle.clear()
                running.add(task)
                task.add_done_callback(functools.partial(self._batch_done, batch))
        finally:
            # Stopping: the running batches end after their current records.
            if running:
                await asyncio.wait(set(running))
        if self._failure is not None:
            raise self._failure

    def _mark(self, tp: TopicPartition, records: Sequence[ConsumerRecord]) -> OffsetWatermark:
        mark = self._marks.get(tp)
        end = mark.end if mark is not None else None
        if mark is None or end is None or records[0].offset < end:
            # New, or fetching again from the committed offset (after a rebalance).
            mark = self._marks[tp] = OffsetWatermark()
            self._last_mark.pop(tp, None)
        mark.add(r.offset for r in records)
        return mark

    def _batch_done(
        self, batch: Mapping[TopicPartition, Sequence[ConsumerRecord]], task: asyncio.Task[None]
    ) -> None:
        self._running.discard(task)
        for tp in batch:
            mark = self._marks.get(tp)
            offset = None if mark is None else mark.commit_offset()
            if offset is not None and offset > self._last_mark.get(tp, batch[tp][0].offset):
                self._pending[tp] = self._last_mark[tp] = offset
        error = None if task.cancelled() else task.exception()
        if error is not None:
            self._stopping.set()  # the other batches stop after their current records
            if self._failure is None:
                self._failure = error
        else:
            self._commit_soon()
        if not self._running:
            self._idle.set()

    def _commit_soon(self) -> None:
        # The commit overlaps the next batch instead of holding it up by a broker
        # round trip; stop and revocation await a commit of their own.
        if self._committing is None or self._committing.done():
            self._committing = asyncio.ensure_future(self._commit_quietly())

    async def _commit_quietly(self) -> None:
        try:
            # Offsets set while a commit was in flight go in the next one.
            while self._pending:
                await self._commit()
        except Exception as exc:
            # The offsets stay pending: the next commit carries them.
            logger.warning("offset commit failed, retrying with the next batch: %r", exc)

    async def _poll(self, consumer: Any) -> Mapping[TopicPartition, Sequence[ConsumerRecord]]:
        limit = self.settings.max_poll_records
        assigned = len(consumer.assignment())
        share = None if limit is None else max(1, limit // max(1, assigned))
        # Race the fetch against stop() so stopping does not wait for a poll timeout.
        fetch = asyncio.ensure_future(consumer.getmany(timeout_ms=1000, max_records=share))
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({fetch, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not fetch.done():
                fetch.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await fetch
        if fetch.cancelled():
            return {}
        result: dict[TopicPartition, Sequence[ConsumerRecord]] = dict(fetch.result())
        if result and share is not None:
            # aiokafka hands out one partition's buffer before the next: take a
            # share of each, so a batch spans partitions and keys run side by side.
            for tp in consumer.assignment() - result.keys():
                result.update(await consumer.getmany(tp, timeout_ms=0, max_records=share))
            # Partitions with little buffered leave room: fill it from the others.
            room = (limit or 0) - sum(len(records) for records in result.values())
            if room > 0:
                more = await consumer.getmany(timeout_ms=0, max_records=room)
                for tp, records in more.items():
                    result[tp] = [*result.get(tp, ()), *records]
        return result

    async def _call(self, event: ReceivedEvent) -> None:
        if self._is_async:
            await self.handler(event)  # type: ignore[misc]
        else:
            # A sync handler would block the event loop, and with it heartbeats.
            await asyncio.to_thread(self.handler, event)

    async def _commit(self, only: set[TopicPartition] | None = None) -> None:
        consumer = self._consumer
        async with self._commit_lock:
            assigned = consumer.assignment()
            # Offsets of partitions we no longer own cannot be committed: the new
            # owner redelivers those records and deduplication skips them.
            for tp in [tp for tp in self._pending if tp not in assigned]:
                del self._pending[tp]
            offsets = {
                tp: offset for tp, offset in self._pending.items() if only is None or tp in only
            }
            if not offsets:
                return
            try:
                await consumer.commit(offsets)
            except (CommitFailedError, IllegalStateError) as exc:
                logger.warning("offset commit failed after a rebalance (%r): %s", exc, offsets)
            for tp, offset in offsets.items():
                if self._pending.get(tp) == offset:
                    del self._pending[tp]

    async def _partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        if revoked:
            logger.info(
                "partitions revoked: %s; waiting for %d running batches, then committing",
                sorted(f"{t.topic}/{t.partition}" for t in revoked),
                len(self._running),
            )
        self._revoking |= revoked
        try:
            # Let the records being handled finish, then commit them before the
            # partitions move to another member.
            await self._idle.wait()
            await self._commit(revoked)
        finally:
            self._revoking -= revoked
            for tp in revoked:
                self._marks.pop(tp, None)
                self._last_mark.pop(tp, None)


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, runner: ConsumerRunner) -> None:
        self._runner = runner

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._runner._partitions_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        logger.info("partitions assigned: %s", sorted(f"{t.topic}/{t.partition}" for t in assigned))
