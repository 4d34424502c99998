"""Saving the acknowledged position to Redis, fenced by the leader term.

The :class:`Checkpointer` saves the low watermark on a timer and once more
at the end of a term; a save the fence refuses (a newer leader wrote) loses
the term.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from redis.exceptions import RedisError

from .checkpoint import RedisCheckpointStore
from .position import BinlogPosition
from .stats import RelayStats
from .term import LeaderTerm

__all__ = ["Checkpointer"]

log = logging.getLogger("transactional_outbox.relay")


class Checkpointer:
    """Saves ``position()`` (the acknowledged position) for one leader term."""

    def __init__(
        self,
        store: RedisCheckpointStore,
        term: LeaderTerm,
        stats: RelayStats,
        position: Callable[[], BinlogPosition | None],
    ) -> None:
        self._store = store
        self._term = term
        self._stats = stats
        self._position = position

    def __repr__(self) -> str:
        return f"Checkpointer({self._store!r}, saved={self._stats.checkpoint})"

    async def save(self) -> None:
        """Save the position if it moved; lose the term if the fence refuses."""
        position = self._position()
        if position is None or not position.file or position == self._stats.checkpoint:
            return
        if not await self._store.save(position, fence=self._term.lease):
            self._term.lose("a newer leader took over: checkpoint write refused")
            return
        st = self._stats
        st.checkpoint = position
        st.checkpoint_saved_at = time.monotonic()
        st.checkpoints_saved += 1
        st.redis = "ok"

    async def run(self, over: asyncio.Event, *, interval: float, kafka_timeout: float) -> None:
        """Save every ``interval`` seconds until ``over`` is set or the term is lost.

        The same tick checks that Kafka acknowledges (within ``kafka_timeout``).
        """
        while not over.is_set() and not self._term.lost.is_set():
            await asyncio.sleep(interval)
            self._stats.check_kafka_progress(kafka_timeout)
            try:
                await self.save()
            except (RedisError, OSError) as exc:
                self._stats.redis = "degraded"
                self._stats.redis_errors += 1
                log.warning("checkpoint not saved (%s); retrying", exc)

    async def final_save(self) -> None:
        """Save at the end of a term, retrying a few times."""
        for attempt in range(5):
            try:
                await self.save()
                if self._stats.checkpoint is not None:
                    log.info("checkpoint saved at %s", self._stats.checkpoint)
                return
            except (RedisError, OSError) as exc:
                log.warning("final checkpoint save failed (%s), attempt %d/5", exc, attempt + 1)
                await asyncio.sleep(0.2 * 2**attempt)
        log.error("checkpoint not saved at shutdown; a restart resends events since the last one")
