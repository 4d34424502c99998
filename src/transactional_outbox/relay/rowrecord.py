"""Outbox rows to Kafka records, value by value: the pieces every row decoder shares. Pure.

A row's values are the column bytes cut from a WRITE_ROWS body (DATETIME2 as
``(packed, fraction[, fsp])``). The record is built straight from them, to
the bytes :mod:`transactional_outbox.record_format` defines, with no
:class:`~transactional_outbox.OutboxEvent`, UUID or datetime in between.
A :class:`RowMemo` holds one reader's memos of what repeats.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from ..exceptions import InvalidEventError
from ..record_format import id_text, own_headers, parse_headers, timestamp_text
from .routing import KafkaRecord, TopicRouter

__all__ = ["SCALE", "RejectedRow", "RowMemo", "microseconds", "record_of_row", "rejected"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SECOND = timedelta(seconds=1)
SCALE = (1_000_000, 100_000, 10_000, 1_000, 100, 10, 1)
"""Microseconds per stored fraction digit, by fractional-second precision (fsp)."""
_new_record: Any = tuple.__new__  # what KafkaRecord._make does, without the lookup


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
    table: str = ""  # the outbox table it was read from, "schema.table"


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
    """One reader's memos of what repeats from row to row, for one outbox table, and
    its topic router.

    Event types, aggregate types, header texts and seconds repeat; each is
    validated and encoded once per reader. Bounded: cleared when full. Topics
    depend on the table (``{schema}``, table overrides), so each table has its
    own memo; ``shared`` lends another table's memo its table-independent
    dicts (names, headers, seconds).
    """

    def __init__(
        self,
        router: TopicRouter,
        *,
        schema: str = "",
        table: str = "",
        shared: RowMemo | None = None,
    ) -> None:
        self.router = router
        self.schema = schema
        self.table = table
        self.topics: dict[bytes, str] = {}  # raw aggregate type -> its topic (validated)
        self.names: dict[bytes, str] = {}  # raw type or aggregate type -> text (valid UTF-8)
        self.headers: dict[bytes, list[tuple[str, bytes]]] = {}  # headers column -> headers
        self.seconds: dict[int, tuple[bytes, int]] = {}  # packed DATETIME2 -> (text, Unix s)
        if shared is not None:
            self.names, self.headers, self.seconds = shared.names, shared.headers, shared.seconds

    def __repr__(self) -> str:
        table = f"`{self.schema}`.`{self.table}`"
        return f"RowMemo({self.router!r}, {table}, topics={len(self.topics)})"

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
            topic = self.router.topic(self.name(raw, "aggregatetype"), self.schema, self.table)
            if len(self.topics) < 10_000:
                self.topics[raw] = topic
        return topic


def _datetime(packed: int, fraction: int, fsp: int) -> datetime:
    year_month = (packed >> 22) & 0x1FFFF
    return datetime(
        year_month // 13,
        year_month % 13,
        (packed >> 17) & 0x1F,
        (packed >> 12) & 0x1F,
        (packed >> 6) & 0x3F,
        packed & 0x3F,
        microseconds(fraction, fsp),
        tzinfo=UTC,
    )


def microseconds(fraction: int, fsp: int) -> int:
    """Microseconds of a DATETIME2 fraction stored with precision ``fsp``."""
    if fsp % 2:
        # Odd precisions store one digit more than they keep.
        return (fraction // 10) * SCALE[fsp]
    return fraction * SCALE[fsp]


def _text(value: Any, column: str) -> str:
    if value is None or value == b"":
        raise InvalidEventError(column, value, "must be a non-empty string")
    try:
        return str(value.decode())
    except UnicodeDecodeError:
        raise InvalidEventError(column, value, "is not valid UTF-8") from None


def record_of_row(
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
    """The record of one row's ``values`` (``i_*``: where each needed column is).

    Raises :class:`InvalidEventError` naming the column if the row is no valid event.
    """
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
    micro = microseconds(ts[1], ts[2])
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
