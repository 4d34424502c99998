"""Round trip: an event as the relay would publish it and a consumer would receive it.

Goes through the relay's own record contract (``relay.routing.build_record``,
pure: no aiokafka, redis or pymysql), so a test sees the exact topic, key,
value, headers and timestamp the relay would send.
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..event import OutboxEvent
from ..exceptions import ConfigurationError
from ..relay.routing import DEFAULT_TOPIC_TEMPLATE, TopicRouter, build_record

if TYPE_CHECKING:
    from ..consumer.received import ReceivedEvent

__all__ = ["DEFAULT_TOPIC_TEMPLATE", "TestRecord", "to_received", "to_record"]

CREATE_TIME = 0
"""Kafka's ``timestamp_type`` for a producer-set timestamp (what the relay sends)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TestRecord:
    """A Kafka record as a consumer reads it, shaped like aiokafka's ``ConsumerRecord``.

    It is a :class:`~transactional_outbox.consumer.RecordLike`: pass it to a
    ``@idempotent_consumer`` handler or to ``ReceivedEvent.from_record`` as you
    would a record read from Kafka.
    """

    __test__ = False  # not a pytest test class, despite its name

    topic: str
    partition: int
    offset: int
    timestamp: int  # ms since the epoch, as Kafka carries it
    timestamp_type: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]

    def __repr__(self) -> str:
        # Values can be large or sensitive, as in OutboxEvent's repr.
        size = -1 if self.value is None else len(self.value)
        return (
            f"TestRecord(topic={self.topic!r}, partition={self.partition}, "
            f"offset={self.offset}, key={self.key!r}, value=<{size} bytes>)"
        )


def to_record(
    event: OutboxEvent,
    *,
    partition: int = 0,
    offset: int = 0,
    topic_template: str = DEFAULT_TOPIC_TEMPLATE,
    topic_overrides: Mapping[str, str] | None = None,
    outbox_table: str = "",
) -> TestRecord:
    """The record the relay would publish for ``event``, as a consumer reads it.

    ``topic_template`` / ``topic_overrides`` are the relay's settings of the same
    name. ``outbox_table`` is the ``schema.table`` the event was written to, for a
    template using ``{schema}``/``{table}`` or an override naming a table (one relay
    for many outbox tables). ``partition`` and
    ``offset`` say where it was "read" (Kafka picks the real partition from the key;
    nothing here depends on it). A template using ``{schema}``/``{table}`` without
    ``outbox_table`` raises :class:`~transactional_outbox.ConfigurationError`
    naming the placeholder, rather than giving a topic such as ``outbox..order``.
    """
    router = TopicRouter(template=topic_template, overrides=topic_overrides)
    schema, _, table = outbox_table.partition(".")
    _check_fillable(topic_template, outbox_table, schema=schema, table=table)
    record = build_record(event, router, schema=schema, table=table)
    return TestRecord(
        topic=record.topic,
        partition=partition,
        offset=offset,
        timestamp=record.timestamp_ms,
        timestamp_type=CREATE_TIME,
        key=record.key,
        value=record.value,
        headers=tuple(record.headers),
    )


def _check_fillable(template: str, outbox_table: str, *, schema: str, table: str) -> None:
    # Without outbox_table a "{schema}" template would give "outbox..order": a topic
    # the relay never publishes to, so a test would pass on a record that cannot exist.
    values = {"schema": schema, "table": table}
    for _, name, _, _ in string.Formatter().parse(template):
        if name in values and not values[name]:
            raise ConfigurationError(
                "outbox_table",
                f"topic_template {template!r} uses {{{name}}}, which needs the table the "
                f"event was written to: pass outbox_table='schema.table' (got {outbox_table!r})",
            )


def to_received(
    event: OutboxEvent,
    *,
    partition: int = 0,
    offset: int = 0,
    topic_template: str = DEFAULT_TOPIC_TEMPLATE,
    topic_overrides: Mapping[str, str] | None = None,
    outbox_table: str = "",
) -> ReceivedEvent:
    """The :class:`~transactional_outbox.consumer.ReceivedEvent` a consumer gets for ``event``.

    Built by :func:`to_record` then ``ReceivedEvent.from_record``: the same
    encoding and decoding as through the relay and Kafka, headers included.
    """
    # Imported here: the consumer package loads aiokafka and redis (the
    # ``consumer`` extra), which capturing events on the write side does not need.
    from ..consumer.received import ReceivedEvent

    record = to_record(
        event,
        partition=partition,
        offset=offset,
        topic_template=topic_template,
        topic_overrides=topic_overrides,
        outbox_table=outbox_table,
    )
    return ReceivedEvent.from_record(record)


def numbered_records(
    events: Sequence[OutboxEvent],
    topic_template: str,
    topic_overrides: Mapping[str, str] | None,
) -> list[TestRecord]:
    """:func:`to_record` of each event, offsets counting per topic (one partition)."""
    router = TopicRouter(template=topic_template, overrides=topic_overrides)
    next_offset: dict[str, int] = {}
    out = []
    for event in events:
        topic = router.topic(event.aggregate_type)
        offset = next_offset.get(topic, 0)
        next_offset[topic] = offset + 1
        out.append(
            to_record(
                event,
                offset=offset,
                topic_template=topic_template,
                topic_overrides=topic_overrides,
            )
        )
    return out
