"""The offset watermark: a partition's commit offset never passes a record not yet done."""

from __future__ import annotations

import random

import pytest

from transactional_outbox.consumer import OffsetWatermark


def test_nothing_added_commits_nothing() -> None:
    assert OffsetWatermark().commit_offset() is None


def test_commit_offset_stops_at_the_lowest_record_not_done() -> None:
    wm = OffsetWatermark()
    wm.add([5, 6, 7, 8])
    assert wm.commit_offset() == 5
    wm.done(7)
    wm.done(8)
    assert wm.commit_offset() == 5  # 5 and 6 still running
    wm.done(5)
    assert wm.commit_offset() == 6
    assert wm.pending == 1
    wm.done(6)
    assert wm.commit_offset() == 9  # all done: one past the last
    assert wm.pending == 0


def test_gaps_in_offsets_are_fine() -> None:
    # Compacted topics and transaction markers leave holes between offsets.
    wm = OffsetWatermark()
    wm.add([10, 14, 20])
    wm.done(14)
    assert wm.commit_offset() == 10
    wm.done(10)
    assert wm.commit_offset() == 20
    wm.done(20)
    assert wm.commit_offset() == 21


def test_offsets_must_be_added_in_ascending_order() -> None:
    wm = OffsetWatermark()
    wm.add([3, 4])
    with pytest.raises(ValueError, match="offset 2 added after 4"):
        wm.add([2])


def test_random_completion_order_never_commits_past_an_unfinished_record() -> None:
    rng = random.Random(7)
    offsets = sorted(rng.sample(range(1000), 200))
    wm = OffsetWatermark()
    wm.add(offsets)
    order = offsets[:]
    rng.shuffle(order)
    finished: set[int] = set()
    for offset in order:
        wm.done(offset)
        finished.add(offset)
        commit = wm.commit_offset()
        assert commit is not None
        # Everything below the commit offset is done, and the offset itself is not.
        assert all(o in finished for o in offsets if o < commit)
        assert commit not in finished or commit == offsets[-1] + 1
    assert wm.commit_offset() == offsets[-1] + 1
