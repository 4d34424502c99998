"""The outbox tables a binlog parser reads, and what a table id maps to. Pure.

With many outbox tables (issue 19) each has its own row memo (topics depend on
its schema and table) and its own maps by layout; :class:`Mapped` is what the
parser stores per table id, holding what the row path reads per WRITE_ROWS.
"""

from __future__ import annotations

from typing import Any

from ..routing import KafkaRecord, TopicRouter
from ..rowdecoder import RejectedRow, RowMemo
from .tablemap import TableLayout

__all__ = ["UNKNOWN", "Mapped", "Table", "names_of", "place"]

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
