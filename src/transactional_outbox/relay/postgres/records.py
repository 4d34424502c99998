"""Kafka records (DESIGN §2) from PostgreSQL outbox rows and outbox messages. Pure.

Both reach the same function, :func:`record_of`, with the event's fields as
the bytes the stream holds (no :class:`~transactional_outbox.OutboxEvent`,
UUID or datetime in between), so a row and a message of one event give the
same record, equal to ``build_record(event, router)``.
"""

from __future__ import annotations

import struct
from datetime import UTC, datetime
from typing import Any

from ..._pg_message import HEAD, VERSION
from ...exceptions import InvalidEventError
from ...record_format import id_text, own_headers, timestamp_text
from ..routing import KafkaRecord, TopicRouter
from ..rowrecord import RejectedRow, RowMemo, rejected

__all__ = [
    "PG_EPOCH_MICROS",
    "OutboxMemo",
    "outbox_message_id",
    "record_of",
    "record_of_message",
]

PG_EPOCH_MICROS = 946_684_800_000_000
"""PostgreSQL's timestamp epoch (2000-01-01 UTC) in Unix microseconds."""

_new_record: Any = tuple.__new__  # what KafkaRecord._make does, without the lookup
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_HEAD_SIZE = HEAD.size


class OutboxMemo:
    """One outbox's (table or message prefix) memos: a :class:`RowMemo`, and the
    ``YYYY-MM-DDTHH:MM:SS`` text of each Unix second seen (events of one second
    share it). ``shared`` lends another outbox's table-independent memos."""

    def __init__(
        self,
        router: TopicRouter,
        *,
        schema: str,
        table: str,
        shared: OutboxMemo | None = None,
    ) -> None:
        self.rows: RowMemo = RowMemo(
            router, schema=schema, table=table, shared=None if shared is None else shared.rows
        )
        self.seconds: dict[int, bytes] = {} if shared is None else shared.seconds
        self.name = f"{schema}.{table}"

    def second(self, unix_seconds: int) -> bytes:
        """The text of a Unix second, as the ``timestamp`` header starts."""
        text = self.seconds.get(unix_seconds)
        if text is None:
            try:
                dt = datetime.fromtimestamp(unix_seconds, UTC)
            except (OverflowError, OSError, ValueError):
                raise InvalidEventError("timestamp", unix_seconds, "is out of range") from None
            text = dt.isoformat(timespec="seconds")[:19].encode()
            if len(self.seconds) >= 100_000:
                self.seconds.clear()
            self.seconds[unix_seconds] = text
        return text


def record_of(
    memo: OutboxMemo,
    raw_id: Any,
    agg_type: Any,
    agg_id: Any,
    event_type: Any,
    payload: Any,
    headers: Any,
    unix_micros: Any,
) -> KafkaRecord:
    """The record of one event's fields as bytes (``unix_micros``: its timestamp).

    Raises :class:`InvalidEventError` naming the field if they are no valid event.
    """
    if raw_id is None or len(raw_id) != 16:
        raise InvalidEventError("id", raw_id, "must be 16 bytes")
    if payload is None:
        raise InvalidEventError("payload", None, "must not be NULL")
    if unix_micros is None:
        raise InvalidEventError("timestamp", None, "must not be NULL")
    seconds, micro = divmod(unix_micros, 1_000_000)
    prefix = memo.second(seconds)
    rows = memo.rows
    user = rows.user_headers(headers) if headers else None
    topic = rows.topic(agg_type)
    if not agg_id:
        raise InvalidEventError("aggregateid", agg_id, "must be a non-empty string")
    try:
        agg_id.decode()
    except UnicodeDecodeError:
        raise InvalidEventError("aggregateid", agg_id, "is not valid UTF-8") from None
    rows.name(event_type, "type")
    out = own_headers(id_text(raw_id), event_type, agg_type, agg_id, timestamp_text(prefix, micro))
    if user:
        out += user
    record: KafkaRecord = _new_record(
        KafkaRecord, (topic, agg_id, payload, out, seconds * 1000 + micro // 1000)
    )
    return record


def record_of_message(content: bytes, memo: OutboxMemo) -> KafkaRecord | RejectedRow:
    """The record of a message's content (``_pg_message`` layout), or why it is none."""
    raw_id: bytes | None = None
    agg_id: bytes | None = None
    try:
        if len(content) < _HEAD_SIZE or content[0] != VERSION:
            version = content[0] if content else None
            raise InvalidEventError(
                "message", version, f"is not an outbox message of version {VERSION}"
            )
        _, raw_id, micros = HEAD.unpack_from(content)
        (agg_type, agg_id, event_type), pos = _names(content)
        (n,) = _U32.unpack_from(content, pos)
        pos += 4
        headers = content[pos : pos + n]
        pos += n
        if pos > len(content):
            raise InvalidEventError("message", len(content), "is truncated")
        return record_of(memo, raw_id, agg_type, agg_id, event_type, content[pos:], headers, micros)
    except InvalidEventError as exc:
        return rejected_row(exc, raw_id, agg_id, memo)
    except struct.error:
        short = InvalidEventError("message", len(content), "is truncated")
        return rejected_row(short, raw_id, agg_id, memo)


def outbox_message_id(content: bytes) -> bytes | None:
    """The event id if ``content`` is, field by field, an outbox message of the SDK
    (version 1: lengths in bounds, UTF-8 names, headers absent or a JSON object);
    None for anything else (another application's message)."""
    if len(content) < _HEAD_SIZE or content[0] != VERSION:
        return None
    try:
        names, pos = _names(content)
        for name in names:
            name.decode()
        (n,) = _U32.unpack_from(content, pos)
        headers = content[pos + 4 : pos + 4 + n]
    except (struct.error, UnicodeDecodeError):
        return None
    if pos + 4 + n > len(content) or (n and not headers.startswith(b"{")):
        return None
    return content[1:17]


def _names(content: bytes) -> tuple[list[bytes], int]:
    # A message's aggregatetype, aggregateid and type (length-prefixed, after the
    # head), and the offset after them; struct.error if it ends inside a length. A
    # name running past the end shows as an offset past it.
    pos = _HEAD_SIZE
    names = []
    for _ in range(3):
        (n,) = _U16.unpack_from(content, pos)
        pos += 2
        names.append(content[pos : pos + n])
        pos += n
    return names, pos


def rejected_row(exc: InvalidEventError, raw_id: Any, agg_id: Any, memo: OutboxMemo) -> RejectedRow:
    """A :class:`RejectedRow` for an event of ``memo``'s outbox that failed with ``exc``."""
    row = rejected(exc, raw_id if isinstance(raw_id, bytes) else None, agg_id)
    return RejectedRow(row.reason, row.event_id, row.aggregate_id, row.where, memo.name)
