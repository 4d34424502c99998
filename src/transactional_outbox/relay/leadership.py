"""Leadership: one relay of a name publishes; the others wait. A thin Redis adapter.

The leader holds a lease (a key with a TTL) and renews it. Each new leader
takes a fencing token from a counter that only grows; the checkpoint is
written by a Lua script that compares the writer's token with the counter, so
a stale leader (paused, partitioned) can never move the checkpoint after a
newer one took over, even if it still believes it leads.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .._redis_client import AsyncClient, RedisTarget, parse_redis_url, probe, tagged_base
from ..exceptions import ConfigurationError

if TYPE_CHECKING:
    from .config import RelaySettings

__all__ = ["Lease", "LeaseKeys"]

# KEYS[1] lease, KEYS[2] fence counter; ARGV[1] holder id, ARGV[2] ttl ms.
# Returns the token held (new or renewed), or nil if another holder has it.
_ACQUIRE = """
local cur = redis.call('GET', KEYS[1])
if cur then
  local sep = string.find(cur, ':', 1, true)
  if string.sub(cur, sep + 1) == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return tonumber(string.sub(cur, 1, sep - 1))
  end
  return nil
end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], token .. ':' .. ARGV[1], 'PX', ARGV[2])
return token
"""

# KEYS[1] lease; ARGV[1] token:holder, ARGV[2] ttl ms. 1 if renewed, 0 if lost.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

# KEYS[1] lease; ARGV[1] token:holder. Delete only our own lease.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# KEYS[1] fence counter, KEYS[2] checkpoint; ARGV[1] token, ARGV[2] value.
# 1 if written; 0 if a newer leader exists (the counter moved past our token).
_FENCED_SET = """
if tonumber(redis.call('GET', KEYS[1]) or '0') == tonumber(ARGV[1]) then
  redis.call('SET', KEYS[2], ARGV[2])
  return 1
end
return 0
"""


# KEYS[1] lease, KEYS[2] fence counter; ARGV[1] token:holder, ARGV[2] floor, ARGV[3] holder,
# ARGV[4] ttl ms. While we hold the lease: a counter at or below the floor moves past it
# and the lease takes the new token. Returns the token now held, or nil if not ours.
_RAISE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return nil
end
local cur = tonumber(redis.call('GET', KEYS[2]) or '0')
if cur > tonumber(ARGV[2]) then
  return cur
end
local token = tonumber(ARGV[2]) + 1
redis.call('SET', KEYS[2], token)
redis.call('SET', KEYS[1], token .. ':' .. ARGV[3], 'PX', ARGV[4])
return token
"""


@dataclass(frozen=True, slots=True)
class LeaseKeys:
    """Redis keys of one relay name.

    ``{prefix}{name}:leader``, ``:fence``, ``:checkpoint`` (and the checkpoint's
    ``:checkpoint:token``). Every script here and in checkpoint.py touches several of them
    at once, so on a Redis Cluster they must share a slot: there the name becomes a hash
    tag, ``{prefix}{{name}}:leader``, unless the prefix or the name already holds one. On
    one server (and Sentinel) the names are unchanged.
    """

    lease: str
    fence: str
    checkpoint: str

    @classmethod
    def for_relay(cls, prefix: str, name: str, *, cluster: bool = False) -> LeaseKeys:
        """Keys under ``{prefix}{name}:`` (on a cluster, with a hash tag)."""
        try:
            base = tagged_base(prefix, name, cluster=cluster)
        except ValueError as exc:
            raise ConfigurationError("key_prefix", str(exc)) from None
        return cls(lease=base + "leader", fence=base + "fence", checkpoint=base + "checkpoint")

    @classmethod
    def for_settings(cls, settings: RelaySettings) -> LeaseKeys:
        """The keys of ``settings``' relay, in the Redis its ``redis_url`` names."""
        target = parse_redis_url(settings.redis_url, setting="redis_url")
        return cls.for_relay(settings.key_prefix, settings.relay_name, cluster=target.cluster)


class Lease:
    """This process's claim on a relay name's leadership."""

    def __init__(
        self,
        client: AsyncClient,
        keys: LeaseKeys,
        *,
        ttl_ms: int,
        holder: str | None = None,
        target: RedisTarget | None = None,
    ) -> None:
        self._client = client
        # Checked before the first attempt (then forgotten): the server is what the URL says.
        self._target = target
        self.keys = keys
        self.ttl_ms = ttl_ms
        self.holder = holder or uuid.uuid4().hex[:12]
        self.token: int | None = None
        # Local deadline: after it, assume the lease is gone even if Redis is
        # unreachable (monotonic, so a paused process sees it passed on resume).
        self.valid_until = 0.0

    @property
    def _value(self) -> str:
        return f"{self.token}:{self.holder}"

    def held(self) -> bool:
        """True while the lease is ours and not past its local deadline."""
        return self.token is not None and time.monotonic() < self.valid_until

    async def try_acquire(self) -> bool:
        """Take the lease if it is free (or already ours); True if we hold it now.

        The first call checks the server against the URL (:func:`probe`): a
        :class:`ConfigurationError` naming ``redis_url`` when they do not match.
        """
        if self._target is not None:
            await probe(self._client, self._target)
            self._target = None
        started = time.monotonic()
        token = await self._client.eval(
            _ACQUIRE, 2, self.keys.lease, self.keys.fence, self.holder, self.ttl_ms
        )
        return self._held(token, started)

    async def remaining_ms(self) -> int:
        """Milliseconds until the current holder's lease expires (0 if none)."""
        ttl = int(await self._client.pttl(self.keys.lease))
        return max(ttl, 0)

    async def renew(self) -> bool:
        """Extend the lease; False if it is no longer ours."""
        if self.token is None:
            return False
        started = time.monotonic()
        ok = await self._client.eval(_RENEW, 1, self.keys.lease, self._value, self.ttl_ms)
        if ok:
            self.valid_until = started + self.ttl_ms / 1000
            return True
        self.token = None
        return False

    async def release(self) -> None:
        """Give the lease up (at shutdown) so a standby takes over at once."""
        if self.token is not None:
            await self._client.eval(_RELEASE, 1, self.keys.lease, self._value)
            self.token = None

    async def fenced_set(self, key: str, value: str) -> bool:
        """Write ``key`` only if no newer leader has taken a token since ours."""
        if self.token is None:
            return False
        ok = await self._client.eval(_FENCED_SET, 2, self.keys.fence, key, self.token, value)
        return bool(ok)

    async def raise_token_above(self, floor: int) -> bool:
        """Take a token above ``floor`` (a token seen outside Redis) if ours is not.

        After Redis lost the fence counter, tokens restart at 1; a copy of the
        checkpoint kept elsewhere may carry a higher one. Raising the counter past
        it keeps tokens growing, so every write from now on outranks it. False if
        the lease is no longer ours.
        """
        if self.token is None:
            return False
        if self.token > floor:
            return True
        started = time.monotonic()
        token = await self._client.eval(
            _RAISE,
            2,
            self.keys.lease,
            self.keys.fence,
            self._value,
            floor,
            self.holder,
            self.ttl_ms,
        )
        return self._held(token, started)

    def _held(self, token: Any, started: float) -> bool:
        """Record the answer of a take-or-renew script run from ``started``: the token
        if the lease is ours now (valid for its TTL from ``started``), else nothing."""
        if token is None:
            self.token = None
            return False
        self.token = int(token)
        self.valid_until = started + self.ttl_ms / 1000
        return True

    def __repr__(self) -> str:
        return f"Lease(key={self.keys.lease!r}, holder={self.holder!r}, token={self.token})"
