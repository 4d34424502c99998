"""A leader term: waiting for the lease, then holding it until stopped or lost.

:func:`wait_for_lease` returns once this relay holds the lease.
:class:`LeaderTerm` is one tenure: as an async context manager it renews the
lease in the background; :attr:`LeaderTerm.lost` is set (and ``on_lost``
called) when the lease is lost, by a refused renewal, an expiry, or a
refused fenced write reported through :meth:`LeaderTerm.lose`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from types import TracebackType

from redis.exceptions import RedisError

from .faults import redis_misconfiguration
from .leadership import Lease
from .stats import RelayStats

__all__ = ["LeaderTerm", "wait_for_lease"]

log = logging.getLogger("transactional_outbox.relay")


async def wait_for_lease(
    lease: Lease, *, name: str, renew_ms: int, stats: RelayStats, stopping: asyncio.Event
) -> bool:
    """Wait until this relay holds the lease (True) or ``stopping`` is set (False)."""
    announced = False
    while not stopping.is_set():
        wait = renew_ms / 1000
        try:
            if await lease.try_acquire():
                stats.role = "leader"
                stats.redis = "ok"
                log.info("leader of relay %r (fencing token %s)", name, lease.token)
                return True
            stats.redis = "ok"
            if not announced:
                log.info("standby: another relay named %r leads", name)
                announced = True
            # Try again as soon as the leader's lease would lapse (a killed
            # leader cannot renew it), not a whole renew interval later.
            wait = min(wait, (await lease.remaining_ms() + 20) / 1000)
        except (RedisError, OSError) as exc:
            fatal = redis_misconfiguration(exc)
            if fatal is not None:
                raise fatal from None
            stats.redis = "degraded"
            log.warning("cannot reach Redis for the lease (%s)", exc)
        stats.role = "standby"
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), wait)
    return False


class LeaderTerm:
    """One tenure as leader; renews the lease while entered.

    ``on_lost`` is called once, synchronously, when the term is lost, so the
    caller can stop publishing at once (not at its next await).
    """

    def __init__(
        self,
        lease: Lease,
        *,
        renew_ms: int,
        stats: RelayStats,
        on_lost: Callable[[], None] = lambda: None,
    ) -> None:
        self.lease = lease
        self.lost = asyncio.Event()
        self.reason = ""
        self._renew_ms = renew_ms
        self._stats = stats
        self._on_lost = on_lost
        # Besides cancelling it, tell the loop to end: a cancel that lands
        # inside a Redis call can be swallowed by the client (seen with
        # redis-py), and a loop left running keeps this relay from standing by.
        self._over = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"LeaderTerm(lost={self.lost.is_set()}, reason={self.reason!r})"

    def held(self) -> bool:
        """True while the lease is held by its own (local) clock and the term is not lost."""
        return not self.lost.is_set() and self.lease.held()

    def lose(self, why: str) -> None:
        """End the term: set :attr:`lost` and call ``on_lost`` (once)."""
        if not self.lost.is_set():
            self.reason = why
            self.lost.set()
            self._on_lost()

    async def __aenter__(self) -> LeaderTerm:
        self._task = asyncio.create_task(self._renew_loop(), name="outbox-lease")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._over.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _renew_loop(self) -> None:
        interval = self._renew_ms / 1000
        while not self._over.is_set():
            await asyncio.sleep(interval)
            try:
                if not await self.lease.renew():
                    self.lose("another relay holds the lease")
                    return
                # Redis answered: a failed renew or save before must not leave health
                # "degraded" while nothing else writes (an idle relay saves no checkpoint).
                self._stats.redis = "ok"
            except (RedisError, OSError) as exc:
                self._stats.redis = "degraded"
                log.warning("lease not renewed (%s)", exc)
            if not self.lease.held():
                self.lose("the lease expired before it could be renewed")
                return
