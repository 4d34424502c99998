"""The consuming side's view of an event: a decoded Kafka record from the relay."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from ..event import OutboxEvent
from ..exceptions import InvalidRecordError
from ..record_format import RESERVED_HEADERS, parse_id, parse_timestamp

__all__ = ["ReceivedEvent", "RecordLike"]


class RecordLike(Protocol):
    """What is read from a Kafka record; aiokafka's ``ConsumerRecord`` fits it."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def timestamp(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class ReceivedEvent:
    """An outbox event as a consumer receives it (DESIGN §2), with where it was read.

    Build one from a Kafka record with :meth:`from_record`, or from an
    :class:`~transactional_outbox.OutboxEvent` with :meth:`from_event` (handy in
    handler unit tests).

    ``headers`` holds the user headers only (e.g. ``content-type``, trace
    context): the event's own fields are attributes. ``topic``, ``partition``
    and ``offset`` say where the record was read (``""``/``-1`` when not read
    from Kafka).
    """

    id: uuid.UUID
    event_type: str
    aggregate_type: str
    aggregate_id: str
    timestamp: datetime
    payload: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    topic: str = ""
    partition: int = -1
    offset: int = -1

    def json(self, **kwargs: Any) -> Any:
        """Decode the payload as JSON (``kwargs`` go to :func:`json.loads`)."""
        return json.loads(self.payload, **kwargs)

    @classmethod
    def from_record(cls, record: RecordLike) -> ReceivedEvent:
        """Decode a record published by the relay (or by Debezium's outbox EventRouter).

        The ``id`` header is required: a record without a valid one raises
        :class:`~transactional_outbox.InvalidRecordError`, so it is never
        processed without deduplication. Other fields fall back for records
        from producers that set only ``id`` (Debezium's default): the aggregate
        id to the record key, the timestamp to the record timestamp, the type
        and aggregate type to ``""``.
        """
        # The runner decodes every record it fetches: the error text (`_where`)
        # is only built when there is an error.
        own: dict[str, bytes] = {}
        user: dict[str, str] = {}
        for name, raw in record.headers or ():
            if raw is None:
                continue  # Kafka allows null header values: treat them as absent
            if name in RESERVED_HEADERS:
                if own.setdefault(name, raw) != raw:
                    raise InvalidRecordError(f"{_where(record)} has conflicting {name!r} headers")
            else:
                # User headers are a convenience; a stray binary one should not
                # send an otherwise valid event to the dead-letter topic.
                user[name] = raw.decode("utf-8", "replace")
        return cls(
            id=_event_id(record, own.get("id")),
            event_type=_text(record, own, "type", b""),
            aggregate_type=_text(record, own, "aggregatetype", b""),
            aggregate_id=_text(record, own, "aggregateid", record.key or b""),
            timestamp=_timestamp(record, own.get("timestamp")),
            payload=record.value if record.value is not None else b"",
            headers=user,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
        )

    @classmethod
    def from_event(
        cls, event: OutboxEvent, *, topic: str = "", partition: int = -1, offset: int = -1
    ) -> ReceivedEvent:
        """The event a consumer would receive for ``event`` (no Kafka involved)."""
        return cls(
            id=event.id,
            event_type=event.event_type,
            aggregate_type=event.aggregate_type,
            aggregate_id=event.aggregate_id,
            timestamp=event.timestamp.astimezone(UTC),
            payload=event.payload,
            headers=dict(event.headers),
            topic=topic,
            partition=partition,
            offset=offset,
        )

    def __repr__(self) -> str:
        # Payloads can be large or sensitive; show their size only.
        return (
            f"ReceivedEvent(id={self.id}, event_type={self.event_type!r}, "
            f"aggregate_type={self.aggregate_type!r}, aggregate_id={self.aggregate_id!r}, "
            f"timestamp={self.timestamp.isoformat()}, payload=<{len(self.payload)} bytes>, "
            f"topic={self.topic!r}, partition={self.partition}, offset={self.offset})"
        )


def _where(record: RecordLike) -> str:
    return f"record {record.topic}/{record.partition}@{record.offset}"


def _event_id(record: RecordLike, raw: bytes | None) -> uuid.UUID:
    if raw is None:
        raise InvalidRecordError(
            f"{_where(record)} has no 'id' header: not an outbox event, cannot be deduplicated"
        )
    try:
        return parse_id(raw)
    except (UnicodeDecodeError, ValueError):
        shown = repr(raw[:60])
        raise InvalidRecordError(
            f"{_where(record)} has an invalid 'id' header {shown}: not a UUID"
        ) from None


def _text(record: RecordLike, own: Mapping[str, bytes], name: str, default: bytes) -> str:
    raw = own.get(name, default)
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise InvalidRecordError(
            f"{_where(record)} has a {name!r} header that is not UTF-8"
        ) from None


def _timestamp(record: RecordLike, raw: bytes | None) -> datetime:
    if raw is None:
        return datetime.fromtimestamp(record.timestamp / 1000, UTC)
    try:
        text = raw.decode()
        value = datetime.fromisoformat(text)
        # The relay writes UTC ("+00:00"), which needs no conversion.
        return value if value.tzinfo is UTC else parse_timestamp(text)
    except (UnicodeDecodeError, ValueError):
        shown = repr(raw[:60])
        raise InvalidRecordError(
            f"{_where(record)} has an invalid 'timestamp' header {shown}:"
            " not ISO 8601 with an offset"
        ) from None
