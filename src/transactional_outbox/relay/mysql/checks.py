"""Startup checks against the MySQL/MariaDB server, each failing with the setting to change.

Also answers the questions the relay asks the server before streaming: where
the binlog ends now, where it starts, and the GTID state at a position.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import pymysql

from ...exceptions import BinlogPurgedError, CheckpointError, ServerConfigurationError
from ...record_format import COLUMNS
from ..position import BinlogPosition, StartPolicy, server_identity
from .resume import resume_checkpoint

__all__ = [
    "ServerInfo",
    "binlog_status_sql",
    "check_matching_tables",
    "check_server",
    "describe_server",
    "matching_tables",
    "resolve_start",
    "server_variable",
    "table_problem",
    "user_of",
]

log = logging.getLogger("transactional_outbox.relay")


@dataclass(frozen=True, slots=True)
class ServerInfo:
    """What the checks learned about the server."""

    version: str
    is_mariadb: bool
    gtid_enabled: bool
    current: BinlogPosition
    binlogs: tuple[str, ...]
    server_id: int = 0  # the server's own @@server_id: a replica must use another
    server_uuid: str | None = None  # MySQL's @@server_uuid
    gtid_state: str | None = None  # MariaDB @@gtid_binlog_state, MySQL @@gtid_executed
    gtid_purged: str | None = None  # MySQL @@gtid_purged

    @property
    def identity(self) -> str:
        """Which server this is, as a checkpoint records it (:func:`server_identity`)."""
        return server_identity(
            is_mariadb=self.is_mariadb, server_id=self.server_id, server_uuid=self.server_uuid
        )


def _one(cur: Any, sql: str, args: Any = None) -> Any:
    cur.execute(sql, args)
    return cur.fetchone()


def server_variable(cur: Any, name: str) -> str | None:
    """A global server variable's value as text, or None if the server has no such one."""
    row = _one(cur, "SHOW GLOBAL VARIABLES LIKE %s", (name,))
    return None if row is None else str(row[1])


def _require(cur: Any, name: str, expected: str, hint: str) -> None:
    value = server_variable(cur, name)
    if value is None or value.upper() != expected.upper():
        raise ServerConfigurationError(
            name,
            f"is {value!r} on the server, the relay needs {expected}: {hint}",
        )


def _privileges_error(user: str, needed: str, exc: Exception) -> ServerConfigurationError:
    return ServerConfigurationError(
        "database_url",
        f"user {user!r} lacks a privilege: {exc.args[-1] if exc.args else exc}. Grant it: "
        f"GRANT {needed} ON *.* TO '{user}'@'%';",
    )


def _gtid_at(cur: Any, info_is_mariadb: bool, file: str, pos: int) -> str | None:
    if not info_is_mariadb:
        return None
    row = _one(cur, "SELECT BINLOG_GTID_POS(%s, %s)", (file, pos))
    return None if row is None or row[0] is None else str(row[0])


def check_server(
    conn: pymysql.Connection,
    *,
    tables: Sequence[tuple[str, str]],
    setting: str = "outbox_table",
) -> ServerInfo:
    """Check binlog settings, privileges and the outbox ``tables`` (schema, table);
    describe the server.

    Raises :class:`ServerConfigurationError` naming the server variable,
    privilege or table to fix (a table's error names ``setting``, the setting
    that listed it).
    """
    user = user_of(conn)
    with conn.cursor() as cur:
        version = str(_one(cur, "SELECT VERSION()")[0])
        is_mariadb = "mariadb" in version.lower()
        log_bin = server_variable(cur, "log_bin")
        if log_bin is None or log_bin.upper() not in ("ON", "1"):
            raise ServerConfigurationError(
                "log_bin",
                f"binary logging is {log_bin!r}: start the server with --log-bin "
                "(MySQL 8 has it on by default)",
            )
        _require(cur, "binlog_format", "ROW", "set binlog_format=ROW")
        _require(cur, "binlog_row_image", "FULL", "set binlog_row_image=FULL")
        _require(
            cur,
            "binlog_row_metadata",
            "FULL",
            "set binlog_row_metadata=FULL (without it column names are not in the binlog)",
        )
        # Privileges: try what the relay will do rather than parse SHOW GRANTS,
        # whose wording differs across servers and versions.
        status_sql = binlog_status_sql(version, is_mariadb=is_mariadb)
        try:
            status = _one(cur, status_sql)
            _all(cur, "SHOW BINARY LOGS")
        except pymysql.err.OperationalError as exc:
            needed = "BINLOG MONITOR" if is_mariadb else "REPLICATION CLIENT"
            raise _privileges_error(user, needed, exc) from None
        if status is None:
            raise ServerConfigurationError("log_bin", "SHOW MASTER STATUS is empty: binlog off")
        grants = " ".join(str(r[0]) for r in _all(cur, "SHOW GRANTS")).upper()
        if not re.search(r"ALL PRIVILEGES ON \*\.\*|REPLICATION (SLAVE|REPLICA)\b", grants):
            raise ServerConfigurationError(
                "database_url",
                f"user {user!r} cannot stream the binlog: GRANT REPLICATION SLAVE ON *.* "
                f"TO '{user}'@'%';",
            )
        many = setting == "outbox_tables"
        hint = "fix --outbox-tables" if many else "set --outbox-schema/--outbox-table"
        for schema, table in tables:
            problem = table_problem(cur, user, schema, table, hint=hint)
            if problem is not None:
                raise ServerConfigurationError(
                    setting, f"{problem} (listed in outbox_tables)" if many else problem
                )
        return describe_server(conn, is_mariadb=is_mariadb)


def describe_server(conn: pymysql.Connection, *, is_mariadb: bool) -> ServerInfo:
    """What the relay needs to know about the server: version, identity, GTIDs, binlogs."""
    with conn.cursor() as cur:
        version, own_id = _one(cur, "SELECT VERSION(), @@server_id")
        version = str(version)
        status_sql = binlog_status_sql(version, is_mariadb=is_mariadb)
        status = _one(cur, status_sql)
        if status is None:
            raise ServerConfigurationError("log_bin", "SHOW MASTER STATUS is empty: binlog off")
        binlogs = tuple(str(r[0]) for r in _all(cur, "SHOW BINARY LOGS"))
        uuid = purged = None
        if is_mariadb:
            gtid_enabled = True
            state = str(_one(cur, "SELECT @@gtid_binlog_state")[0] or "")
        else:
            gtid_enabled = (server_variable(cur, "gtid_mode") or "OFF").upper() == "ON"
            uuid = str(_one(cur, "SELECT @@server_uuid")[0])
            state = None
            if gtid_enabled:
                executed, purged = _one(cur, "SELECT @@gtid_executed, @@gtid_purged")
                state, purged = str(executed or ""), str(purged or "")
        file, pos = str(status[0]), int(status[1])
        if is_mariadb:
            gtid = _gtid_at(cur, True, file, pos)
        elif gtid_enabled:
            gtid = str(status[4]).replace("\n", "") if len(status) > 4 else None
        else:
            gtid = None
        return ServerInfo(
            version=version,
            is_mariadb=is_mariadb,
            gtid_enabled=gtid_enabled,
            current=BinlogPosition(file=file, pos=pos, gtid=gtid or None),
            binlogs=binlogs,
            server_id=int(own_id or 0),
            server_uuid=uuid,
            gtid_state=state,
            gtid_purged=purged,
        )


def table_problem(cur: Any, user: str, schema: str, table: str, *, hint: str) -> str | None:
    """What is wrong with ``schema``.``table`` as an outbox table, or None.

    A missing table's message ends with ``hint``, the caller's advice.
    """
    grant = f"GRANT SELECT ON `{schema}`.`{table}` TO '{user}'@'%';"
    try:
        cur.execute(
            "SELECT COLUMN_NAME, DATA_TYPE, CHARACTER_MAXIMUM_LENGTH FROM "
            "information_schema.COLUMNS WHERE TABLE_SCHEMA=%s AND TABLE_NAME=%s",
            (schema, table),
        )
        columns = {str(r[0]).lower(): (str(r[1]).lower(), r[2]) for r in cur.fetchall()}
    except pymysql.err.OperationalError as exc:
        raise ServerConfigurationError(
            "database_url",
            f"user {user!r} cannot read the columns of `{schema}`.`{table}`: "
            f"{exc.args[-1] if exc.args else exc}. Grant it: {grant}",
        ) from None
    if not columns:
        return (
            f"table `{schema}`.`{table}` does not exist or is not visible to {user!r}: run "
            f"`alembic upgrade head`, or if it exists grant the relay SELECT on it "
            f"({grant}), or {hint}"
        )
    missing = [c for c in COLUMNS if c not in columns]
    if missing:
        return (
            f"`{schema}`.`{table}` lacks column(s) {', '.join(missing)}; "
            f"expected {', '.join(COLUMNS)}"
        )
    id_type, id_len = columns["id"]
    if id_type != "binary" or id_len != 16:
        return f"`{schema}`.`{table}`.id is {id_type}({id_len}), expected binary(16)"
    return None


_SYSTEM_SCHEMAS = ("mysql", "information_schema", "performance_schema", "sys")


def matching_tables(conn: pymysql.Connection, pattern: re.Pattern[str]) -> list[tuple[str, str]]:
    """The base tables visible to the user whose ``schema.table`` full-matches ``pattern``."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT TABLE_SCHEMA, TABLE_NAME FROM information_schema.TABLES "
            "WHERE TABLE_TYPE='BASE TABLE' AND TABLE_SCHEMA NOT IN %s "
            "ORDER BY TABLE_SCHEMA, TABLE_NAME",
            (_SYSTEM_SCHEMAS,),
        )
        rows = [(str(r[0]), str(r[1])) for r in cur.fetchall()]
    return [(sch, tab) for sch, tab in rows if pattern.fullmatch(f"{sch}.{tab}")]


def check_matching_tables(
    conn: pymysql.Connection, pattern: re.Pattern[str], *, listed: Sequence[tuple[str, str]]
) -> tuple[list[tuple[str, str]], list[str]]:
    """The tables ``pattern`` matches now (beyond ``listed``): the good ones, and a
    problem line for each that cannot hold outbox events."""
    user = user_of(conn)
    good, bad = [], []
    with conn.cursor() as cur:
        for schema, table in matching_tables(conn, pattern):
            if (schema, table) in listed:
                continue
            problem = table_problem(cur, user, schema, table, hint="drop it")
            if problem is None:
                good.append((schema, table))
            else:
                bad.append(problem)
    return good, bad


def user_of(conn: pymysql.Connection) -> str:
    """The connection's user name, as text."""
    return str(conn.user.decode() if isinstance(conn.user, bytes) else conn.user)


def _all(cur: Any, sql: str) -> list[Any]:
    cur.execute(sql)
    return list(cur.fetchall())


def binlog_status_sql(version: str, *, is_mariadb: bool) -> str:
    """The statement that shows the binlog's head (and Binlog_Do_DB/Ignore_DB): MySQL
    8.2+ renamed SHOW MASTER STATUS to SHOW BINARY LOG STATUS."""
    if not is_mariadb and _mysql_at_least(version, 8, 2):
        return "SHOW BINARY LOG STATUS"
    return "SHOW MASTER STATUS"


def _mysql_at_least(version: str, major: int, minor: int) -> bool:
    m = re.match(r"(\d+)\.(\d+)", version)
    return bool(m) and (int(m.group(1)), int(m.group(2))) >= (major, minor)  # type: ignore[union-attr]


def resolve_start(
    conn: pymysql.Connection,
    info: ServerInfo,
    *,
    checkpoint: BinlogPosition | None,
    policy: StartPolicy,
    ignore_checkpoint: bool,
    mode: str = "auto",
) -> tuple[BinlogPosition, str]:
    """Decide where to start streaming; return the position and why it was chosen.

    A checkpoint wins unless ``ignore_checkpoint``; where it resumes on this
    server follows :func:`~.resume.resume_checkpoint` (``mode``: resume_by_gtid).
    A checkpoint that cannot be used here raises its :class:`CheckpointError`
    unless ``policy`` is an explicit position, which is then used (a WARNING
    says so): that is what the errors' advice relies on.
    """
    with conn.cursor() as cur:

        def gtid_at(file: str, pos: int) -> str | None:
            return _gtid_at(cur, info.is_mariadb, file, pos)

        if checkpoint is not None and not ignore_checkpoint:
            try:
                return resume_checkpoint(checkpoint, info, mode=mode, gtid_at=gtid_at)
            except CheckpointError as exc:
                if not policy.explicit:
                    raise
                log.warning(
                    "the checkpoint is unusable (%s); starting at --start-position %s as given",
                    exc,
                    policy.gtid or f"{policy.file}:{policy.pos}",
                )
        position, why = _from_policy(info, policy, gtid_at)
        return replace(position, server=info.identity if position.file else None), why


def _from_policy(
    info: ServerInfo, policy: StartPolicy, gtid_at: Callable[[str, int], str | None]
) -> tuple[BinlogPosition, str]:
    if policy.kind == "latest":
        return info.current, "start_position=latest"
    if policy.kind == "earliest":
        if not info.binlogs:
            return info.current, "start_position=earliest (no binlogs listed)"
        first = info.binlogs[0]
        return (
            BinlogPosition(file=first, pos=4, gtid=gtid_at(first, 4)),
            "start_position=earliest",
        )
    if policy.kind == "position":
        assert policy.file is not None and policy.pos is not None
        if policy.file not in info.binlogs:
            raise BinlogPurgedError(
                f"start_position {policy.file}:{policy.pos}: the server has no binlog "
                f"{policy.file!r} (it has {', '.join(info.binlogs) or 'none'})"
            )
        return (
            BinlogPosition(file=policy.file, pos=policy.pos, gtid=gtid_at(policy.file, policy.pos)),
            "start_position",
        )
    # A GTID set: MariaDB maps it to a file/pos itself on connect; we need a
    # file/pos for the checkpoint, so stream by GTID until the first commit.
    assert policy.gtid is not None
    return BinlogPosition(file="", pos=4, gtid=policy.gtid), "start_position (GTID)"
