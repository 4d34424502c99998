"""Routing and the Kafka record built from an event (DESIGN §2). Pure."""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

from ..event import OutboxEvent
from ..exceptions import ConfigurationError
from ..record_format import OWN_HEADERS, format_timestamp, id_text, own_headers, parse_timestamp

__all__ = ["KafkaRecord", "TopicRouter", "build_record", "event_of", "record_id"]

DEFAULT_TOPIC_TEMPLATE = "outbox.event.{aggregatetype}"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_LEGAL_TOPIC = re.compile(r"[a-zA-Z0-9._-]{1,249}")


def invalid_topic_reason(topic: str) -> str | None:
    """Why Kafka would refuse ``topic`` as a name, or ``None`` if it is legal."""
    if topic in (".", ".."):
        return "topic name cannot be '.' or '..'"
    if not _LEGAL_TOPIC.fullmatch(topic):  # fullmatch: "$" would let "name\n" through
        return (
            f"topic name {topic!r} is not legal in Kafka "
            "(1-249 characters of ASCII letters, digits, '.', '_' and '-')"
        )
    return None


class TopicRouter:
    """Maps an aggregate type to its topic: an override if one is set, else the template.

    The template may use ``{aggregatetype}`` (alias ``{aggregate_type}``).
    """

    def __init__(
        self,
        *,
        template: str = DEFAULT_TOPIC_TEMPLATE,
        overrides: Mapping[str, str] | None = None,
    ) -> None:
        try:
            sample = template.format(aggregatetype="x", aggregate_type="x")
        except (KeyError, IndexError, ValueError, AttributeError, TypeError) as exc:
            raise ConfigurationError(
                "topic_template",
                f"{template!r} may only use the placeholder {{aggregatetype}} ({exc})",
            ) from None
        reason = invalid_topic_reason(sample)
        if reason:
            raise ConfigurationError("topic_template", f"{template!r} gives bad topics: {reason}")
        self.template = template
        self.overrides = dict(overrides or {})
        for agg, topic in self.overrides.items():
            reason = invalid_topic_reason(topic)
            if reason:
                raise ConfigurationError("topic_overrides", f"for {agg!r}: {reason}")
        self._cache: dict[str, str] = {}
        # Per-relay memo of header pieces that repeat from event to event.
        self._field_cache: dict[str, bytes] = {}
        self._user_cache: dict[int, tuple[Mapping[str, str], list[tuple[str, bytes]]]] = {}

    def headers(self, event: OutboxEvent) -> list[tuple[str, bytes]]:
        """``kafka_headers(event)``, memoising the parts many events share.

        Event types, aggregate types and header sets repeat; encoding them once
        is a measurable share of the relay's per-event cost. User header
        mappings are remembered by identity (the relay's decoder shares one
        mapping per distinct header text and never mutates it).
        """
        fields = self._field_cache
        type_b = fields.get(event.event_type)
        if type_b is None:
            type_b = fields[event.event_type] = event.event_type.encode()
        agg_b = fields.get(event.aggregate_type)
        if agg_b is None:
            agg_b = fields[event.aggregate_type] = event.aggregate_type.encode()
        if len(fields) > 20_000:
            fields.clear()
        out = own_headers(
            id_text(event.id.bytes),
            type_b,
            agg_b,
            event.aggregate_id.encode(),
            format_timestamp(event.timestamp).encode(),
        )
        user = event.headers
        if user:
            memo = self._user_cache.get(id(user))
            if memo is None or memo[0] is not user:
                if len(self._user_cache) > 4096:
                    self._user_cache.clear()
                memo = (user, [(k, v.encode()) for k, v in user.items()])
                self._user_cache[id(user)] = memo
            out.extend(memo[1])
        return out

    def topic(self, aggregate_type: str) -> str:
        """The topic for ``aggregate_type`` (not validated; see :func:`invalid_topic_reason`)."""
        topic = self._cache.get(aggregate_type)
        if topic is None:
            topic = self.overrides.get(aggregate_type) or self.template.format(
                aggregatetype=aggregate_type, aggregate_type=aggregate_type
            )
            if len(self._cache) < 10_000:
                self._cache[aggregate_type] = topic
        return topic


class KafkaRecord(NamedTuple):
    """What the relay sends for one event (a tuple: cheap to build per event)."""

    topic: str
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]
    timestamp_ms: int


def build_record(event: OutboxEvent, router: TopicRouter) -> KafkaRecord:
    """The Kafka record of ``event``: key aggregate id, value payload bytes unchanged."""
    return KafkaRecord(
        topic=router.topic(event.aggregate_type),
        key=event.aggregate_id.encode(),
        value=event.payload,
        headers=router.headers(event),
        timestamp_ms=(event.timestamp - _EPOCH) // timedelta(milliseconds=1),
    )


_OWN_HEADERS = len(OWN_HEADERS)  # always first


def record_id(record: KafkaRecord) -> str:
    """The event id of a record the relay built (its ``id`` header)."""
    return record.headers[0][1].decode()


def event_of(record: KafkaRecord) -> OutboxEvent:
    """The event a record was built from: the inverse of :func:`build_record`.

    The relay carries records, not events, through its pipeline; this rebuilds
    the event where one is needed (dead letters), off the hot path.
    """
    own = dict(record.headers[:_OWN_HEADERS])
    return OutboxEvent(
        id=uuid.UUID(own["id"].decode()),
        aggregate_type=own["aggregatetype"].decode(),
        aggregate_id=own["aggregateid"].decode(),
        event_type=own["type"].decode(),
        payload=record.value,
        headers={k: v.decode() for k, v in record.headers[_OWN_HEADERS:]},
        timestamp=parse_timestamp(own["timestamp"].decode()),
    )
