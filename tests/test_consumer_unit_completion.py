"""Group commit of done markers: one call in flight, retries, and failure surfacing."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from transactional_outbox.consumer import Claim
from transactional_outbox.consumer.completion import Completer


def claim(n: int) -> Claim:
    return Claim(uuid.UUID(int=n), None, "claim:t")


async def test_claims_added_during_a_call_go_in_the_next_one() -> None:
    calls: list[list[int]] = []
    gate = asyncio.Event()
    done: list[int] = []

    async def complete_many(claims: list[Claim]) -> None:
        calls.append([c.event_id.int for c in claims])
        await gate.wait()

    completer: Completer[int] = Completer(
        complete_many, done.append, attempts=3, backoff=lambda n: 0
    )
    completer.add(claim(1), 1)
    await asyncio.sleep(0)  # the first call is in flight
    completer.add(claim(2), 2)
    completer.add(claim(3), 3)
    assert done == []  # nothing is done before its call returned
    gate.set()
    await completer.drain()
    assert calls == [[1], [2, 3]]
    assert done == [1, 2, 3]


async def test_a_failing_call_is_retried_then_reported_without_marking_done() -> None:
    attempts = 0
    done: list[int] = []

    async def complete_many(claims: list[Claim]) -> None:
        nonlocal attempts
        attempts += 1
        raise RuntimeError("the store refused the call")

    completer: Completer[int] = Completer(
        complete_many, done.append, attempts=3, backoff=lambda n: 0
    )
    completer.add(claim(1), 1)
    with pytest.raises(RuntimeError):
        await completer.drain()
    assert attempts == 3 and done == []


async def test_an_unreachable_store_is_waited_for_beyond_the_attempts() -> None:
    # A failover outlasts any retry budget: stopping the runner would gain nothing.
    down = 10
    done: list[int] = []

    async def complete_many(claims: list[Claim]) -> None:
        nonlocal down
        if down:
            down -= 1
            raise ConnectionError("redis down")

    completer: Completer[int] = Completer(
        complete_many, done.append, attempts=3, backoff=lambda n: 0
    )
    completer.add(claim(1), 1)
    await completer.drain()
    assert down == 0 and done == [1]


async def test_stopping_ends_the_wait_for_an_unreachable_store() -> None:
    stopping = asyncio.Event()
    calls = 0

    async def complete_many(claims: list[Claim]) -> None:
        nonlocal calls
        calls += 1
        if calls == 5:
            stopping.set()
        raise ConnectionError("redis down")

    completer: Completer[int] = Completer(
        complete_many, lambda item: None, attempts=3, backoff=lambda n: 0, stopping=stopping
    )
    completer.add(claim(1), 1)
    with pytest.raises(ConnectionError):
        await completer.drain()
    assert calls == 5


async def test_a_call_that_recovers_marks_done() -> None:
    failures = [ConnectionError("once")]
    done: list[int] = []

    async def complete_many(claims: list[Claim]) -> None:
        if failures:
            raise failures.pop()

    completer: Completer[int] = Completer(
        complete_many, done.append, attempts=3, backoff=lambda n: 0
    )
    completer.add(claim(1), 1)
    await completer.drain()
    assert done == [1]
