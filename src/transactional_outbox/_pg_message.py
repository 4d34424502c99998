"""The table-less outbox on PostgreSQL 14+: an event as a transactional logical decoding message.

``add_event`` can write ``SELECT pg_logical_emit_message(true, prefix, content)``
instead of an INSERT and a DELETE: one statement, no table, no index, no vacuum.
The message is part of the transaction (``true``): it is decoded at its
commit, in commit order, and never if the transaction (or the savepoint it
was written in) rolls back. The relay reads it with pgoutput's ``messages``
option and publishes the same record (DESIGN §2) as for an outbox row.

The prefix names the outbox (it plays the table's part: ``{table}`` in topic
templates, ``SCHEMA.TABLE:`` overrides with the database as schema). The
content, version 1 (all integers big-endian)::

    offset  size  field
    0       1     version = 0x01
    1       16    id (the UUID's 16 bytes)
    17      8     timestamp: signed microseconds since 1970-01-01T00:00:00Z
    25      2     n1, then n1 bytes: aggregatetype (UTF-8)
    ..      2     n2, then n2 bytes: aggregateid (UTF-8)
    ..      2     n3, then n3 bytes: type (UTF-8)
    ..      4     n4, then n4 bytes: headers, the ``headers`` column's JSON (0: none)
    ..      rest  payload: the bytes to the end of the message, unchanged

A reader refuses any other version (the event is rejected, never skipped).
Pure, except :func:`emit_events`, which runs the statement (:func:`statements` gives it
to a pipeline at commit instead).
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from .event import OutboxEvent
from .exceptions import ConfigurationError, InvalidEventError
from .record_format import encode_headers

__all__ = [
    "DEFAULT_PREFIX",
    "EMIT",
    "HEAD",
    "VERSION",
    "check_dialect",
    "emit_events",
    "emit_params",
    "encode_message",
    "statements",
    "unix_micros",
]

VERSION = 1
"""The content layout written by :func:`encode_message`."""

DEFAULT_PREFIX = "outbox"
"""The message prefix unless configured (the default outbox table name)."""

HEAD = struct.Struct("!B16sq")
"""Version, id and timestamp: the fixed start of a version 1 message."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICRO = timedelta(microseconds=1)
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")


def unix_micros(value: datetime) -> int:
    """Microseconds since the Unix epoch of an aware datetime (naive means UTC)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return (value - _EPOCH) // _MICRO


def encode_message(event: OutboxEvent) -> bytes:
    """The message content of ``event`` (version 1, see the module docstring)."""
    parts = [HEAD.pack(VERSION, event.id.bytes, unix_micros(event.timestamp))]
    for name, text in (
        ("aggregate_type", event.aggregate_type),
        ("aggregate_id", event.aggregate_id),
        ("event_type", event.event_type),
    ):
        raw = text.encode()
        if len(raw) > 0xFFFF:
            raise InvalidEventError(name, text, "encodes to more than 65,535 bytes")
        parts += [_U16.pack(len(raw)), raw]
    headers = encode_headers(event.headers).encode() if event.headers else b""
    parts += [_U32.pack(len(headers)), headers, event.payload]
    return b"".join(parts)


EMIT = sa.text("SELECT pg_logical_emit_message(true, :prefix, :content)").bindparams(
    sa.bindparam("prefix", type_=sa.Text()), sa.bindparam("content", type_=sa.LargeBinary())
)
"""The statement: ``true`` makes the message transactional (it commits or rolls back with
the transaction it runs in, and is decoded at that commit, in commit order)."""


def emit_params(
    events: Sequence[OutboxEvent], prefix: str = DEFAULT_PREFIX
) -> list[dict[str, Any]]:
    """The parameters of :data:`EMIT` for ``events``, in order (one set per event)."""
    return [{"prefix": prefix, "content": encode_message(e)} for e in events]


def emit_events(
    connection: sa.Connection, events: Sequence[OutboxEvent], prefix: str = DEFAULT_PREFIX
) -> None:
    """Write ``events`` as transactional messages in ``connection``'s transaction, in order.

    What ``add_event`` runs in place of its INSERT and DELETE in the table-less mode:
    one ``SELECT`` of one ``pg_logical_emit_message`` call per event (up to
    :data:`PER_STATEMENT`), so a flush is one round trip whatever its size. The
    server evaluates a SELECT list left to right, so the messages keep list order.
    """
    for start in range(0, len(events), PER_STATEMENT):
        chunk = events[start : start + PER_STATEMENT]
        if len(chunk) == 1:
            connection.execute(EMIT, {"prefix": prefix, "content": encode_message(chunk[0])})
            continue
        params: dict[str, Any] = {f"c{i}": encode_message(e) for i, e in enumerate(chunk)}
        params["prefix"] = prefix
        connection.execute(_emit_many(len(chunk)), params)


PER_STATEMENT = 500
"""Events per SELECT at most (PostgreSQL allows 1,664 entries in a SELECT list)."""


def statements(
    events: Sequence[OutboxEvent], prefix: str = DEFAULT_PREFIX
) -> list[tuple[str, dict[str, Any]]]:
    """What :func:`emit_events` runs, as psycopg statements (``%(name)s`` parameters):
    for a pipeline at commit (:mod:`._pg_commit`)."""
    out = []
    for start in range(0, len(events), PER_STATEMENT):
        chunk = events[start : start + PER_STATEMENT]
        params: dict[str, Any] = {f"c{i}": encode_message(e) for i, e in enumerate(chunk)}
        params["prefix"] = prefix
        out.append((_select_sql(len(chunk)), params))
    return out


@functools.lru_cache(maxsize=32)
def _select_sql(n: int) -> str:
    calls = ", ".join(f"pg_logical_emit_message(true, %(prefix)s, %(c{i})s)" for i in range(n))
    return f"SELECT {calls}"


@functools.lru_cache(maxsize=32)
def _emit_many(n: int) -> sa.TextClause:
    calls = ", ".join(f"pg_logical_emit_message(true, :prefix, :c{i})" for i in range(n))
    binds = [sa.bindparam(f"c{i}", type_=sa.LargeBinary()) for i in range(n)]
    return sa.text(f"SELECT {calls}").bindparams(sa.bindparam("prefix", type_=sa.Text()), *binds)


MIN_SERVER = (14,)
"""pgoutput decodes logical decoding messages (its ``messages`` option) from PostgreSQL 14."""


def check_dialect(dialect: sa.Dialect) -> None:
    """Refuse a database the table-less mode cannot run on (:class:`ConfigurationError`).

    ``server_version_info`` is None before the first connection: then only the
    name is checked (the write checks again, connected).
    """
    if dialect.name != "postgresql":
        raise ConfigurationError(
            "outbox_mode",
            f"'message' needs PostgreSQL 14 or later, not {dialect.name}; "
            "use outbox_mode='table' (the default)",
        )
    version = dialect.server_version_info
    if version is not None and tuple(version[:1]) < MIN_SERVER:
        shown = ".".join(str(v) for v in version)
        raise ConfigurationError(
            "outbox_mode",
            f"'message' needs PostgreSQL 14 or later, this server is {shown}; "
            "use outbox_mode='table' (the default)",
        )
