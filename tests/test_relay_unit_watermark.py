"""Watermark: the low watermark over transactions (no servers)."""

from __future__ import annotations

import random

import pytest

from transactional_outbox.relay.position import BinlogPosition
from transactional_outbox.relay.watermark import Watermark


def pos(n: int) -> BinlogPosition:
    return BinlogPosition(file="mysql-bin.000001", pos=1000 + n)


def test_starts_at_the_given_position() -> None:
    start = BinlogPosition(file="mysql-bin.000007", pos=4, gtid="0-1-9")
    wm = Watermark(start)
    assert wm.position == start
    assert wm.outstanding == 0
    assert wm.pending_transactions == 0
    assert Watermark().position is None


def test_single_transaction_advances_only_when_all_acked() -> None:
    wm = Watermark()
    t = wm.add_events(3)
    wm.commit(pos(1))
    assert wm.position is None
    assert wm.outstanding == 3
    assert wm.pending_transactions == 1
    wm.ack(t)
    wm.ack(t)
    assert wm.position is None
    wm.ack(t)
    assert wm.position == pos(1)
    assert wm.outstanding == 0
    assert wm.pending_transactions == 0


def test_acked_before_commit_advances_on_commit() -> None:
    wm = Watermark()
    t = wm.add_events(2)
    wm.ack(t, 2)
    assert wm.position is None  # the transaction is still open
    assert wm.pending_transactions == 0
    wm.commit(pos(1))
    assert wm.position == pos(1)


def test_out_of_order_acks_never_pass_an_unacked_event() -> None:
    wm = Watermark()
    t1 = wm.add_events(2)
    wm.commit(pos(1))
    t2 = wm.add_events(1)
    wm.commit(pos(2))
    t3 = wm.add_events(1)
    wm.commit(pos(3))
    assert (t1, t2, t3) == (t1, t1 + 1, t1 + 2)

    wm.ack(t3)
    wm.ack(t2)
    assert wm.position is None  # t1 still has two events out
    assert wm.pending_transactions == 3
    wm.ack(t1)
    assert wm.position is None
    wm.ack(t1)
    # everything acked: jumps straight over t2 and t3
    assert wm.position == pos(3)
    assert wm.pending_transactions == 0
    assert wm.outstanding == 0


def test_stops_at_the_first_transaction_with_an_unacked_event() -> None:
    wm = Watermark()
    t1 = wm.add_events(1)
    wm.commit(pos(1))
    t2 = wm.add_events(1)
    wm.commit(pos(2))
    t3 = wm.add_events(1)
    wm.commit(pos(3))
    wm.ack(t1)
    wm.ack(t3)
    assert wm.position == pos(1)
    assert wm.pending_transactions == 2
    wm.ack(t2)
    assert wm.position == pos(3)


def test_empty_transaction_advances_immediately_when_all_before_acked() -> None:
    wm = Watermark(pos(0))
    wm.commit(pos(1))
    assert wm.position == pos(1)
    assert wm.pending_transactions == 0


def test_empty_transaction_waits_behind_an_unacked_one() -> None:
    wm = Watermark()
    t1 = wm.add_events(1)
    wm.commit(pos(1))
    wm.commit(pos(2))  # empty
    wm.commit(pos(3))  # empty
    assert wm.position is None
    assert wm.pending_transactions == 3
    wm.ack(t1)
    assert wm.position == pos(3)
    assert wm.pending_transactions == 0


def test_transaction_split_across_several_add_events_calls() -> None:
    wm = Watermark()
    a = wm.add_events(2)
    b = wm.add_events(3)
    c = wm.add_events(0)
    assert a == b == c  # one transaction, one ticket
    wm.commit(pos(1))
    assert wm.outstanding == 5
    wm.ack(a, 2)
    wm.ack(b, 2)
    assert wm.position is None
    wm.ack(c, 1)
    assert wm.position == pos(1)


def test_ticket_changes_after_commit() -> None:
    wm = Watermark()
    t1 = wm.add_events(1)
    wm.commit(pos(1))
    t2 = wm.add_events(1)
    assert t2 != t1
    wm.ack(t2)
    wm.commit(pos(2))
    assert wm.position is None  # t1 still out
    wm.ack(t1)
    assert wm.position == pos(2)


def test_over_ack_raises_and_changes_nothing() -> None:
    wm = Watermark()
    t = wm.add_events(2)
    wm.commit(pos(1))
    wm.add_events(1)  # a later, open transaction
    with pytest.raises(ValueError, match="acked 3 events"):
        wm.ack(t, 3)
    assert wm.outstanding == 3
    wm.ack(t, 2)
    assert wm.position == pos(1)


def test_over_ack_of_a_retired_transaction_raises() -> None:
    wm = Watermark()
    t1 = wm.add_events(1)
    wm.commit(pos(1))
    t2 = wm.add_events(2)  # open transaction
    wm.ack(t1)
    assert wm.position == pos(1)
    # t1 is fully acked and retired: another ack of it must not land on t2.
    with pytest.raises(ValueError):
        wm.ack(t1)
    assert wm.outstanding == 2
    wm.ack(t2, 2)
    assert wm.outstanding == 0


def test_ack_of_an_unknown_ticket_raises() -> None:
    wm = Watermark()
    t = wm.add_events(1)
    with pytest.raises(ValueError):
        wm.ack(t + 1)
    with pytest.raises(ValueError):
        wm.ack(t, -1)
    assert wm.outstanding == 1


def _model(
    txs: list[tuple[int, BinlogPosition | None]], acked: list[int], start: BinlogPosition | None
) -> BinlogPosition | None:
    """Brute force: end of the longest prefix of committed, fully acked transactions."""
    result = start
    for (count, end), done in zip(txs, acked, strict=True):
        if end is None or done < count:
            break
        result = end
    return result


@pytest.mark.parametrize("seed", range(40))
def test_matches_a_brute_force_model(seed: int) -> None:
    rng = random.Random(seed)
    start = BinlogPosition(file="mysql-bin.000001", pos=4)
    wm = Watermark(start)
    txs: list[tuple[int, BinlogPosition | None]] = [(0, None)]  # (events, end) per transaction
    acked = [0]
    unacked: list[int] = []  # one entry per unacked event: its transaction index
    ticket_of_tx: dict[int, int] = {}
    next_pos = 100
    for _ in range(400):
        op = rng.random()
        if op < 0.35:
            n = rng.choice([0, 1, 1, 2, 5])
            ticket = wm.add_events(n)
            i = len(txs) - 1
            assert ticket_of_tx.setdefault(i, ticket) == ticket
            txs[i] = (txs[i][0] + n, None)
            unacked.extend([i] * n)
        elif op < 0.55:
            next_pos += rng.randint(1, 50)
            end = BinlogPosition(file="mysql-bin.000001", pos=next_pos)
            wm.commit(end)
            txs[-1] = (txs[-1][0], end)
            txs.append((0, None))
            acked.append(0)
        elif unacked:
            k = rng.randrange(len(unacked))
            i = unacked[k]
            # ack a random number of this transaction's unacked events at once
            same = [j for j, t in enumerate(unacked) if t == i]
            count = rng.randint(1, len(same))
            for j in reversed(same[:count]):
                unacked.pop(j)
            wm.ack(ticket_of_tx[i], count)
            acked[i] += count
        assert wm.position == _model(txs, acked, start)
        assert wm.outstanding == len(unacked)
        closed = sum(1 for _, end in txs if end is not None)
        assert wm.pending_transactions == closed - _model_prefix_len(txs, acked)


def _model_prefix_len(txs: list[tuple[int, BinlogPosition | None]], acked: list[int]) -> int:
    n = 0
    for (count, end), done in zip(txs, acked, strict=True):
        if end is None or done < count:
            break
        n += 1
    return n


@pytest.mark.parametrize("seed", range(20))
def test_all_acked_in_random_order_reaches_the_last_commit(seed: int) -> None:
    rng = random.Random(1000 + seed)
    wm = Watermark()
    events: list[int] = []
    last = None
    for k in range(rng.randint(1, 30)):
        n = rng.randint(0, 4)
        t = wm.add_events(n)
        events.extend([t] * n)
        last = pos(k)
        wm.commit(last)
    rng.shuffle(events)
    for t in events:
        assert wm.position != last  # an event is still out
        wm.ack(t)
    assert wm.position == last
    assert wm.outstanding == 0
    assert wm.pending_transactions == 0
