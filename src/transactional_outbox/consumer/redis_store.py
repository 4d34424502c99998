"""Deduplication in Redis: a claim (``SET NX`` + processing TTL), then a done marker.

Key ``{prefix}{consumer_name}:{event_id}`` (``{prefix}{event_id}`` without a
consumer name) holds either ``claim:<token>`` while a handler runs, or ``done``
after it succeeded. The token makes releases compare-and-delete, so a worker
whose claim expired can never delete the claim another worker took since.

On a Redis Cluster a batch script's keys must share a slot: the consumer name is their hash
tag, ``{prefix}{{consumer_name}}:{event_id}`` (``{{prefix}}{event_id}`` without a name),
unless the prefix or name holds a ``{...}`` already. A consumer's keys live on one shard.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import uuid
from collections.abc import Sequence
from typing import Any, Self

import redis
import redis.asyncio.cluster as acluster
import redis.cluster

from .._redis_client import (
    AsyncClient,
    SyncClient,
    async_client,
    parse_redis_url,
    sync_client,
    tagged_base,
)
from ..exceptions import EventInProgressError
from .store import Claim, ClaimResult, ClaimStatus, ClaimTiming

__all__ = ["AsyncRedisStore", "RedisStore"]

logger = logging.getLogger("transactional_outbox.consumer")

_DONE = "done"

# Returns the key's value after the attempt: our own claim value if we got it.
_CLAIM = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return ARGV[1] end
return redis.call('GET', KEYS[1])
"""

# Marks done whoever holds the key: the handler did succeed. Returns the value it
# replaced so the caller can tell whether its claim had expired meanwhile.
_COMPLETE = """
local old = redis.call('GET', KEYS[1])
if tonumber(ARGV[1]) > 0 then
  redis.call('SET', KEYS[1], 'done', 'PX', ARGV[1])
else
  redis.call('SET', KEYS[1], 'done')
end
return old
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# The batch forms: one round trip for a whole fetched batch (issue 16: two round
# trips per record capped a partition at ~300 records/s). All keys of one call
# share its claim token, which is still unique to this claim attempt.
# Returns one string, a letter per key ('C' claimed, 'D' done, 'B' held by
# another claim): one bulk reply parses far faster than a 500-element array.
_CLAIM_MANY = """
local out = {}
for i, key in ipairs(KEYS) do
  if redis.call('SET', key, ARGV[1], 'NX', 'PX', ARGV[2]) then
    out[i] = 'C'
  elseif redis.call('GET', key) == 'done' then
    out[i] = 'D'
  else
    out[i] = 'B'
  end
end
return table.concat(out)
"""

# ARGV[1]: done TTL in ms (0: none); ARGV[2]: the token all KEYS were claimed
# with (the claims of one claim_many share it, so it is sent once, not per key).
# Returns the 1-based indexes whose claim had been lost (expired or retaken).
_COMPLETE_MANY = """
local lost = {}
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) ~= ARGV[2] then lost[#lost + 1] = i end
  if tonumber(ARGV[1]) > 0 then
    redis.call('SET', key, 'done', 'PX', ARGV[1])
  else
    redis.call('SET', key, 'done')
  end
end
return lost
"""

_RELEASE_MANY = """
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[i] then redis.call('DEL', key) end
end
return 0
"""

_DONE_RESULT = ClaimResult(ClaimStatus.DONE)
_BUSY_RESULT = ClaimResult(ClaimStatus.BUSY)


def _text(value: Any) -> str | None:
    # Works with clients made with or without decode_responses=True.
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


class _RedisSettings(ClaimTiming):
    def __init__(
        self,
        *,
        prefix: str,
        processing_ttl_ms: int,
        done_ttl_ms: int | None,
        wait_timeout_ms: int | None,
        poll_interval_ms: int,
        client: AsyncClient | SyncClient,
    ) -> None:
        super().__init__(
            processing_ttl_ms=processing_ttl_ms,
            done_ttl_ms=done_ttl_ms,
            wait_timeout_ms=wait_timeout_ms,
            poll_interval_ms=poll_interval_ms,
        )
        self.prefix = prefix
        self.cluster = isinstance(client, redis.cluster.RedisCluster | acluster.RedisCluster)
        self._bases: dict[str | None, str] = {}
        self._client = client
        script: Any = client.register_script  # sync or async scripts, as the client is
        made = [script(x) for x in (_CLAIM, _COMPLETE, _RELEASE, _CLAIM_MANY, _COMPLETE_MANY)]
        self._claim_script, self._complete_script, self._release_script = made[:3]
        self._claim_many_script, self._complete_many_script = made[3:]
        self._release_many_script = script(_RELEASE_MANY)

    def key(self, event_id: uuid.UUID, consumer_name: str | None) -> str:
        """The Redis key that holds ``event_id``'s claim or done marker."""
        base = self._bases.get(consumer_name)
        if base is None:
            base = tagged_base(self.prefix, consumer_name, cluster=self.cluster)
            self._bases[consumer_name] = base
        return f"{base}{event_id}"

    def _new_token(self) -> str:
        return f"claim:{secrets.token_hex(16)}"

    def _ttl_ms(self) -> int:
        return max(1, int(self.processing_ttl_ms))

    def _done_ms(self) -> int:
        return 0 if self.done_ttl_ms is None else max(1, int(self.done_ttl_ms))

    def _deadline(self) -> float | None:
        return (
            None if self.wait_timeout_ms is None else time.monotonic() + self.wait_timeout_ms / 1000
        )

    def _check_wait(self, key: str, deadline: float | None) -> None:
        if deadline is not None and time.monotonic() >= deadline:
            raise EventInProgressError(key)

    def _warn_lost(self, key: str) -> None:
        logger.warning(
            "claim on %s expired before the handler finished (processing_ttl_ms=%s):"
            " another worker may have processed the event too",
            key,
            self.processing_ttl_ms,
        )

    def _by_token(self, claims: Sequence[Claim]) -> dict[str, list[str]]:
        groups: dict[str, list[str]] = {}
        for c in claims:
            groups.setdefault(c.token, []).append(self.key(c.event_id, c.consumer_name))
        return groups

    def _results(
        self, raw: Any, event_ids: Sequence[uuid.UUID], name: str | None, token: str
    ) -> list[ClaimResult]:
        codes = _text(raw) or ""
        if len(codes) != len(event_ids):
            raise ValueError(f"claim script answered {len(codes)} codes for {len(event_ids)} keys")
        done, busy = _DONE_RESULT, _BUSY_RESULT
        return [
            ClaimResult(ClaimStatus.CLAIMED, Claim(event_id, name, token))
            if code == "C"
            else done
            if code == "D"
            else busy
            for event_id, code in zip(event_ids, codes, strict=True)
        ]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(prefix={self.prefix!r}, "
            f"processing_ttl_ms={self.processing_ttl_ms}, done_ttl_ms={self.done_ttl_ms})"
        )


class AsyncRedisStore(_RedisSettings):
    """Deduplicate in Redis with a ``redis.asyncio.Redis`` client (async handlers).

    An :class:`AsyncDedupStore`. Durations are milliseconds, as everywhere in the library.

    - ``processing_ttl_ms``: how long a claim holds while its handler runs (default 60 s). It must
      exceed the longest handler run; a claim left by a crashed worker frees
      itself after it.
    - ``done_ttl_ms``: how long a processed id is remembered (default 7 days, Kafka's
      default retention). A redelivery after it expired is processed again;
      ``None`` keeps done markers forever.
    - A concurrent duplicate (claim held by another worker) waits, polling every
      ``poll_interval_ms``, for that worker's outcome: done → skipped; released after
      a failure or expired → claimed and run. With ``wait_timeout_ms`` set, it
      raises :class:`EventInProgressError` after that long instead (the runner
      retries it later, without counting an attempt).

    The batch operations run one Lua script over all the batch's keys: on a Redis
    Cluster (a ``RedisCluster`` client) the consumer name is their hash tag (module doc).
    :meth:`from_url` builds the client from a URL (one server, Sentinel, Cluster, TLS).

    Effects outside Redis are at least once: a worker that dies after its
    handler succeeded but before writing the done marker leaves a claim that
    expires, and the event is processed again. Use :class:`AsyncSqlStore` for
    effects that must happen exactly once in a database.
    """

    def __init__(
        self,
        client: AsyncClient,
        *,
        prefix: str = "outbox:processed:",
        processing_ttl_ms: int = 60_000,
        done_ttl_ms: int | None = 7 * 24 * 3600 * 1000,
        wait_timeout_ms: int | None = None,
        poll_interval_ms: int = 50,
    ) -> None:
        super().__init__(
            prefix=prefix,
            processing_ttl_ms=processing_ttl_ms,
            done_ttl_ms=done_ttl_ms,
            wait_timeout_ms=wait_timeout_ms,
            poll_interval_ms=poll_interval_ms,
            client=client,
        )

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> Self:
        """A store on a client built from ``url`` (``redis://``, ``rediss://``, ``unix://``,
        ``redis+sentinel://``, ``redis+cluster://``; README "Redis: Sentinel, Cluster, TLS");
        ``kwargs`` as the constructor's. A wrong URL raises ``ConfigurationError`` naming
        ``url``. Nothing connects before the first call."""
        return cls(async_client(parse_redis_url(url, setting="url")), **kwargs)

    async def claim(self, event_id: uuid.UUID, consumer_name: str | None) -> Claim | None:
        """Claim ``event_id`` (waiting for another holder): the claim, or ``None`` if done."""
        key = self.key(event_id, consumer_name)
        deadline = self._deadline()
        while True:
            token = self._new_token()
            value = _text(await self._claim_script(keys=[key], args=[token, self._ttl_ms()]))
            if value == token:
                return Claim(event_id, consumer_name, token)
            if value == _DONE:
                return None
            self._check_wait(key, deadline)
            await asyncio.sleep(self.poll_interval_ms / 1000)

    async def complete(self, claim: Claim) -> None:
        """Mark the claim's event done (warns if the claim had expired meanwhile)."""
        key = self.key(claim.event_id, claim.consumer_name)
        old = _text(await self._complete_script(keys=[key], args=[self._done_ms()]))
        if old != claim.token:
            self._warn_lost(key)

    async def release(self, claim: Claim) -> None:
        """Delete the claim if it is still ours."""
        key = self.key(claim.event_id, claim.consumer_name)
        await self._release_script(keys=[key], args=[claim.token])

    async def claim_many(
        self, event_ids: Sequence[uuid.UUID], consumer_name: str | None
    ) -> list[ClaimResult]:
        """Claim distinct ids in one script call, without waiting."""
        if not event_ids:
            return []
        token = self._new_token()
        keys = [self.key(i, consumer_name) for i in event_ids]
        raw = await self._claim_many_script(keys=keys, args=[token, self._ttl_ms()])
        return self._results(raw, event_ids, consumer_name, token)

    async def complete_many(self, claims: Sequence[Claim]) -> None:
        """Mark many claims' events done in one script call."""
        if not claims:
            return
        for token, keys in self._by_token(claims).items():
            lost = await self._complete_many_script(keys=keys, args=[self._done_ms(), token])
            for index in lost:
                self._warn_lost(keys[int(index) - 1])

    async def release_many(self, claims: Sequence[Claim]) -> None:
        """Delete many claims, each only if still ours, in one script call."""
        if not claims:
            return
        keys = [self.key(c.event_id, c.consumer_name) for c in claims]
        await self._release_many_script(keys=keys, args=[c.token for c in claims])


class RedisStore(_RedisSettings):
    """Deduplicate in Redis with a sync ``redis.Redis`` client (sync handlers).

    A :class:`DedupStore`: same keys and semantics as :class:`AsyncRedisStore`;
    a concurrent duplicate blocks its thread while it waits.
    """

    def __init__(
        self,
        client: SyncClient,
        *,
        prefix: str = "outbox:processed:",
        processing_ttl_ms: int = 60_000,
        done_ttl_ms: int | None = 7 * 24 * 3600 * 1000,
        wait_timeout_ms: int | None = None,
        poll_interval_ms: int = 50,
    ) -> None:
        super().__init__(
            prefix=prefix,
            processing_ttl_ms=processing_ttl_ms,
            done_ttl_ms=done_ttl_ms,
            wait_timeout_ms=wait_timeout_ms,
            poll_interval_ms=poll_interval_ms,
            client=client,
        )

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> Self:
        """See :meth:`AsyncRedisStore.from_url`; a cluster client connects at once."""
        return cls(sync_client(parse_redis_url(url, setting="url")), **kwargs)

    def claim(self, event_id: uuid.UUID, consumer_name: str | None) -> Claim | None:
        """See :meth:`AsyncRedisStore.claim`."""
        key = self.key(event_id, consumer_name)
        deadline = self._deadline()
        while True:
            token = self._new_token()
            value = _text(self._claim_script(keys=[key], args=[token, self._ttl_ms()]))
            if value == token:
                return Claim(event_id, consumer_name, token)
            if value == _DONE:
                return None
            self._check_wait(key, deadline)
            time.sleep(self.poll_interval_ms / 1000)

    def complete(self, claim: Claim) -> None:
        """See :meth:`AsyncRedisStore.complete`."""
        key = self.key(claim.event_id, claim.consumer_name)
        old = _text(self._complete_script(keys=[key], args=[self._done_ms()]))
        if old != claim.token:
            self._warn_lost(key)

    def release(self, claim: Claim) -> None:
        """See :meth:`AsyncRedisStore.release`."""
        key = self.key(claim.event_id, claim.consumer_name)
        self._release_script(keys=[key], args=[claim.token])

    def claim_many(
        self, event_ids: Sequence[uuid.UUID], consumer_name: str | None
    ) -> list[ClaimResult]:
        """See :meth:`AsyncRedisStore.claim_many`."""
        if not event_ids:
            return []
        token = self._new_token()
        keys = [self.key(i, consumer_name) for i in event_ids]
        raw = self._claim_many_script(keys=keys, args=[token, self._ttl_ms()])
        return self._results(raw, event_ids, consumer_name, token)

    def complete_many(self, claims: Sequence[Claim]) -> None:
        """See :meth:`AsyncRedisStore.complete_many`."""
        if not claims:
            return
        for token, keys in self._by_token(claims).items():
            lost = self._complete_many_script(keys=keys, args=[self._done_ms(), token])
            for index in lost:
                self._warn_lost(keys[int(index) - 1])

    def release_many(self, claims: Sequence[Claim]) -> None:
        """See :meth:`AsyncRedisStore.release_many`."""
        if not claims:
            return
        keys = [self.key(c.event_id, c.consumer_name) for c in claims]
        self._release_many_script(keys=keys, args=[c.token for c in claims])
