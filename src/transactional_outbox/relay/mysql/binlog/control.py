"""A binlog parser's group-control events: QUERY, XA_PREPARE, ROTATE. Pure.

A QUERY event opens a group (``BEGIN``, MySQL's ``XA START``), ends one
(``COMMIT``, ``ROLLBACK``, DDL standing alone, an ``XA COMMIT``/``ROLLBACK``
outcome), or is a write logged as a statement, which stops the relay when it
names an outbox table (:mod:`.statements`): at the end of that transaction,
so the error says where to start after it, and nothing of it or after it is
handed over. XA_PREPARE ends a prepared XA transaction's group, whose outbox
rows then wait in :class:`.HeldGroups` for the outcome (:mod:`.xa`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ....exceptions import OutboxError, ServerConfigurationError
from ...position import BinlogPosition
from .format import (
    ARTIFICIAL,
    EXECUTE_LOAD_QUERY,
    HOT,
    QUERY_COMPRESSED,
    U32,
    XID,
    query_statement,
    rotate_file,
    uncompressed,
    verify,
)
from .outboxtables import take_runs
from .statements import xa_outcome
from .xa import HeldGroups, Prepared, xa_prepare, xid_text

if TYPE_CHECKING:
    from .events import BinlogParser

__all__ = ["NO_CAP", "GroupControl"]

log = logging.getLogger("transactional_outbox.relay.source")

NO_CAP = 1 << 62  # the feed's cap while a prepared XA group is read (its rows wait)
_HOT_BUT_XID = HOT - {XID}


class GroupControl:
    """Handles one parser's QUERY and XA_PREPARE events; holds the XA state."""

    def __init__(self, parser: BinlogParser) -> None:
        self._p = parser
        self.held = HeldGroups()
        # A statement-logged write to an outbox table in the open group: the table,
        # the position before its transaction, the statement's.
        self.statement: tuple[str, str, str] | None = None

    def query(self, buf: bytes, ev: int, end: int, etype: int) -> None:
        """A QUERY, EXECUTE_LOAD_QUERY or QUERY_COMPRESSED event at ``ev``."""
        p = self._p
        post = 26 if etype == EXECUTE_LOAD_QUERY else 13
        query, db = query_statement(buf, ev, end - p.cs, post)
        if etype == QUERY_COMPRESSED:
            query = uncompressed(query, f"QUERY event at {p.file}:{U32(buf, ev + 13)[0]}")
        if query == b"BEGIN":
            p.in_txn = True
        elif query == b"COMMIT":
            p.commit_group(buf, ev)  # non-XA transactions that touched MyISAM-like tables
        elif query == b"ROLLBACK":
            # A group rolled back after writing non-transactional changes: its
            # outbox rows (InnoDB) were never committed.
            if p.seen > len(p.records) - p.committed:
                log.error(
                    "a transaction after %s:%s was rolled back after some of its %d outbox "
                    "rows were handed over; they may be published",
                    p.commit_file,
                    p.commit_pos,
                    p.seen,
                )
            del p.records[p.committed :]
            if p.runs is not None:
                p.runs = [*take_runs(p.runs, p.committed).items()]
            self.statement = None  # a statement-logged write rolled back lost nothing
            p.commit_group(buf, ev)
        elif query[:3].upper() == b"XA ":
            self._xa_query(buf, ev, query)
        elif query[:9].upper() == b"SAVEPOINT":
            pass
        elif (where := p.outbox.written(query, db)) is not None:
            # Rows the relay cannot read: stop at this transaction's end (so
            # the error can say where to start after it); XID events leave the
            # feed's inline path so commit_group sees them.
            start = U32(buf, ev + 13)[0] - U32(buf, ev + 9)[0]
            self.statement = (where, f"{p.commit_file}:{p.commit_pos}", f"{p.file}:{start}")
            p.hot = _HOT_BUT_XID
            if not p.in_txn:
                p.commit_group(buf, ev)  # a group of its own (a non-transactional table)
        elif not p.in_txn:
            p.commit_group(buf, ev)  # DDL: a transaction of its own

    def check_end(self, end: int) -> None:
        """At the end of a group: raise if it wrote an outbox table by a statement."""
        if self.statement is None:
            return
        where, before, at = self.statement
        raise ServerConfigurationError(
            "binlog_format",
            f"the transaction after {before} wrote {where} by a statement (at {at}) logged "
            "as SQL text, not as rows (the server or that session logs statements: "
            "binlog_format STATEMENT or MIXED); the relay cannot read its events and "
            "stopped before it, the checkpoint is before it. Set binlog_format=ROW (SET "
            "GLOBAL and in every session that changed it); that transaction's events "
            "must be written again, and --ignore-checkpoint --start-position "
            f"{self._p.file}:{end} starts after it",
        )

    def rotate(self, buf: bytes, ev: int, end: int) -> None:
        """A ROTATE event: the next file's name."""
        p = self._p
        # The fake ROTATE opening a dump (artificial, log_pos 0) may or may not
        # end in a checksum whatever the file's setting; the real one does.
        if p.cs and U32(buf, ev + 13)[0] and not buf[ev + 17] & ARTIFICIAL:
            verify(buf, ev, end, "ROTATE")
        p.file = rotate_file(buf, ev, end)
        # Table ids are only unique within a server's lifetime, and a restart
        # starts a new file: forget them at every file change.
        p.outbox.ids.clear()

    def open_xa(self) -> None:
        """A prepared XA transaction's group opens: its rows wait for its outcome."""
        self._p.xa_open, self._p.cap_now = True, NO_CAP

    def xa_prepare(self, buf: bytes, ev: int) -> None:
        """The end of an XA transaction's group: hold its outbox rows until the outcome."""
        p = self._p
        one_phase, xid = xa_prepare(buf, ev)
        n = p.committed
        rows = p.records[n:]
        if rows and not one_phase and self.statement is None:
            del p.records[n:]
            tables = None
            if p.runs is not None:
                kept = take_runs(p.runs, n)
                tables = take_runs(p.runs, len(rows))
                p.runs = [*kept.items()]
            before = BinlogPosition(file=p.commit_file, pos=p.commit_pos, gtid=p.gtids.fold())
            self.held.hold(xid, Prepared(before, rows, tables))
            log.debug(
                "holding %d outbox rows of prepared XA transaction %s until its XA "
                "COMMIT or ROLLBACK; the checkpoint stays at %s meanwhile",
                len(rows),
                xid_text(xid),
                before,
            )
        p.commit_group(buf, ev)

    def _xa_query(self, buf: bytes, ev: int, query: bytes) -> None:
        p = self._p
        outcome = xa_outcome(query)
        if outcome is None:
            head = query[:12].upper()
            if head.startswith((b"XA COMMIT", b"XA ROLLBACK")):
                raise OutboxError(
                    f"cannot read the XA transaction id of {query[:200]!r} at "
                    f"{p.file}:{U32(buf, ev + 13)[0]}"
                )
            if head.startswith((b"XA START", b"XA BEGIN")):
                p.in_txn = True  # MySQL: the group of an XA transaction opens
                self.open_xa()
            return  # XA END: inside the group
        committed, xid, one_phase = outcome
        prepared = None if one_phase else self.held.release(xid)
        if prepared is not None:
            log.debug(
                "%s of XA transaction %s: %s its %d outbox rows",
                "COMMIT" if committed else "ROLLBACK",
                xid_text(xid),
                "publishing" if committed else "dropping",
                len(prepared.rows),
            )
            if committed:
                p.records += prepared.rows
                if p.runs is not None and prepared.tables:
                    p.runs += prepared.tables.items()
        p.commit_group(buf, ev)
