"""The outbox tables a binlog parser reads, and what a table id maps to. Pure.

:class:`OutboxTables` tells which TABLE_MAPs are of an outbox table. With
many outbox tables (issue 19) each has its own row memo (topics depend on its
schema and table) and its own maps by layout; :class:`Mapped` is what the
parser stores per table id, holding what the row path reads per WRITE_ROWS.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

from ....exceptions import ServerConfigurationError
from ...routing import KafkaRecord, TopicRouter
from ..rowdecoder import RejectedRow, RowMemo
from .format import U16, WRITE_V2, verify
from .statements import written_tables
from .tablemap import TableLayout, packed_int, parse_layout

__all__ = [
    "UNKNOWN",
    "Mapped",
    "OutboxTables",
    "Table",
    "decode_rows",
    "names_of",
    "place",
    "take_runs",
]

log = logging.getLogger("transactional_outbox.relay.source")

UNKNOWN: Any = object()  # a table name not looked up yet


class Table:
    """One outbox table the parser reads: its names, its row memo, its maps by layout."""

    __slots__ = ("mapped", "memo", "name", "where")

    def __init__(self, schema: str, table: str, router: TopicRouter, shared: RowMemo | None):
        self.name = f"{schema}.{table}"
        self.where = f"`{schema}`.`{table}`"
        self.memo = RowMemo(router, schema=schema, table=table, shared=shared)
        self.mapped: dict[bytes, Mapped] = {}  # map bytes after the names -> its Mapped


class Mapped:
    """What a table id maps to: an outbox table and the layout its TABLE_MAP gave.

    The fields the row path reads per WRITE_ROWS are copied here (one attribute
    load each, no second hop).
    """

    __slots__ = ("decoder", "head", "layout", "memo", "name", "where")

    def __init__(self, layout: TableLayout, table: Table) -> None:
        self.layout = layout
        self.head = layout.head
        self.decoder = layout.decoder
        self.memo = table.memo
        self.name = table.name
        self.where = table.where


def names_of(schema: str, table: str) -> bytes:
    """A TABLE_MAP's name bytes: schema_len schema NUL table_len table NUL."""
    s, t = schema.encode(), table.encode()
    return bytes([len(s)]) + s + b"\0" + bytes([len(t)]) + t + b"\0"


def place(rows: list[KafkaRecord | RejectedRow], file: str, pos: int, mapped: Mapped) -> None:
    """Say where each rejected row of ``rows`` is: its table, the transaction after ``file:pos``."""
    where = f"of {mapped.where} in the transaction after {file}:{pos}"
    for i, r in enumerate(rows):
        if type(r) is RejectedRow:
            rows[i] = RejectedRow(r.reason, r.event_id, r.aggregate_id, where, mapped.name)


class OutboxTables:
    """Which TABLE_MAPs map an outbox table, and what each table id maps to (:attr:`ids`).

    The outbox table is ``schema``.``table``; or, for many (:attr:`many`),
    ``tables`` (pairs of schema and table) and/or ``pattern`` (a regex
    full-matched against ``schema.table``, for tables not listed). ``layouts``
    is shared across connections, keyed by the map's bytes after the names;
    ``announced``, the pattern-matched tables already logged, too (so a reconnect
    does not log them again).
    """

    def __init__(
        self,
        *,
        schema: str,
        table: str,
        router: TopicRouter,
        layouts: dict[bytes, TableLayout],
        tables: Sequence[tuple[str, str]] = (),
        pattern: str | None = None,
        announced: set[str] | None = None,
    ) -> None:
        self._router = router
        self._announced: set[str] = set() if announced is None else announced
        # Memos of what repeats row to row; the tables' memos share the
        # table-independent ones (names, headers, seconds).
        self._memo = RowMemo(router, schema=schema, table=table)
        self._layouts = layouts
        self.pattern = re.compile(pattern) if pattern else None
        self._any_case = re.compile(pattern, re.I) if pattern else None
        self.many = bool(tables or pattern)
        self._targets: dict[bytes, Table | None] = {}  # name bytes -> table (None: not one)
        self.ids: dict[int, Mapped] = {}  # outbox tables' ids; forget them at a file change
        # One table: a TABLE_MAP after the table id and flags starts with these
        # bytes exactly when it maps the outbox table.
        self.needle: bytes | None = None
        # Names a statement may write, in lower case (see written).
        named = tables if self.many else [(schema, table)]
        self._named = {(s.lower(), t.lower()) for s, t in named}
        if self.many:
            for sch, tab in tables:
                self._targets[names_of(sch, tab)] = Table(sch, tab, router, self._memo)
        else:
            self.needle = names_of(schema, table)
            self._one = Table(schema, table, router, None)
            self._one.memo = self._memo

    def table_map(self, buf: bytes, ev: int, end: int, cs: int) -> None:
        """Map the id of the TABLE_MAP at ``ev``, or forget it if not an outbox table's."""
        tid = int.from_bytes(buf[ev + 19 : ev + 25], "little")
        mapped = self.map(buf, ev, end, cs)
        if mapped is None:
            self.ids.pop(tid, None)  # an id now names another table
        else:
            self.ids[tid] = mapped

    def map(self, buf: bytes, ev: int, end: int, cs: int) -> Mapped | None:
        """What the TABLE_MAP at ``ev`` maps its id to: an outbox table's layout, or None.

        ``cs`` is the trailing checksum bytes of the event.
        """
        k0 = ev + 27
        needle = self.needle
        if needle is not None:
            table: Table | None = self._one
            nlen = len(needle)
        else:
            # schema_len schema NUL table_len table NUL
            slen = buf[k0]
            nlen = slen + buf[k0 + slen + 2] + 4
            names = buf[k0 : k0 + nlen]
            table = self._targets.get(names, UNKNOWN)
            if table is UNKNOWN:
                table = self._resolve(names)
        if table is None:
            return None
        key = buf[k0 + nlen : end - cs]
        mapped = table.mapped.get(key)
        if mapped is None:
            layout = self._layouts.get(key)
            if layout is None:
                if cs:
                    verify(buf, ev, end, "TABLE_MAP")
                layout = parse_layout(key, table.where)
                if len(self._layouts) >= 64:
                    self._layouts.clear()
                self._layouts[key] = layout
            elif layout.plan is None:
                # Shared with another table: say so for this one too.
                log.warning("%s cannot hold outbox events: %s", table.where, layout.reject)
            mapped = Mapped(layout, table)
            if len(table.mapped) >= 64:
                table.mapped.clear()
            table.mapped[key] = mapped
        return mapped

    def written(self, sql: bytes, db: bytes) -> str | None:
        """The outbox table a statement logged as text writes, as `schema`.`table`; None if none.

        ``db`` is the QUERY event's default schema, for names it does not
        qualify. Names compare without case: a server with
        ``lower_case_table_names`` takes them in any case, and a false alarm is
        a loud stop where a miss would lose events.
        """
        default = db.decode("utf-8", "replace")
        for schema, table in written_tables(sql.decode("utf-8", "replace")):
            schema = default if schema is None else schema
            if (schema.lower(), table.lower()) in self._named or (
                self._any_case is not None and self._any_case.fullmatch(f"{schema}.{table}")
            ):
                return f"`{schema}`.`{table}`"
        return None

    def _resolve(self, names: bytes) -> Table | None:
        """The outbox table a name not seen before is, by the pattern; None if none.

        Evaluated once per distinct name (bounded: forgotten when 10,000 are known).
        """
        slen = names[0]
        schema = names[1 : 1 + slen].decode("utf-8", "replace")
        table = names[slen + 3 : -1].decode("utf-8", "replace")
        found = None
        if self.pattern is not None and self.pattern.fullmatch(f"{schema}.{table}"):
            found = Table(schema, table, self._router, self._memo)
            if found.name not in self._announced and len(self._announced) < 10_000:
                self._announced.add(found.name)
                log.info(
                    "reading outbox table `%s`.`%s` (matches outbox_table_pattern)", schema, table
                )
        if len(self._targets) >= 10_000:
            self._targets = {k: v for k, v in self._targets.items() if v is not None}
        self._targets[names] = found
        return found


def decode_rows(
    buf: bytes, ev: int, end: int, cs: int, etype: int, mapped: Mapped
) -> list[KafkaRecord | RejectedRow]:
    """The rows of a WRITE_ROWS event of an outbox table, every case (the parser's
    hot loop inlines the usual one). ``cs``: the event's trailing checksum bytes."""
    layout = mapped.layout
    p = ev + 27
    if etype == WRITE_V2:
        p += U16(buf, p)[0]  # extra data, its length counting itself
    ncols = buf[p]
    if ncols < 251:
        p += 1
    else:
        ncols, p = packed_int(buf, p)
    nb = (ncols + 7) // 8
    if ncols != len(layout.columns) or buf[p : p + nb] != layout.full_bitmap:
        raise ServerConfigurationError(
            "binlog_row_image",
            f"a row of {mapped.where} does not carry every column (binlog_row_image must be FULL)",
        )
    rows: list[KafkaRecord | RejectedRow]
    if layout.decoder is not None:
        rows = layout.decoder(buf[p + nb : end - cs], mapped.memo)
    else:
        rows = list(layout.reject_rows(buf[p + nb : end - cs]))
    return rows


def take_runs(runs: list[tuple[str, int]], n: int) -> dict[str, int]:
    """Rows by table of the first ``n`` rows waiting, taken from ``runs`` (runs of
    rows of one table, in order: ``(schema.table, count)``)."""
    out: dict[str, int] = {}
    i = 0
    while n > 0 and i < len(runs):
        name, count = runs[i]
        if count > n:
            runs[i] = (name, count - n)
            count = n
        else:
            i += 1
        out[name] = out.get(name, 0) + count
        n -= count
    del runs[:i]
    return out
