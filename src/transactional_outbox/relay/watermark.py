"""The low watermark: which binlog position is safe to checkpoint. Pure.

Events are published concurrently and acknowledged out of order (different
partitions), but a checkpoint may only name the end of a transaction whose
events, and every earlier transaction's events, are all acknowledged.
Otherwise a crash after the checkpoint would skip an unacknowledged event.

The stream is cut into segments; each segment holds the events read since the
previous commit and is closed by the commit's position. The watermark is the
position of the last closed segment with nothing outstanding before it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from .position import Position

__all__ = ["Watermark"]


@dataclass(slots=True)
class _Segment:
    outstanding: int = 0
    end: Position | None = None  # None while the transaction is still open
    tables: dict[str, int] | None = None  # events by outbox table (many tables only)


class Watermark:
    """Tracks outstanding events per transaction and yields the safe position.

    Usage: :meth:`add_events` as events are handed to the publisher (it
    returns a segment ticket), :meth:`ack` once per event when Kafka confirms
    it, :meth:`commit` when the source reads a transaction's commit.
    :attr:`position` is the newest checkpointable position.

    With many outbox tables, ``done_by_table`` counts each table's events as
    their segment is fully acknowledged (published or dead-lettered).
    """

    def __init__(
        self, start: Position | None = None, done_by_table: dict[str, int] | None = None
    ) -> None:
        self._segments: deque[_Segment] = deque([_Segment()])
        self._first_id = 0  # ticket of self._segments[0]
        self.position: Position | None = start
        self.outstanding = 0
        self._done_by_table = done_by_table

    def add_events(self, count: int, tables: dict[str, int] | None = None) -> int:
        """Register ``count`` events of the open transaction (``tables``: how many of
        each outbox table); return their ticket."""
        seg = self._segments[-1]
        seg.outstanding += count
        self.outstanding += count
        if tables:
            if seg.tables is None:
                seg.tables = dict(tables)
            else:
                for name, n in tables.items():
                    seg.tables[name] = seg.tables.get(name, 0) + n
        return self._first_id + len(self._segments) - 1

    def commit(self, end: Position) -> None:
        """Close the open transaction at ``end`` (the position after its commit)."""
        self._segments[-1].end = end
        self._segments.append(_Segment())
        self._advance()

    def ack(self, ticket: int, count: int = 1) -> None:
        """Acknowledge ``count`` events of segment ``ticket``."""
        index = ticket - self._first_id
        if count < 0 or index >= len(self._segments) or (index < 0 and count):
            # index < 0: a retired segment, every event of which was already acked
            # (a negative index must never wrap round to a live segment).
            raise ValueError(f"segment {ticket} acked {count} events: no such open events")
        if index < 0:
            return
        seg = self._segments[index]
        if count > seg.outstanding:
            raise ValueError(f"segment {ticket} acked {count} events, only {seg.outstanding} open")
        seg.outstanding -= count
        self.outstanding -= count
        if ticket == self._first_id:
            self._advance()

    def _advance(self) -> None:
        segs = self._segments
        while len(segs) > 1 and segs[0].outstanding == 0:
            done = segs.popleft()
            self._first_id += 1
            if done.end is not None:
                self.position = done.end
            if done.tables and self._done_by_table is not None:
                by_table = self._done_by_table
                for name, n in done.tables.items():
                    by_table[name] = by_table.get(name, 0) + n

    @property
    def pending_transactions(self) -> int:
        """Closed transactions not yet fully acknowledged."""
        return len(self._segments) - 1
