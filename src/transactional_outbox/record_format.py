"""The outbox record contract (DESIGN §2), in one place. Pure.

What the write side stores, the relay publishes and the consumer reads:

* the outbox table's columns, in order (:data:`COLUMNS`);
* the Kafka headers the relay sets from the event's own fields, in order
  (:data:`OWN_HEADERS`), then the user headers in their stored order;
* the ``id`` header: the canonical UUID text (:func:`id_text`), as
  Debezium's EventRouter writes it; a consumer also accepts the 16 raw bytes
  (:func:`parse_id`);
* the ``timestamp`` header: ISO 8601 in UTC with microseconds and ``+00:00``
  (:func:`format_timestamp`, :func:`timestamp_text`, :func:`parse_timestamp`);
* the ``headers`` column: a compact JSON object of strings to strings
  (:func:`encode_headers`, :func:`parse_headers`).

The relay's row decoder builds the same bytes without an
:class:`~transactional_outbox.OutboxEvent` in between; its tests hold it to
these functions.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime

from .exceptions import InvalidEventError

__all__ = [
    "COLUMNS",
    "OWN_HEADERS",
    "RESERVED_HEADERS",
    "encode_headers",
    "format_timestamp",
    "id_text",
    "own_headers",
    "parse_headers",
    "parse_id",
    "parse_timestamp",
    "timestamp_text",
]

COLUMNS = ("id", "aggregatetype", "aggregateid", "type", "payload", "headers", "timestamp")
"""The outbox table's column names, in table order (Debezium's outbox schema)."""

OWN_HEADERS = ("id", "type", "aggregatetype", "aggregateid", "timestamp")
"""The Kafka headers set from the event's own fields, in the order they are sent."""

RESERVED_HEADERS = frozenset(OWN_HEADERS)
"""Kafka header names the relay sets from the event's own fields."""


def id_text(raw: bytes) -> bytes:
    """The ``id`` header of 16 id bytes: the canonical UUID text."""
    h = raw.hex()  # str(UUID) is slower than slicing the hex
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}".encode()


def parse_id(raw: bytes) -> uuid.UUID:
    """The event id of an ``id`` header: UUID text, or 16 raw bytes (a BINARY(16) passed
    through as is; UUID text is at least 32 characters, so the two cannot be confused).

    Raises :class:`ValueError` (or :class:`UnicodeDecodeError`) if it is neither.
    """
    if len(raw) == 16:
        return uuid.UUID(bytes=bytes(raw))
    return uuid.UUID(raw.decode("ascii"))


def format_timestamp(value: datetime) -> str:
    """The ``timestamp`` Kafka header: ISO 8601 in UTC with microseconds."""
    if value.tzinfo is not UTC:  # astimezone() costs more than the formatting itself
        value = value.astimezone(UTC)
    return value.isoformat(timespec="microseconds")


def timestamp_text(second: bytes, micro: int) -> bytes:
    """:func:`format_timestamp` from ``b"YYYY-MM-DDTHH:MM:SS"`` (UTC) and microseconds."""
    return b"%s.%06d+00:00" % (second, micro)


def parse_timestamp(text: str) -> datetime:
    """Inverse of :func:`format_timestamp` (any ISO 8601 text with an offset)."""
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        raise ValueError(f"timestamp {text!r} has no UTC offset")
    return value.astimezone(UTC)


def own_headers(
    event_id: bytes, event_type: bytes, aggregate_type: bytes, aggregate_id: bytes, ts: bytes
) -> list[tuple[str, bytes]]:
    """The headers of the event's own fields, in :data:`OWN_HEADERS` order (values encoded)."""
    return [
        ("id", event_id),
        ("type", event_type),
        ("aggregatetype", aggregate_type),
        ("aggregateid", aggregate_id),
        ("timestamp", ts),
    ]


def encode_headers(headers: Mapping[str, str]) -> str:
    """Encode headers as the ``headers`` column holds them: a compact JSON object."""
    return _HEADERS_JSON(dict(headers))


# What json.dumps(separators=..., ensure_ascii=False) builds on every call, built once.
_HEADERS_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def parse_headers(text: str | bytes | None) -> dict[str, str]:
    """Decode the ``headers`` column. ``None`` or empty means no headers.

    Raises :class:`InvalidEventError` if the text is not a JSON object of
    strings to strings.
    """
    if text is None or text in ("", b""):
        return {}
    try:
        value = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidEventError("headers", text, f"not valid JSON ({exc})") from None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise InvalidEventError("headers", text, "must be a JSON object of strings to strings")
    return value
