"""Saving the acknowledged position to Redis and Kafka, fenced by the leader term.

The :class:`Checkpointer` saves the low watermark on a timer and once more
at the end of a term: first to Redis (a fenced script; a refused write
loses the term), then, while the term still holds its lease, to the Kafka
checkpoint topic with the same fencing token and save number. The Kafka
write runs beside the timer (one at a time, bounded in time), so a slow or
unreachable Kafka never delays the Redis copy; it is also written while
Redis is unreachable, which is when a second copy matters. After each
Redis write that succeeded, ``on_saved`` gets the position (a PostgreSQL
relay then confirms it to its slot: the server keeps WAL until then).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable

from redis.exceptions import RedisError

from .checkpoints import CheckpointStores
from .position import Position
from .stats import RelayStats
from .term import LeaderTerm

__all__ = ["Checkpointer"]

log = logging.getLogger("transactional_outbox.relay")

# Save numbers of this process: with the token, they order the copies of one term.
_SAVES = itertools.count(1)
# How long a stop waits for the Kafka copy. A write is bounded by the request timeout
# (up to 30 s), and one that waits for a missing checkpoint topic (creation off) or an
# unreachable broker made every SIGTERM take that long (measured: 30 s in
# tests/test_relay_topics.py). The Redis copy is written first and is enough to resume;
# the Kafka copy catches up at the next term's first save.
SHUTDOWN_KAFKA_WAIT = 5.0


class Checkpointer:
    """Saves ``position()`` (the acknowledged position) for one leader term."""

    def __init__(
        self,
        stores: CheckpointStores,
        term: LeaderTerm,
        stats: RelayStats,
        position: Callable[[], Position | None],
        *,
        on_saved: Callable[[Position], None] = lambda position: None,
    ) -> None:
        self._stores = stores
        self._on_saved = on_saved
        self._term = term
        self._stats = stats
        self._position = position
        self._kafka_task: asyncio.Task[None] | None = None
        self._kafka_saved: Position | None = None
        self._kafka_failing = False
        self._kafka_given_up = False  # at shutdown, after SHUTDOWN_KAFKA_WAIT

    def __repr__(self) -> str:
        return f"Checkpointer({self._stores!r}, saved={self._stats.checkpoint})"

    async def save(self) -> None:
        """Save the position if it moved; lose the term if the fence refuses.

        Raises the Redis error after starting the Kafka write, if Redis failed.
        """
        position = self._position()
        if position is None or not position.resumable:
            return
        st = self._stats
        to_redis = position != st.checkpoint
        to_kafka = (
            self._stores.kafka is not None
            and not self._kafka_given_up
            and position != self._kafka_saved
            and (self._kafka_task is None or self._kafka_task.done())
        )
        if not (to_redis or to_kafka):
            return
        value = position.encode()
        seq = next(_SAVES)
        token = self._term.lease.token
        redis_error: BaseException | None = None
        if to_redis:
            try:
                saved = await self._stores.redis.save_value(value, fence=self._term.lease, seq=seq)
            except (RedisError, OSError) as exc:
                redis_error = exc
            else:
                if not saved:
                    self._term.lose("a newer leader took over: checkpoint write refused")
                    return
                st.checkpoint = position
                st.checkpoint_saved_at = time.monotonic()
                st.checkpoints_saved += 1
                st.redis = "ok"
                self._on_saved(position)
        # Kafka only while the lease is ours by our own clock: a stale leader's copy
        # carries a lower token than the newer leader's and loses at load anyway.
        if to_kafka and token is not None and self._term.held():
            self._kafka_task = asyncio.create_task(
                self._write_kafka(token, seq, value, position), name="outbox-checkpoint-kafka"
            )
        if redis_error is not None:
            raise redis_error

    async def _write_kafka(self, token: int, seq: int, value: str, position: Position) -> None:
        kafka = self._stores.kafka
        assert kafka is not None
        try:
            await kafka.write(token=token, seq=seq, value=value)
        except Exception as exc:  # any failure: the Redis copy stands, retried next tick
            if not self._kafka_failing:
                self._kafka_failing = True
                log.warning(
                    "checkpoint copy not written to %s (%s); retrying with every save",
                    kafka.where,
                    f"{type(exc).__name__}: {exc}" if str(exc) else "no acknowledgement in time",
                )
            return
        self._kafka_saved = position
        if self._kafka_failing:
            self._kafka_failing = False
            log.info("checkpoint copy written to %s again", kafka.where)

    async def run(self, over: asyncio.Event, *, interval: float, kafka_timeout: float) -> None:
        """Save now (the start position) and every ``interval`` seconds until ``over``
        is set or the term is lost.

        The same tick checks that Kafka acknowledges (within ``kafka_timeout``).
        """
        first = True
        while not over.is_set() and not self._term.lost.is_set():
            if not first:
                await asyncio.sleep(interval)
                self._stats.check_kafka_progress(kafka_timeout)
            first = False
            try:
                await self.save()
            except (RedisError, OSError) as exc:
                self._stats.redis = "degraded"
                self._stats.redis_errors += 1
                log.warning("checkpoint not saved (%s); retrying", exc)

    async def final_save(self) -> None:
        """Save at the end of a term to both stores, retrying Redis a few times.

        Waits for the Kafka copy at most :data:`SHUTDOWN_KAFKA_WAIT` seconds in all.
        """
        deadline = time.monotonic() + SHUTDOWN_KAFKA_WAIT
        await self._settle_kafka(deadline)
        for attempt in range(5):
            try:
                await self.save()
                await self._settle_kafka(deadline)
                if self._stats.checkpoint is not None:
                    log.info("checkpoint saved at %s", self._stats.checkpoint)
                return
            except (RedisError, OSError) as exc:
                log.warning("final checkpoint save failed (%s), attempt %d/5", exc, attempt + 1)
                await self._settle_kafka(deadline)
                await asyncio.sleep(0.2 * 2**attempt)
        log.error("checkpoint not saved at shutdown; a restart resends events since the last one")

    async def _settle_kafka(self, deadline: float) -> None:
        """Wait for the Kafka write in flight until ``deadline`` (monotonic), then give
        it up with a WARNING (the Redis copy stands)."""
        task = self._kafka_task
        if task is None or task.done():
            return
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(task), max(0.0, deadline - time.monotonic()))
        if not task.done():
            self._kafka_given_up = True  # no new write for the rest of this stop
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            kafka = self._stores.kafka
            log.warning(
                "checkpoint copy not written to %s at shutdown (no answer within %.0fs); "
                "the Redis copy is saved",
                kafka.where if kafka is not None else "Kafka",
                SHUTDOWN_KAFKA_WAIT,
            )

    async def abandon(self) -> None:
        """Stop a Kafka write still running (the term was lost)."""
        task, self._kafka_task = self._kafka_task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
