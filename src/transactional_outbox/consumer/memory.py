"""Claim stores in process memory: for unit tests of handlers, and single-process consumers.

Same semantics as the Redis stores (claim tokens, processing TTL, done TTL, a
concurrent duplicate waiting for the holder's outcome or raising
:class:`~transactional_outbox.EventInProgressError` after ``wait_timeout_ms``), but
nothing survives the process: a restarted consumer processes redeliveries again.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from ..exceptions import EventInProgressError
from .store import Claim, ClaimResult, ClaimStatus, ClaimTiming

__all__ = ["AsyncInMemoryStore", "InMemoryStore"]

_Key = tuple[str | None, uuid.UUID]


@dataclass(slots=True)
class _Entry:
    token: str | None  # None once done
    expires: float | None  # monotonic time; None: never


class _Table(ClaimTiming):
    """The pure state both stores share; callers hold the lock (sync) or the loop (async)."""

    def __init__(
        self,
        *,
        processing_ttl_ms: int,
        done_ttl_ms: int | None,
        wait_timeout_ms: int | None,
        poll_interval_ms: int,
    ) -> None:
        super().__init__(
            processing_ttl_ms=processing_ttl_ms,
            done_ttl_ms=done_ttl_ms,
            wait_timeout_ms=wait_timeout_ms,
            poll_interval_ms=poll_interval_ms,
        )
        self.entries: dict[_Key, _Entry] = {}

    def _live(self, key: _Key, now: float) -> _Entry | None:
        entry = self.entries.get(key)
        if entry is not None and entry.expires is not None and entry.expires <= now:
            del self.entries[key]
            return None
        return entry

    def try_claim(self, event_id: uuid.UUID, name: str | None, token: str) -> ClaimStatus:
        now = time.monotonic()
        entry = self._live((name, event_id), now)
        if entry is None:
            self.entries[(name, event_id)] = _Entry(token, now + self.processing_ttl_ms / 1000)
            return ClaimStatus.CLAIMED
        return ClaimStatus.DONE if entry.token is None else ClaimStatus.BUSY

    def complete(self, claim: Claim) -> None:
        # Done whoever holds it: the handler did succeed.
        expires = None if self.done_ttl_ms is None else time.monotonic() + self.done_ttl_ms / 1000
        self.entries[(claim.consumer_name, claim.event_id)] = _Entry(None, expires)

    def release(self, claim: Claim) -> None:
        key = (claim.consumer_name, claim.event_id)
        entry = self._live(key, time.monotonic())
        if entry is not None and entry.token == claim.token:
            del self.entries[key]

    def claim_many(self, event_ids: Sequence[uuid.UUID], name: str | None) -> list[ClaimResult]:
        token = _token()
        out = []
        for event_id in event_ids:
            status = self.try_claim(event_id, name, token)
            claim = Claim(event_id, name, token) if status is ClaimStatus.CLAIMED else None
            out.append(ClaimResult(status, claim))
        return out

    def deadline(self) -> float | None:
        return (
            None if self.wait_timeout_ms is None else time.monotonic() + self.wait_timeout_ms / 1000
        )

    def check_wait(self, event_id: uuid.UUID, name: str | None, deadline: float | None) -> None:
        if deadline is not None and time.monotonic() >= deadline:
            raise EventInProgressError(f"{name}:{event_id}" if name else str(event_id))

    def is_done(self, event_id: uuid.UUID, name: str | None = None) -> bool:
        entry = self._live((name, event_id), time.monotonic())
        return entry is not None and entry.token is None


def _token() -> str:
    return f"claim:{secrets.token_hex(16)}"


class AsyncInMemoryStore:
    """An :class:`AsyncDedupStore` in this process's memory (one event loop).

    Settings as :class:`AsyncRedisStore` (``processing_ttl_ms``, ``done_ttl_ms``,
    ``wait_timeout_ms``, ``poll_interval_ms``). :meth:`is_done` tells a test whether
    an event was marked done.
    """

    def __init__(
        self,
        *,
        processing_ttl_ms: int = 60_000,
        done_ttl_ms: int | None = None,
        wait_timeout_ms: int | None = None,
        poll_interval_ms: int = 10,
    ) -> None:
        self._table = _Table(
            processing_ttl_ms=processing_ttl_ms,
            done_ttl_ms=done_ttl_ms,
            wait_timeout_ms=wait_timeout_ms,
            poll_interval_ms=poll_interval_ms,
        )

    def is_done(self, event_id: uuid.UUID, consumer_name: str | None = None) -> bool:
        """Whether ``event_id`` is marked done for ``consumer_name``."""
        return self._table.is_done(event_id, consumer_name)

    async def claim(self, event_id: uuid.UUID, consumer_name: str | None) -> Claim | None:
        """Claim ``event_id``, waiting for another holder: the claim, or ``None`` if done."""
        table = self._table
        deadline = table.deadline()
        while True:
            token = _token()
            status = table.try_claim(event_id, consumer_name, token)
            if status is ClaimStatus.CLAIMED:
                return Claim(event_id, consumer_name, token)
            if status is ClaimStatus.DONE:
                return None
            table.check_wait(event_id, consumer_name, deadline)
            await asyncio.sleep(table.poll_interval_ms / 1000)

    async def complete(self, claim: Claim) -> None:
        """Mark the claim's event done."""
        self._table.complete(claim)

    async def release(self, claim: Claim) -> None:
        """Forget the claim if it is still this one."""
        self._table.release(claim)

    async def claim_many(
        self, event_ids: Sequence[uuid.UUID], consumer_name: str | None
    ) -> list[ClaimResult]:
        """Claim distinct ids without waiting."""
        return self._table.claim_many(event_ids, consumer_name)

    async def complete_many(self, claims: Sequence[Claim]) -> None:
        """Mark many claims' events done."""
        for claim in claims:
            self._table.complete(claim)

    async def release_many(self, claims: Sequence[Claim]) -> None:
        """Forget many claims, each if still this one."""
        for claim in claims:
            self._table.release(claim)

    def __repr__(self) -> str:
        return f"AsyncInMemoryStore(entries={len(self._table.entries)})"


class InMemoryStore:
    """A :class:`DedupStore` in this process's memory, safe across threads.

    Same settings and semantics as :class:`AsyncInMemoryStore`; a concurrent
    duplicate blocks its thread while it waits.
    """

    def __init__(
        self,
        *,
        processing_ttl_ms: int = 60_000,
        done_ttl_ms: int | None = None,
        wait_timeout_ms: int | None = None,
        poll_interval_ms: int = 10,
    ) -> None:
        self._table = _Table(
            processing_ttl_ms=processing_ttl_ms,
            done_ttl_ms=done_ttl_ms,
            wait_timeout_ms=wait_timeout_ms,
            poll_interval_ms=poll_interval_ms,
        )
        self._lock = threading.Lock()

    def is_done(self, event_id: uuid.UUID, consumer_name: str | None = None) -> bool:
        """Whether ``event_id`` is marked done for ``consumer_name``."""
        with self._lock:
            return self._table.is_done(event_id, consumer_name)

    def claim(self, event_id: uuid.UUID, consumer_name: str | None) -> Claim | None:
        """See :meth:`AsyncInMemoryStore.claim`."""
        table = self._table
        deadline = table.deadline()
        while True:
            token = _token()
            with self._lock:
                status = table.try_claim(event_id, consumer_name, token)
            if status is ClaimStatus.CLAIMED:
                return Claim(event_id, consumer_name, token)
            if status is ClaimStatus.DONE:
                return None
            table.check_wait(event_id, consumer_name, deadline)
            time.sleep(table.poll_interval_ms / 1000)

    def complete(self, claim: Claim) -> None:
        """See :meth:`AsyncInMemoryStore.complete`."""
        with self._lock:
            self._table.complete(claim)

    def release(self, claim: Claim) -> None:
        """See :meth:`AsyncInMemoryStore.release`."""
        with self._lock:
            self._table.release(claim)

    def claim_many(
        self, event_ids: Sequence[uuid.UUID], consumer_name: str | None
    ) -> list[ClaimResult]:
        """See :meth:`AsyncInMemoryStore.claim_many`."""
        with self._lock:
            return self._table.claim_many(event_ids, consumer_name)

    def complete_many(self, claims: Sequence[Claim]) -> None:
        """See :meth:`AsyncInMemoryStore.complete_many`."""
        with self._lock:
            for claim in claims:
                self._table.complete(claim)

    def release_many(self, claims: Sequence[Claim]) -> None:
        """See :meth:`AsyncInMemoryStore.release_many`."""
        with self._lock:
            for claim in claims:
                self._table.release(claim)

    def __repr__(self) -> str:
        return f"InMemoryStore(entries={len(self._table.entries)})"
