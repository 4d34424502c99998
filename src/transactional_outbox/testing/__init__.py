"""Test helpers for applications that use the outbox: no relay, no broker, no MySQL needed.

- :func:`capture_events` — record the events your code commits (sync or async
  sessions, SQLite included), as an :class:`EventList` with filters and assertions;
  the pytest fixture ``outbox_events`` does the same for one test (enable it with
  ``pytest_plugins = ["transactional_outbox.testing.pytest_plugin"]``).
- :func:`to_record` / :func:`to_received` — the Kafka record the relay would publish
  for an event, and the :class:`~transactional_outbox.consumer.ReceivedEvent` a
  consumer would get from it, to feed your handlers events made by your real code.
- :class:`InMemoryStore` / :class:`AsyncInMemoryStore` — dedup stores in memory for unit
  tests of ``@idempotent_consumer`` handlers (duplicate delivery, a handler that fails
  once), from :mod:`transactional_outbox.consumer.memory`.
"""

from typing import TYPE_CHECKING

from .._lazy import lazy_attributes
from ._capture import CapturedEvents, capture_events
from ._event_list import EventList, payload_json
from ._records import TestRecord, to_received, to_record

if TYPE_CHECKING:
    from ..consumer.memory import AsyncInMemoryStore, InMemoryStore

# The consumer package loads aiokafka and redis (the consumer extra): only on use.
__getattr__ = lazy_attributes(
    __name__, {"AsyncInMemoryStore": ".consumer.memory", "InMemoryStore": ".consumer.memory"}
)

__all__ = [
    "AsyncInMemoryStore",
    "CapturedEvents",
    "EventList",
    "InMemoryStore",
    "TestRecord",
    "capture_events",
    "payload_json",
    "to_received",
    "to_record",
]
