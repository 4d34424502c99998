"""Which offset of a partition may be committed when records finish out of order.

Records of different keys in one partition run concurrently, so offset 7 may be
done before offset 5. Kafka's committed offset means "everything before it is
done", so only the lowest record not yet done bounds it: the watermark.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable

__all__ = ["OffsetWatermark"]


class OffsetWatermark:
    """Tracks the in-flight offsets of one partition; :meth:`commit_offset` is safe to commit.

    ::

        wm = OffsetWatermark()
        wm.add([5, 6, 7])
        wm.done(7); wm.done(5)
        wm.commit_offset()   # 6: offset 6 is not done, so 6 is redelivered after a crash
        wm.done(6)
        wm.commit_offset()   # 8
    """

    __slots__ = ("_done", "_heap", "_next")

    def __init__(self) -> None:
        self._heap: list[int] = []  # offsets added and not yet known done-in-order
        self._done: set[int] = set()
        self._next: int | None = None  # one past the highest offset added

    def add(self, offsets: Iterable[int]) -> None:
        """Start tracking ``offsets`` (ascending, above any added before)."""
        for offset in offsets:
            if self._next is not None and offset < self._next:
                raise ValueError(f"offset {offset} added after {self._next - 1}")
            heapq.heappush(self._heap, offset)
            self._next = offset + 1

    def done(self, offset: int) -> None:
        """Mark ``offset`` (added before) done."""
        self._done.add(offset)
        heap = self._heap
        while heap and heap[0] in self._done:
            self._done.discard(heapq.heappop(heap))

    @property
    def end(self) -> int | None:
        """One past the highest offset added (``None`` before any)."""
        return self._next

    @property
    def pending(self) -> int:
        """How many added offsets are not done."""
        return len(self._heap) - len(self._done)

    def commit_offset(self) -> int | None:
        """The offset to commit: the lowest not done, else one past the last added.

        ``None`` before anything was added.
        """
        if self._heap:
            return self._heap[0]
        return self._next
