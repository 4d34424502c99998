"""A fetched batch through the runner's batch path, without a broker (in-memory store)."""

from __future__ import annotations

import asyncio
import inspect
import random
import uuid
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

from aiokafka.structs import ConsumerRecord, TopicPartition

from transactional_outbox.consumer import (
    AsyncInMemoryStore,
    ClaimStatus,
    InMemoryStore,
    KafkaConnection,
    OffsetWatermark,
    ReceivedEvent,
    RunnerSettings,
    idempotent_consumer,
)
from transactional_outbox.consumer.attempts import Attempts
from transactional_outbox.consumer.batch import BatchHandler
from transactional_outbox.event import OutboxEvent

from ._consumer_helpers import make_record, order_event
from .polling import wait_until

TP = TopicPartition("outbox.event.order", 0)


def settings(**overrides: Any) -> RunnerSettings:
    values: dict[str, Any] = {
        "kafka": KafkaConnection(bootstrap_servers="unused:9092"),
        "group_id": "g",
        "topics": ["outbox.event.order"],
        "max_attempts": 3,
        "backoff_initial_ms": 1,
        "backoff_max_ms": 2,
    }
    values.update(overrides)
    return RunnerSettings(**values)


class Batch:
    """A BatchHandler for ``handler`` with what the runner would give it."""

    def __init__(self, handler: Any, **overrides: Any) -> None:
        self.settings = settings(**overrides)
        self.stopping = asyncio.Event()

        async def call(event: ReceivedEvent) -> None:
            # As the runner calls it: a sync handler in a worker thread.
            if inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
                handler.__call__
            ):
                await handler(event)
            else:
                await asyncio.to_thread(handler, event)

        self.attempts = Attempts(self.settings, call, self.stopping, producer=None)
        self.handler = BatchHandler(
            handler,
            self.attempts,
            max_concurrency=self.settings.max_concurrency,
            stopping=self.stopping,
            revoking=set(),
        )

    async def run(self, events: Sequence[OutboxEvent]) -> OffsetWatermark:
        records = records_of(events)
        mark = OffsetWatermark()
        mark.add(r.offset for r in records)
        await self.handler.handle({TP: records}, {TP: mark})
        return mark


def records_of(events: Sequence[OutboxEvent]) -> list[ConsumerRecord[bytes, bytes]]:
    return [make_record(e, offset=i) for i, e in enumerate(events)]


def keyed(n: int, keys: int) -> list[OutboxEvent]:
    return [order_event(i, aggregate_id=f"k{i % keys}") for i in range(n)]


async def test_records_of_one_key_run_in_order_and_keys_run_concurrently() -> None:
    store = AsyncInMemoryStore()
    started: dict[str, list[int]] = defaultdict(list)
    busy_keys: set[str] = set()
    overlaps: list[int] = []
    running = peak = 0
    rng = random.Random(3)

    @idempotent_consumer(store=store)
    async def handle(event: ReceivedEvent) -> None:
        nonlocal running, peak
        if event.aggregate_id in busy_keys:
            overlaps.append(event.offset)  # two records of one key at once
        busy_keys.add(event.aggregate_id)
        running += 1
        peak = max(peak, running)
        started[event.aggregate_id].append(event.offset)
        await asyncio.sleep(rng.uniform(0, 0.003))
        running -= 1
        busy_keys.discard(event.aggregate_id)

    events = keyed(60, 6)
    mark = await Batch(handle, max_concurrency=4).run(events)
    assert mark.commit_offset() == 60
    assert overlaps == []
    for key, offsets in started.items():
        assert offsets == sorted(offsets), key
    assert sum(len(v) for v in started.values()) == 60
    assert 1 < peak <= 4  # concurrent across keys, bounded by max_concurrency


async def test_duplicates_in_the_batch_and_done_ids_skip_the_handler() -> None:
    store = AsyncInMemoryStore()
    runs: Counter[uuid.UUID] = Counter()

    @idempotent_consumer(store=store)
    async def handle(event: ReceivedEvent) -> None:
        runs[event.id] += 1

    done_before, fresh = order_event(1), order_event(2)
    claim = await store.claim(done_before.id, None)
    assert claim is not None
    await store.complete(claim)
    mark = await Batch(handle).run([done_before, fresh, fresh, done_before, fresh])
    assert runs == Counter({fresh.id: 1})
    assert mark.commit_offset() == 5
    assert store.is_done(fresh.id)


async def test_a_failing_handler_releases_its_claim_and_is_retried() -> None:
    store = AsyncInMemoryStore()
    calls: Counter[uuid.UUID] = Counter()
    flaky = order_event(1)

    @idempotent_consumer(store=store)
    async def handle(event: ReceivedEvent) -> None:
        calls[event.id] += 1
        if event.id == flaky.id and calls[event.id] == 1:
            assert not store.is_done(event.id)
            raise RuntimeError("fails once")

    others = keyed(5, 5)
    mark = await Batch(handle).run([flaky, *others])
    assert calls[flaky.id] == 2 and all(calls[e.id] == 1 for e in others)
    assert store.is_done(flaky.id) and mark.commit_offset() == 6


async def test_stop_in_a_backoff_commits_below_it_and_releases_unstarted_claims() -> None:
    store = AsyncInMemoryStore()
    stuck = order_event(1, aggregate_id="a")
    behind = order_event(2, aggregate_id="a")  # same key: waits for the stuck one
    others = [order_event(i, aggregate_id=f"b{i}") for i in range(3, 8)]
    batch: Batch

    @idempotent_consumer(store=store)
    async def handle(event: ReceivedEvent) -> None:
        if event.id == stuck.id:
            raise RuntimeError("down")

    batch = Batch(handle, backoff_initial_ms=30_000, backoff_max_ms=30_000)
    events = [others[0], stuck, behind, *others[1:]]
    run = asyncio.ensure_future(batch.run(events))
    await wait_until(lambda: all(store.is_done(e.id) for e in others), what="other keys done")
    batch.stopping.set()  # the stuck record is in a 30 s backoff wait
    mark = await asyncio.wait_for(run, 5)
    assert mark.commit_offset() == 1  # offset 0 done; 1 (stuck) and 2 (behind it) not
    assert mark.pending == 2
    # The claim taken for `behind` in the batch was never used: it was released.
    results = await store.claim_many([behind.id, stuck.id], None)
    assert [r.status for r in results] == [ClaimStatus.CLAIMED, ClaimStatus.CLAIMED]


async def test_a_claim_held_elsewhere_is_waited_for() -> None:
    store = AsyncInMemoryStore(poll_interval_ms=1)
    held = order_event(1)
    other_worker = await store.claim(held.id, None)
    assert other_worker is not None
    runs: list[str] = []

    @idempotent_consumer(store=store)
    async def handle(event: ReceivedEvent) -> None:
        runs.append(event.aggregate_id)

    run = asyncio.ensure_future(Batch(handle).run([held, order_event(2)]))
    await wait_until(lambda: runs == ["o-2"], what="the free record handled")
    assert not run.done()
    await store.release(other_worker)  # the other worker failed: this one runs it
    mark = await asyncio.wait_for(run, 5)
    assert sorted(runs) == ["o-1", "o-2"] and mark.commit_offset() == 2


async def test_undecorated_handler_gets_every_record_in_key_order() -> None:
    seen: list[int] = []

    async def handle(event: ReceivedEvent) -> None:
        await asyncio.sleep(0)
        seen.append(event.offset)

    mark = await Batch(handle).run(keyed(10, 1))
    assert seen == list(range(10)) and mark.commit_offset() == 10


async def test_sync_store_and_handler_batch_in_worker_threads() -> None:
    store = InMemoryStore()
    runs: Counter[uuid.UUID] = Counter()
    calls = 0

    @idempotent_consumer(store=store)
    def handle(event: ReceivedEvent) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("fails once")
        runs[event.id] += 1

    events = keyed(6, 3)
    mark = await Batch(handle).run([*events, events[0]])
    assert mark.commit_offset() == 7
    assert set(runs.values()) == {1} and len(runs) == 6
    assert all(store.is_done(e.id) for e in events)


async def test_undecorated_handler_gets_duplicates_too() -> None:
    seen: list[int] = []

    async def handle(event: ReceivedEvent) -> None:
        seen.append(event.offset)

    event = order_event(1)
    mark = await Batch(handle).run([event, event])
    assert seen == [0, 1] and mark.commit_offset() == 2


class AskedStore(AsyncInMemoryStore):
    """Records how often the store was asked about each id."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: Counter[uuid.UUID] = Counter()

    async def claim(self, event_id: uuid.UUID, consumer_name: str | None) -> Any:
        self.asked[event_id] += 1
        return await super().claim(event_id, consumer_name)

    async def claim_many(self, event_ids: Sequence[uuid.UUID], consumer_name: str | None) -> Any:
        self.asked.update(event_ids)
        return await super().claim_many(event_ids, consumer_name)


async def test_a_copy_in_a_later_batch_is_skipped_while_the_first_runs() -> None:
    store = AskedStore()
    release = asyncio.Event()
    runs: Counter[uuid.UUID] = Counter()

    @idempotent_consumer(store=store)
    async def handle(event: ReceivedEvent) -> None:
        runs[event.id] += 1
        await release.wait()

    batch = Batch(handle)
    event = order_event(1)
    mark = OffsetWatermark()
    mark.add([0, 1])
    first = asyncio.ensure_future(batch.handler.handle({TP: records_of([event])}, {TP: mark}))
    await wait_until(lambda: runs[event.id] == 1, what="first copy running")
    # Re-sent while the first copy runs: this runner holds its claim, so the
    # store is not asked (it would answer "busy", and the copy would poll).
    later = make_record(event, offset=1)
    second = asyncio.ensure_future(batch.handler.handle({TP: [later]}, {TP: mark}))
    release.set()
    await asyncio.wait_for(asyncio.gather(first, second), 5)
    assert runs[event.id] == 1 and mark.commit_offset() == 2
    assert store.asked[event.id] == 1
