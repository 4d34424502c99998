"""ConsumerRunner end to end, against the stack's real broker, Redis and MariaDB."""

from __future__ import annotations

import asyncio
import os
import re
import signal
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio
import sqlalchemy as sa
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord, TopicPartition
from sqlalchemy.orm import Session, sessionmaker

from transactional_outbox.consumer import (
    AsyncRedisStore,
    ConsumerError,
    ConsumerRunner,
    InvalidRecordError,
    KafkaConnection,
    ReceivedEvent,
    RunnerSettings,
    SqlStore,
    idempotent_consumer,
    inbox_table,
)
from transactional_outbox.event import OutboxEvent, kafka_headers

from ._consumer_helpers import order_event, publish, publish_raw
from .polling import wait_until


class Harness:
    """Starts runners on this test's topic and reads back what the broker holds."""

    def __init__(self, bootstrap: str, topic_prefix: str) -> None:
        self.bootstrap = bootstrap
        self.topic = topic_prefix + "outbox.event.order"
        self.dlq = self.topic + ".dlq"
        self.group = topic_prefix + "group"
        self.tp = TopicPartition(self.topic, 0)
        self._tasks: list[tuple[ConsumerRunner, asyncio.Task[None]]] = []
        self._offsets: AIOKafkaConsumer | None = None

    def settings(self, **overrides: Any) -> RunnerSettings:
        values: dict[str, Any] = {
            "kafka": KafkaConnection(bootstrap_servers=self.bootstrap),
            "group_id": self.group,
            "topics": [self.topic],
            "dead_letter_topic": self.dlq,
            "max_attempts": 3,
            "backoff_initial_ms": 10,
            "backoff_max_ms": 50,
            "session_timeout_ms": 1000,
            "heartbeat_interval_ms": 300,
        }
        values.update(overrides)
        return RunnerSettings(**values)

    def start(self, handler: Callable[..., Any], **overrides: Any) -> asyncio.Task[None]:
        runner = ConsumerRunner(handler, self.settings(**overrides))
        task = asyncio.ensure_future(runner.run(install_signal_handlers=False))
        self._tasks.append((runner, task))
        return task

    async def committed(self) -> int | None:
        if self._offsets is None:
            self._offsets = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap, group_id=self.group, enable_auto_commit=False
            )
            await self._offsets.start()
        offset: int | None = await self._offsets.committed(self.tp)
        return offset

    async def committed_total(self) -> int:
        """Sum of committed offsets over every partition of the topic."""
        await self.committed()
        assert self._offsets is not None
        await self._offsets.topics()  # refresh metadata
        total = 0
        for p in self._offsets.partitions_for_topic(self.topic) or ():
            total += await self._offsets.committed(TopicPartition(self.topic, p)) or 0
        return total

    def committed_is(self, expected: int, *, total: bool = False) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            got = await (self.committed_total() if total else self.committed())
            return got == expected

        return check

    async def read_dead_letters(self, count: int) -> list[ConsumerRecord[bytes, bytes]]:
        consumer = AIOKafkaConsumer(
            self.dlq, bootstrap_servers=self.bootstrap, auto_offset_reset="earliest"
        )
        await consumer.start()
        try:
            records: list[ConsumerRecord[bytes, bytes]] = []
            async with asyncio.timeout(10):
                while len(records) < count:
                    records.append(await consumer.getone())
            return records
        finally:
            await consumer.stop()

    async def close(self) -> None:
        for runner, task in self._tasks:
            runner.stop()
            if not task.done():
                async with asyncio.timeout(10):
                    await asyncio.wait({task})
        if self._offsets is not None:
            await self._offsets.stop()


@pytest.fixture
async def kafka(kafka_bootstrap: str, topic_prefix: str) -> AsyncIterator[Harness]:
    harness = Harness(kafka_bootstrap, topic_prefix)
    yield harness
    await harness.close()


async def test_end_to_end_and_republished_events_change_nothing(
    kafka: Harness, aredis: redis.asyncio.Redis, redis_prefix: str
) -> None:
    totals: Counter[str] = Counter()
    seen: dict[str, list[int]] = {}
    calls = 0

    @idempotent_consumer(store=AsyncRedisStore(aredis, prefix=redis_prefix), consumer_name="tot")
    async def on_order(event: ReceivedEvent) -> None:
        nonlocal calls
        calls += 1
        totals[event.aggregate_id] += event.json()["amount"]
        seen.setdefault(event.aggregate_id, []).append(event.json()["amount"])
        await asyncio.sleep(0)  # let partitions interleave

    events = [
        OutboxEvent.create(
            aggregate_type="order",
            aggregate_id=f"o-{i % 3}",
            event_type="OrderPlaced",
            payload={"amount": i},
        )
        for i in range(30)
    ]
    # Keyed by aggregate id with the default partitioner: several partitions.
    await publish(kafka.bootstrap, kafka.topic, events, partition=None)
    kafka.start(on_order)
    await wait_until(kafka.committed_is(30, total=True), what="30 records handled and committed")
    expected = Counter({"o-0": 135, "o-1": 145, "o-2": 155})
    assert totals == expected and calls == 30
    assert seen["o-1"] == list(range(1, 30, 3))  # per-aggregate order kept

    # A relay restart republishes events after its last checkpoint: same ids.
    await publish(kafka.bootstrap, kafka.topic, events[10:], partition=None)
    await wait_until(kafka.committed_is(50, total=True), what="republished records handled")
    assert totals == expected and calls == 30


async def test_republished_events_with_sql_inbox_and_sync_handler(
    kafka: Harness, engine: sa.Engine
) -> None:
    metadata = sa.MetaData()
    inbox = inbox_table(metadata)
    ledger = sa.Table(
        "ledger",
        metadata,
        sa.Column("event_id", sa.String(36), primary_key=True),
        sa.Column("amount", sa.Integer, nullable=False),
    )
    metadata.create_all(engine)

    @idempotent_consumer(store=SqlStore(sessionmaker(engine), table=inbox))
    def on_order(event: ReceivedEvent, session: Session) -> None:
        session.execute(sa.insert(ledger).values(event_id=str(event.id), **event.json()))

    events = [order_event(i, payload={"amount": i}) for i in range(10)]
    await publish(kafka.bootstrap, kafka.topic, events)
    await publish(kafka.bootstrap, kafka.topic, events[::2])
    kafka.start(on_order)
    await wait_until(kafka.committed_is(15), what="all records handled")
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.sum(ledger.c.amount))).scalar_one() == 45
        assert conn.execute(sa.select(sa.func.count()).select_from(inbox)).scalar_one() == 10


async def test_poison_record_is_dead_lettered_and_the_partition_keeps_flowing(
    kafka: Harness,
) -> None:
    poison, good = order_event(1), order_event(2)
    attempts: Counter[str] = Counter()

    async def handler(event: ReceivedEvent) -> None:
        attempts[str(event.id)] += 1
        if event.id == poison.id:
            raise ValueError(f"cannot handle {event.aggregate_id}")

    offsets = await publish(kafka.bootstrap, kafka.topic, [poison, good])
    kafka.start(handler)
    await wait_until(kafka.committed_is(2), what="both records done with")
    assert attempts == {str(poison.id): 3, str(good.id): 1}

    [dead] = await kafka.read_dead_letters(1)
    assert (dead.key, dead.value) == (b"o-1", poison.payload)
    headers = dict(dead.headers)
    assert list(dead.headers)[:5] == kafka_headers(poison)[:5]
    assert headers["dlq.error"] == b"cannot handle o-1"
    assert headers["dlq.error.type"] == b"builtins.ValueError"
    assert headers["dlq.attempts"] == b"3"
    assert headers["dlq.topic"] == kafka.topic.encode()
    assert headers["dlq.partition"] == b"0"
    assert headers["dlq.offset"] == str(offsets[0]).encode()
    assert headers["dlq.group"] == kafka.group.encode()


async def test_record_without_id_is_dead_lettered_not_handled(kafka: Harness) -> None:
    handled: list[ReceivedEvent] = []

    async def handler(event: ReceivedEvent) -> None:
        handled.append(event)

    event = order_event(5)
    headers = [(k, v) for k, v in kafka_headers(event) if k != "id"]
    await publish_raw(kafka.bootstrap, kafka.topic, b"{}", key=b"o-5", headers=headers)
    await publish(kafka.bootstrap, kafka.topic, [order_event(6)])
    kafka.start(handler)
    await wait_until(kafka.committed_is(2), what="both records done with")
    assert [e.aggregate_id for e in handled] == ["o-6"]
    [dead] = await kafka.read_dead_letters(1)
    assert dict(dead.headers)["dlq.attempts"] == b"0"
    assert dict(dead.headers)["dlq.error.type"].endswith(b"InvalidRecordError")
    assert b"no 'id' header" in dict(dead.headers)["dlq.error"]


async def test_record_without_id_and_no_dead_letter_topic_stops_the_runner(
    kafka: Harness,
) -> None:
    handled: list[str] = []

    async def handler(event: ReceivedEvent) -> None:
        handled.append(event.aggregate_id)

    await publish(kafka.bootstrap, kafka.topic, [order_event(1)])
    await publish_raw(kafka.bootstrap, kafka.topic, b"{}", key=b"x")
    await publish(kafka.bootstrap, kafka.topic, [order_event(3)])
    task = kafka.start(handler, dead_letter_topic=None)
    with pytest.raises(InvalidRecordError, match="no 'id' header"):
        async with asyncio.timeout(15):
            await task
    assert handled == ["o-1"]
    assert await kafka.committed() == 1  # up to the bad record, not past it


async def test_failing_handler_without_dead_letter_topic_stops_the_runner(
    kafka: Harness,
) -> None:
    async def handler(event: ReceivedEvent) -> None:
        raise RuntimeError("always")

    await publish(kafka.bootstrap, kafka.topic, [order_event(1)])
    task = kafka.start(handler, dead_letter_topic=None, max_attempts=2)
    with pytest.raises(ConsumerError, match="failed 2 times") as info:
        async with asyncio.timeout(15):
            await task
    assert isinstance(info.value.__cause__, RuntimeError)
    assert await kafka.committed() is None


async def test_offsets_are_committed_only_after_handling(kafka: Harness) -> None:
    entered, release = asyncio.Event(), asyncio.Event()
    handled: list[str] = []

    async def handler(event: ReceivedEvent) -> None:
        if event.aggregate_id == "o-2":
            entered.set()
            await release.wait()
        handled.append(event.aggregate_id)

    await publish(kafka.bootstrap, kafka.topic, [order_event(1)])
    kafka.start(handler)
    await wait_until(kafka.committed_is(1), what="first record committed")
    await publish(kafka.bootstrap, kafka.topic, [order_event(2)])
    await entered.wait()
    assert await kafka.committed() == 1  # record 2 is being handled: not committed
    release.set()
    await wait_until(kafka.committed_is(2), what="second record committed")
    assert handled == ["o-1", "o-2"]


async def test_stop_lets_the_running_handler_finish_and_commits_it(kafka: Harness) -> None:
    entered, release = asyncio.Event(), asyncio.Event()

    async def handler(event: ReceivedEvent) -> None:
        entered.set()
        await release.wait()

    # One key: its records run in order, so the second waits for the first.
    same_key = [order_event(n, aggregate_id="o-1") for n in (1, 2)]
    await publish(kafka.bootstrap, kafka.topic, same_key)
    task = kafka.start(handler)
    await entered.wait()
    runner = kafka._tasks[-1][0]
    runner.stop()
    assert not task.done()
    release.set()
    async with asyncio.timeout(10):
        await task
    assert await kafka.committed() == 1  # the running one; the next was not started


async def test_sigterm_stops_the_runner_gracefully(kafka: Harness) -> None:
    handled: list[str] = []

    async def handler(event: ReceivedEvent) -> None:
        handled.append(event.aggregate_id)

    await publish(kafka.bootstrap, kafka.topic, [order_event(1)])
    runner = ConsumerRunner(handler, kafka.settings())
    task = asyncio.ensure_future(runner.run())
    await wait_until(kafka.committed_is(1), what="record committed")
    os.kill(os.getpid(), signal.SIGTERM)
    async with asyncio.timeout(10):
        await task
    assert handled == ["o-1"]
    # Handlers are removed again: SIGTERM's default is back.
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


async def test_stop_interrupts_a_backoff_wait_without_committing(kafka: Harness) -> None:
    failed = asyncio.Event()

    async def handler(event: ReceivedEvent) -> None:
        failed.set()
        raise RuntimeError("not yet")

    await publish(kafka.bootstrap, kafka.topic, [order_event(1)])
    # A backoff far longer than the test's own timeout: only an interrupted wait ends.
    task = kafka.start(handler, backoff_initial_ms=3_600_000, backoff_max_ms=3_600_000)
    await failed.wait()
    kafka._tasks[-1][0].stop()
    async with asyncio.timeout(60):
        await task
    assert await kafka.committed() is None  # redelivered on the next start


async def test_a_second_runner_joining_the_group_rebalances_without_double_effects(
    kafka: Harness, aredis: redis.asyncio.Redis, redis_prefix: str
) -> None:
    """An idle hand-over: the first runner has handled everything when the second joins.
    Revocations with handlers running are in test_consumer_rebalance.py."""
    effects: Counter[str] = Counter()

    @idempotent_consumer(store=AsyncRedisStore(aredis, prefix=redis_prefix))
    async def on_order(event: ReceivedEvent) -> None:
        effects[str(event.id)] += 1
        await asyncio.sleep(0)

    first = [order_event(i) for i in range(20)]
    await publish(kafka.bootstrap, kafka.topic, first, partition=None)
    kafka.start(on_order)
    await wait_until(kafka.committed_is(20, total=True), what="first runner handled all")
    kafka.start(on_order)  # joins the group: partitions are revoked and reassigned
    (a, _), (b, _) = kafka._tasks
    await wait_until(
        lambda: bool(a.assignment and b.assignment) and len(a.assignment | b.assignment) == 4,
        what="partitions split between the two runners",
    )
    second = [order_event(i) for i in range(20, 60)]
    await publish(kafka.bootstrap, kafka.topic, second, partition=None)
    await wait_until(kafka.committed_is(60, total=True), what="all handled after rebalance")
    assert set(effects) == {str(e.id) for e in first + second}
    assert set(effects.values()) == {1}


async def test_event_in_progress_elsewhere_is_retried_without_using_up_attempts(
    kafka: Harness, aredis: redis.asyncio.Redis, redis_prefix: str
) -> None:
    event = order_event()
    key = f"{redis_prefix}{event.id}"
    await aredis.set(key, "claim:another-worker", px=60_000)
    store = AsyncRedisStore(aredis, prefix=redis_prefix, wait_timeout_ms=1, poll_interval_ms=1)
    ran: list[str] = []

    @idempotent_consumer(store=store)
    async def inner(event: ReceivedEvent) -> None:
        ran.append(event.aggregate_id)

    tries = 0

    async def handler(event: ReceivedEvent) -> bool:
        nonlocal tries
        tries += 1
        return await inner(event)

    await publish(kafka.bootstrap, kafka.topic, [event])
    kafka.start(handler, max_attempts=2)
    await wait_until(lambda: tries > 4, what="in-progress retries beyond max_attempts")
    assert ran == []
    await aredis.delete(key)  # the other worker's claim expires
    await wait_until(kafka.committed_is(1), what="record handled")
    assert ran == ["o-1"]


async def test_topic_pattern_subscription(kafka: Harness) -> None:
    handled: list[str] = []

    async def handler(event: ReceivedEvent) -> None:
        handled.append(event.aggregate_id)

    await publish(kafka.bootstrap, kafka.topic, [order_event(1)])
    prefix = kafka.topic.removesuffix("order")
    kafka.start(handler, topics=(), topic_pattern=re.escape(prefix) + r"[a-z]+")
    await wait_until(kafka.committed_is(1), what="record handled via the pattern")
    assert handled == ["o-1"]
