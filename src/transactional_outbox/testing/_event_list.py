"""A list of outbox events with the filters and assertions tests need."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, overload

from ..event import OutboxEvent
from ._records import DEFAULT_TOPIC_TEMPLATE, TestRecord, numbered_records

if TYPE_CHECKING:
    from ..consumer.received import ReceivedEvent

__all__ = ["EventList", "GrowingEventList", "payload_json"]


def payload_json(event: OutboxEvent) -> Any:
    """The event's payload decoded as JSON."""
    return json.loads(event.payload)


class EventList(Sequence[OutboxEvent]):
    """Outbox events in commit order (a read-only sequence of :class:`OutboxEvent`).

    Filters return a new :class:`EventList`; ``==`` compares with any sequence.
    """

    __slots__ = ("_events",)

    def __init__(self, events: Iterable[OutboxEvent] = ()) -> None:
        self._events: list[OutboxEvent] = list(events)

    @overload
    def __getitem__(self, index: int) -> OutboxEvent: ...
    @overload
    def __getitem__(self, index: slice) -> EventList: ...
    def __getitem__(self, index: int | slice) -> OutboxEvent | EventList:
        if isinstance(index, slice):
            return EventList(self._events[index])
        return self._events[index]

    def __len__(self) -> int:
        return len(self._events)

    def __iter__(self) -> Iterator[OutboxEvent]:
        return iter(list(self._events))  # a copy: a live capture may grow meanwhile

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence) and not isinstance(other, str | bytes):
            return list(self._events) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable when live

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()})"

    def describe(self) -> str:
        """One line per event: ``type aggregate_type/aggregate_id``, or ``(no events)``."""
        if not self._events:
            return "(no events)"
        return "; ".join(
            f"{e.event_type} {e.aggregate_type}/{e.aggregate_id}" for e in list(self._events)
        )

    # -- filters -------------------------------------------------------------

    def filter(
        self,
        event_type: str | None = None,
        *,
        aggregate_type: str | None = None,
        aggregate_id: str | int | None = None,
    ) -> EventList:
        """The events matching every criterion given (an int ``aggregate_id`` matches its text)."""
        agg_id = None if aggregate_id is None else str(aggregate_id)
        return EventList(
            e
            for e in list(self._events)
            if (event_type is None or e.event_type == event_type)
            and (aggregate_type is None or e.aggregate_type == aggregate_type)
            and (agg_id is None or e.aggregate_id == agg_id)
        )

    def of_type(self, *event_types: str) -> EventList:
        """The events whose type is one of ``event_types``."""
        wanted = set(event_types)
        return EventList(e for e in list(self._events) if e.event_type in wanted)

    def for_aggregate(
        self, aggregate_type: str, aggregate_id: str | int | None = None
    ) -> EventList:
        """The events of one aggregate type, or of one aggregate if ``aggregate_id`` is given."""
        return self.filter(aggregate_type=aggregate_type, aggregate_id=aggregate_id)

    # -- views ---------------------------------------------------------------

    def types(self) -> list[str]:
        """The event types, in order."""
        return [e.event_type for e in list(self._events)]

    def payloads(self) -> list[Any]:
        """The payloads decoded as JSON, in order."""
        return [payload_json(e) for e in list(self._events)]

    # -- assertions ----------------------------------------------------------

    def one(
        self,
        event_type: str | None = None,
        *,
        aggregate_type: str | None = None,
        aggregate_id: str | int | None = None,
        payload: Any = ...,
    ) -> OutboxEvent:
        """The only event matching the criteria; ``AssertionError`` unless there is exactly one.

        With ``payload``, the match's payload decoded as JSON must also equal it.
        The message lists what was captured, so a failure says what happened.
        """
        found = self.filter(event_type, aggregate_type=aggregate_type, aggregate_id=aggregate_id)
        if len(found) != 1:
            wanted = _criteria(event_type, aggregate_type, aggregate_id)
            raise AssertionError(
                f"expected exactly one event {wanted}, found {len(found)}; "
                f"captured: {self.describe()}"
            )
        event = found[0]
        if payload is not ...:
            try:
                actual = payload_json(event)
            except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError alike
                raise AssertionError(
                    f"{event.event_type} {event.aggregate_type}/{event.aggregate_id}: "
                    f"payload is not JSON ({exc})"
                ) from None
            if actual != payload:
                raise AssertionError(
                    f"{event.event_type} {event.aggregate_type}/{event.aggregate_id}: "
                    f"payload {actual!r} != expected {payload!r}"
                )
        return event

    # -- round trip to the consumer -------------------------------------------

    def records(
        self,
        *,
        topic_template: str = DEFAULT_TOPIC_TEMPLATE,
        topic_overrides: Mapping[str, str] | None = None,
    ) -> list[TestRecord]:
        """The records the relay would publish for these events, offsets counting per topic."""
        return numbered_records(list(self._events), topic_template, topic_overrides)

    def received(
        self,
        *,
        topic_template: str = DEFAULT_TOPIC_TEMPLATE,
        topic_overrides: Mapping[str, str] | None = None,
    ) -> list[ReceivedEvent]:
        """What a consumer would receive for these events (see :func:`to_received`)."""
        from ..consumer.received import ReceivedEvent  # the consumer extra: load it lazily

        records = self.records(topic_template=topic_template, topic_overrides=topic_overrides)
        return [ReceivedEvent.from_record(r) for r in records]


def _criteria(event_type: str | None, aggregate_type: str | None, agg_id: object) -> str:
    parts = []
    if event_type is not None:
        parts.append(f"of type {event_type!r}")
    if aggregate_type is not None:
        parts.append(f"aggregate_type={aggregate_type!r}")
    if agg_id is not None:
        parts.append(f"aggregate_id={str(agg_id)!r}")
    return " ".join(parts) if parts else "(any)"


class GrowingEventList(EventList):
    """An :class:`EventList` that events are appended to (a capture's base)."""

    __slots__ = ()

    def append(self, event: OutboxEvent) -> None:
        """Add ``event`` at the end (a capture does, as events commit)."""
        self._events.append(event)

    def clear(self) -> None:
        """Forget every event."""
        self._events.clear()
