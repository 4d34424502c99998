"""Checkpoint store: the relay's binlog position in Redis. A thin I/O adapter."""

from __future__ import annotations

import redis.asyncio as aioredis

from .leadership import Lease
from .position import BinlogPosition, decode_checkpoint, encode_checkpoint

__all__ = ["RedisCheckpointStore"]


class RedisCheckpointStore:
    """Loads and saves one relay's checkpoint under ``{prefix}{relay_name}:checkpoint``."""

    def __init__(self, client: aioredis.Redis, *, key: str) -> None:
        self._client = client
        self.key = key

    async def load(self) -> BinlogPosition | None:
        """The saved position, or ``None`` if there is none.

        Raises :class:`~transactional_outbox.CheckpointError` for a value this
        relay did not write (never guesses a position from it).
        """
        raw = await self._client.get(self.key)
        return None if raw is None else decode_checkpoint(raw)

    async def save(self, position: BinlogPosition, *, fence: Lease | None = None) -> bool:
        """Store ``position`` (the end of a fully acknowledged transaction).

        With ``fence``, the write happens only if no newer leader took a
        fencing token since that lease's; returns False if refused.
        """
        value = encode_checkpoint(position)
        if fence is not None:
            return await fence.fenced_set(self.key, value)
        await self._client.set(self.key, value)
        return True

    async def delete(self) -> None:
        """Forget the checkpoint."""
        await self._client.delete(self.key)

    def __repr__(self) -> str:
        return f"RedisCheckpointStore(key={self.key!r})"
