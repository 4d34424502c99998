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

__all__ = [
    "CANARY_AGGREGATE_TYPE",
    "CANARY_TOPIC",
    "KafkaRecord",
    "TopicRouter",
    "build_record",
    "event_of",
    "record_id",
]

CANARY_AGGREGATE_TYPE = "__outbox_relay_canary__"
"""Reserved: rows of this aggregate type are the relay's canaries, never published."""
CANARY_TOPIC = "\x00outbox-relay-canary"
"""The canary's "topic": no legal Kafka name, so it can never be a user topic."""

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


def _override_key(key: str) -> tuple[str, str] | str:
    """``(schema.table, type or "*")`` for a table's override key, else the aggregate type.

    A key is table-scoped when what comes before its first ``:`` is ``schema.table``
    (exactly one dot, both sides non-empty); any other key is an aggregate type.
    """
    head, colon, rest = key.partition(":")
    schema, dot, table = head.partition(".")
    if colon and rest and dot and schema and table and "." not in table:
        return head, rest
    return key


class TopicRouter:
    """Maps an event to its topic: an override if one is set, else the template.

    The template may use ``{aggregatetype}`` (alias ``{aggregate_type}``), and
    ``{schema}`` and ``{table}``: the outbox table the event was read from.
    An override key is an aggregate type (any table), ``SCHEMA.TABLE:TYPE`` or
    ``SCHEMA.TABLE:*`` (every type of that table); the most specific one wins:
    table and type, then table, then type, then the template.
    """

    def __init__(
        self,
        *,
        template: str = DEFAULT_TOPIC_TEMPLATE,
        overrides: Mapping[str, str] | None = None,
    ) -> None:
        try:
            sample = template.format(aggregatetype="x", aggregate_type="x", schema="x", table="x")
        except (KeyError, IndexError, ValueError, AttributeError, TypeError) as exc:
            raise ConfigurationError(
                "topic_template",
                f"{template!r} may only use the placeholders {{aggregatetype}}, {{schema}} "
                f"and {{table}} ({exc})",
            ) from None
        reason = invalid_topic_reason(sample)
        if reason:
            raise ConfigurationError("topic_template", f"{template!r} gives bad topics: {reason}")
        self.template = template
        self.overrides = dict(overrides or {})
        self._by_type: dict[str, str] = {}
        self._by_table: dict[tuple[str, str], str] = {}  # (schema.table, type or "*") -> topic
        for agg, topic in self.overrides.items():
            reason = invalid_topic_reason(topic)
            if reason:
                raise ConfigurationError("topic_overrides", f"for {agg!r}: {reason}")
            key = _override_key(agg)
            if isinstance(key, tuple):
                self._by_table[key] = topic
            else:
                self._by_type[key] = topic
        self._cache: dict[tuple[str, str, str], str] = {}
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

    def topic(self, aggregate_type: str, schema: str = "", table: str = "") -> str:
        """The topic for ``aggregate_type`` read from ``schema``.``table`` (not validated;
        see :func:`invalid_topic_reason`)."""
        key = (aggregate_type, schema, table)
        topic = self._cache.get(key)
        if topic is None:
            found: str | None = None
            if aggregate_type == CANARY_AGGREGATE_TYPE:  # first: no override may catch it
                found = CANARY_TOPIC
            elif self._by_table:
                name = f"{schema}.{table}"
                found = self._by_table.get((name, aggregate_type)) or self._by_table.get(
                    (name, "*")
                )
            topic = (
                found
                or self._by_type.get(aggregate_type)
                or self.template.format(
                    aggregatetype=aggregate_type,
                    aggregate_type=aggregate_type,
                    schema=schema,
                    table=table,
                )
            )
            if len(self._cache) < 10_000:
                self._cache[key] = topic
        return topic


class KafkaRecord(NamedTuple):
    """What the relay sends for one event (a tuple: cheap to build per event)."""

    topic: str
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]
    timestamp_ms: int


def build_record(
    event: OutboxEvent, router: TopicRouter, *, schema: str = "", table: str = ""
) -> KafkaRecord:
    """The Kafka record of ``event`` (read from ``schema``.``table``): key aggregate id,
    value payload bytes unchanged."""
    return KafkaRecord(
        topic=router.topic(event.aggregate_type, schema, table),
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
