"""Duplicate storms end to end: runners racing on the same ids, failures, re-sent ranges.

Two runners in two consumer groups both receive every record and share one
dedup scope (store + consumer name), so every id is delivered to two workers
at about the same time; a range is re-sent; some handlers fail once. Every
event must take effect exactly once, with the Redis and the SQL stores.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio
import sqlalchemy as sa
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import TopicPartition
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from transactional_outbox.consumer import (
    AsyncRedisStore,
    AsyncSqlStore,
    ClaimStatus,
    ConsumerRunner,
    KafkaConnection,
    ReceivedEvent,
    RunnerSettings,
    idempotent_consumer,
    inbox_table,
)
from transactional_outbox.event import OutboxEvent

from ._consumer_helpers import order_event, publish
from .polling import wait_until

PARTITIONS = 4


class Topic:
    """A 4-partition topic, the runners on it, and its groups' committed offsets."""

    def __init__(self, bootstrap: str, prefix: str) -> None:
        self.bootstrap = bootstrap
        self.name = prefix + "outbox.event.order"
        self.prefix = prefix
        self.runs: list[tuple[ConsumerRunner, asyncio.Task[None]]] = []

    async def create(self, partitions: int = PARTITIONS) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(self.name, partitions, 1)])
        finally:
            await admin.close()

    def start(self, handler: Callable[..., Any], group: str, **overrides: Any) -> ConsumerRunner:
        values: dict[str, Any] = {
            "kafka": KafkaConnection(bootstrap_servers=self.bootstrap),
            "group_id": self.prefix + group,
            "topics": [self.name],
            "max_attempts": 5,
            "backoff_initial_ms": 10,
            "backoff_max_ms": 50,
            "session_timeout_ms": 1000,
            "heartbeat_interval_ms": 300,
            "max_poll_records": 50,  # several batches per run
        }
        values.update(overrides)
        runner = ConsumerRunner(handler, RunnerSettings(**values))
        self.runs.append((runner, asyncio.ensure_future(runner.run(install_signal_handlers=False))))
        return runner

    async def committed(self, group: str, partitions: int = PARTITIONS) -> int:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, group_id=self.prefix + group, enable_auto_commit=False
        )
        await consumer.start()
        try:
            total = 0
            for p in range(partitions):
                total += await consumer.committed(TopicPartition(self.name, p)) or 0
            return total
        finally:
            await consumer.stop()

    async def stop(self) -> None:
        for runner, _ in self.runs:
            runner.stop()
        for _, task in self.runs:
            async with asyncio.timeout(15):
                await task  # raises if a runner failed


@pytest.fixture
async def topic(kafka_bootstrap: str, topic_prefix: str) -> AsyncIterator[Topic]:
    t = Topic(kafka_bootstrap, topic_prefix)
    await t.create()
    yield t
    for runner, task in t.runs:
        runner.stop()
        if not task.done():
            async with asyncio.timeout(15):
                await asyncio.wait({task})


def storm_events() -> tuple[list[OutboxEvent], list[OutboxEvent]]:
    """120 events over 12 keys, and what is published: them, then a re-sent range."""
    events = [order_event(i, aggregate_id=f"k{i % 12}") for i in range(120)]
    return events, events + events[40:80]


async def publish_by_key(bootstrap: str, topic: str, events: list[OutboxEvent]) -> None:
    # Partitioned by key, as the relay does: a key's copies land in one partition.
    await publish(bootstrap, topic, events, partition=None)


class Effects:
    """What handlers did: effects per event, attempts per event, order per key."""

    def __init__(self, events: list[OutboxEvent]) -> None:
        # Handlers hold their first records until both runners own partitions,
        # so the two groups really race on the same ids.
        self.gate = asyncio.Event()
        self.fail_once = {e.id for e in events[::10]}
        self.attempts: Counter[Any] = Counter()
        self.effects: Counter[Any] = Counter()
        self.order: dict[str, list[int]] = defaultdict(list)

    async def run(self, event: ReceivedEvent) -> None:
        await self.gate.wait()
        self.attempts[event.id] += 1
        await asyncio.sleep(random.uniform(0, 0.002))
        if event.id in self.fail_once and self.attempts[event.id] == 1:
            raise RuntimeError("fails on its first attempt")

    def check(self, events: list[OutboxEvent]) -> None:
        assert set(self.effects) == {e.id for e in events}
        assert set(self.effects.values()) == {1}, "an event took effect twice"
        for e in events:
            expected = 2 if e.id in self.fail_once else 1
            assert self.attempts[e.id] == expected, (e.aggregate_id, self.attempts[e.id])


async def open_gate_when_both_joined(topic: Topic, seen: Effects) -> None:
    (a, _), (b, _) = topic.runs
    await wait_until(lambda: bool(a.assignment and b.assignment), within=30, what="both joined")
    seen.gate.set()


class CountingRedisStore(AsyncRedisStore):
    """Counts ids found held by another worker's claim: proof that the runners raced."""

    busy = 0

    async def claim_many(self, event_ids: Any, consumer_name: str | None) -> Any:
        results = await super().claim_many(event_ids, consumer_name)
        self.busy += sum(r.status is ClaimStatus.BUSY for r in results)
        return results


async def settle(topic: Topic, published: int) -> None:
    for group in ("a", "b"):
        await wait_until(
            lambda g=group: _committed_is(topic, g, published),  # type: ignore[misc]
            within=60,
            what=f"group {group} committed every record",
        )


async def _committed_is(topic: Topic, group: str, expected: int) -> bool:
    return await topic.committed(group) == expected


async def test_duplicate_storm_with_redis_store(
    topic: Topic, aredis: redis.asyncio.Redis, redis_prefix: str
) -> None:
    events, published = storm_events()
    seen = Effects(events)
    store = CountingRedisStore(aredis, prefix=redis_prefix, poll_interval_ms=5)

    @idempotent_consumer(store=store, consumer_name="billing")
    async def on_order(event: ReceivedEvent) -> None:
        await seen.run(event)
        seen.effects[event.id] += 1  # the effect, after the failure point

    topic.start(on_order, "a")
    topic.start(on_order, "b", max_concurrency=3)
    await publish_by_key(topic.bootstrap, topic.name, published)
    await open_gate_when_both_joined(topic, seen)
    await settle(topic, len(published))
    await topic.stop()
    seen.check(events)
    assert store.busy > 0  # the second runner met claims held by the first


async def test_duplicate_storm_with_sql_store_in_batch_transactions(
    topic: Topic, async_engine: AsyncEngine
) -> None:
    metadata = sa.MetaData()
    inbox = inbox_table(metadata, name="storm_inbox")
    effects = sa.Table("storm_effects", metadata, sa.Column("event_id", sa.String(36)))
    async with async_engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    events, published = storm_events()
    seen = Effects(events)
    store = AsyncSqlStore(async_sessionmaker(async_engine), table=inbox, batch_transactions=True)

    @idempotent_consumer(store=store, consumer_name="billing")
    async def on_order(event: ReceivedEvent, session: AsyncSession) -> None:
        # The write comes first: a failure must roll it back with the savepoint.
        await session.execute(sa.insert(effects).values(event_id=str(event.id)))
        await seen.run(event)

    topic.start(on_order, "a")
    topic.start(on_order, "b")
    await publish_by_key(topic.bootstrap, topic.name, published)
    await open_gate_when_both_joined(topic, seen)
    await settle(topic, len(published))
    await topic.stop()
    async with async_engine.connect() as conn:
        rows = (await conn.execute(sa.select(effects.c.event_id))).scalars().all()
    seen.effects.update(uuid.UUID(r) for r in rows)
    assert set(seen.effects) == {e.id for e in events}
    assert set(seen.effects.values()) == {1}, "an event took effect twice"
    # Each failing event ran at least twice (once failing), and never took effect twice.
    assert all(seen.attempts[i] >= 2 for i in seen.fail_once)


async def test_keys_run_in_order_and_concurrently_end_to_end(topic: Topic) -> None:
    events = [order_event(i, aggregate_id=f"k{i % 3}") for i in range(60)]
    order: dict[str, list[int]] = defaultdict(list)
    running = peak = 0

    async def handler(event: ReceivedEvent) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(random.uniform(0, 0.003))
        order[event.aggregate_id].append(int(event.json()["n"]))
        running -= 1

    await publish(topic.bootstrap, topic.name, events, partition=0)  # one partition, 3 keys
    topic.start(handler, "a")
    await wait_until(lambda: sum(len(v) for v in order.values()) == 60, within=30, what="all 60")
    for key, seq in order.items():
        assert seq == sorted(seq), key
    assert peak > 1  # keys of one partition ran at the same time


async def test_committed_offset_never_passes_an_unfinished_record(topic: Topic) -> None:
    stuck = order_event(1, aggregate_id="a")
    others = [order_event(i, aggregate_id=f"b{i}") for i in range(2, 7)]
    done: list[int] = []

    async def handler(event: ReceivedEvent) -> None:
        if event.id == stuck.id:
            raise RuntimeError("stuck")
        done.append(event.offset)

    # offset 0: b0 (done), 1: stuck (fails, 30 s backoff), 2-6: other keys (done)
    first = order_event(0, aggregate_id="b0")
    await publish(topic.bootstrap, topic.name, [first, stuck, *others], partition=0)
    runner = topic.start(handler, "a", backoff_initial_ms=30_000, backoff_max_ms=30_000)
    await wait_until(lambda: sorted(done) == [0, 2, 3, 4, 5, 6], within=30, what="the others done")
    runner.stop()
    await topic.stop()
    assert await topic.committed("a", partitions=1) == 1  # stuck at 1 is redelivered
