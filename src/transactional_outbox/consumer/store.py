"""The deduplication store interface: what ``@idempotent_consumer`` and the runner call.

Two kinds of store, each with a sync and an async protocol:

- **Claim stores** (:class:`DedupStore`, :class:`AsyncDedupStore`): a worker
  *claims* an event id (with a token of its own), runs the handler, then
  *completes* the claim (the id is done: later deliveries are skipped) or
  *releases* it (the handler failed: a retry may claim it again). Redis and the
  in-memory stores are of this kind, and so is a store you write on your own
  table or service: implement the six methods below.
- **Inbox stores** (:class:`InboxStore`, :class:`AsyncInboxStore`): the
  handler runs inside the store's database transaction, which also records the
  id, so the handler's effects and the record commit together (the SQL stores).

The ``*_many`` methods are what :class:`ConsumerRunner` uses to deduplicate a
whole fetched batch in one round trip; the single-record methods are what the
decorator uses on its own, and what the runner uses for retries.

This module imports neither Redis nor SQLAlchemy.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from ..exceptions import ConfigurationError

__all__ = [
    "AsyncDedupStore",
    "AsyncInboxStore",
    "Claim",
    "ClaimResult",
    "ClaimStatus",
    "DedupStore",
    "InboxStore",
    "store_unavailable",
]


def store_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says the store cannot be reached for now (a lost connection, a
    timeout, a Redis failover or cluster slot move), not that a call was wrong."""
    if isinstance(exc, ConnectionError | TimeoutError):
        return True
    try:
        from redis import exceptions as redis_errors
    except ImportError:  # pragma: no cover - the stores that raise these need redis
        return False
    return isinstance(
        exc,
        redis_errors.ConnectionError  # MasterNotFoundError, BusyLoadingError among them
        | redis_errors.TimeoutError
        | redis_errors.ReadOnlyError  # a demoted primary, before the client moves on
        | redis_errors.ClusterDownError
        | redis_errors.TryAgainError,
    )


@dataclass(frozen=True, slots=True)
class Claim:
    """This worker's claim on one event id; ``token`` tells it apart from anyone else's.

    A store must only delete or overwrite a claim whose token matches (compare
    and delete), so a worker whose claim expired never frees the claim another
    worker took since.
    """

    event_id: uuid.UUID
    consumer_name: str | None
    token: str


class ClaimStatus(enum.Enum):
    """The outcome of claiming one id."""

    CLAIMED = "claimed"
    """This worker now holds the claim: run the handler."""
    DONE = "done"
    """The event was processed already: skip it."""
    BUSY = "busy"
    """Another worker holds a claim on it: wait for its outcome (or retry later)."""


@dataclass(frozen=True, slots=True)
class ClaimResult:
    """What :meth:`AsyncDedupStore.claim_many` says about one id (``claim`` set iff CLAIMED)."""

    status: ClaimStatus
    claim: Claim | None = None


@runtime_checkable
class AsyncDedupStore(Protocol):
    """A claim store for ``async def`` handlers (e.g. :class:`AsyncRedisStore`)."""

    async def claim(self, event_id: uuid.UUID, consumer_name: str | None) -> Claim | None:
        """Claim one id: the claim, or ``None`` if the event is done.

        If another worker holds it, wait for its outcome (done → ``None``;
        released or expired → claim it), or raise
        :class:`~transactional_outbox.EventInProgressError` when waiting longer
        is not wanted.
        """
        ...

    async def complete(self, claim: Claim) -> None:
        """Mark the claimed id done (the handler succeeded)."""
        ...

    async def release(self, claim: Claim) -> None:
        """Give the claim up (the handler failed), if it is still this one."""
        ...

    async def claim_many(
        self, event_ids: Sequence[uuid.UUID], consumer_name: str | None
    ) -> list[ClaimResult]:
        """Try to claim distinct ids at once, without waiting: one result per id, in order."""
        ...

    async def complete_many(self, claims: Sequence[Claim]) -> None:
        """:meth:`complete` for many claims at once."""
        ...

    async def release_many(self, claims: Sequence[Claim]) -> None:
        """:meth:`release` for many claims at once."""
        ...


@runtime_checkable
class DedupStore(Protocol):
    """A claim store for plain (sync) handlers (e.g. :class:`RedisStore`): the same, blocking."""

    def claim(self, event_id: uuid.UUID, consumer_name: str | None) -> Claim | None:
        """See :meth:`AsyncDedupStore.claim`."""
        ...

    def complete(self, claim: Claim) -> None:
        """See :meth:`AsyncDedupStore.complete`."""
        ...

    def release(self, claim: Claim) -> None:
        """See :meth:`AsyncDedupStore.release`."""
        ...

    def claim_many(
        self, event_ids: Sequence[uuid.UUID], consumer_name: str | None
    ) -> list[ClaimResult]:
        """See :meth:`AsyncDedupStore.claim_many`."""
        ...

    def complete_many(self, claims: Sequence[Claim]) -> None:
        """See :meth:`AsyncDedupStore.complete_many`."""
        ...

    def release_many(self, claims: Sequence[Claim]) -> None:
        """See :meth:`AsyncDedupStore.release_many`."""
        ...


@runtime_checkable
class AsyncInboxStore(Protocol):
    """An inbox store for ``async def handler(event, session)`` (e.g. :class:`AsyncSqlStore`)."""

    batch_transactions: bool
    """Whether the runner should handle a batch in one transaction (see :meth:`run_batch`)."""
    batch_concurrency: int
    """With ``batch_transactions``: how many such transactions may run at once (per runner)."""

    async def run_once(
        self,
        event_id: uuid.UUID,
        consumer_name: str | None,
        call: Callable[[Any], Awaitable[object]],
    ) -> bool:
        """In one transaction: record the id, ``await call(session)``, commit.

        ``False`` without calling if the id was recorded already; an exception
        from ``call`` rolls back both and propagates.
        """
        ...

    async def done_ids(
        self, event_ids: Sequence[uuid.UUID], consumer_name: str | None
    ) -> set[uuid.UUID]:
        """Which of ``event_ids`` are recorded already (one round trip)."""
        ...

    async def run_batch(
        self,
        consumer_name: str | None,
        calls: Sequence[tuple[uuid.UUID, Callable[[Any], Awaitable[object]]]],
    ) -> list[BaseException | None]:
        """Run many ``(event_id, call)`` in one transaction, each in its own savepoint.

        One result per call, in order: ``None`` if it ran and its id was
        recorded (or was recorded already), else the exception it raised (its
        savepoint was rolled back and its id is not recorded).
        """
        ...


@runtime_checkable
class InboxStore(Protocol):
    """An inbox store for plain ``handler(event, session)`` (e.g. :class:`SqlStore`)."""

    def run_once(
        self,
        event_id: uuid.UUID,
        consumer_name: str | None,
        call: Callable[[Any], object],
    ) -> bool:
        """See :meth:`AsyncInboxStore.run_once`."""
        ...


class ClaimTiming:
    """The timing settings of a claim-based store (Redis, in-memory), validated when
    set: a bad one is a :class:`ConfigurationError` naming the field and the value."""

    def __init__(
        self,
        *,
        processing_ttl_ms: int,
        done_ttl_ms: int | None,
        wait_timeout_ms: int | None,
        poll_interval_ms: int,
    ) -> None:
        _check_claim_timing(processing_ttl_ms, done_ttl_ms, poll_interval_ms)
        self.processing_ttl_ms = processing_ttl_ms
        self.done_ttl_ms = done_ttl_ms
        self.wait_timeout_ms = wait_timeout_ms
        self.poll_interval_ms = poll_interval_ms


def _check_claim_timing(
    processing_ttl_ms: int, done_ttl_ms: int | None, poll_interval_ms: int
) -> None:
    if processing_ttl_ms <= 0:
        raise ConfigurationError("processing_ttl_ms", f"must be > 0 (ms), got {processing_ttl_ms}")
    if done_ttl_ms is not None and done_ttl_ms <= 0:
        raise ConfigurationError(
            "done_ttl_ms", f"must be > 0 (ms), or None to keep forever, got {done_ttl_ms}"
        )
    if poll_interval_ms <= 0:
        raise ConfigurationError("poll_interval_ms", f"must be > 0 (ms), got {poll_interval_ms}")
