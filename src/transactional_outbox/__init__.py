"""transactional-outbox: the transactional outbox pattern for SQLAlchemy on MySQL/MariaDB.

Write events in your own transaction with ``session.add_event(...)``; the relay
(``python -m transactional_outbox.relay``) tails the binlog and publishes them to
Kafka; ``transactional_outbox.consumer`` drops duplicates on the consuming side.
"""

from .event import JsonSerializer, OutboxEvent, Serializer, uuid7
from .exceptions import (
    BinlogPurgedError,
    CheckpointError,
    ConfigurationError,
    ConsumerError,
    InvalidEventError,
    InvalidRecordError,
    LeadershipLostError,
    OutboxError,
    PublishError,
    SerializationError,
    ServerConfigurationError,
)
from .session import AsyncOutboxSession, OutboxSession, enable_outbox
from .table import OutboxMixin, outbox_table

__all__ = [
    "AsyncOutboxSession",
    "BinlogPurgedError",
    "CheckpointError",
    "ConfigurationError",
    "ConsumerError",
    "InvalidEventError",
    "InvalidRecordError",
    "JsonSerializer",
    "LeadershipLostError",
    "OutboxError",
    "OutboxEvent",
    "OutboxMixin",
    "OutboxSession",
    "PublishError",
    "SerializationError",
    "Serializer",
    "ServerConfigurationError",
    "enable_outbox",
    "outbox_table",
    "uuid7",
]

__version__ = "0.1.0"
