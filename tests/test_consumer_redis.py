"""@idempotent_consumer with the Redis stores, against the stack's real Redis."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Awaitable, Callable

import pytest
import redis
import redis.asyncio

from transactional_outbox.consumer import (
    AsyncRedisStore,
    EventInProgressError,
    InvalidRecordError,
    ReceivedEvent,
    RedisStore,
    idempotent_consumer,
)
from transactional_outbox.event import kafka_headers
from transactional_outbox.exceptions import ConfigurationError

from ._consumer_helpers import make_record, order_event
from .polling import wait_until, wait_until_sync


async def test_same_record_twice_runs_once(aredis: redis.asyncio.Redis, redis_prefix: str) -> None:
    calls: list[ReceivedEvent] = []

    @idempotent_consumer(store=AsyncRedisStore(aredis, prefix=redis_prefix))
    async def handle(event: ReceivedEvent) -> None:
        calls.append(event)

    event = order_event()
    assert await handle(make_record(event, offset=1)) is True
    # A redelivery, e.g. the relay republishing after a restart: other offset, same id.
    assert await handle(make_record(event, offset=2)) is False
    assert await handle(ReceivedEvent.from_event(event)) is False
    assert [c.id for c in calls] == [event.id]
    assert await aredis.get(f"{redis_prefix}{event.id}") == b"done"
    assert 0 < await aredis.pttl(f"{redis_prefix}{event.id}") <= 7 * 24 * 3600 * 1000


async def test_concurrent_duplicates_run_once(
    aredis: redis.asyncio.Redis, redis_prefix: str
) -> None:
    calls: Counter[str] = Counter()
    release = asyncio.Event()

    @idempotent_consumer(store=AsyncRedisStore(aredis, prefix=redis_prefix, poll_interval_ms=10))
    async def handle(event: ReceivedEvent) -> None:
        calls[str(event.id)] += 1
        await release.wait()  # keep the claim held while the duplicates arrive

    event = order_event()
    tasks = [asyncio.ensure_future(handle(make_record(event, offset=i))) for i in range(20)]
    await wait_until(lambda: sum(calls.values()) == 1, what="first handler to start")
    release.set()
    results = await asyncio.gather(*tasks)
    assert sorted(results) == [False] * 19 + [True]
    assert calls == {str(event.id): 1}


async def test_failure_releases_the_claim_so_a_retry_processes(
    aredis: redis.asyncio.Redis, redis_prefix: str
) -> None:
    attempts = 0
    done: list[str] = []

    @idempotent_consumer(store=AsyncRedisStore(aredis, prefix=redis_prefix))
    async def handle(event: ReceivedEvent) -> None:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise RuntimeError("database down")
        done.append(str(event.id))

    event = order_event()
    record = make_record(event)
    with pytest.raises(RuntimeError, match="database down"):
        await handle(record)
    assert await aredis.exists(f"{redis_prefix}{event.id}") == 0
    assert await handle(record) is True
    assert await handle(record) is False
    assert attempts == 2 and len(done) == 1


async def test_a_waiting_duplicate_runs_after_the_first_fails(
    aredis: redis.asyncio.Redis, redis_prefix: str
) -> None:
    started = asyncio.Event()
    fail = asyncio.Event()
    runs = 0

    @idempotent_consumer(store=AsyncRedisStore(aredis, prefix=redis_prefix, poll_interval_ms=10))
    async def handle(event: ReceivedEvent) -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            started.set()
            await fail.wait()
            raise RuntimeError("first attempt fails")

    event = order_event()
    record = make_record(event)
    first = asyncio.ensure_future(handle(record))
    await started.wait()
    second = asyncio.ensure_future(handle(record))
    fail.set()
    with pytest.raises(RuntimeError):
        await first
    assert await second is True
    assert runs == 2


async def test_consumer_names_scope_deduplication(
    aredis: redis.asyncio.Redis, redis_prefix: str
) -> None:
    store = AsyncRedisStore(aredis, prefix=redis_prefix)
    seen: list[str] = []

    @idempotent_consumer(store=store, consumer_name="billing")
    async def billing(event: ReceivedEvent) -> None:
        seen.append("billing")

    @idempotent_consumer(store=store, consumer_name="shipping")
    async def shipping(event: ReceivedEvent) -> None:
        seen.append("shipping")

    event = order_event()
    record = make_record(event)
    assert [await billing(record), await shipping(record)] == [True, True]
    assert [await billing(record), await shipping(record)] == [False, False]
    assert seen == ["billing", "shipping"]
    assert await aredis.exists(f"{redis_prefix}billing:{event.id}") == 1


async def test_expired_claim_retaken_by_another_worker_is_not_deleted_by_the_first(
    aredis: redis.asyncio.Redis, redis_prefix: str
) -> None:
    event = order_event()
    key = f"{redis_prefix}{event.id}"
    a_running, a_fail, b_running, b_finish = (asyncio.Event() for _ in range(4))

    @idempotent_consumer(store=AsyncRedisStore(aredis, prefix=redis_prefix))
    async def worker_a(event: ReceivedEvent) -> None:
        a_running.set()
        await a_fail.wait()
        raise RuntimeError("A fails after its claim expired")

    @idempotent_consumer(store=AsyncRedisStore(aredis, prefix=redis_prefix))
    async def worker_b(event: ReceivedEvent) -> None:
        b_running.set()
        await b_finish.wait()

    a = asyncio.ensure_future(worker_a(make_record(event)))
    await a_running.wait()
    a_claim = await aredis.get(key)
    await aredis.pexpire(key, 1)  # A's claim expires while A is still running
    await wait_until(_gone(aredis, key), what="claim to expire")
    b = asyncio.ensure_future(worker_b(make_record(event)))
    await b_running.wait()
    b_claim = await aredis.get(key)
    assert b_claim is not None and b_claim.startswith(b"claim:") and b_claim != a_claim

    a_fail.set()
    with pytest.raises(RuntimeError):
        await a
    assert await aredis.get(key) == b_claim  # A's release left B's claim alone

    b_finish.set()
    assert await b is True
    assert await aredis.get(key) == b"done"


def _gone(client: redis.asyncio.Redis, key: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await client.exists(key) == 0

    return check


async def test_wait_timeout_reports_in_progress(
    aredis: redis.asyncio.Redis, redis_prefix: str
) -> None:
    release = asyncio.Event()
    store = AsyncRedisStore(aredis, prefix=redis_prefix, wait_timeout_ms=50, poll_interval_ms=10)

    @idempotent_consumer(store=store)
    async def handle(event: ReceivedEvent) -> None:
        await release.wait()

    event = order_event()
    record = make_record(event)
    first = asyncio.ensure_future(handle(record))
    await wait_until(lambda: aredis.exists(f"{redis_prefix}{event.id}"))
    with pytest.raises(EventInProgressError):
        await handle(record)
    release.set()
    assert await first is True


async def test_record_without_id_is_rejected_before_the_handler(
    aredis: redis.asyncio.Redis, redis_prefix: str
) -> None:
    calls = 0

    @idempotent_consumer(store=AsyncRedisStore(aredis, prefix=redis_prefix))
    async def handle(event: ReceivedEvent) -> None:
        nonlocal calls
        calls += 1

    event = order_event()
    headers = [(k, v) for k, v in kafka_headers(event) if k != "id"]
    with pytest.raises(InvalidRecordError):
        await handle(make_record(event, headers=headers))
    assert calls == 0


def test_sync_store_dedups_across_threads(redis_url: str, redis_prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    calls: Counter[str] = Counter()
    lock = threading.Lock()
    gate = threading.Event()

    @idempotent_consumer(store=RedisStore(client, prefix=redis_prefix, poll_interval_ms=10))
    def handle(event: ReceivedEvent) -> None:
        with lock:
            calls[str(event.id)] += 1
        gate.wait(5)

    event = order_event()
    results: list[bool] = []

    def worker(offset: int) -> None:
        results.append(handle(make_record(event, offset=offset)))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    try:
        wait_until_sync(lambda: sum(calls.values()) == 1, within=5, what="one handler running")
    finally:
        gate.set()
        for t in threads:
            t.join(10)
        client.close()
    assert sorted(results) == [False] * 9 + [True]
    assert calls == {str(event.id): 1}


def test_store_and_handler_kinds_must_match(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    with pytest.raises(ConfigurationError, match="async def"):

        @idempotent_consumer(store=AsyncRedisStore(redis.asyncio.Redis.from_url(redis_url)))
        def sync_handler(event: ReceivedEvent) -> None: ...

    with pytest.raises(ConfigurationError, match="sync"):

        @idempotent_consumer(store=RedisStore(client))
        async def async_handler(event: ReceivedEvent) -> None: ...

    client.close()
