"""Do the outbox rows reach the binlog the relay reads?

A server writes a change to its binlog only if ``binlog_do_db`` /
``binlog_ignore_db`` let the table's schema through; a replica writes the
rows it applies only with ``log_slave_updates`` (MySQL 8:
``log_replica_updates``) and only those its replication filters let through.
A relay reading such a server sees nothing and stays healthy, so these are
checked at startup and after every reconnect of the binlog source.

The matching is pure (:func:`binlog_excludes`, :func:`replication_excludes`);
:func:`check_rows_reach_binlog` reads the settings from the server. Row-based
replication decides by the table's own schema (not the session's default
database), which is what is matched here. ``sql_log_bin=0`` in the writer's
session is the one path nothing on the server shows: see the canary
(:mod:`.canary`).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pymysql

from ...exceptions import ServerConfigurationError
from .checks import binlog_status_sql, matching_tables, server_variable, user_of

if TYPE_CHECKING:
    from ..config import RelaySettings

__all__ = [
    "ReplicationFilters",
    "binlog_excludes",
    "check_rows_reach_binlog",
    "recheck_after_reconnect",
    "recheck_rows_reach_binlog",
    "replication_excludes",
    "wild_match",
]

log = logging.getLogger("transactional_outbox.relay")

_REFUSED = (1227, 1045, 1142, 1044)  # access denied / needs a privilege


def _names(value: Any) -> tuple[str, ...]:
    """A server's comma-separated list (``"a,b"``; empty or NULL: none)."""
    if value is None:
        return ()
    text = value.decode() if isinstance(value, bytes) else str(value)
    return tuple(part.strip() for part in text.split(",") if part.strip())


def binlog_excludes(schema: str, do_db: Sequence[str], ignore_db: Sequence[str]) -> str | None:
    """The setting (``binlog_do_db`` or ``binlog_ignore_db``) that keeps changes of
    ``schema`` out of the server's binlog, or ``None`` if they are written.

    With a do-list only its schemas are logged (the ignore-list is then not
    consulted); else the ignore-list's schemas are not.
    """
    if do_db:
        return None if schema in do_db else "binlog_do_db"
    return "binlog_ignore_db" if schema in ignore_db else None


def wild_match(pattern: str, text: str) -> bool:
    """``text`` matches a ``replicate_wild_*`` pattern: ``%`` any run, ``_`` one
    character, ``\\`` escapes; case-insensitive, as the server compares them."""
    out, i = [], 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        out.append(".*" if ch == "%" else "." if ch == "_" else re.escape(ch))
        i += 1
    return re.fullmatch("".join(out), text, re.IGNORECASE | re.DOTALL) is not None


@dataclass(frozen=True, slots=True)
class ReplicationFilters:
    """One replication connection's filters (``SHOW SLAVE STATUS`` columns), and
    where it replicates from (for messages)."""

    do_db: tuple[str, ...] = ()
    ignore_db: tuple[str, ...] = ()
    do_table: tuple[str, ...] = ()
    ignore_table: tuple[str, ...] = ()
    wild_do_table: tuple[str, ...] = ()
    wild_ignore_table: tuple[str, ...] = ()
    source: str = ""

    @classmethod
    def from_status(cls, row: dict[str, Any]) -> ReplicationFilters:
        """From a ``SHOW [ALL] SLAVES|REPLICA STATUS`` row keyed by column name."""
        host = row.get("Master_Host") or row.get("Source_Host") or "?"
        port = row.get("Master_Port") or row.get("Source_Port") or "?"
        name = row.get("Connection_name") or row.get("Channel_Name") or ""
        return cls(
            do_db=_names(row.get("Replicate_Do_DB")),
            ignore_db=_names(row.get("Replicate_Ignore_DB")),
            do_table=_names(row.get("Replicate_Do_Table")),
            ignore_table=_names(row.get("Replicate_Ignore_Table")),
            wild_do_table=_names(row.get("Replicate_Wild_Do_Table")),
            wild_ignore_table=_names(row.get("Replicate_Wild_Ignore_Table")),
            source=f"{host}:{port}" + (f" (connection {name!r})" if name else ""),
        )


def replication_excludes(schema: str, table: str, f: ReplicationFilters) -> str | None:
    """The filter (``replicate_do_db``, ``replicate_ignore_table``, ...) that keeps a
    replica from applying row changes of ``schema``.``table``, or ``None``.

    The server's order for row events: the database rules first (a do-list admits
    only its schemas; else the ignore-list drops its own), then the table rules in
    turn: do-table admits, ignore-table drops, wild-do admits, wild-ignore drops;
    a table matching none is dropped if any do-table or wild-do rule exists.
    """
    if f.do_db:
        if schema not in f.do_db:
            return "replicate_do_db"
    elif schema in f.ignore_db:
        return "replicate_ignore_db"
    name = f"{schema}.{table}"
    if name in f.do_table:
        return None
    if name in f.ignore_table:
        return "replicate_ignore_table"
    if any(wild_match(p, name) for p in f.wild_do_table):
        return None
    if any(wild_match(p, name) for p in f.wild_ignore_table):
        return "replicate_wild_ignore_table"
    if f.do_table or f.wild_do_table:
        return "replicate_wild_do_table" if f.wild_do_table else "replicate_do_table"
    return None


def _rows(cur: Any, sql: str) -> list[dict[str, Any]]:
    cur.execute(sql)
    names = [d[0] for d in cur.description or ()]
    return [dict(zip(names, row, strict=False)) for row in cur.fetchall()]


def _replica_rows(cur: Any, is_mariadb: bool) -> list[dict[str, Any]] | None:
    """The server's replication connections, or ``None`` if the user may not ask."""
    sql = "SHOW ALL SLAVES STATUS" if is_mariadb else "SHOW REPLICA STATUS"
    try:
        return _rows(cur, sql)
    except pymysql.err.ProgrammingError:
        if is_mariadb:
            raise
        return _rows(cur, "SHOW SLAVE STATUS")  # MySQL before 8.0.22
    except pymysql.err.OperationalError as exc:
        if exc.args[0] not in _REFUSED or not is_mariadb:
            raise
    # MariaDB without SLAVE MONITOR: a running replica still shows in a status
    # variable anyone may read, and its filters are global variables.
    cur.execute("SHOW GLOBAL STATUS LIKE 'Slaves_running'")
    row = cur.fetchone()
    if row is None or int(row[1] or 0) == 0:
        return None
    columns = ("Do_DB", "Ignore_DB", "Do_Table", "Ignore_Table", "Wild_Do_Table")
    status = {f"Replicate_{c}": server_variable(cur, f"replicate_{c.lower()}") for c in columns}
    status["Replicate_Wild_Ignore_Table"] = server_variable(cur, "replicate_wild_ignore_table")
    return [status]


def _binlog_excluded(setting: str, listed: Sequence[str], schema: str, table: str) -> None:
    fix = "add it to" if setting == "binlog_do_db" else "remove it from"
    raise ServerConfigurationError(
        setting,
        f"is {','.join(listed)!r} on the server: changes of `{schema}`.`{table}` are not "
        f"written to its binlog, so the relay would never see them; {fix} "
        f"--{setting.replace('_', '-')} in the server's options and restart it",
    )


def check_rows_reach_binlog(
    conn: pymysql.Connection,
    *,
    tables: Sequence[tuple[str, str]],
    version: str,
    warn: bool = True,
) -> None:
    """Raise :class:`ServerConfigurationError` naming the setting if a change of one of
    ``tables`` (schema, table) would not reach this server's binlog.

    ``version`` is the server's ``VERSION()``. Checks ``binlog_do_db`` and
    ``binlog_ignore_db`` (``SHOW MASTER STATUS`` columns), and on a replica
    ``log_slave_updates`` and its replication filters. A MariaDB user without
    ``SLAVE MONITOR`` whose server runs no replica thread gets one WARNING, unless
    not ``warn`` (a stopped replica cannot be seen without it).
    """
    user = user_of(conn)
    is_mariadb = "mariadb" in version.lower()
    status_sql = binlog_status_sql(version, is_mariadb=is_mariadb)
    with conn.cursor() as cur:
        for status in _rows(cur, status_sql)[:1]:
            do_db = _names(status.get("Binlog_Do_DB"))
            ignore_db = _names(status.get("Binlog_Ignore_DB"))
            for schema, table in tables:
                setting = binlog_excludes(schema, do_db, ignore_db)
                if setting is not None:
                    _binlog_excluded(setting, do_db or ignore_db, schema, table)
        replicas = _replica_rows(cur, is_mariadb)
        if replicas is None:
            if not warn:
                return
            log.warning(
                "cannot check whether this server is a replica that drops outbox rows "
                "(SHOW ALL SLAVES STATUS refused): GRANT SLAVE MONITOR ON *.* TO '%s'@'%%'; "
                "lets the relay check log_slave_updates and replication filters",
                user,
            )
            return
        if not replicas:
            return
        source = ReplicationFilters.from_status(replicas[0]).source
        # MySQL 8.0.26+ names it log_replica_updates; MariaDB and older MySQL do not.
        updates_name = "log_slave_updates"
        updates = server_variable(cur, updates_name)
        replica_updates = None if is_mariadb else server_variable(cur, "log_replica_updates")
        if replica_updates is not None:
            updates_name, updates = "log_replica_updates", replica_updates
        if (updates or "OFF").upper() not in ("ON", "1"):
            raise ServerConfigurationError(
                updates_name,
                f"is {updates!r} on this replica of {source}: the rows it applies never reach "
                f"its own binlog, so the relay would see no event written on the primary; "
                f"restart the replica with --{updates_name.replace('_', '-')}, or point "
                "database_url at the primary",
            )
        for row in replicas:
            filters = ReplicationFilters.from_status(row)
            for schema, table in tables:
                setting = replication_excludes(schema, table, filters)
                if setting is not None:
                    value = ",".join(getattr(filters, setting.removeprefix("replicate_")))
                    raise ServerConfigurationError(
                        setting,
                        f"is {value!r} on this replica of {filters.source}: it does not apply "
                        f"the primary's changes of `{schema}`.`{table}`, so they never reach "
                        f"its binlog; change the filter (MariaDB: STOP SLAVE; SET GLOBAL "
                        f"{setting}=...; START SLAVE; MySQL: CHANGE REPLICATION FILTER), or "
                        "point database_url at the primary",
                    )


def recheck_rows_reach_binlog(settings: RelaySettings) -> None:
    """:func:`check_rows_reach_binlog` over a connection of its own, for the tables the
    settings list and those the pattern matches now. Blocking.

    Run after the binlog source reconnects (it may now read another server, or a
    replica whose filters changed). Raises :class:`ServerConfigurationError`;
    other errors (the server gone again) are the source's to handle.
    """
    conn = pymysql.connect(**settings.mysql_connection_args(), connect_timeout=10)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT VERSION()")
            version = str(cur.fetchone()[0])
        pattern = settings.table_pattern
        matched = [] if pattern is None else matching_tables(conn, pattern)
        tables = [*settings.tables, *(t for t in matched if t not in settings.tables)]
        # The startup check has said it once if the user may not see replication.
        check_rows_reach_binlog(conn, tables=tables, version=version, warn=False)
    finally:
        conn.close()


def recheck_after_reconnect(
    settings: RelaySettings, fail: Callable[[BaseException], None]
) -> asyncio.Task[None]:
    """Run :func:`recheck_rows_reach_binlog` in a thread; a misconfiguration goes to
    ``fail`` (the source's fatal-error path: the relay stops with exit 2)."""

    async def run() -> None:
        try:
            await asyncio.to_thread(recheck_rows_reach_binlog, settings)
        except ServerConfigurationError as exc:
            fail(exc)
        except (pymysql.err.Error, OSError) as exc:
            log.warning("could not re-check the server after a reconnect: %s", exc)

    return asyncio.ensure_future(run())
