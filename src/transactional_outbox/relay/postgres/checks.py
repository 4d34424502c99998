"""Startup checks and the replication objects on PostgreSQL: server, role, tables,
slot; and the slot's retained WAL (the publication: :mod:`.publication`).

Every check raises one error naming the setting to change (exit 2:
:class:`~transactional_outbox.exceptions.ConfigurationError`), or, for a slot
that is gone while the relay ran before, :class:`SlotLostError` (exit 3: the
PostgreSQL form of a purged binlog; a new slot would start at the current
LSN and skip what was committed meanwhile). Queries run on a plain
(non-replication) :class:`~.wire.PgWire` connection.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ...exceptions import CheckpointError, ConfigurationError, ServerConfigurationError
from .layout import layout_of
from .wire import PgServerError, PgWire, format_lsn, parse_lsn, quote_ident, quote_literal

__all__ = [
    "SlotLostError",
    "SlotState",
    "check_role",
    "check_server",
    "check_start_lsn",
    "check_tables",
    "ensure_slot",
    "slot_lag_bytes",
]

_SLOT_NAME = re.compile(r"[a-z0-9_]{1,63}")


class SlotLostError(CheckpointError):
    """The relay's replication slot is gone (dropped, invalidated, or not on a promoted
    standby) while the relay ran before: events committed meanwhile may be lost."""


@dataclass(frozen=True, slots=True)
class SlotState:
    """The relay's slot as ``pg_replication_slots`` shows it."""

    name: str
    confirmed_flush_lsn: int
    restart_lsn: int
    active: bool
    created: bool  # by this call


def _one(conn: PgWire, sql: str) -> tuple[str | None, ...] | None:
    rows = conn.query(sql)
    return rows[0] if rows else None


def check_server(conn: PgWire) -> None:
    """``wal_level`` is ``logical``, the server is 14+ (pgoutput ``messages``/``binary``),
    and a WAL sender is free."""
    row = _one(
        conn,
        "SELECT current_setting('wal_level'), current_setting('server_version_num')::int, "
        "current_setting('max_wal_senders')::int - "
        "(SELECT count(*) FROM pg_stat_replication)::int",
    )
    assert row is not None
    wal_level, version, free_senders = row[0], int(row[1] or 0), int(row[2] or 0)
    if wal_level != "logical":
        raise ServerConfigurationError(
            "wal_level",
            f"is {wal_level!r} on the server; the relay reads logical replication: set "
            "wal_level = logical in postgresql.conf and restart PostgreSQL",
        )
    if version < 140000:
        raise ServerConfigurationError(
            "server_version", f"is {version}; the relay needs PostgreSQL 14 or later"
        )
    if free_senders <= 0:
        raise ServerConfigurationError(
            "max_wal_senders",
            "every WAL sender of the server is in use; raise max_wal_senders and restart",
        )


def check_role(conn: PgWire) -> None:
    """The login role may stream logical replication (``REPLICATION`` or superuser)."""
    row = _one(
        conn,
        "SELECT current_user, rolreplication OR rolsuper FROM pg_roles "
        "WHERE rolname = current_user",
    )
    if row is None or row[1] != "t":
        user = row[0] if row else "?"
        raise ConfigurationError(
            "database_url",
            f"role {user} may not stream replication: ALTER ROLE {user} REPLICATION",
        )


def check_tables(conn: PgWire, tables: list[tuple[str, str]], *, setting: str) -> None:
    """Each ``(schema, table)`` exists and has the columns the relay reads."""
    for schema, table in tables:
        rows = conn.query(
            "SELECT a.attname, a.atttypid, c.relpersistence FROM pg_attribute a "
            "JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
            f"WHERE n.nspname = {quote_literal(schema)} AND c.relname = {quote_literal(table)} "
            "AND c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped "
            "ORDER BY a.attnum"
        )
        if not rows:
            raise ConfigurationError(setting, f"the outbox table {schema}.{table} does not exist")
        if rows[0][2] == "u":  # no publication can carry it (PostgreSQL refuses to add one)
            raise ConfigurationError(
                setting,
                f"the outbox table {schema}.{table} is UNLOGGED: its rows never reach the WAL, "
                f"so no relay can read them: ALTER TABLE {quote_ident(schema)}."
                f"{quote_ident(table)} SET LOGGED",
            )
        layout = layout_of(schema, table, [(str(r[0]), int(r[1] or 0)) for r in rows])
        if isinstance(layout, str):
            raise ConfigurationError(setting, layout)


def ensure_slot(conn: PgWire, name: str, *, ran_before: bool, create: bool) -> SlotState:
    """The logical slot ``name`` (pgoutput, this database); created when missing and
    ``create``, unless the relay ran before (then :class:`SlotLostError`)."""
    if not _SLOT_NAME.fullmatch(name):
        raise ConfigurationError(
            "pg_slot", f"{name!r} is no slot name (1-63 of lower-case letters, digits, _)"
        )
    query = (
        "SELECT plugin, slot_type, database = current_database(), active, "
        "coalesce(wal_status, ''), confirmed_flush_lsn, restart_lsn "
        f"FROM pg_replication_slots WHERE slot_name = {quote_literal(name)}"
    )
    row = _one(conn, query)
    created = False
    if row is None:
        if ran_before:
            raise SlotLostError(
                f"replication slot {name} is gone but this relay ran before (a store holds its "
                "checkpoint or a record of its saves): events committed since may be lost (a "
                "slot dropped, invalidated by max_slot_wal_keep_size, or not carried to a "
                "promoted standby). To accept that "
                "and start from now, start the relay once with --ignore-checkpoint (it creates "
                "a new slot)"
            )
        if not create:
            raise ConfigurationError(
                "pg_slot",
                f"replication slot {name} does not exist and pg_create is off: SELECT "
                f"pg_create_logical_replication_slot({quote_literal(name)}, 'pgoutput')",
            )
        free = _one(
            conn,
            "SELECT current_setting('max_replication_slots')::int - count(*) "
            "FROM pg_replication_slots",
        )
        if free is None or int(free[0] or 0) <= 0:
            raise ServerConfigurationError(
                "max_replication_slots",
                "every replication slot of the server is in use; raise max_replication_slots "
                "and restart, or drop a slot of a relay that is gone",
            )
        try:
            conn.query(
                f"SELECT pg_create_logical_replication_slot({quote_literal(name)}, 'pgoutput')"
            )
        except PgServerError as exc:
            if exc.code == "53400":  # configuration_limit_exceeded: raced for the last slot
                raise ServerConfigurationError("max_replication_slots", exc.message) from None
            if exc.code != "42710":  # duplicate_object: another relay created it meanwhile
                raise
        created = True
        row = _one(conn, query)
        assert row is not None
    plugin, kind, same_db, active, wal_status = row[0], row[1], row[2], row[3], row[4]
    if kind != "logical" or plugin != "pgoutput" or same_db != "t":
        raise ConfigurationError(
            "pg_slot",
            f"slot {name} is a {kind} slot of plugin {plugin} "
            f"{'in this database' if same_db == 't' else 'of another database'}; the relay "
            "needs its own logical pgoutput slot in the outbox's database: name another",
        )
    if wal_status == "lost":
        raise SlotLostError(
            f"replication slot {name} was invalidated (wal_status lost, max_slot_wal_keep_size):"
            " the WAL after its position was removed and events may be lost. To accept that, "
            f"SELECT pg_drop_replication_slot({quote_literal(name)}), then start the relay once "
            "with --ignore-checkpoint"
        )
    return SlotState(name, parse_lsn(str(row[5])), parse_lsn(str(row[6])), active == "t", created)


def check_start_lsn(conn: PgWire, lsn: int) -> None:
    """A checkpoint's LSN is not beyond the server's WAL: one that is comes from another
    cluster or timeline (a restored or promoted server), and starting there would skip
    every transaction committed up to it. Raises :class:`CheckpointError`."""
    row = _one(conn, "SELECT pg_current_wal_lsn()")
    current = parse_lsn(str(row[0])) if row else 0
    if lsn > current:
        raise CheckpointError(
            f"the checkpoint's LSN {format_lsn(lsn)} is beyond this server's WAL "
            f"({format_lsn(current)}): it was saved against another server or timeline, and "
            "starting there would skip what this one committed. Start the relay once with "
            "--ignore-checkpoint to start from the slot"
        )


def slot_lag_bytes(conn: PgWire, name: str) -> tuple[int, int] | None:
    """``(retained, unconfirmed)`` bytes of the slot: WAL the server keeps for it (from
    ``restart_lsn``) and WAL not confirmed yet (from ``confirmed_flush_lsn``) up to the
    current LSN; ``None`` if there is no such slot. The second is ``behind N B``."""
    row = _one(
        conn,
        "SELECT pg_current_wal_lsn() - restart_lsn, pg_current_wal_lsn() - confirmed_flush_lsn "
        f"FROM pg_replication_slots WHERE slot_name = {quote_literal(name)}",
    )
    if row is None:
        return None
    return int(float(row[0] or 0)), int(float(row[1] or 0))
