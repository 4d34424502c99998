"""Starting a term: check the servers, resolve the start position, pick the replica id.

Retries while a server cannot be reached yet; raises at once for what a
retry cannot fix (a misconfigured server, a refused login).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import secrets
import socket
from dataclasses import dataclass

import pymysql
from redis.exceptions import RedisError

from ..._fields import mask_url
from ...exceptions import CheckpointError, ConfigurationError, ServerConfigurationError
from ..checkpoints import CheckpointStores
from ..config import RelaySettings
from ..database import until_reachable
from ..faults import mysql_misconfiguration, redis_misconfiguration
from ..position import BinlogPosition
from ..stats import RelayStats
from .checks import ServerInfo, check_matching_tables, check_server, resolve_start
from .reach import check_rows_reach_binlog
from .resume import uses_gtid
from .source import SourceSettings

__all__ = ["Start", "choose_server_id", "derive_server_id", "prepare_start", "source_settings"]

log = logging.getLogger("transactional_outbox.relay")

# Client errors for a server that is not reachable (yet): retried.
_UNREACHABLE = (2003, 2006, 2013)


@dataclass(frozen=True, slots=True)
class Start:
    """Where a term starts: the server it reads and the position."""

    server: ServerInfo
    position: BinlogPosition
    server_id: int


def choose_server_id(settings: RelaySettings, info: ServerInfo, current: int) -> int:
    """The binlog replica id to use against ``info``: the configured one, else a derived one.

    Raises :class:`ConfigurationError` if the configured id is the server's own.
    """
    s = settings
    if s.server_id and s.server_id == info.server_id:
        raise ConfigurationError(
            "server_id",
            f"{s.server_id} is the server's own @@server_id; choose another (or 0 for a "
            "new one per start)",
        )
    if not s.server_id and current in (0, info.server_id):
        current = derive_server_id(s.relay_name, avoid=info.server_id)
    log.info(
        "binlog replica server_id %d (%s)",
        current,
        "--server-id" if s.server_id else "new for this start; --server-id sets one",
    )
    return current


def derive_server_id(relay_name: str, *, avoid: int | None = None) -> int:
    """A replica server_id for one start of one relay: from the relay name, the host,
    the process id and a random salt, in 1..2**32-1 and never ``avoid`` (the server's own).

    Two relays of one name must not share an id: MariaDB refuses a second binlog
    connection with a registered id (error 4052) while a paused first one still holds
    it, and MySQL drops the first. A per-start id rules both out.
    """
    seed = f"{relay_name}\0{socket.gethostname()}\0{os.getpid()}\0{secrets.token_hex(8)}"
    value = int.from_bytes(hashlib.blake2b(seed.encode(), digest_size=8).digest())
    server_id = value % (2**32 - 1) + 1
    if server_id == avoid:
        server_id = server_id % (2**32 - 1) + 1
    return server_id


async def prepare_start(
    settings: RelaySettings,
    store: CheckpointStores,
    stats: RelayStats,
    stopping: asyncio.Event,
    *,
    server_id: int,
) -> Start | None:
    """Check the servers and resolve the start; ``None`` if stopped while waiting for them."""
    s = settings

    def verdict(exc: BaseException) -> BaseException | None:
        fatal = mysql_misconfiguration(exc, s) or redis_misconfiguration(exc)
        if fatal is None and isinstance(exc, pymysql.err.OperationalError):
            return None if exc.args[0] in _UNREACHABLE else exc
        return fatal

    resolved = await until_reachable(
        lambda: _resolve(s, store, stats),
        retried=(pymysql.err.OperationalError, RedisError, OSError),
        verdict=verdict,
        stopping=stopping,
        max_delay=s.reconnect_max_ms / 1000,
    )
    if resolved is None:
        return None
    info, start, why, matched = resolved
    server_id = choose_server_id(s, info, server_id)
    if s.multi_table:
        stats.count_tables((*s.tables, *matched))
    args = s.mysql_connection_args()
    names = ", ".join(f"`{sch}`.`{tab}`" for sch, tab in (*s.tables, *matched))
    if s.outbox_table_pattern:
        names = f"{names or 'none yet'} and tables matching {s.outbox_table_pattern!r}"
    log.info(
        "relay %r: %s at %s, outbox %s, Kafka %s, Redis %s; starting at %s (%s)",
        s.relay_name,
        info.version,
        f"{args['host']}:{args['port']}",
        names,
        s.kafka.bootstrap_servers,
        mask_url(s.redis_url),
        start,
        why,
    )
    return Start(server=info, position=start, server_id=server_id)


async def _resolve(
    s: RelaySettings, store: CheckpointStores, stats: RelayStats
) -> tuple[ServerInfo, BinlogPosition, str, list[tuple[str, str]]]:
    checkpoint = await store.load_start(s, stats)  # Redis's or Kafka's copy
    if checkpoint is not None and not isinstance(checkpoint, BinlogPosition):
        raise CheckpointError(
            f"the checkpoint in {store.where} is a position of another kind of database "
            f"({checkpoint}), and this relay reads MySQL/MariaDB: give this relay another "
            "relay_name (relays of two databases must not share one), or start it once with "
            "--ignore-checkpoint"
        )

    def blocking() -> tuple[ServerInfo, BinlogPosition, str, list[tuple[str, str]]]:
        # With the database: the server then says "unknown database" itself
        # (many tables: the first listed one's; none for a pattern alone).
        database = s.tables[0][0] if s.tables else None
        conn = pymysql.connect(**s.mysql_connection_args(), database=database, connect_timeout=10)
        try:
            info = check_server(
                conn,
                tables=s.tables,
                setting="outbox_tables" if s.multi_table else "outbox_table",
            )
            matched = _check_pattern(conn, s)
            check_rows_reach_binlog(conn, tables=(*s.tables, *matched), version=info.version)
            start, why = resolve_start(
                conn,
                info,
                checkpoint=checkpoint,
                policy=s.start_policy(),
                ignore_checkpoint=s.ignore_checkpoint,
                mode=str(s.resume_by_gtid),
            )
            return info, start, why, matched
        finally:
            conn.close()

    return await asyncio.to_thread(blocking)


def _check_pattern(conn: pymysql.Connection, s: RelaySettings) -> list[tuple[str, str]]:
    """The tables outbox_table_pattern matches now; one that cannot hold outbox events
    stops the relay (on_rejected=stop) or is named in a WARNING (its rows will be
    dead-lettered)."""
    pattern = s.table_pattern
    if pattern is None:
        return []
    good, bad = check_matching_tables(conn, pattern, listed=s.tables)
    for problem in bad:
        if s.on_rejected == "stop":
            raise ServerConfigurationError(
                "outbox_table_pattern",
                f"{problem}; it matches {s.outbox_table_pattern!r} and on_rejected=stop "
                "(narrow the pattern, fix the table, or use on_rejected=dead-letter)",
            )
        log.warning(
            "%s; it matches outbox_table_pattern, so its rows will be dead-lettered", problem
        )
    return good


def source_settings(settings: RelaySettings, start: Start) -> SourceSettings:
    """The binlog source's settings for a term that starts at ``start``."""
    s = settings
    args = s.mysql_connection_args()
    return SourceSettings(
        host=args["host"],
        port=args["port"],
        user=args["user"],
        password=args["password"],
        server_id=start.server_id,
        schema=s.schema,
        table=s.outbox_table,
        tables=s.tables if s.multi_table else (),
        table_pattern=s.outbox_table_pattern or None,
        is_mariadb=start.server.is_mariadb,
        by_gtid=uses_gtid(str(s.resume_by_gtid), gtid_enabled=start.server.gtid_enabled),
        heartbeat_seconds=s.heartbeat_ms / 1000,
        max_reconnect_delay_seconds=s.reconnect_max_ms / 1000,
        idle_commit_seconds=min(1.0, s.checkpoint_interval_ms / 1000),
    )
