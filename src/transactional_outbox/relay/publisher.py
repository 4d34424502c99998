"""Kafka publisher: a thin adapter over aiokafka's producer.

Records are grouped per partition and handed over as whole batches
(``create_batch`` / ``send_batch``): one future and one callback per batch
instead of per event, which is most of the relay's per-event cost otherwise.
Partitions are chosen with the Java client's murmur2 partitioner, as
``send()`` would, so keys land where any other Kafka producer puts them.
Within a partition, batches are queued in order and aiokafka sends one at a
time, so per-key order holds across retries.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    InvalidTopicError,
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    TopicAuthorizationFailedError,
    UnsupportedForMessageFormatError,
)
from aiokafka.partitioner import murmur2
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from ..exceptions import PublishError
from .routing import CANARY_TOPIC, KafkaRecord, invalid_topic_reason
from .topics import Topics
from .tracing import publish_tracer

__all__ = ["KafkaPublisher", "OnBatchDone", "OnRejected", "is_permanent"]

_PERMANENT = (
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    InvalidTopicError,
    TopicAuthorizationFailedError,
    UnsupportedForMessageFormatError,
)

Item = tuple[KafkaRecord, int]  # a record and its watermark ticket
Runs = list[list[int]]  # [ticket, count] runs, in order
OnBatchDone = Callable[[Runs, list[KafkaRecord], BaseException | None], None]
OnRejected = Callable[[KafkaRecord, int, str], Awaitable[None]]


def is_permanent(exc: BaseException) -> bool:
    """True for errors that retrying the same record cannot fix."""
    return isinstance(exc, (*_PERMANENT, PublishError))


def _outcome(fut: Any) -> BaseException | None:
    if fut.cancelled():
        cancelled: BaseException = KafkaError("send cancelled")
        return cancelled
    exc = fut.exception()
    return exc if isinstance(exc, BaseException) else None


class KafkaPublisher:
    """Publishes records in per-partition batches and reports each batch's outcome."""

    def __init__(
        self,
        producer_args: dict[str, Any],
        topics: Topics | None = None,
        *,
        on_canary: Callable[[KafkaRecord, int], None] | None = None,
        trace: bool = False,
    ) -> None:
        self._tracer = publish_tracer() if trace else None  # PRODUCER spans (trace_publish)
        self._args = producer_args
        self._on_canary = on_canary
        self._topics = topics
        self._producer: AIOKafkaProducer | None = None
        self._partition_cache: dict[tuple[str, bytes], tuple[int, int]] = {}
        self._topic_checked: dict[str, str | None] = {}
        self._max_request_size = int(producer_args.get("max_request_size", 1_048_576))
        self._strict_order = not producer_args.get("enable_idempotence", False)
        self._last: dict[tuple[str, int], asyncio.Future[Any]] = {}

    async def start(self) -> None:
        """Connect to the cluster."""
        self._producer = AIOKafkaProducer(**self._args)
        try:
            await self._producer.start()
        except BaseException:
            await self._producer.stop()
            self._producer = None
            raise

    def _partition(self, topic: str, key: bytes, partitions: list[int]) -> int:
        cache_key = (topic, key)
        hit = self._partition_cache.get(cache_key)
        if hit is not None and hit[0] == len(partitions):
            return int(hit[1])
        # The Java client's default: positive murmur2 of the key, modulo all partitions.
        part = partitions[int(murmur2(key) & 0x7FFFFFFF) % len(partitions)]
        if len(self._partition_cache) > 200_000:
            self._partition_cache.clear()
        self._partition_cache[cache_key] = (len(partitions), part)
        return part

    async def publish(
        self, items: Sequence[Item], on_done: OnBatchDone, on_rejected: OnRejected
    ) -> None:
        """Queue ``items`` in order per partition; may wait while the producer is full.

        ``on_done(runs, records, error)`` is called once per batch when Kafka
        answers. A record Kafka would refuse whatever happens (illegal topic,
        larger than ``max_request_size``) goes to ``on_rejected(record, ticket,
        reason)`` instead, which may raise to stop; a canary record to
        ``on_canary(record, ticket)``, unsent.
        """
        producer = self._producer
        assert producer is not None, "start() first"
        groups: dict[tuple[str, int], list[Item]] = {}
        partitions: dict[str, list[int]] = {}
        stop: BaseException | None = None
        limit = self._max_request_size
        for item in items:
            record = item[0]
            topic = record.topic
            if topic not in self._topic_checked:
                self._topic_checked[topic] = invalid_topic_reason(topic)
            reason = self._topic_checked[topic]
            if not reason and len(record.value) + len(record.key) + 1024 > limit:
                size = DefaultRecordBatchBuilder.estimate_size_in_bytes(
                    record.key, record.value, record.headers
                )
                if size > limit:
                    reason = (
                        f"MessageSizeTooLargeError: the record is {size} bytes, more than "
                        f"max_request_size={limit}"
                    )
            if reason:
                if topic == CANARY_TOPIC and self._on_canary is not None:
                    # The relay's own canary (its topic is no legal name): taken back,
                    # never sent. Checked here, where only illegal topics arrive.
                    self._on_canary(record, item[1])
                    continue
                try:
                    await on_rejected(record, item[1], reason)
                except Exception as exc:
                    # Stop here, but first send what comes before it, so the
                    # checkpoint can reach the rejected event.
                    stop = exc
                    break
                continue
            parts = partitions.get(topic)
            if parts is None:
                if self._topics is not None:
                    await self._topics.ensure(topic)  # no auto-creation, no ERROR line
                parts = partitions[topic] = sorted(await producer.partitions_for(topic))
            part = self._partition(topic, record.key, parts)
            group = groups.get((topic, part))
            if group is None:
                groups[(topic, part)] = [item]
            else:
                group.append(item)
        for (topic, part), group in groups.items():
            await self._publish_partition(producer, topic, part, group, on_done, on_rejected)
        if stop is not None:
            raise stop

    async def _publish_partition(
        self,
        producer: AIOKafkaProducer,
        topic: str,
        part: int,
        group: list[Item],
        on_done: OnBatchDone,
        on_rejected: OnRejected,
    ) -> None:
        batch = producer.create_batch()
        runs: Runs = []
        records: list[KafkaRecord] = []
        for record, ticket in group:
            appended = batch.append(
                timestamp=record.timestamp_ms,
                key=record.key,
                value=record.value,
                headers=record.headers,
            )
            if appended is None and batch.record_count() > 0:
                await self._submit(producer, batch, topic, part, runs, records, on_done)
                batch, runs, records = producer.create_batch(), [], []
                appended = batch.append(
                    timestamp=record.timestamp_ms,
                    key=record.key,
                    value=record.value,
                    headers=record.headers,
                )
            if appended is None:
                # Larger than a batch: alone through send(), which enforces
                # max_request_size. Earlier records of this partition are queued.
                batch = producer.create_batch()
                await self._send_one(producer, topic, part, record, ticket, on_done, on_rejected)
                continue
            if runs and runs[-1][0] == ticket:
                runs[-1][1] += 1
            else:
                runs.append([ticket, 1])
            records.append(record)
        if batch.record_count() > 0:
            await self._submit(producer, batch, topic, part, runs, records, on_done)

    async def _in_order(self, topic: str, part: int) -> None:
        """Without the idempotent producer, wait for the partition's previous batch.

        aiokafka then expires a batch that waited too long (Kafka unreachable)
        but would still send the partition's younger batches: B would land
        before the resent A. One batch in flight per partition rules that out.
        (With idempotence aiokafka never expires batches, so it pipelines.)
        """
        if not self._strict_order:
            return
        previous = self._last.get((topic, part))
        if previous is not None and not previous.done():
            await asyncio.wait([previous])
        if previous is not None and _outcome(previous) is not None:
            raise KafkaError(f"an earlier batch for {topic}[{part}] failed; not sending later ones")

    async def _submit(
        self,
        producer: AIOKafkaProducer,
        batch: Any,
        topic: str,
        part: int,
        runs: Runs,
        records: list[KafkaRecord],
        on_done: OnBatchDone,
    ) -> None:
        await self._in_order(topic, part)
        fut = await producer.send_batch(batch, topic, partition=part)
        self._last[(topic, part)] = fut
        fut.add_done_callback(lambda f: on_done(runs, records, _outcome(f)))
        if self._tracer is not None:
            self._tracer.watch(fut, part, records)

    async def _send_one(
        self,
        producer: AIOKafkaProducer,
        topic: str,
        part: int,
        record: KafkaRecord,
        ticket: int,
        on_done: OnBatchDone,
        on_rejected: OnRejected,
    ) -> None:
        await self._in_order(topic, part)
        try:
            fut = await producer.send(
                topic,
                value=record.value,
                key=record.key,
                partition=part,
                headers=record.headers,
                timestamp_ms=record.timestamp_ms,
            )
        except _PERMANENT as exc:
            await on_rejected(record, ticket, f"{type(exc).__name__}: {exc}")
            return
        self._last[(topic, part)] = fut
        done = partial(on_done, [[ticket, 1]], [record])
        fut.add_done_callback(lambda f: done(_outcome(f)))
        if self._tracer is not None:
            self._tracer.watch(fut, part, [record])

    async def send_record(
        self, record: KafkaRecord, on_done: Callable[[BaseException | None], None]
    ) -> None:
        """Send one record through ``send()`` (dead letters); raises PublishError if refused."""
        assert self._producer is not None, "start() first"
        reason = invalid_topic_reason(record.topic)
        if reason:
            raise PublishError("-", reason)
        if self._topics is not None:
            await self._topics.ensure(record.topic)
        try:
            fut = await self._producer.send(
                record.topic,
                value=record.value,
                key=record.key,
                headers=record.headers,
                timestamp_ms=record.timestamp_ms,
            )
        except _PERMANENT as exc:
            raise PublishError("-", f"{type(exc).__name__}: {exc}") from exc
        fut.add_done_callback(lambda f: on_done(_outcome(f)))

    async def flush(self) -> None:
        """Wait until every queued record is answered."""
        if self._producer is not None:
            await self._producer.flush()

    async def stop(self) -> None:
        """Flush and disconnect."""
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()
