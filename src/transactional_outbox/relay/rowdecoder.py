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
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from ..exceptions import InvalidEventError
from ..record_format import COLUMNS, id_text, own_headers, parse_headers, timestamp_text
from .routing import KafkaRecord, TopicRouter

__all__ = ["ColumnSpec", "RejectedRow", "RowMemo", "RowPlan", "decode_rows", "plan_for", "rejected"]

# MySQL field type codes as they appear in the table map.
VARCHAR = 15
DATETIME2 = 18
BLOB = 252
VAR_STRING = 253
STRING = 254

_STR, _BLOB, _DT, _SKIP = 0, 1, 2, 3
JSON, GEOMETRY = 245, 255
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SECOND = timedelta(seconds=1)
_SCALE = (1_000_000, 100_000, 10_000, 1_000, 100, 10, 1)  # microseconds per digit, by fsp
_new_record: Any = tuple.__new__  # what KafkaRecord._make does, without the lookup

Decoder = Callable[[bytes, "RowMemo"], list["KafkaRecord | RejectedRow"]]


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


class RowMemo:
    """One reader's memos of what repeats from row to row, and its topic router.

    Event types, aggregate types, header texts and seconds repeat; each is
    validated and encoded once per reader. Bounded: cleared when full.
    """

    def __init__(self, router: TopicRouter) -> None:
        self.router = router
        self.topics: dict[bytes, str] = {}  # raw aggregate type -> its topic (validated)
        self.names: dict[bytes, str] = {}  # raw type or aggregate type -> text (valid UTF-8)
        self.headers: dict[bytes, list[tuple[str, bytes]]] = {}  # headers column -> headers
        self.seconds: dict[int, tuple[bytes, int]] = {}  # packed DATETIME2 -> (text, Unix s)

    def __repr__(self) -> str:
        return f"RowMemo({self.router!r}, topics={len(self.topics)})"

    def second(self, packed: int) -> tuple[bytes, int]:
        """``(b"YYYY-MM-DDTHH:MM:SS", Unix seconds)`` of a packed DATETIME2.

        Events of one second share it, so the per-event work is formatting the
        microseconds only (``datetime.isoformat`` costs ~2 µs an event).
        """
        hit = self.seconds.get(packed)
        if hit is None:
            try:
                dt = _datetime(packed, 0, 0)
            except ValueError:
                raise InvalidEventError("timestamp", packed, "is not a valid date") from None
            hit = (dt.isoformat(timespec="seconds")[:19].encode(), (dt - _EPOCH) // _SECOND)
            if len(self.seconds) >= 100_000:
                self.seconds.clear()
            self.seconds[packed] = hit
        return hit

    def name(self, value: Any, column: str) -> str:
        """An aggregate type or event type: few distinct values, so validated once each."""
        name = self.names.get(value)
        if name is None:
            name = _text(value, column)
            if len(self.names) >= 8192:
                self.names.clear()
            self.names[value] = name
        return name

    def user_headers(self, raw: bytes) -> list[tuple[str, bytes]]:
        """The user headers of a ``headers`` column value, encoded for Kafka."""
        cached = self.headers.get(raw)
        if cached is not None:
            return cached
        encoded = [(k, v.encode()) for k, v in parse_headers(raw).items()]
        # Most events carry one of a few header sets (content type, tenant...):
        # parse each once. The lists are shared and never mutated.
        if len(raw) < 512:
            if len(self.headers) >= 4096:
                self.headers.clear()
            self.headers[raw] = encoded
        return encoded

    def topic(self, raw: Any) -> str:
        """The topic of a raw aggregate type (validated)."""
        topic = self.topics.get(raw)
        if topic is None:
            topic = self.router.topic(self.name(raw, "aggregatetype"))
            if len(self.topics) < 10_000:
                self.topics[raw] = topic
        return topic


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
            readers.append((_STR, 1 if col.max_length <= 255 else 2))
        elif col.type == BLOB and 1 <= col.length_size <= 4:
            readers.append((_BLOB, col.length_size))
        elif col.type == DATETIME2 and 0 <= col.fsp <= 6:
            readers.append((_DT, col.fsp))
        elif col.type in (JSON, GEOMETRY) and 1 <= col.length_size <= 4:
            readers.append((_SKIP, -col.length_size))  # length-prefixed, never read
        elif col.fixed_size > 0:
            readers.append((_SKIP, col.fixed_size))
        else:
            return None
    index = {col.name.lower(): i for i, col in enumerate(columns)}
    if any(name not in index for name in COLUMNS):
        return None
    if any(readers[index[name]][0] == _SKIP for name in COLUMNS):
        return None
    if readers[index["timestamp"]][0] != _DT or readers[index["id"]][0] != _STR:
        return None
    null_bytes = (len(columns) + 7) // 8
    return RowPlan(tuple(readers), index, null_bytes, _compile(tuple(readers), index, null_bytes))


def _datetime(packed: int, fraction: int, fsp: int) -> datetime:
    year_month = (packed >> 22) & 0x1FFFF
    return datetime(
        year_month // 13,
        year_month % 13,
        (packed >> 17) & 0x1F,
        (packed >> 12) & 0x1F,
        (packed >> 6) & 0x3F,
        packed & 0x3F,
        _micro(fraction, fsp),
        tzinfo=UTC,
    )


def _micro(fraction: int, fsp: int) -> int:
    if fsp % 2:
        # Odd precisions store one digit more than they keep.
        return (fraction // 10) * _SCALE[fsp]
    return fraction * _SCALE[fsp]


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
            if kind == _SKIP:
                if size < 0:
                    pos += -size + from_bytes(data[pos : pos - size], "little")
                else:
                    pos += size
            elif kind == _DT:
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
            out.append(_record(values, memo, i_id, i_at, i_ai, i_ty, i_pl, i_hd, i_ts))
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


def _record(
    values: list[Any],
    memo: RowMemo,
    i_id: int,
    i_at: int,
    i_ai: int,
    i_ty: int,
    i_pl: int,
    i_hd: int,
    i_ts: int,
) -> KafkaRecord:
    # Builds the record straight from the row's bytes: the names, key and
    # header values are the column bytes themselves (once known to be UTF-8),
    # with no OutboxEvent, UUID or datetime in between.
    raw_id = values[i_id]
    if raw_id is None or len(raw_id) > 16:
        raise InvalidEventError("id", raw_id, "must be 16 bytes")
    payload = values[i_pl]
    if payload is None:
        raise InvalidEventError("payload", None, "must not be NULL")
    ts = values[i_ts]
    if ts is None:
        raise InvalidEventError("timestamp", None, "must be a DATETIME")
    prefix, seconds = memo.second(ts[0])
    micro = _micro(ts[1], ts[2])
    raw_headers = values[i_hd]
    user = memo.user_headers(raw_headers) if raw_headers else None
    agg_type = values[i_at]
    topic = memo.topic(agg_type)
    key = values[i_ai]
    _text(key, "aggregateid")
    event_type = values[i_ty]
    memo.name(event_type, "type")
    headers = own_headers(
        id_text(raw_id.ljust(16, b"\x00")), event_type, agg_type, key, timestamp_text(prefix, micro)
    )
    if user:
        headers += user
    record: KafkaRecord = _new_record(
        KafkaRecord, (topic, key, payload, headers, seconds * 1000 + micro // 1000)
    )
    return record


_VARS = {
    "id": "c_id",
    "aggregatetype": "c_at",
    "aggregateid": "c_ai",
    "type": "c_ty",
    "payload": "c_pl",
    "headers": "c_hd",
    "timestamp": "c_ts",
}

_RECORD = """\
        try:
            if c_id is None or len(c_id) > 16:
                raise InvalidEventError("id", c_id, "must be 16 bytes")
            if c_pl is None:
                raise InvalidEventError("payload", None, "must not be NULL")
            if c_ts is None:
                raise InvalidEventError("timestamp", None, "must be a DATETIME")
            second = seconds_get(c_ts[0])
            if second is None:
                second = memo.second(c_ts[0])
            micro = MICRO
            user = None
            if c_hd:
                user = headers_get(c_hd)
                if user is None:
                    user = memo.user_headers(c_hd)
            topic = topics_get(c_at)
            if topic is None:
                topic = memo.topic(c_at)
            if not c_ai:
                raise InvalidEventError("aggregateid", c_ai, "must be a non-empty string")
            try:
                c_ai.decode()
            except UnicodeDecodeError:
                raise InvalidEventError("aggregateid", c_ai, "is not valid UTF-8") from None
            if c_ty not in names:
                memo.name(c_ty, "type")
            headers = own_headers(
                id_text(c_id if len(c_id) == 16 else c_id.ljust(16, b"\\x00")),
                c_ty,
                c_at,
                c_ai,
                timestamp_text(second[0], micro),
            )
            if user:
                headers += user
            ms = second[1] * 1000 + micro // 1000
            append(new(KafkaRecord, (topic, c_ai, c_pl, headers, ms)))
        except InvalidEventError as exc:
            append(rejected(exc, c_id, c_ai))
    return out
"""


def _compile(
    readers: tuple[tuple[int, int], ...], index: dict[str, int], null_bytes: int
) -> Decoder:
    """Generate :func:`decode_rows` for one column layout.

    The generic decoder looks up each column's kind and size per row; for a
    fixed layout those are constants, so the cut is written out column by
    column, with the record building and its memo lookups inline. This is the
    binlog reader's hottest loop; :func:`decode_rows_generic` stays as the
    reference the generated code is tested against.
    """
    needed = {index[name]: _VARS[name] for name in COLUMNS}
    lines = [
        "def decode(data, memo):",
        "    out = []",
        "    append = out.append",
        "    topics_get = memo.topics.get",
        "    seconds_get = memo.seconds.get",
        "    headers_get = memo.headers.get",
        "    names = memo.names",
        "    pos, end = 0, len(data)",
        "    while pos < end:",
        "        try:",
        f"            nulls = from_bytes(data[pos : pos + {null_bytes}], 'little')",
        f"            pos += {null_bytes}",
    ]
    for i, (kind, size) in enumerate(readers):
        target = needed.get(i)
        body: list[str] = []
        if kind == _SKIP:
            if size < 0:
                body.append(f"pos += {-size} + from_bytes(data[pos : pos + {-size}], 'little')")
            else:
                body.append(f"pos += {size}")
        elif kind == _DT:
            fbytes = (size + 1) // 2
            frac = f"from_bytes(data[pos + 5 : pos + {5 + fbytes}], 'big')" if fbytes else "0"
            if target:
                body.append(f"{target} = (from_bytes(data[pos : pos + 5], 'big'), {frac})")
            body.append(f"pos += {5 + fbytes}")
        else:
            if size == 1:
                body.append("n = data[pos]")
            elif size == 2:
                body.append("n = data[pos] | (data[pos + 1] << 8)")
            else:
                body.append(f"n = from_bytes(data[pos : pos + {size}], 'little')")
            if target:
                body.append(f"{target} = data[pos + {size} : pos + {size} + n]")
            body.append(f"pos += {size} + n")
        lines.append(f"            if nulls & {1 << i}:")
        lines.append(f"                {target} = None" if target else "                pass")
        lines.append("            else:")
        lines.extend(f"                {line}" for line in body)
    lines += [
        "        except IndexError:",  # data[pos] past the end: a truncated row
        "            pos = end + 1",
        "        if pos > end:",
        "            raise InvalidEventError('row', len(data), 'row image is truncated')",
    ]
    fsp = readers[index["timestamp"]][1]
    # Odd precisions store one digit more than they keep (as _micro).
    micro = f"(c_ts[1] // 10) * {_SCALE[fsp]}" if fsp % 2 else f"c_ts[1] * {_SCALE[fsp]}"
    source = "\n".join(lines) + "\n" + _RECORD.replace("MICRO", micro)
    namespace: dict[str, Any] = {
        "from_bytes": int.from_bytes,
        "InvalidEventError": InvalidEventError,
        "KafkaRecord": KafkaRecord,
        "new": _new_record,
        "own_headers": own_headers,
        "id_text": id_text,
        "timestamp_text": timestamp_text,
        "rejected": rejected,
    }
    exec(compile(source, f"<outbox row decoder {readers}>", "exec"), namespace)
    decoder: Decoder = namespace["decode"]
    return decoder
