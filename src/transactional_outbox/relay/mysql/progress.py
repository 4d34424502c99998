"""How far behind the binlog head the relay is, for the progress line and ``/metrics``.

"Lag" as *now minus the last event's timestamp* grows while the relay is idle
and fully caught up, which reads as a problem when there is none. Two figures
replace it: the bytes of binlog between the relay's acknowledged position and
the server's head (0 when caught up), and the age of the last event published.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from typing import Any

import pymysql

from ..position import BinlogPosition, Position

__all__ = ["BinlogHead", "bytes_behind"]


def bytes_behind(position: BinlogPosition, binlogs: Sequence[tuple[str, int]]) -> int | None:
    """Bytes of binlog after ``position``, given ``SHOW BINARY LOGS`` (name, size) rows.

    ``None`` when the position's file is not listed (purged, or not known yet).
    """
    total = None
    for name, size in binlogs:
        if total is None:
            if name == position.file:
                total = max(size - position.pos, 0)
        else:
            total += size
    return total


class BinlogHead:
    """Reads the server's binlog list now and then over a connection of its own.

    Blocking: call :meth:`poll` from a worker thread. Errors are swallowed (the
    figure becomes unknown): this is a progress display, never a reason to stop.
    """

    def __init__(self, connect_args: dict[str, Any]) -> None:
        self._args = connect_args
        self._conn: pymysql.Connection | None = None
        self.binlogs: tuple[tuple[str, int], ...] = ()
        self.read_at: float | None = None

    def poll(self) -> None:
        """Refresh :attr:`binlogs` (on failure: empty, reconnect next time)."""
        try:
            if self._conn is None:
                self._conn = pymysql.connect(**self._args, connect_timeout=5, read_timeout=10)
            with self._conn.cursor() as cur:
                cur.execute("SHOW BINARY LOGS")
                self.binlogs = tuple((str(r[0]), int(r[1])) for r in cur.fetchall())
            self.read_at = time.monotonic()
        except (pymysql.err.Error, OSError):
            self.binlogs = ()
            self.close()

    def behind(self, position: Position | None) -> int | None:
        """Bytes between ``position`` and the head as last polled, if known."""
        if not isinstance(position, BinlogPosition) or not position.file or not self.binlogs:
            return None
        return bytes_behind(position, self.binlogs)

    def close(self) -> None:
        """Close the connection."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()
