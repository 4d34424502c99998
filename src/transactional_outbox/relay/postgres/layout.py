"""Outbox table layouts on PostgreSQL: which column types the relay reads, and how. Pure.

pgoutput's Relation message names each column and its type OID; the relay
asks for the binary format (``binary 'true'``), in which every type it reads
arrives as plain bytes: ``bytea``, ``uuid`` (16 bytes), ``text``/``varchar``
(UTF-8: the connection's ``client_encoding``), ``json`` (its text), ``jsonb``
(a version byte, 1, then its text), ``timestamp``/``timestamptz`` (signed
microseconds since 2000-01-01, big-endian).

Two layouts publish the same record: the SDK's migration (``bytea`` id and
payload, ``timestamp``) and Debezium's PostgreSQL outbox (``uuid`` id,
``jsonb``/``text``/``bytea`` payload). A ``jsonb`` payload is published as
PostgreSQL's text of it (``payload::text``: keys sorted and deduplicated,
``": "`` and ``", "`` spacing), not the bytes the application inserted.
Columns beyond the seven of DESIGN §1 are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...record_format import COLUMNS

__all__ = ["ACCEPTED", "OutboxLayout", "layout_of", "type_name"]

# Type OIDs (pg_type.dat; fixed for built-in types).
BYTEA, NAME, TEXT, JSON, BPCHAR, VARCHAR, TIMESTAMP, TIMESTAMPTZ, UUID, JSONB = (
    17,
    19,
    25,
    114,
    1042,
    1043,
    1114,
    1184,
    2950,
    3802,
)
_NAMES = {
    BYTEA: "bytea",
    NAME: "name",
    TEXT: "text",
    JSON: "json",
    BPCHAR: "character",
    VARCHAR: "character varying",
    TIMESTAMP: "timestamp without time zone",
    TIMESTAMPTZ: "timestamp with time zone",
    UUID: "uuid",
    JSONB: "jsonb",
}
_TEXTS = frozenset({TEXT, VARCHAR})
ACCEPTED: dict[str, frozenset[int]] = {
    "id": frozenset({BYTEA, UUID}),
    "aggregatetype": _TEXTS,
    "aggregateid": _TEXTS,
    "type": _TEXTS,
    "payload": frozenset({BYTEA, TEXT, VARCHAR, JSON, JSONB}),
    "headers": frozenset({TEXT, VARCHAR, JSON, JSONB}),
    "timestamp": frozenset({TIMESTAMP, TIMESTAMPTZ}),
}
"""Per needed column, the type OIDs the relay reads."""


def type_name(oid: int) -> str:
    """A type OID's name as ``format_type`` writes it (or ``oid N``)."""
    return _NAMES.get(oid, f"oid {oid}")


@dataclass(frozen=True, slots=True)
class OutboxLayout:
    """Where the needed columns are in a row, and whether payload/headers are ``jsonb``."""

    schema: str
    table: str
    index: tuple[int, ...]  # positions of COLUMNS' columns, in COLUMNS order
    ncols: int
    jsonb_payload: bool
    jsonb_headers: bool

    @property
    def name(self) -> str:
        """``schema.table``."""
        return f"{self.schema}.{self.table}"


def layout_of(schema: str, table: str, columns: list[tuple[str, int]]) -> OutboxLayout | str:
    """The layout of a table with these ``(name, type OID)`` columns, or why it is none
    (a sentence naming the column)."""
    where = {name.lower(): i for i, (name, _) in enumerate(columns)}
    index = []
    for name in COLUMNS:
        i = where.get(name)
        if i is None:
            return f"the outbox table {schema}.{table} has no column {name!r}"
        oid = columns[i][1]
        if oid not in ACCEPTED[name]:
            accepted = ", ".join(sorted(type_name(o) for o in ACCEPTED[name]))
            return (
                f"column {name!r} of the outbox table {schema}.{table} is {type_name(oid)}, "
                f"the relay reads {accepted}"
            )
        index.append(i)
    return OutboxLayout(
        schema,
        table,
        tuple(index),
        len(columns),
        columns[where["payload"]][1] == JSONB,
        columns[where["headers"]][1] == JSONB,
    )
