"""The replication stream's bytes to Kafka records: CopyData framing and pgoutput. Pure.

After ``START_REPLICATION`` the server sends CopyData messages (``d``, length)
holding either XLogData (``w``: start LSN, WAL end, send time, then one
pgoutput message) or a primary keepalive (``k``: WAL end, send time, reply
requested). The parser walks a buffer of them in place, with ``struct``
reads at offsets and slices only for the values a record keeps: no object
per message.

pgoutput (protocol version 1, ``binary 'true'``, ``messages 'true'``) sends
a committed transaction at its commit, whole: Begin (``B``), then its changes
and messages in order, then Commit (``C``: flags, commit LSN, end LSN, time).
Relation (``R``) describes a table before its first change on a connection.
Only the publication's tables (the outbox tables, ``publish = 'insert'``)
reach here; a transaction without any change of them sends nothing
(PostgreSQL 15 skips empty transactions). The position after a transaction
is its Commit's end LSN: resuming there (``START_REPLICATION ... LOGICAL
end``) skips it and nothing after it.
"""

from __future__ import annotations

import re
import struct
import uuid
from typing import Any

from ...exceptions import ConfigurationError, InvalidEventError, OutboxError
from ..routing import KafkaRecord, TopicRouter
from ..rowrecord import RejectedRow
from .layout import OutboxLayout, layout_of
from .records import (
    PG_EPOCH_MICROS,
    OutboxMemo,
    outbox_message_id,
    record_of,
    record_of_message,
    rejected_row,
)
from .wire import error_of, format_lsn

__all__ = ["PgOutputParser", "StreamEnded"]

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_I64 = struct.Struct("!q")
_U64 = struct.Struct("!Q")
_from_bytes = int.from_bytes
_D, _E, _COPY_DONE, _W, _K = ord("d"), ord("E"), ord("c"), ord("w"), ord("k")
_BEGIN, _COMMIT, _INSERT, _RELATION, _MESSAGE = (ord(c) for c in "BCIRM")
_NULL, _UNCHANGED, _TEXT = ord("n"), ord("u"), ord("t")
_XLOG_HEADER = 1 + 8 + 8 + 8  # "w", start LSN, WAL end, send time


class StreamEnded(OutboxError):
    """The server ended the replication stream (CopyDone): a shutdown, say."""


class PgOutputParser:
    """Turns replication stream bytes into records, transaction by transaction.

    ``records[:committed]`` belong to committed transactions, the last ending
    at ``commit_lsn``; the rest to the open one. ``tables``: the outbox
    tables (``schema.table``) whose inserts are events, and with ``pattern``
    also a table it full-matches (also one created while the relay runs). The
    changes of other tables are skipped: a FOR ALL TABLES publication sends
    them, a partitioned outbox table's partitions are described too, and a
    table added to the publication is the watch's to report (:mod:`.publication`).
    ``prefixes``: the message prefixes that are outboxes (``{table}`` of
    their topics; ``database`` is their ``{schema}``). A transactional message
    under another prefix that holds an outbox event stops the parser
    (:class:`ConfigurationError` naming ``pg_message_prefixes``) unless its
    prefix is in ``other_prefixes`` (another relay's).
    """

    def __init__(
        self,
        *,
        router: TopicRouter,
        tables: frozenset[str],
        prefixes: frozenset[str] = frozenset(),
        database: str = "",
        cap: int = 2000,
        pattern: re.Pattern[str] | None = None,
        other_prefixes: frozenset[str] = frozenset(),
    ) -> None:
        self.router = router
        self.tables = tables
        self.pattern = pattern
        self.skipped: set[int] = set()  # relations of other tables (with a pattern)
        self.cap = cap
        self.records: list[KafkaRecord | RejectedRow] = []
        self.committed = 0
        self.commit_lsn: int | None = None
        self.commits = 0
        self.in_txn = False
        self.wal_end = 0
        self.reply_requested = False
        self.relations: dict[int, tuple[OutboxLayout | None, str, OutboxMemo]] = {}
        self._shared: OutboxMemo | None = None
        self.memos: dict[str, OutboxMemo] = {}
        self.prefixes: dict[bytes, OutboxMemo] = {
            p.encode(): self.memo(database, p) for p in prefixes
        }
        self.other_prefixes = frozenset(p.encode() for p in other_prefixes)
        self.open_tables: dict[str, int] = {}
        self.committed_tables: dict[str, int] = {}

    def memo(self, schema: str, table: str) -> OutboxMemo:
        """The memo of one outbox (shared table-independent parts)."""
        name = f"{schema}.{table}"
        memo = self.memos.get(name)
        if memo is None:
            memo = OutboxMemo(self.router, schema=schema, table=table, shared=self._shared)
            self._shared = self._shared or memo
            self.memos[name] = memo
        return memo

    def take_committed(self) -> tuple[list[KafkaRecord | RejectedRow], int | None, dict[str, int]]:
        """The committed transactions' records, the end LSN of the last, and counts per
        outbox; the open transaction's records stay."""
        n = self.committed
        out, self.records = self.records[:n], self.records[n:]
        lsn, self.commit_lsn = self.commit_lsn, None
        tables, self.committed_tables = self.committed_tables, {}
        self.committed = 0
        self.commits = 0
        return out, lsn, tables

    def take_open(self) -> tuple[list[KafkaRecord | RejectedRow], dict[str, int]]:
        """The open transaction's records so far (a large transaction, handed over in parts)."""
        out, self.records = self.records[self.committed :], self.records[: self.committed]
        tables, self.open_tables = self.open_tables, {}
        return out, tables

    def feed(self, buf: bytes, pos: int = 0) -> int:
        """Parse the whole messages of ``buf`` from ``pos``; the offset of the first one
        not parsed (incomplete, or after :attr:`cap` records)."""
        # The hot path: Begin, Insert and Commit are handled here with the
        # state in locals (a one-event transaction is three XLogData messages).
        end = len(buf)
        records = self.records
        cap = self.cap
        u32 = _U32.unpack_from
        insert = self._insert
        while pos + 5 <= end:
            kind = buf[pos]
            nxt = pos + 1 + u32(buf, pos + 1)[0]
            if nxt > end:
                break
            if kind == _D:
                sub = buf[pos + 5]
                if sub == _W:
                    # Its WAL end field is the message's own LSN (or 0), not the
                    # server's progress: only keepalives say that.
                    p = pos + 5 + _XLOG_HEADER
                    tag = buf[p]
                    if tag == _INSERT:
                        insert(buf, p, nxt)
                    elif tag == _BEGIN:
                        self.in_txn = True
                    elif tag == _COMMIT:
                        self.commit_lsn = _U64.unpack_from(buf, p + 10)[0]
                        self.in_txn = False
                        self.committed = len(records)
                        self.commits += 1
                        if self.open_tables:
                            self._close_tables()
                    else:
                        self._other(buf, p, nxt)
                elif sub == _K:
                    self.wal_end = _U64.unpack_from(buf, pos + 6)[0]
                    if buf[pos + 22]:
                        self.reply_requested = True
            elif kind == _E:
                raise error_of(buf[pos + 5 : nxt])
            elif kind == _COPY_DONE:
                raise StreamEnded("PostgreSQL ended the replication stream (CopyDone)")
            pos = nxt
            if len(records) >= cap:
                break
        return pos

    def _close_tables(self) -> None:
        committed = self.committed_tables
        for name, n in self.open_tables.items():
            committed[name] = committed.get(name, 0) + n
        self.open_tables = {}

    def _other(self, buf: bytes, p: int, end: int) -> None:
        tag = buf[p]
        if tag == _RELATION:
            self._relation(buf, p)
        elif tag == _MESSAGE:
            self._message(buf, p, end)
        # Anything else (Origin, Type, Truncate, Update, Delete) is no event.

    def _relation(self, buf: bytes, p: int) -> None:
        relid = _U32.unpack_from(buf, p + 1)[0]
        q = buf.index(b"\0", p + 5)
        schema = buf[p + 5 : q].decode()
        r = buf.index(b"\0", q + 1)
        table = buf[q + 1 : r].decode()
        ncols = _U16.unpack_from(buf, r + 2)[0]
        pos = r + 4
        columns = []
        for _ in range(ncols):
            z = buf.index(b"\0", pos + 1)
            name = buf[pos + 1 : z].decode()
            columns.append((name, _U32.unpack_from(buf, z + 1)[0]))
            pos = z + 9
        name = f"{schema}.{table}"
        self.skipped.discard(relid)
        if name not in self.tables and (self.pattern is None or not self.pattern.fullmatch(name)):
            # Not an outbox table: a partition of one (pgoutput describes it too when it
            # publishes through the root), or a table the publication gained. The
            # publication watch stops the relay for the latter; skipping its rows here
            # also lets a restarted relay pass transactions decoded with it.
            self.skipped.add(relid)
            self.relations.pop(relid, None)  # renamed away
            return
        layout = layout_of(schema, table, columns)
        memo = self.memo(schema, table)
        if isinstance(layout, str):
            self.relations[relid] = (None, layout, memo)
        else:
            self.relations[relid] = (layout, "", memo)

    def _insert(self, buf: bytes, p: int, end: int) -> None:
        relid = _U32.unpack_from(buf, p + 1)[0]
        entry = self.relations.get(relid)
        if entry is None:
            if relid in self.skipped:
                return  # another table of the publication
            raise OutboxError(f"pgoutput sent a change of relation {relid} before describing it")
        layout, reason, memo = entry
        ncols = _U16.unpack_from(buf, p + 6)[0]
        pos = p + 8
        values: list[Any] = [None] * ncols
        u32 = _U32.unpack_from
        text_kinds = False
        for i in range(ncols):
            kind = buf[pos]
            if kind in (_NULL, _UNCHANGED):
                pos += 1
            else:
                length = u32(buf, pos + 1)[0]
                pos += 5
                values[i] = buf[pos : pos + length]
                pos += length
                if kind == _TEXT:
                    text_kinds = True
        if pos > end:
            raise OutboxError(f"pgoutput Insert of {memo.name} is truncated")
        self.open_tables[memo.name] = self.open_tables.get(memo.name, 0) + 1
        if layout is None:
            self.records.append(
                rejected_row(InvalidEventError("table", memo.name, reason), None, None, memo)
            )
            return
        i_id, i_at, i_ai, i_ty, i_pl, i_hd, i_ts = layout.index
        raw_id, agg_id = values[i_id], values[i_ai]
        try:
            if text_kinds:
                raise InvalidEventError(
                    "row", memo.name, "arrived in text format; the relay asks for binary"
                )
            payload = values[i_pl]
            if layout.jsonb_payload and payload is not None:
                payload = _jsonb_text(payload, "payload")
            headers = values[i_hd]
            if layout.jsonb_headers and headers is not None:
                headers = _jsonb_text(headers, "headers")
            ts = values[i_ts]
            micros = None if ts is None else _from_bytes(ts, "big", signed=True) + PG_EPOCH_MICROS
            record: KafkaRecord | RejectedRow = record_of(
                memo, raw_id, values[i_at], agg_id, values[i_ty], payload, headers, micros
            )
        except InvalidEventError as exc:
            record = rejected_row(exc, raw_id, agg_id, memo)
        self.records.append(record)

    def _message(self, buf: bytes, p: int, end: int) -> None:
        transactional = buf[p + 1] & 1
        q = buf.index(b"\0", p + 10)
        prefix = buf[p + 10 : q]
        memo = self.prefixes.get(prefix)
        (n,) = _U32.unpack_from(buf, q + 1)
        content = buf[q + 5 : q + 5 + n]
        if memo is None:
            if transactional and prefix not in self.other_prefixes:
                self._unlisted(prefix, content, _U64.unpack_from(buf, p + 2)[0])
            return  # another application's message
        if q + 5 + n > end:
            raise OutboxError(f"pgoutput Message of {memo.name} is truncated")
        self.open_tables[memo.name] = self.open_tables.get(memo.name, 0) + 1
        if not transactional:
            # Written outside any transaction's fate: published it could be an
            # event whose transaction rolled back. The relay's policy decides.
            exc = InvalidEventError(
                "message", memo.name, "is not transactional (pg_logical_emit_message(false, ...))"
            )
            self.records.append(rejected_row(exc, None, None, memo))
        else:
            self.records.append(record_of_message(content, memo))
        if not self.in_txn:
            self.committed = len(self.records)
            self._close_tables()

    def _unlisted(self, prefix: bytes, content: bytes, lsn: int) -> None:
        # An app writing events as messages under a prefix this relay was not given
        # (outbox_mode="message" switched on, or another outbox_message_prefix) would
        # lose them in silence: stop before the transaction instead.
        raw_id = outbox_message_id(content)
        if raw_id is None:
            return
        name = prefix.decode(errors="replace")
        listed = ", ".join(sorted(p.decode() for p in self.prefixes)) or "none"
        raise ConfigurationError(
            "pg_message_prefixes",
            f"a transaction's message prefixed {name!r} holds an outbox event (id "
            f"{uuid.UUID(bytes=raw_id)}, LSN {format_lsn(lsn)}), and that "
            f"prefix is not listed (pg_message_prefixes: {listed}). The relay stopped "
            "before that transaction, so nothing is lost: add the prefix to "
            "pg_message_prefixes if this relay publishes its events, or to "
            "pg_other_message_prefixes if another relay does, and start the relay again",
        )


def _jsonb_text(value: bytes, column: str) -> bytes:
    if value[:1] != b"\x01":
        raise InvalidEventError(column, value[:1], "is jsonb of an unknown binary version")
    return value[1:]
