"""The hand-off of the binlog source's batches: from its thread to asyncio.

:class:`SourceBatch` is what the source hands over; :class:`BatchSink` where
(a :class:`Channel`, or the pipe of a source in its own process); a
:class:`Channel` is the bounded hand-off to the relay's event loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from .position import Position
from .routing import KafkaRecord
from .rowrecord import RejectedRow

__all__ = ["BatchSink", "Channel", "ChannelClosed", "SourceBatch"]


class ChannelClosed(Exception):
    """The channel was closed: the relay is stopping."""


@dataclass(frozen=True, slots=True)
class SourceBatch:
    """The Kafka records of outbox rows read from the binlog, in binlog order.

    A row that is no valid event keeps its place as a :class:`RejectedRow`.

    ``commit`` is set when the batch ends at a transaction's commit: the
    position to resume from after it. A large transaction arrives in several
    batches, all but the last with ``commit=None``.

    ``tables``: with many outbox tables, how many of the records came from each
    (``"schema.table"``); None with one.
    """

    records: list[KafkaRecord | RejectedRow]
    commit: Position | None
    tables: dict[str, int] | None = None


class BatchSink(Protocol):
    """Where a :class:`BinlogSource` hands its batches: a :class:`Channel`, or a pipe
    to the relay when the source runs in its own process."""

    def put(self, batch: SourceBatch) -> bool:
        """Hand over ``batch`` (may block); False once the sink is closed."""

    def fail(self, error: BaseException) -> None:
        """Report a fatal source error."""

    def close(self) -> None:
        """Refuse later batches."""


class Channel:
    """A bounded hand-off from one producer thread to one asyncio consumer.

    The thread blocks in :meth:`put` while more than ``max_events`` are
    waiting; the consumer takes everything waiting in one :meth:`get`, so a
    busy stream costs one wake-up per drain, not one per transaction.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, *, max_events: int) -> None:
        self._loop = loop
        self._max = max_events
        self._cond = threading.Condition()
        self._items: deque[SourceBatch] = deque()
        self._size = 0
        self._ready = asyncio.Event()
        self._sleeping = False
        self._closed = False
        self._error: BaseException | None = None

    def put(self, batch: SourceBatch) -> bool:
        """Hand over ``batch``; False if the channel was closed meanwhile."""
        with self._cond:
            while self._size >= self._max and not self._closed:
                self._cond.wait(0.5)
            if self._closed:
                return False
            self._items.append(batch)
            self._size += len(batch.records) or 1
            wake, self._sleeping = self._sleeping, False
        if wake:
            self._loop.call_soon_threadsafe(self._ready.set)
        return True

    def fail(self, error: BaseException) -> None:
        """Report a fatal source error to the consumer."""
        with self._cond:
            self._error = error
            wake, self._sleeping = self._sleeping, False
        if wake:
            self._loop.call_soon_threadsafe(self._ready.set)

    async def get(self) -> list[SourceBatch]:
        """Everything waiting, in order (at least one batch). Raises the source's error."""
        while True:
            with self._cond:
                if self._items:
                    out = list(self._items)
                    self._items.clear()
                    self._size = 0
                    self._cond.notify_all()
                    return out
                if self._error is not None:
                    raise self._error
                if self._closed:
                    raise ChannelClosed
                self._sleeping = True
                self._ready.clear()
            await self._ready.wait()

    def close(self) -> None:
        """Release a blocked producer; later puts are refused."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._loop.call_soon_threadsafe(self._ready.set)

    @property
    def depth(self) -> int:
        """Events waiting to be taken."""
        return self._size
