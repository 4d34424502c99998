"""Test helpers for applications that use the outbox: no relay, no broker, no MySQL needed.

- :func:`capture_events` — record the events your code commits (sync or async
  sessions, SQLite included), as an :class:`EventList` with filters and assertions;
  the pytest fixture ``outbox_events`` does the same for one test (enable it with
  ``pytest_plugins = ["transactional_outbox.testing.pytest_plugin"]``).
- :func:`to_record` / :func:`to_received` — the Kafka record the relay would publish
  for an event, and the :class:`~transactional_outbox.consumer.ReceivedEvent` a
  consumer would get from it, to feed your handlers events made by your real code.
"""

from ._capture import CapturedEvents, capture_events
from ._event_list import EventList, payload_json
from ._records import TestRecord, to_received, to_record

__all__ = [
    "CapturedEvents",
    "EventList",
    "TestRecord",
    "capture_events",
    "payload_json",
    "to_received",
    "to_record",
]
