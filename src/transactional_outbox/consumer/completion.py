"""Marking handled claims done in batches (group commit), for the runner's batch path."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from .store import Claim, store_unavailable

__all__ = ["Completer"]

logger = logging.getLogger("transactional_outbox.consumer")

T = TypeVar("T")


class Completer(Generic[T]):
    """One ``complete_many`` in flight; claims added meanwhile go in the next call.

    ``on_done(item)`` runs for each item once its claim is marked done. A call
    that fails is retried with ``backoff(n)`` up to ``attempts`` times, then
    :meth:`drain` raises: the events were handled but are not marked done, so
    they must not be committed (their claims expire and they are redelivered).
    A store that cannot be reached (:func:`.store.store_unavailable`) is waited
    for beyond ``attempts``, until it answers or ``stopping`` is set: stopping the
    runner for a failover would gain nothing.
    """

    def __init__(
        self,
        complete_many: Callable[[list[Claim]], Awaitable[None]],
        on_done: Callable[[T], None],
        *,
        attempts: int,
        backoff: Callable[[int], float],
        stopping: asyncio.Event | None = None,
    ) -> None:
        self._complete_many = complete_many
        self._on_done = on_done
        self._attempts = attempts
        self._backoff = backoff
        self._stopping = stopping or asyncio.Event()
        self._waiting: list[tuple[Claim, T]] = []
        self._task: asyncio.Task[None] | None = None
        self._error: BaseException | None = None

    def add(self, claim: Claim, item: T) -> None:
        """Mark ``claim`` done soon, then call ``on_done(item)``."""
        self._waiting.append((claim, item))
        if self._task is None and self._error is None:
            self._task = asyncio.ensure_future(self._flush())

    async def drain(self) -> None:
        """Wait until everything added is marked done; raise if that failed."""
        while self._task is not None:
            await self._task
        error, self._error = self._error, None
        if error is not None:
            raise error

    async def _flush(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                await self._complete([claim for claim, _ in batch])
                for _, item in batch:
                    self._on_done(item)
        except BaseException as exc:
            self._error = exc
        finally:
            self._task = None

    async def _complete(self, claims: list[Claim]) -> None:
        failures = 0
        while True:
            try:
                await self._complete_many(claims)
                return
            except Exception as exc:
                # Handled but not marked done: retry (the claims hold for
                # processing_ttl_ms); give up and stop rather than dead-letter
                # events that were handled.
                failures += 1
                waiting = store_unavailable(exc) and not self._stopping.is_set()
                if failures >= self._attempts and not waiting:
                    raise
                logger.warning("marking %d events done failed, retrying: %r", len(claims), exc)
                await asyncio.sleep(self._backoff(min(failures, self._attempts)))
