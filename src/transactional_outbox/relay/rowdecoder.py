"""A row decoder specialised for the outbox table. Pure: bytes in, events out.

python-mysql-replication decodes every value through a generic, per-column
path (a charset lookup per string, a dict per row); at ~20-30k rows/s it is
the relay's wall (DESIGN §7). The outbox table has only four column kinds, so
its rows can be cut straight out of the WRITE_ROWS body. A table with any
other column type gets no plan and falls back to the library's decoding.

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

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..event import OutboxEvent
from ..exceptions import InvalidEventError

__all__ = ["ColumnSpec", "RejectedRow", "RowPlan", "decode_rows", "plan_for", "rejected"]

# MySQL field type codes as they appear in the table map.
VARCHAR = 15
DATETIME2 = 18
BLOB = 252
VAR_STRING = 253
STRING = 254

_STR, _BLOB, _DT = 0, 1, 2
_headers_cache: dict[bytes, dict[str, str]] = {}
# uuid.UUID(bytes=...) validates its arguments at length; 16 bytes are always a
# valid UUID, so build it as the uuid module itself does in UUID.__setstate__.
_UUID = uuid.UUID
_new_uuid = object.__new__
_set = object.__setattr__
_UNKNOWN = uuid.SafeUUID.unknown
_NEEDED = ("id", "aggregatetype", "aggregateid", "type", "payload", "headers", "timestamp")


@dataclass(frozen=True, slots=True)
class RejectedRow:
    """An outbox row that is not a valid event (written by a foreign writer, say).

    It takes its place in the stream, so the relay's policy decides: stop, or
    dead-letter it and go on. Never skipped silently.
    """

    reason: str
    event_id: str | None = None
    aggregate_id: str | None = None
    where: str = ""


def rejected(exc: InvalidEventError, raw_id: Any = None, aggregate_id: Any = None) -> RejectedRow:
    """A :class:`RejectedRow` for a row that failed with ``exc``, keeping what is known."""
    event_id = None
    if isinstance(raw_id, str):
        raw_id = raw_id.encode()
    if isinstance(raw_id, bytes) and len(raw_id) <= 16:
        event_id = str(uuid.UUID(bytes=raw_id.ljust(16, b"\x00")))
    agg = None
    if isinstance(aggregate_id, bytes):
        agg = aggregate_id.decode(errors="replace")
    elif isinstance(aggregate_id, str):
        agg = aggregate_id
    return RejectedRow(reason=str(exc), event_id=event_id, aggregate_id=agg)


@dataclass(frozen=True, slots=True)
class ColumnSpec:
    """What the decoder needs of one column of the table map."""

    name: str
    type: int
    max_length: int = 0  # STRING/VARCHAR: maximum length in bytes
    length_size: int = 0  # BLOB: bytes of the length prefix
    fsp: int = 0  # DATETIME2: fractional-second precision


@dataclass(frozen=True, slots=True)
class RowPlan:
    """How to cut one row: per column (kind, size), and where the needed ones are."""

    readers: tuple[tuple[int, int], ...]
    index: dict[str, int]
    null_bytes: int


def plan_for(columns: Sequence[ColumnSpec]) -> RowPlan | None:
    """A plan for these columns, or None if a type is not one the decoder knows."""
    readers: list[tuple[int, int]] = []
    for col in columns:
        if col.type in (STRING, VARCHAR, VAR_STRING):
            readers.append((_STR, 1 if col.max_length <= 255 else 2))
        elif col.type == BLOB and 1 <= col.length_size <= 4:
            readers.append((_BLOB, col.length_size))
        elif col.type == DATETIME2 and 0 <= col.fsp <= 6:
            readers.append((_DT, col.fsp))
        else:
            return None
    index = {col.name.lower(): i for i, col in enumerate(columns)}
    if any(name not in index for name in _NEEDED):
        return None
    if readers[index["timestamp"]][0] != _DT or readers[index["id"]][0] != _STR:
        return None
    return RowPlan(tuple(readers), index, (len(columns) + 7) // 8)


def _datetime(packed: int, fraction: int, fsp: int) -> datetime:
    year_month = (packed >> 22) & 0x1FFFF
    micro = fraction * 10 ** (6 - fsp) if fsp else 0
    if fsp % 2:
        # Odd precisions store one digit more than they keep.
        micro = (fraction // 10) * 10 ** (6 - fsp)
    return datetime(
        year_month // 13,
        year_month % 13,
        (packed >> 17) & 0x1F,
        (packed >> 12) & 0x1F,
        (packed >> 6) & 0x3F,
        packed & 0x3F,
        micro,
        tzinfo=UTC,
    )


def decode_rows(data: bytes, plan: RowPlan) -> list[OutboxEvent | RejectedRow]:
    """Decode every row of a WRITE_ROWS body (after the columns-present bitmap).

    A row that is not a valid event (NULL where a value is needed, bad UTF-8,
    bad headers) becomes a :class:`RejectedRow` naming the column. A body that
    cannot be cut into rows raises :class:`InvalidEventError`.
    """
    readers = plan.readers
    ncols = len(readers)
    nb = plan.null_bytes
    ix = plan.index
    i_id, i_at, i_ai, i_ty = ix["id"], ix["aggregatetype"], ix["aggregateid"], ix["type"]
    i_pl, i_hd, i_ts = ix["payload"], ix["headers"], ix["timestamp"]
    from_bytes = int.from_bytes
    out: list[OutboxEvent | RejectedRow] = []
    pos, end = 0, len(data)
    while pos < end:
        nulls = from_bytes(data[pos : pos + nb], "little")
        pos += nb
        values: list[Any] = [None] * ncols
        for i in range(ncols):
            if (nulls >> i) & 1:
                continue
            kind, size = readers[i]
            if kind == _DT:
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
            out.append(_event(values, i_id, i_at, i_ai, i_ty, i_pl, i_hd, i_ts))
        except InvalidEventError as exc:
            out.append(rejected(exc, values[i_id], values[i_ai]))
    return out


def _text(value: Any, column: str) -> str:
    if value is None or value == b"":
        raise InvalidEventError(column, value, "must be a non-empty string")
    try:
        return str(value.decode())
    except UnicodeDecodeError:
        raise InvalidEventError(column, value, "is not valid UTF-8") from None


def _event(
    values: list[Any], i_id: int, i_at: int, i_ai: int, i_ty: int, i_pl: int, i_hd: int, i_ts: int
) -> OutboxEvent:
    raw_id = values[i_id]
    if raw_id is None or len(raw_id) > 16:
        raise InvalidEventError("id", raw_id, "must be 16 bytes")
    payload = values[i_pl]
    if payload is None:
        raise InvalidEventError("payload", None, "must not be NULL")
    ts = values[i_ts]
    if ts is None:
        raise InvalidEventError("timestamp", None, "must be a DATETIME")
    try:
        timestamp = _datetime(*ts)
    except ValueError:
        raise InvalidEventError("timestamp", ts[0], "is not a valid date") from None
    raw_headers = values[i_hd]
    headers: dict[str, str] = {}
    cached = _headers_cache.get(raw_headers) if raw_headers else None
    if cached is not None:
        headers = cached
    elif raw_headers:
        try:
            parsed = json.loads(raw_headers)
        except ValueError as exc:
            raise InvalidEventError("headers", raw_headers, f"not valid JSON ({exc})") from None
        if not isinstance(parsed, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in parsed.items()
        ):
            raise InvalidEventError(
                "headers", raw_headers, "must be a JSON object of strings to strings"
            )
        headers = parsed
        # Most events carry one of a few header sets (content type, tenant...):
        # parse each once. The dicts are shared, and never mutated by the relay.
        if len(raw_headers) < 512:
            if len(_headers_cache) >= 4096:
                _headers_cache.clear()
            _headers_cache[raw_headers] = parsed
    event_id = _new_uuid(_UUID)
    _set(event_id, "int", int.from_bytes(raw_id.ljust(16, b"\x00")))
    _set(event_id, "is_safe", _UNKNOWN)
    return OutboxEvent(
        id=event_id,
        aggregate_type=_text(values[i_at], "aggregatetype"),
        aggregate_id=_text(values[i_ai], "aggregateid"),
        event_type=_text(values[i_ty], "type"),
        payload=payload,
        headers=headers,
        timestamp=timestamp,
    )
