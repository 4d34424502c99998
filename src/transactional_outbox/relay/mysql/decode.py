"""Outbox rows, as the binlog reader returns them, to events. Pure."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from ...event import OutboxEvent
from ...exceptions import InvalidEventError
from ...record_format import parse_headers

__all__ = ["row_to_event"]


def _text(row: Mapping[str, Any], column: str) -> str:
    value = row.get(column)
    if isinstance(value, bytes):
        try:
            value = value.decode()
        except UnicodeDecodeError:
            raise InvalidEventError(column, value, "is not valid UTF-8") from None
    if not isinstance(value, str) or not value:
        raise InvalidEventError(column, value, "must be a non-empty string")
    return value


def _event_id(raw: object) -> uuid.UUID:
    if isinstance(raw, str):
        # The reader falls back to UTF-8 text when a column's charset is unknown
        # (e.g. the all-zero id, which arrives as '').
        raw = raw.encode()
    # The server strips trailing NUL bytes of BINARY values (DESIGN §7): restore them.
    if not isinstance(raw, bytes) or len(raw) > 16:
        raise InvalidEventError("id", raw, "must be 16 bytes")
    return uuid.UUID(bytes=raw.ljust(16, b"\x00"))


def row_to_event(row: Mapping[str, Any]) -> OutboxEvent:
    """Build the event of one outbox row. Raises :class:`InvalidEventError` on bad data."""
    payload = row.get("payload")
    if isinstance(payload, str):
        payload = payload.encode()
    if payload is None:
        raise InvalidEventError("payload", None, "must not be NULL")
    if not isinstance(payload, bytes):
        raise InvalidEventError("payload", payload, "must be bytes")
    ts = row.get("timestamp")
    if not isinstance(ts, datetime):
        raise InvalidEventError("timestamp", ts, "must be a DATETIME")
    headers = row.get("headers")
    return OutboxEvent(
        id=_event_id(row.get("id")),
        aggregate_type=_text(row, "aggregatetype"),
        aggregate_id=_text(row, "aggregateid"),
        event_type=_text(row, "type"),
        payload=payload,
        headers=parse_headers(headers),
        timestamp=ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC),
    )
