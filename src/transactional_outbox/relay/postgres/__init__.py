"""The relay's PostgreSQL source: logical replication (pgoutput) of the outbox tables and
outbox messages, to the same Kafka records as the binlog source (DESIGN §2).

Groundwork (issue 25): the reader, its checks and the slot; the relay wires it
in behind a source interface (docs/postgres-design.md).
"""

from .checks import (
    SlotLostError,
    SlotState,
    check_role,
    check_server,
    check_start_lsn,
    check_tables,
    ensure_slot,
    slot_lag_bytes,
)
from .pgoutput import PgOutputParser, StreamEnded
from .publication import PublicationGoneError, ensure_publication
from .source import PgBatch, PgBatchSink, PgSource, PgSourceSettings
from .wire import PgConnectParams, PgServerError, PgWire, format_lsn, parse_lsn

__all__ = [
    "PgBatch",
    "PgBatchSink",
    "PgConnectParams",
    "PgOutputParser",
    "PgServerError",
    "PgSource",
    "PgSourceSettings",
    "PgWire",
    "PublicationGoneError",
    "SlotLostError",
    "SlotState",
    "StreamEnded",
    "check_role",
    "check_server",
    "check_start_lsn",
    "check_tables",
    "ensure_publication",
    "ensure_slot",
    "format_lsn",
    "parse_lsn",
    "slot_lag_bytes",
]
