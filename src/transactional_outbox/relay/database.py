"""The source interface: what the relay's core needs of the database it reads.

The supervisor (:mod:`.pipeline`), the publish session, the watermark and the
checkpointer know no MySQL and no PostgreSQL. They ask a :class:`Database`
(one per relay) to check its server and resolve where a term starts
(:meth:`Database.prepare_start`), to open a :class:`Source` from a position
(a thread or child process that hands :class:`~.channel.SourceBatch`es to a
sink), and for a :class:`Head` that says how far behind the log the relay
is. Positions are opaque to the core (:class:`~.position.Position`): it only
compares, stores and prints them. Implementations: :mod:`.mysql` (the binlog)
and :mod:`.postgres` (logical replication); :func:`.pipeline.database_for`
picks one by the URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol, TypeVar

from .channel import Channel
from .position import Position
from .routing import TopicRouter

if TYPE_CHECKING:
    from .checkpoints import CheckpointStores
    from .stats import RelayStats

__all__ = ["Database", "Head", "Source", "follow_head", "until_reachable"]

log = logging.getLogger("transactional_outbox.relay")

T = TypeVar("T")


class Source(Protocol):
    """A running reader of committed outbox events (a thread or a child process)."""

    @property
    def connected(self) -> bool:
        """True while the source streams."""

    @property
    def reconnects(self) -> int:
        """Connections lost so far."""

    def start(self) -> None:
        """Start reading."""

    def stop(self) -> None:
        """Stop reading (wakes a blocked read; closes the sink)."""

    def join(self, timeout: float | None = None) -> None:
        """Wait for the reader to end."""

    def confirm(self, position: Position) -> None:
        """Every event before ``position`` is acknowledged and checkpointed: a server
        that keeps log for this reader (a PostgreSQL slot) may release it."""


class Head(Protocol):
    """The log's current end, polled from a worker thread for ``behind N B``."""

    def poll(self) -> None:
        """Read the head (blocking; errors make the figure unknown, never raise)."""

    def behind(self, position: Position | None) -> int | None:
        """Log bytes after ``position``, if known."""

    def close(self) -> None:
        """Close the connection."""


class Database(ABC):
    """One relay's database: its startup checks, its sources, its head."""

    kind: str
    """``mysql`` or ``postgresql``: names the database in health, metrics and logs."""

    server: object | None = None
    """What the last start learnt about the server (None before the first)."""

    @abstractmethod
    async def prepare_start(
        self, store: CheckpointStores, stats: RelayStats, stopping: asyncio.Event
    ) -> Position | None:
        """Check the server, resolve the term's start from the checkpoint; ``None`` if
        ``stopping`` was set while waiting for a server. Raises
        :class:`~transactional_outbox.OutboxError` subclasses for what a retry cannot fix."""

    @abstractmethod
    def open_source(
        self,
        start: Position,
        sink: Channel,
        *,
        router: TopicRouter,
        on_state: Callable[[str], None],
    ) -> Source:
        """A source (not started) that reads from ``start`` into ``sink``."""

    @abstractmethod
    def head(self, stats: RelayStats) -> Head:
        """A new head reader for this term."""

    async def release(self, position: Position) -> None:
        """The term ended with ``position`` checkpointed and its source stopped: a server
        that keeps log for the relay (a PostgreSQL slot) may forget what is before it.
        Never raises; nothing to do for MySQL."""
        return None

    def watch(
        self, start: Position, fail: Callable[[BaseException], None]
    ) -> asyncio.Future[None] | None:
        """While a session streams from ``start``: check now and then what its stream
        cannot show (a PostgreSQL publication that stops covering an outbox table);
        ``fail`` stops the session. Cancelled when the session ends; None when there
        is nothing to watch (MySQL: what could hide rows is in the binlog itself)."""
        return None

    def recheck(self, fail: Callable[[BaseException], None]) -> asyncio.Future[None] | None:
        """After a source reconnected: check again that the outbox rows reach what it
        reads (``fail`` stops the session); None when there is nothing to check."""
        return None


async def follow_head(
    head: Head,
    position: Callable[[], Position | None],
    report: Callable[[int | None], None],
    over: asyncio.Event,
) -> None:
    """Report how far ``position()`` is behind the head, about once a second, until ``over``.

    Reports ``None`` (unknown) when it ends, and closes ``head``.
    """
    try:
        while not over.is_set():
            await asyncio.to_thread(head.poll)
            report(head.behind(position()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(over.wait(), 1.0)
    finally:
        report(None)
        await asyncio.to_thread(head.close)


async def until_reachable(
    attempt: Callable[[], Awaitable[T]],
    *,
    retried: tuple[type[BaseException], ...],
    verdict: Callable[[BaseException], BaseException | None],
    stopping: asyncio.Event,
    max_delay: float,
) -> T | None:
    """``await attempt()`` until it returns, waiting out servers that cannot be reached yet.

    A ``retried`` error is judged by ``verdict``: ``None`` retries it (0.5 s, doubling up
    to ``max_delay``), the error itself is raised again, another one is raised in its
    place (a misconfiguration naming the setting). ``None`` if ``stopping`` is set while
    waiting.
    """
    delay = 0.5
    while True:
        try:
            return await attempt()
        except retried as exc:
            error = verdict(exc)
            if error is exc:
                raise
            if error is not None:
                raise error from None
            log.warning("cannot reach a server yet (%s); retrying in %.1fs", exc, delay)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), delay)
        if stopping.is_set():
            return None
        delay = min(delay * 2, max_delay)
