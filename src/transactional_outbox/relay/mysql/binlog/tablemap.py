"""The outbox table's TABLE_MAP event: its column layout, as the row decoder needs it. Pure.

A TABLE_MAP body after the table id and flags (the part this module reads)::

    schema_len(1) schema NUL table_len(1) table NUL
    column_count(packed int) column_types(column_count bytes)
    metadata_len(packed int) metadata(per column, by type)
    null_bitmap((column_count + 7) // 8)
    optional metadata: (type(1) length(packed int) value)*   -- binlog_row_metadata=FULL

Column names come from optional metadata type 4 (COLUMN_NAME): one packed-length
string per column. Without them (``binlog_row_metadata`` not FULL) the relay
cannot tell the columns apart and refuses, naming the setting.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from ....exceptions import InvalidEventError, OutboxError, ServerConfigurationError
from ....record_format import COLUMNS
from ..rowdecoder import ColumnSpec, RejectedRow, RowPlan, plan_for, rejected

log = logging.getLogger("transactional_outbox.relay.source")

__all__ = ["TableLayout", "UnsupportedLayoutError", "packed_int", "parse_layout"]

# MySQL field types (include/field_types.h, "binlog" column) and the size of
# each one's table-map metadata. A type missing here cannot even be skipped:
# its metadata size is unknown, so the rest of the map cannot be read.
_META_SIZE = {
    0: 0,  # DECIMAL (old)
    1: 0,  # TINY
    2: 0,  # SHORT
    3: 0,  # LONG
    4: 1,  # FLOAT
    5: 1,  # DOUBLE
    6: 0,  # NULL
    7: 0,  # TIMESTAMP
    8: 0,  # LONGLONG
    9: 0,  # INT24
    10: 0,  # DATE
    11: 0,  # TIME
    12: 0,  # DATETIME
    13: 0,  # YEAR
    14: 0,  # NEWDATE
    15: 2,  # VARCHAR
    16: 2,  # BIT
    17: 1,  # TIMESTAMP2
    18: 1,  # DATETIME2
    19: 1,  # TIME2
    245: 1,  # JSON
    246: 2,  # NEWDECIMAL
    247: 2,  # ENUM
    248: 2,  # SET
    249: 1,  # TINY_BLOB
    250: 1,  # MEDIUM_BLOB
    251: 1,  # LONG_BLOB
    252: 1,  # BLOB
    253: 2,  # VAR_STRING
    254: 2,  # STRING
    255: 1,  # GEOMETRY
}
_STRING, _VARCHAR, _VAR_STRING, _DATETIME2 = 254, 15, 253, 18
_COLUMN_NAME = 4


class UnsupportedLayoutError(OutboxError):
    """The outbox table has a column layout the relay's row decoder cannot read."""


@dataclass(frozen=True, slots=True)
class TableLayout:
    """The outbox table as one TABLE_MAP describes it, with the plan to decode its rows."""

    columns: tuple[ColumnSpec, ...]
    plan: RowPlan | None  # None: no row of this layout is an event (see ``reject``)
    full_bitmap: bytes  # the columns-present bitmap of a FULL row image
    # Why rows of a layout without a plan are no events (a column missing or
    # of the wrong type): each row becomes a RejectedRow naming the column.
    reject: InvalidEventError | None = None
    # What a FULL-image WRITE_ROWS body starts with (column count, bitmap), and
    # the plan's generated decoder (None for a rejected layout): read per row
    # event, so stored, not computed.
    head: bytes = b""
    decoder: Any = None

    def __post_init__(self) -> None:
        n = len(self.columns)
        count = bytes([n]) if n < 251 else b"\xfc" + n.to_bytes(2, "little")
        object.__setattr__(self, "head", count + self.full_bitmap)
        object.__setattr__(self, "decoder", None if self.plan is None else self.plan.decoder)

    def reject_rows(self, data: bytes) -> list[RejectedRow]:
        """Every row of ``data`` as a :class:`RejectedRow` with its id, where it can be cut."""
        assert self.reject is not None
        out = []
        for values in cut_rows(data, self.columns):
            out.append(rejected(self.reject, values.get("id"), values.get("aggregateid")))
        return out


def packed_int(data: bytes, pos: int) -> tuple[int, int]:
    """A MySQL length-encoded integer at ``pos``: ``(value, position after it)``."""
    first = data[pos]
    if first < 251:
        return first, pos + 1
    if first == 252:
        return int.from_bytes(data[pos + 1 : pos + 3], "little"), pos + 3
    if first == 253:
        return int.from_bytes(data[pos + 1 : pos + 4], "little"), pos + 4
    if first == 254:
        return int.from_bytes(data[pos + 1 : pos + 9], "little"), pos + 9
    raise ValueError(f"invalid length-encoded integer 0x{first:02x} at {pos}")


def parse_layout(data: bytes, where: str) -> TableLayout:
    """Parse the layout part of a TABLE_MAP body (from column_count on; no checksum).

    Raises :class:`UnsupportedLayoutError` (or :class:`ServerConfigurationError`
    when column names are missing) naming the column and why; ``where`` names
    the table for the message.
    """
    try:
        return _parse(data, where)
    except OutboxError:
        raise
    except (IndexError, ValueError) as exc:
        raise UnsupportedLayoutError(f"{where}: cannot read the table map ({exc})") from None


def _parse(data: bytes, where: str) -> TableLayout:
    ncols, pos = packed_int(data, 0)
    types = data[pos : pos + ncols]
    if len(types) != ncols:
        raise ValueError("column types truncated")
    pos += ncols
    meta_len, pos = packed_int(data, pos)
    meta = data[pos : pos + meta_len]
    pos += meta_len
    pos += (ncols + 7) // 8  # null bitmap: nullability does not change decoding
    names = _column_names(data, pos, ncols)
    if names is None:
        raise ServerConfigurationError(
            "binlog_row_metadata",
            f"the binlog has no column names for {where}; set binlog_row_metadata=FULL "
            "on the server (the relay finds the outbox columns by name)",
        )
    specs: list[ColumnSpec] = []
    m = 0
    for i, type_code in enumerate(types):
        size = _META_SIZE.get(type_code)
        if size is None:
            raise UnsupportedLayoutError(
                f"{where}: column {names[i]!r} has binlog type {type_code}, unknown to the relay"
            )
        raw = meta[m : m + size]
        m += size
        specs.append(_spec(names[i], type_code, raw))
    if m != meta_len:
        raise ValueError(f"metadata is {meta_len} bytes, the column types need {m}")
    plan = plan_for(specs)
    full = ((1 << ncols) - 1).to_bytes((ncols + 7) // 8, "little")
    if plan is None:
        why = why_no_plan(specs)
        if any(_width(spec) is None for spec in specs):
            raise UnsupportedLayoutError(f"{where}: {why}")
        # The rows can be cut but are no events: each is rejected, naming the
        # column, and the relay's on_rejected policy decides (stop or dead-letter).
        log.warning("%s cannot hold outbox events: %s; its rows are rejected", where, why)
        column = why.split("'")[1] if "'" in why else "table"
        return TableLayout(tuple(specs), None, full, InvalidEventError(column, None, why))
    return TableLayout(tuple(specs), plan, full)


def _spec(name: str, type_code: int, raw: bytes) -> ColumnSpec:
    if type_code == _STRING:
        # Two bytes: the real type (CHAR/BINARY, or ENUM/SET) with the high bits
        # of the maximum length folded in, then the length's low byte.
        b0, b1 = raw[0], raw[1]
        if (b0 & 0x30) != 0x30:
            return ColumnSpec(name, b0 | 0x30, max_length=b1 | (((b0 & 0x30) ^ 0x30) << 4))
        if b0 in (247, 248):  # ENUM/SET: the second byte is the value's size
            return ColumnSpec(name, b0, fixed_size=b1)
        return ColumnSpec(name, b0, max_length=b1)
    if type_code in (_VARCHAR, _VAR_STRING):
        return ColumnSpec(name, type_code, max_length=int.from_bytes(raw, "little"))
    if type_code in (249, 250, 251, 252):
        return ColumnSpec(name, 252, length_size=raw[0])
    if type_code == _DATETIME2:
        return ColumnSpec(name, type_code, fsp=raw[0])
    if type_code in (245, 255):  # JSON, GEOMETRY: length-prefixed like a BLOB
        return ColumnSpec(name, type_code, length_size=raw[0])
    return ColumnSpec(name, type_code, fixed_size=fixed_size(type_code, raw))


_FIXED = {1: 1, 2: 2, 3: 4, 4: 4, 5: 8, 7: 4, 8: 8, 9: 3, 10: 3, 11: 3, 12: 8, 13: 1, 14: 3}
_DIG2BYTES = (0, 1, 1, 2, 2, 3, 3, 4, 4, 4)


def fixed_size(type_code: int, meta: bytes) -> int:
    """Bytes a value of this fixed-width type takes in a row image; 0 if not one."""
    size = _FIXED.get(type_code)
    if size is not None:
        return size
    if type_code in (17, 19):  # TIMESTAMP2, TIME2: 4 or 3 bytes, then the fraction
        return (4 if type_code == 17 else 3) + (meta[0] + 1) // 2
    if type_code == 246:  # NEWDECIMAL(precision, scale): 4 bytes per 9 digits
        intg, frac = meta[0] - meta[1], meta[1]
        return intg // 9 * 4 + _DIG2BYTES[intg % 9] + frac // 9 * 4 + _DIG2BYTES[frac % 9]
    if type_code == 16:  # BIT: (bits % 8, bytes)
        return meta[1] + (1 if meta[0] else 0)
    if type_code in (247, 248):  # ENUM, SET: (real type, pack length)
        return meta[1]
    return 0


def _column_names(data: bytes, pos: int, ncols: int) -> list[str] | None:
    end = len(data)
    while pos < end:
        kind = data[pos]
        length, pos = packed_int(data, pos + 1)
        if kind == _COLUMN_NAME:
            names: list[str] = []
            p, stop = pos, pos + length
            while p < stop:
                n, p = packed_int(data, p)
                names.append(data[p : p + n].decode("utf-8", "replace"))
                p += n
            return names if len(names) == ncols else None
        pos += length
    return None


def _width(spec: ColumnSpec) -> tuple[int, int] | None:
    """How to step over a value: (length-prefix bytes, 0) or (0, fixed bytes); None: unknown."""
    if spec.type in (_STRING, _VARCHAR, _VAR_STRING):
        return (1 if spec.max_length <= 255 else 2), 0
    if spec.length_size:
        return spec.length_size, 0
    if spec.type == _DATETIME2:
        return 0, 5 + (spec.fsp + 1) // 2
    if spec.fixed_size:
        return 0, spec.fixed_size
    return None


def cut_rows(data: bytes, columns: tuple[ColumnSpec, ...]) -> list[dict[str, bytes | None]]:
    """The rows of a WRITE_ROWS body, column by column: the bytes of each
    length-prefixed value by lower-case name (the slow path of rejected layouts)."""
    widths = [_width(c) for c in columns]
    names = [c.name.lower() for c in columns]
    nb = (len(columns) + 7) // 8
    rows: list[dict[str, bytes | None]] = []
    pos, end = 0, len(data)
    while pos < end:
        nulls = int.from_bytes(data[pos : pos + nb], "little")
        pos += nb
        row: dict[str, bytes | None] = {}
        for i, width in enumerate(widths):
            if (nulls >> i) & 1 or width is None:
                row[names[i]] = None
                continue
            prefix, fixed = width
            if prefix:
                n = int.from_bytes(data[pos : pos + prefix], "little")
                row[names[i]] = data[pos + prefix : pos + prefix + n]
                pos += prefix + n
            else:
                pos += fixed
        rows.append(row)
    return rows


def why_no_plan(specs: list[ColumnSpec]) -> str:
    """Why :func:`plan_for` has no plan for ``specs``, for the error message."""
    from ..rowdecoder import BLOB, DATETIME2, STRING, VAR_STRING, VARCHAR

    names = {s.name.lower(): s for s in specs}
    missing = [n for n in COLUMNS if n not in names]
    if missing:
        return f"no column '{missing[0]}' (the outbox table's contract, DESIGN §1)"
    for s in specs:
        ok = (
            s.type in (STRING, VARCHAR, VAR_STRING)
            or (s.type == BLOB and 1 <= s.length_size <= 4)
            or (s.type == DATETIME2 and 0 <= s.fsp <= 6)
            or (s.name.lower() not in COLUMNS and (s.fixed_size > 0 or s.length_size > 0))
        )
        if not ok:
            return (
                f"column '{s.name}' has binlog type {s.type}, which the outbox row decoder "
                "does not read (outbox columns must be CHAR/BINARY, VARCHAR, BLOB/TEXT or "
                "DATETIME(n); extra columns may be any type of known width)"
            )
    return "column 'id' must be BINARY/CHAR and 'timestamp' DATETIME(n)"
