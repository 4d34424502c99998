"""The run's topic as the demo shows it: every record, read from the start without a group."""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from .console import say
from .resources import PARTITIONS


class KafkaView:
    """Reads the topic into ``records`` and prints each record once, duplicates marked."""

    def __init__(self, kafka: str, topic: str) -> None:
        self.kafka = kafka
        self.partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        self.records: list[ConsumerRecord[bytes, bytes]] = []
        self.printed = 0
        self.seen: dict[str, tuple[int, int]] = {}  # event id -> (partition, offset)
        self.reader: AIOKafkaConsumer | None = None

    async def watch(self) -> None:
        """Read the demo topic from the start, without a consumer group (until cancelled)."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.kafka,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=50,
        )
        await consumer.start()
        self.reader = consumer
        consumer.assign(self.partitions)
        await consumer.seek_to_beginning(*self.partitions)
        while True:
            batch = await consumer.getmany(timeout_ms=100)
            for tp in sorted(batch):
                self.records.extend(batch[tp])

    async def stop(self) -> None:
        """Close the reader (after the watch task is cancelled)."""
        if self.reader is not None:
            await self.reader.stop()

    async def end_offsets(self) -> dict[TopicPartition, int]:
        """Each partition's end offset."""
        assert self.reader is not None
        ends: dict[TopicPartition, int] = await self.reader.end_offsets(self.partitions)
        return ends

    def distinct_events(self) -> int:
        """How many event ids the records carry."""
        return len({dict(r.headers).get("id") for r in self.records})

    def print_new_records(self) -> None:
        """Print the records read since the last call."""
        while self.printed < len(self.records):
            r = self.records[self.printed]
            self.printed += 1
            headers = {k: v.decode(errors="replace") for k, v in r.headers}
            where = f"partition {r.partition}, offset {r.offset}"
            key = r.key.decode() if r.key else None
            first = self.seen.setdefault(headers.get("id", "?"), (r.partition, r.offset))
            if first != (r.partition, r.offset):
                say(
                    f"     <- Kafka {where}  key={key}  {headers.get('type')}: DUPLICATE"
                    f" (same id as offset {first[1]}) - the consumer's inbox skips it"
                )
                continue
            say(f"     <- Kafka {r.topic}  {where}  key={key}")
            say(f"        value:   {r.value.decode(errors='replace') if r.value else None}")
            say("        headers: " + ", ".join(f"{k}={v}" for k, v in headers.items()))
