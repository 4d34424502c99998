"""Exceptions raised by transactional-outbox.

Every exception the library raises on purpose derives from :class:`OutboxError`::

    OutboxError
    ├── InvalidEventError         an event field fails validation (names field and value)
    │   └── SerializationError    the payload could not be turned into bytes
    ├── ConfigurationError        a setting is missing or invalid (names the setting)
    │   └── ServerConfigurationError   the database is not set up for the relay
    ├── CheckpointError           the saved position (binlog, LSN) cannot be used
    │   └── BinlogPurgedError     the checkpoint's binlog is gone: events may be lost
    ├── PublishError              Kafka refused an event for good (names the event id)
    ├── LeadershipLostError       this relay no longer holds the lease
    └── ConsumerError             a consumed record cannot be handled
        ├── InvalidRecordError    a Kafka record lacks a valid ``id`` header
        ├── EventInProgressError  another worker holds the event's claim (retry later)
        └── StoreUnavailableError the dedup store cannot be reached (retry later)
"""

from __future__ import annotations

__all__ = [
    "BinlogPurgedError",
    "CheckpointError",
    "ConfigurationError",
    "ConsumerError",
    "EventInProgressError",
    "InvalidEventError",
    "InvalidRecordError",
    "LeadershipLostError",
    "OutboxError",
    "PublishError",
    "SerializationError",
    "ServerConfigurationError",
    "StoreUnavailableError",
]


class OutboxError(Exception):
    """Base class of every error raised by transactional-outbox."""


class InvalidEventError(OutboxError, ValueError):
    """An event field is invalid. ``field`` and ``value`` say which and what."""

    def __init__(self, field: str, value: object, reason: str) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        super().__init__(f"invalid {field}={shown}: {reason}")


class SerializationError(InvalidEventError):
    """The payload could not be serialised to bytes."""


class ConfigurationError(OutboxError, ValueError):
    """A setting is missing or invalid; the message names the setting to change."""

    def __init__(self, setting: str, message: str) -> None:
        self.setting = setting
        self.message = message
        super().__init__(f"{setting}: {message}")

    def __reduce__(self) -> tuple[type[ConfigurationError], tuple[str, str]]:
        # Picklable, so the reader process can send it to the relay intact
        # (its exit code depends on the type).
        return (type(self), (self.setting, self.message))


class ServerConfigurationError(ConfigurationError):
    """The MySQL/MariaDB server is not configured as the relay needs."""


class CheckpointError(OutboxError):
    """The stored checkpoint cannot be read or used."""


class BinlogPurgedError(CheckpointError):
    """The binlog at the checkpoint was purged; events after it may be lost."""


class PublishError(OutboxError):
    """Kafka rejected an event for good. ``event_id`` names it."""

    def __init__(self, event_id: str, reason: str) -> None:
        self.event_id = event_id
        self.reason = reason
        super().__init__(f"event {event_id} cannot be published: {reason}")


class LeadershipLostError(OutboxError):
    """This relay lost its lease; a newer leader owns the checkpoint."""


class ConsumerError(OutboxError):
    """A consumed record cannot be handled."""


class InvalidRecordError(ConsumerError, ValueError):
    """A Kafka record is not an outbox event (e.g. no valid ``id`` header)."""


class EventInProgressError(ConsumerError):
    """Another worker holds the claim on this event and did not finish in time.

    Raised by a dedup store with a ``wait_timeout_ms`` (e.g. the Redis stores). The
    event is neither done nor failed: retry it later (the runner does, without
    counting an attempt). ``key`` names the claim.
    """

    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(f"event {key!r} is being processed by another worker; retry later")


class StoreUnavailableError(ConsumerError):
    """The deduplication store cannot be reached (a lost connection, a Redis failover in
    progress, a cluster slot moving) while claiming or completing an event.

    Raised by ``@idempotent_consumer`` around the store's own calls, never for the
    handler's errors. The event is neither done nor failed: retry it later (the runner
    waits for the store, however long, without counting an attempt: an outage must not
    dead-letter events that never ran). ``__cause__`` is the store's error.
    """
