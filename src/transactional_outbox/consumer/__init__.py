"""The consuming side: decode outbox records, process each event once, run a consumer.

- :class:`ReceivedEvent` — a Kafka record from the relay, decoded.
- :func:`idempotent_consumer` — run a handler at most once per event id, with a
  Redis store (:class:`AsyncRedisStore`, :class:`RedisStore`) or an inbox table
  in the handler's own transaction (:class:`AsyncSqlStore`, :class:`SqlStore`,
  :func:`inbox_table`).
- :class:`ConsumerRunner` + :class:`RunnerSettings` — consume in a group, commit
  after handling, retry with backoff, dead-letter what keeps failing.

Needs the ``consumer`` extra (aiokafka, redis).
"""

from ..exceptions import ConsumerError, InvalidRecordError
from .dead_letter import DLQ_HEADER_PREFIX, dead_letter_headers
from .decorator import AsyncConsumer, Store, SyncConsumer, idempotent_consumer
from .errors import EventInProgressError
from .received import ReceivedEvent, RecordLike
from .redis_store import AsyncRedisStore, RedisStore
from .runner import ConsumerRunner, Handler
from .settings import RunnerSettings
from .sql_store import DEFAULT_INBOX_TABLE, AsyncSqlStore, SqlStore, inbox_table

__all__ = [
    "DEFAULT_INBOX_TABLE",
    "DLQ_HEADER_PREFIX",
    "AsyncConsumer",
    "AsyncRedisStore",
    "AsyncSqlStore",
    "ConsumerError",
    "ConsumerRunner",
    "EventInProgressError",
    "Handler",
    "InvalidRecordError",
    "ReceivedEvent",
    "RecordLike",
    "RedisStore",
    "RunnerSettings",
    "SqlStore",
    "Store",
    "SyncConsumer",
    "dead_letter_headers",
    "idempotent_consumer",
    "inbox_table",
]
