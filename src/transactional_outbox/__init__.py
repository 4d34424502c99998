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

__all__ = [
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
    "PublishError",
    "SerializationError",
    "Serializer",
    "ServerConfigurationError",
    "uuid7",
]

__version__ = "0.1.0"
