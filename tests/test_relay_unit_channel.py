"""Channel: the bounded thread → asyncio hand-off of the binlog source (no servers)."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from transactional_outbox.event import OutboxEvent
from transactional_outbox.relay.channel import Channel, ChannelClosed, SourceBatch
from transactional_outbox.relay.mysql.rowdecoder import RejectedRow
from transactional_outbox.relay.position import BinlogPosition
from transactional_outbox.relay.routing import KafkaRecord, TopicRouter, build_record, record_id

WAIT = 10.0  # upper bound for anything that must happen; never reached when correct


def ev(n: int) -> KafkaRecord:
    event = OutboxEvent(
        id=uuid.UUID(int=n),
        aggregate_type="order",
        aggregate_id=str(n),
        event_type="E",
        payload=b"{}",
        timestamp=datetime(2024, 1, 1, tzinfo=UTC),
    )
    return build_record(event, TopicRouter())


def num(record: KafkaRecord | RejectedRow) -> int:
    """The number ``ev(n)`` was made from."""
    assert isinstance(record, KafkaRecord)
    return uuid.UUID(record_id(record)).int


def batch(*ns: int, commit: int | None = None) -> SourceBatch:
    end = None if commit is None else BinlogPosition(file="mysql-bin.000001", pos=commit)
    return SourceBatch(records=[ev(n) for n in ns], commit=end)


def in_thread(fn: Callable[[], Any]) -> threading.Thread:
    t = threading.Thread(target=fn, daemon=True)
    t.start()
    return t


async def join(t: threading.Thread) -> None:
    await asyncio.to_thread(t.join, WAIT)
    assert not t.is_alive()


async def waiting_get(ch: Channel) -> asyncio.Task[list[SourceBatch]]:
    """A get() task that has run up to its wait (one loop step)."""
    task = asyncio.create_task(ch.get())
    await asyncio.sleep(0)  # a yield, not a timed wait: lets the task reach its await
    assert not task.done()
    return task


async def test_get_returns_everything_waiting_in_order() -> None:
    ch = Channel(asyncio.get_running_loop(), max_events=100)
    batches = [batch(1, 2), batch(3, commit=500), batch(commit=600), batch(4)]
    results: list[bool] = []
    await join(in_thread(lambda: results.extend(ch.put(b) for b in batches)))
    assert results == [True] * 4
    assert ch.depth == 2 + 1 + 1 + 1  # an empty (commit-only) batch counts as one
    got = await asyncio.wait_for(ch.get(), WAIT)
    assert got == batches
    assert [b is a for a, b in zip(got, batches, strict=True)] == [True] * 4
    assert ch.depth == 0


async def test_waiting_get_is_woken_by_a_put_from_a_thread() -> None:
    ch = Channel(asyncio.get_running_loop(), max_events=100)
    task = await waiting_get(ch)
    b = batch(1, commit=100)
    await join(in_thread(lambda: ch.put(b)))
    assert await asyncio.wait_for(task, WAIT) == [b]


async def test_successive_gets_see_successive_puts() -> None:
    ch = Channel(asyncio.get_running_loop(), max_events=100)
    seen: list[int] = []
    for round_ in range(5):
        task = await waiting_get(ch)
        items = [batch(round_ * 10 + i) for i in range(3)]
        t = in_thread(lambda: [ch.put(x) for x in items])  # noqa: B023 (joined in-loop)
        # the get may wake after the first put: drain until the round is complete
        got = await asyncio.wait_for(task, WAIT)
        while sum(len(b.records) for b in got) < 3:
            got += await asyncio.wait_for(ch.get(), WAIT)
        await join(t)
        assert got == items
        seen.extend(num(e) for b in got for e in b.records)
    assert seen == [r * 10 + i for r in range(5) for i in range(3)]


async def test_producer_blocks_when_full_and_resumes_after_get() -> None:
    ch = Channel(asyncio.get_running_loop(), max_events=3)
    three_in = threading.Event()
    fourth_in = threading.Event()
    results: list[bool] = []

    def produce() -> None:
        for n in range(3):
            results.append(ch.put(batch(n)))
        three_in.set()
        results.append(ch.put(batch(3)))
        fourth_in.set()

    t = in_thread(produce)
    assert await asyncio.to_thread(three_in.wait, WAIT)
    # the fourth put must not get through while three events wait
    assert not await asyncio.to_thread(fourth_in.wait, 0.3)
    assert ch.depth == 3
    first = await asyncio.wait_for(ch.get(), WAIT)
    assert [num(b.records[0]) for b in first] == [0, 1, 2]
    assert await asyncio.to_thread(fourth_in.wait, WAIT)
    await join(t)
    assert results == [True] * 4
    second = await asyncio.wait_for(ch.get(), WAIT)
    assert [num(b.records[0]) for b in second] == [3]


async def test_commit_only_batches_count_towards_the_limit() -> None:
    ch = Channel(asyncio.get_running_loop(), max_events=2)
    done = threading.Event()

    def produce() -> None:
        for pos in (100, 200, 300):
            ch.put(batch(commit=pos))
        done.set()

    t = in_thread(produce)
    assert not await asyncio.to_thread(done.wait, 0.3)
    assert ch.depth == 2
    got = await asyncio.wait_for(ch.get(), WAIT)
    assert [b.commit.pos for b in got if b.commit] == [100, 200]
    await join(t)
    got = await asyncio.wait_for(ch.get(), WAIT)
    assert [b.commit.pos for b in got if b.commit] == [300]


async def test_a_batch_larger_than_the_limit_goes_through_an_empty_channel() -> None:
    ch = Channel(asyncio.get_running_loop(), max_events=2)
    big = batch(1, 2, 3, 4, 5, commit=100)
    assert ch.put(big)  # would block forever if it had to fit
    assert ch.depth == 5
    assert await asyncio.wait_for(ch.get(), WAIT) == [big]


async def test_close_wakes_a_waiting_get() -> None:
    ch = Channel(asyncio.get_running_loop(), max_events=10)
    task = await waiting_get(ch)
    await join(in_thread(ch.close))
    with pytest.raises(ChannelClosed):
        await asyncio.wait_for(task, WAIT)
    with pytest.raises(ChannelClosed):
        await asyncio.wait_for(ch.get(), WAIT)


async def test_puts_after_close_are_refused() -> None:
    ch = Channel(asyncio.get_running_loop(), max_events=10)
    ch.close()
    results: list[bool] = []
    await join(in_thread(lambda: results.append(ch.put(batch(1)))))
    assert results == [False]
    assert ch.depth == 0
    with pytest.raises(ChannelClosed):
        await asyncio.wait_for(ch.get(), WAIT)


async def test_close_releases_a_blocked_producer() -> None:
    ch = Channel(asyncio.get_running_loop(), max_events=1)
    assert ch.put(batch(1))
    blocked_put_returned = threading.Event()
    results: list[bool] = []

    def produce() -> None:
        results.append(ch.put(batch(2)))
        blocked_put_returned.set()

    t = in_thread(produce)
    assert not await asyncio.to_thread(blocked_put_returned.wait, 0.3)
    ch.close()
    assert await asyncio.to_thread(blocked_put_returned.wait, WAIT)
    await join(t)
    assert results == [False]


async def test_items_put_before_close_are_still_delivered() -> None:
    ch = Channel(asyncio.get_running_loop(), max_events=10)
    b = batch(1, commit=100)
    assert ch.put(b)
    ch.close()
    assert await asyncio.wait_for(ch.get(), WAIT) == [b]
    with pytest.raises(ChannelClosed):
        await asyncio.wait_for(ch.get(), WAIT)


async def test_fail_wakes_a_waiting_get_with_the_error() -> None:
    ch = Channel(asyncio.get_running_loop(), max_events=10)
    task = await waiting_get(ch)
    error = RuntimeError("binlog exploded")
    await join(in_thread(lambda: ch.fail(error)))
    with pytest.raises(RuntimeError) as info:
        await asyncio.wait_for(task, WAIT)
    assert info.value is error
    with pytest.raises(RuntimeError):  # and keeps raising it
        await asyncio.wait_for(ch.get(), WAIT)


async def test_fail_after_puts_delivers_the_batches_first() -> None:
    ch = Channel(asyncio.get_running_loop(), max_events=10)
    b = batch(1)
    error = ValueError("bad row")

    def produce() -> None:
        ch.put(b)
        ch.fail(error)

    await join(in_thread(produce))
    assert await asyncio.wait_for(ch.get(), WAIT) == [b]
    with pytest.raises(ValueError, match="bad row"):
        await asyncio.wait_for(ch.get(), WAIT)


async def test_many_batches_through_a_small_channel_keep_order() -> None:
    ch = Channel(asyncio.get_running_loop(), max_events=7)
    total = 500

    def produce() -> None:
        for n in range(total):
            assert ch.put(batch(n, commit=1000 + n))
        ch.close()

    t = in_thread(produce)
    seen: list[int] = []
    while True:
        try:
            got = await asyncio.wait_for(ch.get(), WAIT)
        except ChannelClosed:
            break
        assert sum(len(b.records) for b in got) <= 7
        seen.extend(num(b.records[0]) for b in got)
    await join(t)
    assert seen == list(range(total))
