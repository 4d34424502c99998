"""Deduplication in Redis: a claim (``SET NX`` + processing TTL), then a done marker.

Key ``{prefix}{consumer_name}:{event_id}`` (``{prefix}{event_id}`` without a
consumer name) holds either ``claim:<token>`` while a handler runs, or ``done``
after it succeeded. The token makes releases compare-and-delete, so a worker
whose claim expired can never delete the claim another worker took since.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import uuid
from typing import Any

import redis
import redis.asyncio

from ..exceptions import ConfigurationError
from .errors import EventInProgressError

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


def _text(value: Any) -> str | None:
    # Works with clients made with or without decode_responses=True.
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


class _RedisSettings:
    def __init__(
        self,
        *,
        prefix: str,
        processing_ttl: float,
        done_ttl: float | None,
        wait_timeout: float | None,
        poll_interval: float,
    ) -> None:
        if processing_ttl <= 0:
            raise ConfigurationError("processing_ttl", "must be > 0 seconds")
        if done_ttl is not None and done_ttl <= 0:
            raise ConfigurationError("done_ttl", "must be > 0 seconds, or None to keep forever")
        if poll_interval <= 0:
            raise ConfigurationError("poll_interval", "must be > 0 seconds")
        self.prefix = prefix
        self.processing_ttl = processing_ttl
        self.done_ttl = done_ttl
        self.wait_timeout = wait_timeout
        self.poll_interval = poll_interval

    def _key(self, event_id: uuid.UUID, consumer_name: str | None) -> str:
        if consumer_name is None:
            return f"{self.prefix}{event_id}"
        return f"{self.prefix}{consumer_name}:{event_id}"

    def _claim_args(self) -> tuple[str, int]:
        return f"claim:{secrets.token_hex(16)}", max(1, int(self.processing_ttl * 1000))

    def _done_ms(self) -> int:
        return 0 if self.done_ttl is None else max(1, int(self.done_ttl * 1000))

    def _deadline(self) -> float | None:
        return None if self.wait_timeout is None else time.monotonic() + self.wait_timeout

    def _check_wait(self, key: str, deadline: float | None) -> None:
        if deadline is not None and time.monotonic() >= deadline:
            raise EventInProgressError(key)

    def _warn_if_lost(self, key: str, claim: str, old: str | None) -> None:
        if old != claim:
            logger.warning(
                "claim on %s expired before the handler finished (processing_ttl=%ss):"
                " another worker may have processed the event too",
                key,
                self.processing_ttl,
            )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(prefix={self.prefix!r}, "
            f"processing_ttl={self.processing_ttl}, done_ttl={self.done_ttl})"
        )


class AsyncRedisStore(_RedisSettings):
    """Deduplicate in Redis with a ``redis.asyncio.Redis`` client (async handlers).

    - ``processing_ttl``: how long a claim holds while its handler runs. It must
      exceed the longest handler run; a claim left by a crashed worker frees
      itself after it.
    - ``done_ttl``: how long a processed id is remembered (default 7 days, Kafka's
      default retention). A redelivery after it expired is processed again;
      ``None`` keeps done markers forever.
    - A concurrent duplicate (claim held by another worker) waits, polling every
      ``poll_interval``, for that worker's outcome: done → skipped; released after
      a failure or expired → claimed and run. With ``wait_timeout`` set, it
      raises :class:`EventInProgressError` after that long instead (the runner
      retries it later, without counting an attempt).

    Effects outside Redis are at least once: a worker that dies after its
    handler succeeded but before writing the done marker leaves a claim that
    expires, and the event is processed again. Use :class:`AsyncSqlStore` for
    effects that must happen exactly once in a database.
    """

    def __init__(
        self,
        client: redis.asyncio.Redis,
        *,
        prefix: str = "outbox:processed:",
        processing_ttl: float = 60.0,
        done_ttl: float | None = 7 * 24 * 3600.0,
        wait_timeout: float | None = None,
        poll_interval: float = 0.05,
    ) -> None:
        super().__init__(
            prefix=prefix,
            processing_ttl=processing_ttl,
            done_ttl=done_ttl,
            wait_timeout=wait_timeout,
            poll_interval=poll_interval,
        )
        self._client = client
        self._claim_script = client.register_script(_CLAIM)
        self._complete_script = client.register_script(_COMPLETE)
        self._release_script = client.register_script(_RELEASE)

    async def _claim(self, key: str) -> str | None:
        """Our claim value, or ``None`` if the event is already done."""
        deadline = self._deadline()
        while True:
            claim, ttl_ms = self._claim_args()
            value = _text(await self._claim_script(keys=[key], args=[claim, ttl_ms]))
            if value == claim:
                return claim
            if value == _DONE:
                return None
            self._check_wait(key, deadline)
            await asyncio.sleep(self.poll_interval)

    async def _complete(self, key: str, claim: str) -> None:
        old = _text(await self._complete_script(keys=[key], args=[self._done_ms()]))
        self._warn_if_lost(key, claim, old)

    async def _release(self, key: str, claim: str) -> None:
        await self._release_script(keys=[key], args=[claim])


class RedisStore(_RedisSettings):
    """Deduplicate in Redis with a sync ``redis.Redis`` client (sync handlers).

    Same keys and semantics as :class:`AsyncRedisStore`; a concurrent
    duplicate blocks its thread while it waits.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str = "outbox:processed:",
        processing_ttl: float = 60.0,
        done_ttl: float | None = 7 * 24 * 3600.0,
        wait_timeout: float | None = None,
        poll_interval: float = 0.05,
    ) -> None:
        super().__init__(
            prefix=prefix,
            processing_ttl=processing_ttl,
            done_ttl=done_ttl,
            wait_timeout=wait_timeout,
            poll_interval=poll_interval,
        )
        self._client = client
        self._claim_script = client.register_script(_CLAIM)
        self._complete_script = client.register_script(_COMPLETE)
        self._release_script = client.register_script(_RELEASE)

    def _claim(self, key: str) -> str | None:
        deadline = self._deadline()
        while True:
            claim, ttl_ms = self._claim_args()
            value = _text(self._claim_script(keys=[key], args=[claim, ttl_ms]))
            if value == claim:
                return claim
            if value == _DONE:
                return None
            self._check_wait(key, deadline)
            time.sleep(self.poll_interval)

    def _complete(self, key: str, claim: str) -> None:
        old = _text(self._complete_script(keys=[key], args=[self._done_ms()]))
        self._warn_if_lost(key, claim, old)

    def _release(self, key: str, claim: str) -> None:
        self._release_script(keys=[key], args=[claim])
