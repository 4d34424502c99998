"""Record the outbox events sessions commit, as they commit.

How: the session reports each write of events (``session.write_hooks``); the
events are kept against the transaction they were written in (the innermost
SAVEPOINT, else the root) and follow SQLAlchemy's public session events:

- ``after_commit`` of a SAVEPOINT (a release) hands its events to the enclosing
  SAVEPOINT or root transaction; ``after_commit`` of the root transaction, which
  SQLAlchemy fires once the database committed, appends them to every open
  capture, so captures see commit order;
- ``after_transaction_end`` drops whatever a transaction still holds: it ended
  without committing (rollback, rolled-back SAVEPOINT, close without commit).

A capture records the events written and committed while it is open: not those
written before it opened, nor those whose transaction commits after it closed.
The listeners stay installed once the first capture opens; with no capture open
they return at once.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING

from sqlalchemy import event as sa_event
from sqlalchemy.orm import Session, SessionTransaction

from .. import session as outbox_session
from ..event import OutboxEvent
from ._event_list import GrowingEventList

if TYPE_CHECKING:
    from ..session import OutboxSession

__all__ = ["CapturedEvents", "capture_events"]


class CapturedEvents(GrowingEventList):
    """The events committed while a capture is open, in commit order; grows as they commit.

    Every :class:`EventList` filter and assertion applies (filters return a
    snapshot). :meth:`clear` forgets what was captured so far.
    """

    __slots__ = ()

    def clear(self) -> None:
        """Forget the events captured so far (e.g. those of a test's setup)."""
        with _lock:
            super().clear()


_lock = threading.Lock()
_open: list[CapturedEvents] = []
# Events written but not yet committed, by the transaction that holds them, each
# with the captures open when it was written.
_Held = list[tuple[OutboxEvent, tuple[CapturedEvents, ...]]]
_held: weakref.WeakKeyDictionary[SessionTransaction, _Held] = weakref.WeakKeyDictionary()
_installed = False


@contextlib.contextmanager
def capture_events() -> Iterator[CapturedEvents]:
    """Record the outbox events committed while the block runs, in commit order.

    Covers every outbox session of the process (``OutboxSession``,
    ``AsyncOutboxSession``, ``enable_outbox`` factories), in any thread, on any
    database (SQLite included): the events written and committed while the block
    runs. Events rolled back, in a rolled-back SAVEPOINT, or never committed are
    not recorded::

        with capture_events() as captured:
            place_order(...)
        captured.one("OrderPlaced", aggregate_id=42, payload={...})
    """
    _install()
    captured = CapturedEvents()
    with _lock:
        _open.append(captured)
    try:
        yield captured
    finally:
        with _lock:
            _open.remove(captured)
            if not _open:
                _held.clear()


def _install() -> None:
    global _installed
    with _lock:
        if _installed:
            return
        outbox_session.write_hooks.append(_on_write)
        # OutboxSession and its subclasses (enable_outbox's, AsyncOutboxSession's
        # sync session): class-level listeners apply to all of them.
        sa_event.listen(outbox_session.OutboxSession, "after_commit", _on_commit)
        sa_event.listen(outbox_session.OutboxSession, "after_transaction_end", _on_end)
        _installed = True


def _boundary(session: Session) -> SessionTransaction | None:
    # Where a write is undone: the innermost SAVEPOINT, else the root transaction.
    return session.get_nested_transaction() or session.get_transaction()


def _parent_boundary(transaction: SessionTransaction) -> SessionTransaction | None:
    parent = transaction.parent
    while parent is not None and not parent.nested and parent.parent is not None:
        parent = parent.parent  # skip SQLAlchemy's internal subtransactions
    return parent


def _on_write(session: OutboxSession, events: list[OutboxEvent]) -> None:
    if not _open:
        return
    transaction = _boundary(session)
    if transaction is None:  # cannot happen: a write begins a transaction
        return
    with _lock:
        captures = tuple(_open)
        _held.setdefault(transaction, []).extend((e, captures) for e in events)


def _on_commit(session: Session) -> None:
    if not _open:
        return
    # While after_commit runs, the committing transaction is still the
    # innermost one: SQLAlchemy commits inner SAVEPOINTs first.
    transaction = _boundary(session)
    if transaction is None:
        return
    with _lock:
        events = _held.pop(transaction, None)
        if not events:
            return
        if transaction.nested:
            parent = _parent_boundary(transaction)
            if parent is not None:
                _held.setdefault(parent, []).extend(events)
        else:
            for event, captures in events:
                for captured in captures:
                    if any(captured is c for c in _open):  # still open
                        captured.append(event)


def _on_end(session: Session, transaction: SessionTransaction) -> None:
    if _held:
        with _lock:
            _held.pop(transaction, None)
