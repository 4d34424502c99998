"""The checkpoint's second copy: a compacted Kafka topic keyed by the relay. A thin I/O adapter.

Like Kafka Connect's offsets topic: one record per save, key = the relay's
namespace (``{key_prefix}{relay_name}``, the base of its Redis keys, so two
deployments sharing a cluster with different prefixes stay apart), value =
the writer's fencing token, its save number and the encoded checkpoint
(relay/checkpoint_choice.py). The relay creates the topic if it is missing
(one partition, ``cleanup.policy=compact``, ``topic_replication_factor``), so
the last record per key is kept for good.

Writes go through a small producer of their own: one record in flight at a
time, each awaited, so they land in order with or without the idempotent
producer (``enable_idempotence`` as set: off for brokers without it).
Reading assigns every partition, seeks to the beginning and reads up to the
end offsets taken first, bounded in time.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from .checkpoint_choice import KafkaCopies, encode_copy, fold_records
from .topics import Topics

__all__ = ["CheckpointTopicUnreadable", "KafkaCheckpointTopic"]

_CONSUMER_KEYS = (
    "bootstrap_servers",
    "security_protocol",
    "ssl_context",
    "sasl_mechanism",
    "sasl_plain_username",
    "sasl_plain_password",
    "request_timeout_ms",
)


# Compacted, so the last record per key is kept for good. Small segments: compaction never
# touches the active segment, and at Kafka's default 1 GiB one holds millions of saves
# that a start would read; at 1 MiB ~7,000.
TOPIC_CONFIGS = {"cleanup.policy": "compact", "segment.bytes": str(1 << 20)}


class CheckpointTopicUnreadable(ConnectionError):
    """The checkpoint topic could not be read to its end in time (retried like an
    unreachable server)."""


class KafkaCheckpointTopic:
    """Reads and writes one relay's records in the checkpoint topic."""

    def __init__(
        self,
        producer_args: dict[str, Any],
        *,
        topic: str,
        key: str,
        create: bool,
        replication_factor: int,
        timeout_ms: int,
    ) -> None:
        self.topic = topic
        self.key = key
        self._key = key.encode()
        self._producer_args = {
            **producer_args,
            "client_id": f"{producer_args.get('client_id', 'outbox-relay')}-checkpoint",
            "acks": "all",
            "linger_ms": 0,
        }
        self._consumer_args = {k: v for k, v in producer_args.items() if k in _CONSUMER_KEYS}
        self._topics = Topics(
            producer_args,
            create=create,
            partitions=1,
            replication_factor=replication_factor,
            configs=TOPIC_CONFIGS,
        )
        self._timeout = timeout_ms / 1000
        self._producer: AIOKafkaProducer | None = None

    @property
    def where(self) -> str:
        """The topic and key, for messages."""
        return f"Kafka topic {self.topic!r} (key {self.key!r})"

    async def read(self, *, strict: bool = True) -> KafkaCopies:
        """Every record of the key, folded; empty if the topic does not exist.

        Raises :class:`CheckpointTopicUnreadable` if the topic cannot be read to
        its end within the timeout, :class:`~transactional_outbox.CheckpointError`
        for a record of the key that is not a checkpoint copy (counted instead
        unless ``strict``).
        """
        consumer = AIOKafkaConsumer(
            **self._consumer_args,
            client_id=str(self._producer_args["client_id"]),
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=100,
        )
        found: list[tuple[int, bytes | None]] = []
        try:
            async with asyncio.timeout(self._timeout):
                await consumer.start()
                if self.topic not in await consumer.topics():
                    return KafkaCopies()
                partitions = sorted(consumer.partitions_for_topic(self.topic) or ())
                tps = [TopicPartition(self.topic, p) for p in partitions]
                consumer.assign(tps)
                await consumer.seek_to_beginning(*tps)
                ends = await consumer.end_offsets(tps)
                pending = {tp for tp in tps if ends[tp] > 0}
                while pending:
                    batch = await consumer.getmany(*pending, timeout_ms=200)
                    for tp, records in batch.items():
                        found += [(tp.partition, r.value) for r in records if r.key == self._key]
                    for tp in list(pending):
                        if await consumer.position(tp) >= ends[tp]:
                            pending.discard(tp)
        except (TimeoutError, KafkaError, OSError) as exc:
            raise CheckpointTopicUnreadable(
                f"cannot read the checkpoint copy in {self.where} to its end within "
                f"{self._timeout:.0f}s ({type(exc).__name__}: {exc})"
            ) from None
        finally:
            with contextlib.suppress(Exception):
                await consumer.stop()
        return fold_records(found, where=self.where, strict=strict)

    async def write(self, *, token: int, seq: int, value: str) -> None:
        """Append one copy and wait for the broker's acknowledgement (bounded in time).

        Raises :class:`KafkaError` or :class:`TimeoutError` if it was not acknowledged.
        """
        async with asyncio.timeout(self._timeout):
            await self._topics.ensure(self.topic)
            producer = await self._started()
            await producer.send_and_wait(
                self.topic, key=self._key, value=encode_copy(token=token, seq=seq, value=value)
            )

    async def _started(self) -> AIOKafkaProducer:
        if self._producer is None:
            producer = AIOKafkaProducer(**self._producer_args)
            try:
                await producer.start()
            except BaseException:
                await producer.stop()
                raise
            self._producer = producer
        return self._producer

    async def close(self) -> None:
        """Stop the producer and the metadata connection."""
        producer, self._producer = self._producer, None
        self._topics.abort()
        if producer is not None:
            with contextlib.suppress(Exception):
                await producer.stop()
        with contextlib.suppress(Exception):
            await self._topics.close()

    def __repr__(self) -> str:
        return f"KafkaCheckpointTopic(topic={self.topic!r}, key={self.key!r})"
