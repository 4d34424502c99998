"""Prepared XA transactions waiting for their outcome, and the checkpoint they hold. Pure.

An XA transaction reaches the binlog twice (MariaDB 10.5+, MySQL 5.7+): at
``XA PREPARE`` its group (MariaDB: a GTID event flagged ``FL_PREPARED_XA``;
MySQL: an ``XA START`` query) with its rows, ended by an XA_PREPARE event
instead of an XID; later its outcome, a group of its own holding an ``XA
COMMIT`` or ``XA ROLLBACK`` query naming the same xid. Only the outcome
decides whether the rows were committed.

So the parser holds a prepared group's outbox rows here, keyed by xid, until
that query: released into the stream at ``XA COMMIT`` (in commit order),
dropped at ``XA ROLLBACK``. While any group waits, every commit position the
parser hands over is the one before the earliest waiting group
(:attr:`HeldGroups.position`): the checkpoint never passes it, so a relay
restarted meanwhile reads the PREPARE again and loses nothing (transactions
read since are sent again: duplicates, as at-least-once allows).
``XA COMMIT ... ONE PHASE`` is an ordinary commit (MariaDB logs an XID;
MySQL an XA_PREPARE event flagged one-phase).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ...position import BinlogPosition
from ...routing import KafkaRecord
from ..rowdecoder import RejectedRow

__all__ = ["HeldGroups", "Prepared", "Xid", "xa_prepare", "xid_text"]

Xid = tuple[int, bytes, bytes]  # format id, gtrid, bqual
_XA_PREPARE = struct.Struct("<BiII").unpack_from


def xa_prepare(buf: bytes, ev: int) -> tuple[bool, Xid]:
    """An XA_PREPARE event's (one_phase, xid).

    Body: one_phase(1) format_id(4) gtrid_length(4) bqual_length(4) data, as
    MySQL's ``XA_prepare_event`` and MariaDB's ``XA_prepare_log_event`` write it
    (checked on MariaDB 10.11's bytes: the bqual length takes 4 bytes too).
    """
    one, fmt, glen, blen = _XA_PREPARE(buf, ev + 19)
    data = buf[ev + 32 : ev + 32 + glen + blen]
    return bool(one), (fmt, data[:glen], data[glen:])


def xid_text(xid: Xid) -> str:
    """The xid as the server logs it: ``X'gtrid',X'bqual',format_id``."""
    fmt, gtrid, bqual = xid
    return f"X'{gtrid.hex()}',X'{bqual.hex()}',{fmt}"


@dataclass(slots=True)
class Prepared:
    """One prepared XA transaction's outbox rows and the position before its group."""

    before: BinlogPosition
    rows: list[KafkaRecord | RejectedRow]
    tables: dict[str, int] | None  # rows by outbox table (many tables only)


class HeldGroups:
    """The prepared XA transactions with outbox rows whose outcome is not read yet."""

    def __init__(self) -> None:
        self._held: dict[Xid, Prepared] = {}  # in PREPARE order

    def __bool__(self) -> bool:
        return bool(self._held)

    def __len__(self) -> int:
        return len(self._held)

    @property
    def position(self) -> BinlogPosition | None:
        """The position before the earliest waiting group; None if none waits."""
        for prepared in self._held.values():
            return prepared.before
        return None

    def hold(self, xid: Xid, prepared: Prepared) -> None:
        """Keep ``prepared`` until the outcome of ``xid``."""
        self._held[xid] = prepared

    def release(self, xid: Xid) -> Prepared | None:
        """The group of ``xid`` once its outcome is read; None if none waits."""
        return self._held.pop(xid, None)
