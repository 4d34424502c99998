"""A row decoder specialised for the outbox table. Pure: bytes in, Kafka records out.

python-mysql-replication decodes every value through a generic, per-column
path (a charset lookup per string, a dict per row); at ~20-30k rows/s it is
the relay's wall (DESIGN §7). The outbox table has only four column kinds, so
its rows can be cut straight out of the WRITE_ROWS body. Extra columns of
any other type of known width (``ColumnSpec.fixed_size``, JSON, GEOMETRY)
are stepped over; a layout with anything else gets no plan, and the binlog
reader says why (:mod:`.binlog.tablemap`).

Row image format (MySQL/MariaDB binlog, FULL image): per row, a null bitmap of
``ceil(columns / 8)`` bytes, then each non-NULL column's value:

* CHAR/BINARY (``STRING``) and ``VARCHAR``: a 1-byte length if the column's
  maximum byte length is at most 255, else 2 bytes (little-endian), then bytes.
  The server strips trailing spaces/NULs of fixed-width values, which is why
  ids are padded back to 16 bytes.
* ``BLOB``/``TEXT`` of any size: a ``length_size``-byte length, then bytes.
* ``DATETIME2``: 5 bytes big-endian (sign, year*13+month, day, hour, minute,
  second), then ``ceil(fsp / 2)`` bytes of fraction, big-endian.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ...exceptions import InvalidEventError
from ...record_format import COLUMNS
from ..routing import KafkaRecord
from ..rowrecord import RejectedRow, RowMemo, record_of_row, rejected
from .rowcodegen import KIND_BLOB, KIND_DT, KIND_SKIP, KIND_STR, Decoder, compile_decoder

# RejectedRow, RowMemo and rejected are defined in .rowrecord and exported here too.
__all__ = ["ColumnSpec", "RejectedRow", "RowMemo", "RowPlan", "decode_rows", "plan_for", "rejected"]

# MySQL field type codes as they appear in the table map.
VARCHAR = 15
DATETIME2 = 18
BLOB = 252
VAR_STRING = 253
STRING = 254

JSON, GEOMETRY = 245, 255


@dataclass(frozen=True, slots=True)
class ColumnSpec:
    """What the decoder needs of one column of the table map."""

    name: str
    type: int
    max_length: int = 0  # STRING/VARCHAR: maximum length in bytes
    length_size: int = 0  # BLOB: bytes of the length prefix
    fsp: int = 0  # DATETIME2: fractional-second precision
    # Any other type of fixed width (INT, DECIMAL, TIMESTAMP(n), ...): its size
    # in a row image, so the decoder can step over it; 0 when not known.
    fixed_size: int = 0


@dataclass(frozen=True, slots=True)
class RowPlan:
    """How to cut one row: per column (kind, size), and where the needed ones are."""

    readers: tuple[tuple[int, int], ...]
    index: dict[str, int]
    null_bytes: int
    # decode_rows for exactly this layout, generated once (see _compile).
    decoder: Decoder | None = field(default=None, compare=False, repr=False)


def plan_for(columns: Sequence[ColumnSpec]) -> RowPlan | None:
    """A plan for these columns, or None if a type is not one the decoder knows."""
    return _plan_for(tuple(columns))


# The server writes a table map before each transaction's rows, so a plan is
# asked for per transaction: build each layout's plan (and generate its
# decoder, ~1.5 ms) once.
@functools.lru_cache(maxsize=64)
def _plan_for(columns: tuple[ColumnSpec, ...]) -> RowPlan | None:
    readers: list[tuple[int, int]] = []
    for col in columns:
        if col.type in (STRING, VARCHAR, VAR_STRING):
            readers.append((KIND_STR, 1 if col.max_length <= 255 else 2))
        elif col.type == BLOB and 1 <= col.length_size <= 4:
            readers.append((KIND_BLOB, col.length_size))
        elif col.type == DATETIME2 and 0 <= col.fsp <= 6:
            readers.append((KIND_DT, col.fsp))
        elif col.type in (JSON, GEOMETRY) and 1 <= col.length_size <= 4:
            readers.append((KIND_SKIP, -col.length_size))  # length-prefixed, never read
        elif col.fixed_size > 0:
            readers.append((KIND_SKIP, col.fixed_size))
        else:
            return None
    index = {col.name.lower(): i for i, col in enumerate(columns)}
    if any(name not in index for name in COLUMNS):
        return None
    if any(readers[index[name]][0] == KIND_SKIP for name in COLUMNS):
        return None
    if readers[index["timestamp"]][0] != KIND_DT or readers[index["id"]][0] != KIND_STR:
        return None
    null_bytes = (len(columns) + 7) // 8
    return RowPlan(
        tuple(readers), index, null_bytes, compile_decoder(tuple(readers), index, null_bytes)
    )


def decode_rows(data: bytes, plan: RowPlan, memo: RowMemo) -> list[KafkaRecord | RejectedRow]:
    """Decode every row of a WRITE_ROWS body (after the columns-present bitmap).

    Each valid row becomes the Kafka record the relay sends for it, equal to
    ``build_record(event, memo.router)`` of the row's event. A row that is not a
    valid event (NULL where a value is needed, bad UTF-8, bad headers) becomes
    a :class:`RejectedRow` naming the column. A body that cannot be cut into
    rows raises :class:`InvalidEventError`.
    """
    if plan.decoder is not None:
        return plan.decoder(data, memo)
    return decode_rows_generic(data, plan, memo)


def decode_rows_generic(
    data: bytes, plan: RowPlan, memo: RowMemo
) -> list[KafkaRecord | RejectedRow]:
    """:func:`decode_rows` for any plan, column by column: the reference that the
    generated decoders are tested against."""
    readers = plan.readers
    ncols = len(readers)
    nb = plan.null_bytes
    ix = plan.index
    i_id, i_at, i_ai, i_ty = ix["id"], ix["aggregatetype"], ix["aggregateid"], ix["type"]
    i_pl, i_hd, i_ts = ix["payload"], ix["headers"], ix["timestamp"]
    from_bytes = int.from_bytes
    out: list[KafkaRecord | RejectedRow] = []
    pos, end = 0, len(data)
    while pos < end:
        nulls = from_bytes(data[pos : pos + nb], "little")
        pos += nb
        values: list[Any] = [None] * ncols
        for i in range(ncols):
            if (nulls >> i) & 1:
                continue
            kind, size = readers[i]
            if kind == KIND_SKIP:
                if size < 0:
                    pos += -size + from_bytes(data[pos : pos - size], "little")
                else:
                    pos += size
            elif kind == KIND_DT:
                packed = from_bytes(data[pos : pos + 5], "big")
                pos += 5
                fbytes = (size + 1) // 2
                fraction = from_bytes(data[pos : pos + fbytes], "big") if fbytes else 0
                pos += fbytes
                values[i] = (packed, fraction, size)
            else:
                length = from_bytes(data[pos : pos + size], "little")
                pos += size
                values[i] = data[pos : pos + length]
                pos += length
        if pos > end:
            raise InvalidEventError("row", len(data), "row image is truncated")
        try:
            out.append(record_of_row(values, memo, i_id, i_at, i_ai, i_ty, i_pl, i_hd, i_ts))
        except InvalidEventError as exc:
            out.append(rejected(exc, values[i_id], values[i_ai]))
    return out
