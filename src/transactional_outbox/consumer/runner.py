"""``ConsumerRunner``: consume outbox topics in a group, handle, retry, dead-letter, commit.

Offsets are committed only after their records were handled (or dead-lettered),
so a crash redelivers; the handler's deduplication (``@idempotent_consumer``)
turns those redeliveries into no-ops. Records of one partition are handled in
order, one at a time; partitions of one poll are handled concurrently.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import random
import signal
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeAlias

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError, IllegalStateError
from aiokafka.structs import ConsumerRecord, TopicPartition

from ..exceptions import ConsumerError, InvalidRecordError
from .dead_letter import dead_letter_headers
from .errors import EventInProgressError
from .received import ReceivedEvent
from .settings import RunnerSettings

__all__ = ["ConsumerRunner", "Handler"]

logger = logging.getLogger("transactional_outbox.consumer")

Handler: TypeAlias = (
    Callable[[ReceivedEvent], Awaitable[object]] | Callable[[ReceivedEvent], object]
)
"""What the runner calls per record: ``async def`` (awaited) or plain (run in a thread)."""

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class ConsumerRunner:
    """Run ``handler`` on every record of the subscribed topics, until stopped.

    ::

        runner = ConsumerRunner(on_order, RunnerSettings(
            bootstrap_servers="localhost:9092", group_id="billing",
            topics=["outbox.event.order"], dead_letter_topic="{topic}.dlq"))
        asyncio.run(runner.run())        # until SIGTERM/SIGINT

    The handler receives a :class:`ReceivedEvent`; decorate it with
    :func:`idempotent_consumer` so redeliveries are skipped. Per record:

    - no valid ``id`` header: dead-lettered without calling the handler (no
      dead-letter topic: the runner stops with
      :class:`~transactional_outbox.InvalidRecordError`);
    - the handler raises: retried with backoff up to ``max_attempts``, then
      dead-lettered and the partition moves on (no dead-letter topic: the
      runner stops with :class:`~transactional_outbox.ConsumerError`).

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
        consumer = AIOKafkaConsumer(**s._consumer_kwargs())
        producer = AIOKafkaProducer(**s._producer_kwargs()) if s.dead_letter_topic else None
        self._consumer, self._producer = consumer, producer
        try:
            if producer is not None:
                await producer.start()
            await consumer.start()
            try:
                consumer.subscribe(
                    topics=list(s.topics),
                    pattern=s.topic_pattern,
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
        while not self._stopping.is_set():
            batch = await self._poll(consumer)
            if not batch:
                continue
            self._idle.clear()
            try:
                results = await asyncio.gather(
                    *(self._handle_partition(tp, records) for tp, records in batch.items()),
                    return_exceptions=True,
                )
            finally:
                self._idle.set()
            await self._commit()
            for result in results:
                if isinstance(result, BaseException):
                    raise result

    async def _poll(self, consumer: Any) -> Mapping[TopicPartition, Sequence[ConsumerRecord]]:
        # Race the fetch against stop() so stopping does not wait for a poll timeout.
        fetch = asyncio.ensure_future(consumer.getmany(timeout_ms=1000))
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
        result: Mapping[TopicPartition, Sequence[ConsumerRecord]] = fetch.result()
        return result

    async def _handle_partition(
        self, tp: TopicPartition, records: Sequence[ConsumerRecord]
    ) -> None:
        for record in records:
            if self._stopping.is_set() or tp in self._revoking:
                return
            try:
                handled = await self._handle_record(record)
            except BaseException:
                self._stopping.set()  # other partitions stop after their current record
                raise
            if not handled:
                return
            self._pending[tp] = record.offset + 1

    async def _handle_record(self, record: ConsumerRecord) -> bool:
        """True once the record is done with (handled or dead-lettered); False if stopping."""
        try:
            event = ReceivedEvent.from_record(record)
        except InvalidRecordError as exc:
            if self.settings.dead_letter_topic is None:
                logger.error("%s; no dead_letter_topic set: stopping", exc)
                raise
            await self._dead_letter(record, exc, attempts=0)
            return True
        failures = 0
        while True:
            try:
                await self._call(event)
                return True
            except EventInProgressError as exc:
                # Not a failure: another worker holds the claim, and the claim's TTL
                # bounds how long; it must not use up attempts.
                delay = self._backoff(failures + 1)
                logger.info("%s; retrying in %.2fs", exc, delay)
            except Exception as exc:
                failures += 1
                if failures >= self.settings.max_attempts:
                    return await self._give_up(record, event, exc, failures)
                delay = self._backoff(failures)
                logger.warning(
                    "handler failed on event %s (%s/%s@%s), attempt %d of %d, retrying in %.2fs:"
                    " %r",
                    event.id,
                    record.topic,
                    record.partition,
                    record.offset,
                    failures,
                    self.settings.max_attempts,
                    delay,
                    exc,
                )
            if await self._wait_stopping(delay):
                return False

    async def _give_up(
        self, record: ConsumerRecord, event: ReceivedEvent, exc: Exception, attempts: int
    ) -> bool:
        where = f"{record.topic}/{record.partition}@{record.offset}"
        if self.settings.dead_letter_topic is None:
            logger.error(
                "handler failed on event %s (%s) %d times; no dead_letter_topic set: stopping",
                event.id,
                where,
                attempts,
                exc_info=exc,
            )
            raise ConsumerError(
                f"event {event.id} ({where}) failed {attempts} times: {exc!r}"
            ) from exc
        logger.error(
            "handler failed on event %s (%s) %d times: dead-lettering it",
            event.id,
            where,
            attempts,
            exc_info=exc,
        )
        await self._dead_letter(record, exc, attempts=attempts)
        return True

    async def _call(self, event: ReceivedEvent) -> None:
        if self._is_async:
            await self.handler(event)  # type: ignore[misc]
        else:
            # A sync handler would block the event loop, and with it heartbeats.
            await asyncio.to_thread(self.handler, event)

    def _backoff(self, attempt: int) -> float:
        s = self.settings
        delay = min(s.backoff_max, s.backoff_initial * 2.0 ** (attempt - 1))
        # Jitter spreads retries of many consumers hitting the same broken dependency.
        return delay * random.uniform(0.5, 1.0)

    async def _wait_stopping(self, delay: float) -> bool:
        try:
            async with asyncio.timeout(delay):
                await self._stopping.wait()
        except TimeoutError:
            return False
        return True

    async def _dead_letter(
        self, record: ConsumerRecord, error: Exception, *, attempts: int
    ) -> None:
        topic = self.settings.dead_letter_topic_for(record.topic)
        headers = dead_letter_headers(
            record, error, attempts=attempts, group_id=self.settings.group_id
        )
        # No timestamp: the dead letter gets the current time, so time-based
        # retention counts from now, not from the (maybe old) event time, which
        # stays in the ``timestamp`` header.
        await self._producer.send_and_wait(
            topic, value=record.value, key=record.key, headers=headers
        )
        logger.warning(
            "record %s/%s@%s sent to dead-letter topic %s",
            record.topic,
            record.partition,
            record.offset,
            topic,
        )

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
        self._revoking |= revoked
        try:
            # Let the records being handled finish, then commit them before the
            # partitions move to another member.
            await self._idle.wait()
            await self._commit(revoked)
        finally:
            self._revoking -= revoked


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, runner: ConsumerRunner) -> None:
        self._runner = runner

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._runner._partitions_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        logger.info("partitions assigned: %s", sorted(f"{t.topic}/{t.partition}" for t in assigned))
