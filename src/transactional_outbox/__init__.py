"""transactional-outbox: the transactional outbox pattern for SQLAlchemy on MySQL/MariaDB.

Write events in your own transaction with ``session.add_event(...)``; the relay
(``python -m transactional_outbox.relay``) tails the binlog and publishes them to
Kafka; ``transactional_outbox.consumer`` drops duplicates on the consuming side.
"""

from typing import TYPE_CHECKING

from ._lazy import lazy_attributes
from .event import JsonSerializer, OutboxEvent, Serializer, uuid7
from .exceptions import (
    BinlogPurgedError,
    CheckpointError,
    ConfigurationError,
    ConsumerError,
    EventInProgressError,
    InvalidEventError,
    InvalidRecordError,
    LeadershipLostError,
    OutboxError,
    PublishError,
    SerializationError,
    ServerConfigurationError,
    StoreUnavailableError,
)
from .kafka import KafkaConnection

if TYPE_CHECKING:
    from .async_session import AsyncOutboxSession
    from .session import OutboxSession, enable_outbox
    from .table import OutboxMixin, outbox_table

# The write side needs SQLAlchemy; the relay's binlog reader process and
# consumers need not pay its import (~0.3 s, ~25 MB) unless they use it.
__getattr__ = lazy_attributes(
    __name__,
    {
        "AsyncOutboxSession": "async_session",
        "OutboxSession": "session",
        "enable_outbox": "session",
        "OutboxMixin": "table",
        "outbox_table": "table",
    },
)


__all__ = [
    "AsyncOutboxSession",
    "BinlogPurgedError",
    "CheckpointError",
    "ConfigurationError",
    "ConsumerError",
    "EventInProgressError",
    "InvalidEventError",
    "InvalidRecordError",
    "JsonSerializer",
    "KafkaConnection",
    "LeadershipLostError",
    "OutboxError",
    "OutboxEvent",
    "OutboxMixin",
    "OutboxSession",
    "PublishError",
    "SerializationError",
    "Serializer",
    "ServerConfigurationError",
    "StoreUnavailableError",
    "enable_outbox",
    "outbox_table",
    "uuid7",
]

__version__ = "0.1.0"
