"""The in-memory stores and the store protocols: the semantics the Redis store has."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Sequence

import pytest

from transactional_outbox import ConsumerError, EventInProgressError, OutboxError
from transactional_outbox.consumer import (
    AsyncDedupStore,
    AsyncInMemoryStore,
    Claim,
    ClaimResult,
    ClaimStatus,
    DedupStore,
    InMemoryStore,
    ReceivedEvent,
    idempotent_consumer,
)
from transactional_outbox.exceptions import ConfigurationError

from ._consumer_helpers import make_record, order_event


def test_stores_satisfy_their_protocols() -> None:
    assert isinstance(AsyncInMemoryStore(), AsyncDedupStore)
    assert isinstance(InMemoryStore(), DedupStore)


def test_event_in_progress_is_in_the_exception_tree() -> None:
    assert issubclass(EventInProgressError, ConsumerError)
    assert issubclass(EventInProgressError, OutboxError)


def test_importing_the_consumer_package_does_not_import_sqlalchemy() -> None:
    code = (
        "import sys, transactional_outbox.consumer as c;"
        "assert 'sqlalchemy' not in sys.modules, 'eager';"
        "c.AsyncSqlStore;"
        "assert 'sqlalchemy' in sys.modules, 'lazy'"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


async def test_claim_complete_then_duplicate_is_done() -> None:
    store = AsyncInMemoryStore()
    event_id = uuid.uuid4()
    claim = await store.claim(event_id, "billing")
    assert claim is not None and claim.token.startswith("claim:")
    await store.complete(claim)
    assert await store.claim(event_id, "billing") is None
    assert store.is_done(event_id, "billing")
    assert not store.is_done(event_id)  # another consumer name: another scope


async def test_claim_many_reports_claimed_done_and_busy() -> None:
    store = AsyncInMemoryStore()
    done, busy, new = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    first = await store.claim(done, None)
    assert first is not None
    await store.complete(first)
    assert await store.claim(busy, None) is not None  # held by "another worker"
    results = await store.claim_many([done, busy, new], None)
    assert [r.status for r in results] == [ClaimStatus.DONE, ClaimStatus.BUSY, ClaimStatus.CLAIMED]
    assert results[0].claim is None and results[1].claim is None
    claim = results[2].claim
    assert claim is not None and claim.event_id == new
    await store.complete_many([claim])
    assert store.is_done(new)


async def test_release_only_deletes_the_own_claim() -> None:
    store = AsyncInMemoryStore(processing_ttl_ms=50)
    event_id = uuid.uuid4()
    old = await store.claim(event_id, None)
    assert old is not None
    await asyncio.sleep(0.06)  # the claim expires (processing_ttl_ms), another worker retakes it
    new = await store.claim(event_id, None)
    assert new is not None and new.token != old.token
    await store.release(old)  # late release by the first worker: must not free the new claim
    assert (await store.claim_many([event_id], None))[0].status is ClaimStatus.BUSY
    await store.release_many([new])
    assert (await store.claim_many([event_id], None))[0].status is ClaimStatus.CLAIMED


async def test_failure_releases_so_a_retry_processes() -> None:
    store = AsyncInMemoryStore()
    calls = 0

    @idempotent_consumer(store=store)
    async def handle(event: ReceivedEvent) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("fails once")

    record = make_record(order_event())
    with pytest.raises(RuntimeError):
        await handle(record)
    assert await handle(record) is True
    assert await handle(record) is False
    assert calls == 2


async def test_concurrent_duplicate_waits_for_the_first_outcome() -> None:
    store = AsyncInMemoryStore(poll_interval_ms=1)
    entered, release = asyncio.Event(), asyncio.Event()
    runs: Counter[uuid.UUID] = Counter()

    @idempotent_consumer(store=store)
    async def handle(event: ReceivedEvent) -> None:
        runs[event.id] += 1
        entered.set()
        await release.wait()

    record = make_record(order_event())
    first = asyncio.ensure_future(handle(record))
    await entered.wait()
    second = asyncio.ensure_future(handle(record))
    await asyncio.sleep(0.01)
    assert not second.done()  # waiting on the first worker's claim
    release.set()
    assert sorted([await first, await second]) == [False, True]
    assert list(runs.values()) == [1]


async def test_wait_timeout_raises_event_in_progress() -> None:
    store = AsyncInMemoryStore(wait_timeout_ms=10, poll_interval_ms=1)
    event_id = uuid.uuid4()
    assert await store.claim(event_id, "c") is not None
    with pytest.raises(EventInProgressError, match=str(event_id)):
        await store.claim(event_id, "c")


def test_sync_store_dedups_across_threads() -> None:
    store = InMemoryStore(poll_interval_ms=1)
    runs: Counter[uuid.UUID] = Counter()
    lock = threading.Lock()

    @idempotent_consumer(store=store, consumer_name="c")
    def handle(event: ReceivedEvent) -> None:
        with lock:
            runs[event.id] += 1

    records = [make_record(order_event(n)) for n in range(20)]
    threads = [threading.Thread(target=lambda: [handle(r) for r in records]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(runs) == 20 and set(runs.values()) == {1}


def test_bad_settings_name_the_setting() -> None:
    with pytest.raises(ConfigurationError, match=r"processing_ttl_ms: must be > 0 \(ms\), got 0"):
        InMemoryStore(processing_ttl_ms=0)


def test_a_non_store_is_refused_naming_the_setting() -> None:
    with pytest.raises(ConfigurationError, match="store: dict is not a dedup store"):
        idempotent_consumer(store={})  # type: ignore[call-overload]


class TableStore:
    """The README's example of a store a user writes: here a dict stands in for a table."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, uuid.UUID], str] = {}

    async def claim(self, event_id: uuid.UUID, consumer_name: str | None) -> Claim | None:
        result = (await self.claim_many([event_id], consumer_name))[0]
        if result.status is ClaimStatus.BUSY:
            raise EventInProgressError(str(event_id))
        return result.claim

    async def complete(self, claim: Claim) -> None:
        await self.complete_many([claim])

    async def release(self, claim: Claim) -> None:
        await self.release_many([claim])

    async def claim_many(
        self, event_ids: Sequence[uuid.UUID], consumer_name: str | None
    ) -> list[ClaimResult]:
        token = uuid.uuid4().hex
        out = []
        for event_id in event_ids:
            state = self.rows.setdefault((consumer_name or "", event_id), token)
            if state == token:
                out.append(ClaimResult(ClaimStatus.CLAIMED, Claim(event_id, consumer_name, token)))
            else:
                out.append(ClaimResult(ClaimStatus.DONE if state == "done" else ClaimStatus.BUSY))
        return out

    async def complete_many(self, claims: Sequence[Claim]) -> None:
        for c in claims:
            self.rows[(c.consumer_name or "", c.event_id)] = "done"

    async def release_many(self, claims: Sequence[Claim]) -> None:
        for c in claims:
            if self.rows.get((c.consumer_name or "", c.event_id)) == c.token:
                del self.rows[(c.consumer_name or "", c.event_id)]


async def test_a_store_the_user_writes_works_with_the_decorator() -> None:
    store = TableStore()
    assert isinstance(store, AsyncDedupStore)
    seen: list[str] = []

    @idempotent_consumer(store=store, consumer_name="billing")
    async def handle(event: ReceivedEvent) -> None:
        seen.append(event.aggregate_id)

    record = make_record(order_event(3))
    assert await handle(record) is True
    assert await handle(record) is False
    assert seen == ["o-3"]
