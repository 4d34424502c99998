"""The canary: an event the relay writes itself and expects back through the binlog.

Defence in depth behind the startup checks (:mod:`.reach`): every
``canary_interval_ms`` the leader inserts and deletes one outbox row (in one
transaction, as the SDK does) in each listed outbox table, over a plain SQL
connection to ``canary_mysql_url`` (default: ``database_url``; point it at the
server the application writes to when the relay reads a replica). The row's
aggregate type is reserved (:data:`~.routing.CANARY_AGGREGATE_TYPE`): the router
gives it a topic Kafka cannot have, the publisher hands such records to
:meth:`Canary.seen` instead of sending them, so a canary never reaches a user
topic, and recognising one costs nothing per row (the router memoises the topic
per aggregate type; the publisher checks a topic's name once).

One that has not come back after ``canary_timeout_ms`` while the relay is
caught up (Kafka and MySQL up, nothing behind the binlog head) raises the
alarm: one ERROR line, ``/readyz`` not ready (``"canary": "late"``),
``outbox_relay_canary_ok 0``; a write refused (e.g. the grant revoked) does the
same (``"failing"``). One INFO line when canaries come back. A canary catches
every way rows can miss the binlog read, but one: a writer session with
``sql_log_bin=0`` writes nothing any reader can see, the canary's rows included.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pymysql

from .._fields import mask_url, option
from ..exceptions import ConfigurationError
from .routing import CANARY_AGGREGATE_TYPE

if TYPE_CHECKING:
    from .config import RelaySettings
    from .stats import RelayStats

__all__ = ["Canary", "CanarySettings"]

log = logging.getLogger("transactional_outbox.relay")

_INSERT = (
    "INSERT INTO `{schema}`.`{table}` (id, aggregatetype, aggregateid, type, payload, headers, "
    "`timestamp`) VALUES (%s, %s, %s, 'canary', '{{}}', NULL, %s)"
)
_MAX_PENDING = 1000  # canaries never seen are forgotten beyond this (the alarm stays)


@dataclass(frozen=True, slots=True, kw_only=True)
class CanarySettings:
    """The canary's settings (``canary_*``); unset, the relay writes no canary."""

    interval_ms: int = option(10_000, "write a canary event every this often (ms, 0 = off)")
    timeout_ms: int = option(30_000, "alarm when a canary is not back after this long (ms)")
    mysql_url: str = option(
        "",
        "where the canary is written (INSERT, DELETE on the outbox tables); default "
        "database_url: set the primary's when the relay reads a replica",
        secret=True,
    )

    def __post_init__(self) -> None:
        if self.interval_ms < 0:
            raise ConfigurationError("canary_interval_ms", f"must be >= 0, got {self.interval_ms}")
        if self.timeout_ms <= 0:
            raise ConfigurationError(
                "canary_timeout_ms", f"must be positive, got {self.timeout_ms}"
            )

    def __repr__(self) -> str:
        return (
            f"CanarySettings(interval_ms={self.interval_ms}, timeout_ms={self.timeout_ms}, "
            f"mysql_url={mask_url(self.mysql_url)!r})"
        )


class Canary:
    """Writes canaries, takes them back from the publisher, and keeps the alarm state in
    ``stats.canary`` (``ok``, ``late``, ``failing``)."""

    def __init__(
        self,
        settings: RelaySettings,
        stats: RelayStats,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        assert settings.canary is not None
        if not settings.tables:
            raise ConfigurationError(
                "canary_interval_ms",
                "the canary writes to the listed outbox tables and there are none: list one "
                "in outbox_tables (tables found by outbox_table_pattern alone are not written)",
            )
        self._clock = clock
        self.settings = settings.canary
        self.tables = settings.tables
        url = settings.canary.mysql_url or settings.database_url
        self._args = settings.mysql_connection_args(url)
        self._aggregate_id = settings.relay_name
        self._stats = stats
        self._pending: dict[str, tuple[float, str]] = {}  # event id -> (written at, table)
        self._conn: pymysql.Connection | None = None
        self._alarm_since: float | None = None
        stats.canary = "ok"

    def __repr__(self) -> str:
        return f"Canary(every {self.settings.interval_ms} ms, state={self._stats.canary})"

    def expect(self, event_id: str, table: str) -> None:
        """A canary is about to be written to ``table``: expect it back."""
        if len(self._pending) >= _MAX_PENDING:
            self._pending.pop(next(iter(self._pending)))
        self._pending[event_id] = (self._clock(), table)

    def seen(self, event_id: str) -> None:
        """A canary came back through the binlog (the publisher's callback).

        Canaries are written one after another over one connection, so they come
        back in that order: those written before this one and still pending never
        will, and the rows written with them missed the binlog too.
        """
        if event_id not in self._pending:
            return  # another relay's canary, or one already forgotten
        now = self._clock()
        missed = []
        for eid, (_, table) in list(self._pending.items()):  # in the order written
            if eid == event_id:
                break
            missed.append((eid, table))
            del self._pending[eid]
        written = self._pending.pop(event_id)
        self._stats.canary_roundtrip = now - written[0]
        self._stats.canaries_seen += 1
        if missed:
            eid, table = missed[0]
            self._alarm(
                "late",
                f"canary event {eid} written to {table} never came back though one written "
                f"{now - written[0]:.1f}s ago did ({len(missed)} missing): rows written "
                "meanwhile did not reach the binlog the relay reads; events may be missing",
            )
            return
        timeout = self.settings.timeout_ms / 1000
        if self._stats.canary == "late" and not any(
            now - at > timeout for at, _ in self._pending.values()
        ):
            self._recover("canary events come back through the binlog again")

    async def run(self, over: asyncio.Event) -> None:
        """Write a canary every interval and check for late ones, until ``over``."""
        interval = self.settings.interval_ms / 1000
        # A new term may start past canaries of an earlier one: expect only its own.
        self._pending.clear()
        try:
            while not over.is_set():
                await self._write_all()
                self.check()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(over.wait(), interval)
        finally:
            await asyncio.to_thread(self._close)

    def check(self) -> None:
        """Raise the alarm if a canary is overdue while the relay is caught up."""
        st = self._stats
        if st.canary != "ok" or not (st.kafka == st.database == "ok" and st.behind_bytes == 0):
            return  # already alarmed, or the relay is behind or down: cannot tell yet
        now = self._clock()
        timeout = self.settings.timeout_ms / 1000
        late = [
            (eid, at, table) for eid, (at, table) in self._pending.items() if now - at > timeout
        ]
        if not late:
            return
        eid, at, table = late[0]
        self._alarm(
            "late",
            f"canary event {eid} written to {table} {now - at:.1f}s ago has not come back "
            f"through the binlog the relay reads ({len(late)} overdue): rows written there "
            "do not reach it (a replica without log_slave_updates, binlog_do_db/"
            "binlog_ignore_db or replication filters, replication stopped or lagging, or "
            "database_url and canary_mysql_url on unrelated servers); events may be missing",
        )

    async def _write_all(self) -> None:
        for schema, table in self.tables:
            name = f"`{schema}`.`{table}`"
            event_id = uuid.uuid4()
            # Expected before the write: it may come back before the write returns.
            self.expect(str(event_id), name)
            try:
                await asyncio.to_thread(self._write, schema, table, event_id)
            except (pymysql.err.Error, OSError) as exc:
                self._pending.pop(str(event_id), None)
                await asyncio.to_thread(self._close)
                user = self._args.get("user", "")
                code = exc.args[0] if exc.args else None
                fix = (
                    f"the canary_mysql_url user needs: GRANT INSERT, DELETE ON {name} TO "
                    f"'{user}'@'%';"
                    if code in (1142, 1044)  # command / database access denied
                    else "check that canary_mysql_url (default database_url) can write there"
                )
                self._alarm("failing", f"cannot write the canary event to {name}: {exc}; {fix}")
                continue
            self._stats.canaries_written += 1
            if self._stats.canary == "failing":
                self._recover(f"the canary event is written to {name} again")

    def _write(self, schema: str, table: str, event_id: uuid.UUID) -> None:
        if self._conn is None:
            self._conn = pymysql.connect(**self._args, connect_timeout=10, autocommit=False)
        now = datetime.now(UTC).replace(tzinfo=None)
        with self._conn.cursor() as cur:
            cur.execute("BEGIN")
            cur.execute(
                _INSERT.format(schema=schema, table=table),
                (event_id.bytes, CANARY_AGGREGATE_TYPE, self._aggregate_id, now),
            )
            cur.execute(f"DELETE FROM `{schema}`.`{table}` WHERE id = %s", (event_id.bytes,))
            cur.execute("COMMIT")

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def _alarm(self, state: str, message: str) -> None:
        st = self._stats
        if st.canary == state:
            return
        st.canary = state
        st.canary_alarms += 1
        self._alarm_since = self._clock()
        log.error("%s (one line now, one when it recovers)", message)

    def _recover(self, how: str) -> None:
        since = self._alarm_since
        took = "" if since is None else f" after {self._clock() - since:.1f}s"
        self._stats.canary = "ok"
        self._alarm_since = None
        log.info("canary recovered%s: %s", took, how)
