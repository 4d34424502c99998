"""The Redis stores' batch operations (one script call per batch), against the stack's Redis."""

from __future__ import annotations

import logging
import uuid

import pytest
import redis
import redis.asyncio

from transactional_outbox.consumer import (
    AsyncDedupStore,
    AsyncRedisStore,
    ClaimStatus,
    DedupStore,
    RedisStore,
)


def test_redis_stores_satisfy_the_protocols(redis_url: str) -> None:
    assert isinstance(AsyncRedisStore(redis.asyncio.Redis.from_url(redis_url)), AsyncDedupStore)
    assert isinstance(RedisStore(redis.Redis.from_url(redis_url)), DedupStore)


async def test_claim_many_complete_many_release_many(
    aredis: redis.asyncio.Redis, redis_prefix: str
) -> None:
    store = AsyncRedisStore(aredis, prefix=redis_prefix, done_ttl_ms=60_000)
    done, busy, fresh, other = (uuid.uuid4() for _ in range(4))
    await aredis.set(f"{redis_prefix}c:{done}", "done")
    await aredis.set(f"{redis_prefix}c:{busy}", "claim:someone-else", px=60_000)

    results = await store.claim_many([done, busy, fresh, other], "c")
    assert [r.status for r in results] == [
        ClaimStatus.DONE,
        ClaimStatus.BUSY,
        ClaimStatus.CLAIMED,
        ClaimStatus.CLAIMED,
    ]
    fresh_claim, other_claim = results[2].claim, results[3].claim
    assert fresh_claim is not None and other_claim is not None
    assert await aredis.get(f"{redis_prefix}c:{fresh}") == fresh_claim.token.encode()
    assert 0 < await aredis.pttl(f"{redis_prefix}c:{fresh}") <= 60_000  # processing_ttl_ms

    await store.complete_many([fresh_claim])
    await store.release_many([other_claim])
    assert await aredis.get(f"{redis_prefix}c:{fresh}") == b"done"
    assert 0 < await aredis.pttl(f"{redis_prefix}c:{fresh}") <= 60_000  # done_ttl_ms
    assert await aredis.get(f"{redis_prefix}c:{other}") is None
    assert await aredis.get(f"{redis_prefix}c:{busy}") == b"claim:someone-else"
    assert await store.claim_many([], "c") == []


async def test_release_many_leaves_a_claim_retaken_by_another_worker(
    aredis: redis.asyncio.Redis, redis_prefix: str
) -> None:
    store = AsyncRedisStore(aredis, prefix=redis_prefix)
    event_id = uuid.uuid4()
    (result,) = await store.claim_many([event_id], None)
    assert result.claim is not None
    # Our claim expired and another worker claimed the event since.
    await aredis.set(f"{redis_prefix}{event_id}", "claim:theirs", px=60_000)
    await store.release_many([result.claim])
    assert await aredis.get(f"{redis_prefix}{event_id}") == b"claim:theirs"


async def test_complete_many_warns_about_claims_lost_meanwhile(
    aredis: redis.asyncio.Redis, redis_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = AsyncRedisStore(aredis, prefix=redis_prefix)
    kept, lost = uuid.uuid4(), uuid.uuid4()
    results = await store.claim_many([kept, lost], None)
    await aredis.set(f"{redis_prefix}{lost}", "claim:theirs", px=60_000)
    claims = [r.claim for r in results if r.claim is not None]
    with caplog.at_level(logging.WARNING, logger="transactional_outbox.consumer"):
        await store.complete_many(claims)
    warned = [r.getMessage() for r in caplog.records if "expired" in r.getMessage()]
    assert len(warned) == 1 and str(lost) in warned[0]
    assert await aredis.get(f"{redis_prefix}{kept}") == b"done"


async def test_claims_from_two_batches_complete_in_one_call(
    aredis: redis.asyncio.Redis, redis_prefix: str
) -> None:
    store = AsyncRedisStore(aredis, prefix=redis_prefix)
    a, b = uuid.uuid4(), uuid.uuid4()
    (ra,) = await store.claim_many([a], None)
    (rb,) = await store.claim_many([b], None)
    assert ra.claim is not None and rb.claim is not None
    assert ra.claim.token != rb.claim.token
    await store.complete_many([ra.claim, rb.claim])
    assert [r.status for r in await store.claim_many([a, b], None)] == [ClaimStatus.DONE] * 2


def test_sync_store_batch_operations(redis_url: str, redis_prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    store = RedisStore(client, prefix=redis_prefix)
    ids = [uuid.uuid4() for _ in range(3)]
    results = store.claim_many(ids, None)
    assert [r.status for r in results] == [ClaimStatus.CLAIMED] * 3
    claims = [r.claim for r in results if r.claim is not None]
    store.complete_many(claims[:2])
    store.release_many(claims[2:])
    again = store.claim_many(ids, None)
    assert [r.status for r in again] == [ClaimStatus.DONE, ClaimStatus.DONE, ClaimStatus.CLAIMED]
    client.close()
