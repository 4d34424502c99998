"""The consuming side: decode outbox records, process each event once, run a consumer.

- :class:`ReceivedEvent` — a Kafka record from the relay, decoded.
- :func:`idempotent_consumer` — run a handler at most once per event id, with a
  dedup store: Redis (:class:`AsyncRedisStore`, :class:`RedisStore`), an inbox
  table in the handler's own transaction (:class:`AsyncSqlStore`,
  :class:`SqlStore`, :func:`inbox_table`), process memory
  (:class:`AsyncInMemoryStore`, :class:`InMemoryStore`), or your own
  (:class:`AsyncDedupStore`, :class:`DedupStore` protocols).
- :class:`ConsumerRunner` + :class:`RunnerSettings` (its brokers: a
  :class:`KafkaConnection`) — consume in a group, dedup per fetched batch,
  order per key, commit after handling, retry with backoff, dead-letter what
  keeps failing.

Needs the ``consumer`` extra (aiokafka, redis). The SQL stores import
SQLAlchemy on first use only. With OpenTelemetry (the ``otel`` extra) and an SDK
set up, each handled event runs in a CONSUMER span continuing its ``traceparent``.
"""

from typing import TYPE_CHECKING

from .._lazy import lazy_attributes
from ..exceptions import (
    ConsumerError,
    EventInProgressError,
    InvalidRecordError,
    StoreUnavailableError,
)
from ..kafka import KafkaConnection
from .dead_letter import DLQ_HEADER_PREFIX, dead_letter_headers
from .decorator import (
    AsyncConsumer,
    AsyncIdempotentHandler,
    IdempotentHandler,
    Store,
    SyncConsumer,
    idempotent_consumer,
)
from .memory import AsyncInMemoryStore, InMemoryStore
from .received import ReceivedEvent, RecordLike
from .redis_store import AsyncRedisStore, RedisStore
from .runner import ConsumerRunner, Handler
from .settings import RunnerSettings
from .store import (
    AsyncDedupStore,
    AsyncInboxStore,
    Claim,
    ClaimResult,
    ClaimStatus,
    DedupStore,
    InboxStore,
)
from .watermark import OffsetWatermark

if TYPE_CHECKING:
    from .sql_store import DEFAULT_INBOX_TABLE, AsyncSqlStore, SqlStore, inbox_table

# A consumer deduplicating in Redis need not import SQLAlchemy (~0.3 s, ~25 MB).
__getattr__ = lazy_attributes(
    __name__,
    {
        "DEFAULT_INBOX_TABLE": "sql_store",
        "AsyncSqlStore": "sql_store",
        "SqlStore": "sql_store",
        "inbox_table": "sql_store",
    },
)

__all__ = [
    "DEFAULT_INBOX_TABLE",
    "DLQ_HEADER_PREFIX",
    "AsyncConsumer",
    "AsyncDedupStore",
    "AsyncIdempotentHandler",
    "AsyncInMemoryStore",
    "AsyncInboxStore",
    "AsyncRedisStore",
    "AsyncSqlStore",
    "Claim",
    "ClaimResult",
    "ClaimStatus",
    "ConsumerError",
    "ConsumerRunner",
    "DedupStore",
    "EventInProgressError",
    "Handler",
    "IdempotentHandler",
    "InMemoryStore",
    "InboxStore",
    "InvalidRecordError",
    "KafkaConnection",
    "OffsetWatermark",
    "ReceivedEvent",
    "RecordLike",
    "RedisStore",
    "RunnerSettings",
    "SqlStore",
    "Store",
    "StoreUnavailableError",
    "SyncConsumer",
    "dead_letter_headers",
    "idempotent_consumer",
    "inbox_table",
]
