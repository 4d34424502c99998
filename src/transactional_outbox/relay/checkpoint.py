"""Checkpoint store: the relay's binlog position in Redis. A thin I/O adapter.

The checkpoint key holds the encoded checkpoint (relay/position.py) as it
always did; a sibling key, ``<checkpoint key>:token``, holds ``token:seq`` of
the save that wrote it (the writer's fencing token and save number), so a
start can tell it from the Kafka copy (relay/checkpoint_choice.py). Both are
written by one fenced script: a stale leader moves neither.
"""

from __future__ import annotations

from redis.exceptions import ResponseError

from .._redis_client import AsyncClient
from .checkpoint_choice import CheckpointCopy
from .leadership import Lease
from .position import Position, decode_checkpoint

__all__ = ["RedisCheckpointStore"]

# KEYS[1] fence counter, KEYS[2] checkpoint, KEYS[3] its token key; ARGV[1] token,
# ARGV[2] seq, ARGV[3] value. 1 if written; 0 if a newer leader exists.
_FENCED_SAVE = """
if tonumber(redis.call('GET', KEYS[1]) or '0') == tonumber(ARGV[1]) then
  redis.call('SET', KEYS[2], ARGV[3])
  redis.call('SET', KEYS[3], ARGV[1] .. ':' .. ARGV[2])
  return 1
end
return 0
"""


class RedisCheckpointStore:
    """Loads and saves one relay's checkpoint under ``{prefix}{relay_name}:checkpoint``."""

    def __init__(self, client: AsyncClient, *, key: str) -> None:
        self._client = client
        self.key = key
        self.token_key = key + ":token"

    async def load(self) -> Position | None:
        """The saved position, or ``None`` if there is none.

        Raises :class:`~transactional_outbox.CheckpointError` for a value this
        relay did not write (never guesses a position from it).
        """
        raw = await self._client.get(self.key)
        return None if raw is None else decode_checkpoint(raw)

    async def load_copy(self) -> tuple[CheckpointCopy | None, bool]:
        """The stored copy with its token and save number, undecoded (``None`` if absent),
        and whether a save left its token key: the relay saved here before."""
        raw, meta = await self._client.mget(self.key, self.token_key)
        token: int | None = None
        seq = 0
        if meta is not None:
            text = meta.decode(errors="replace") if isinstance(meta, bytes) else str(meta)
            head, _, tail = text.partition(":")
            if head.isdigit() and tail.isdigit():
                token, seq = int(head), int(tail)
        if raw is None:
            return None, meta is not None
        value = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
        return CheckpointCopy("Redis", token, seq, value), True

    async def save_value(self, value: str, *, fence: Lease, seq: int) -> bool:
        """Store the encoded checkpoint ``value`` with ``fence``'s token and ``seq``.

        Written only if no newer leader took a fencing token since that lease's;
        returns False if refused.
        """
        if fence.token is None:
            return False
        ok = await self._client.eval(
            _FENCED_SAVE, 3, fence.keys.fence, self.key, self.token_key, fence.token, seq, value
        )
        return bool(ok)

    async def save(self, position: Position, *, fence: Lease | None = None) -> bool:
        """Store ``position`` (the end of a fully acknowledged transaction).

        With ``fence``, the write happens only if no newer leader took a
        fencing token since that lease's; returns False if refused.
        """
        value = position.encode()
        if fence is not None:
            return await self.save_value(value, fence=fence, seq=0)
        await self._client.set(self.key, value)
        return True

    async def delete(self) -> None:
        """Forget the checkpoint."""
        await self._client.delete(self.key, self.token_key)

    async def eviction_policy(self) -> str | None:
        """``maxmemory-policy``, or ``None`` where ``CONFIG`` is refused (managed Redis)."""
        try:
            answer = await self._client.config_get("maxmemory-policy")
        except ResponseError:
            return None
        for key, value in dict(answer).items():  # bytes or str, as the client decodes
            name = key.decode() if isinstance(key, bytes) else str(key)
            if name == "maxmemory-policy" and value is not None:
                return value.decode() if isinstance(value, bytes) else str(value)
        return None

    def __repr__(self) -> str:
        return f"RedisCheckpointStore(key={self.key!r})"
