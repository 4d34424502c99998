"""PostgreSQL behind the source interface (:mod:`..database`): the startup checks and
the start LSN (:mod:`.startup`), the logical replication source (:mod:`.source`) and
the WAL head with the slot's retained bytes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from ..._fields import mask_url
from ...exceptions import CheckpointError
from ..channel import Channel, SourceBatch
from ..database import Database, Head, Source, until_reachable
from ..faults import redis_misconfiguration
from ..position import Position
from ..routing import TopicRouter
from .checks import slot_lag_bytes
from .position import LsnPosition
from .publication import WATCH_SECONDS, PublicationWatch
from .source import PgBatch, PgSource, PgSourceSettings
from .startup import TRANSIENT, PgStart, advance_slot, login_error, resolve_start
from .wire import PgConnectParams, PgServerError, PgWire

if TYPE_CHECKING:
    from ..checkpoints import CheckpointStores
    from ..config import RelaySettings
    from ..stats import RelayStats

__all__ = ["PostgresDatabase"]

log = logging.getLogger("transactional_outbox.relay")


class PostgresDatabase(Database):
    """The logical replication stream of the database ``settings.database_url`` names."""

    kind = "postgresql"

    def __init__(self, settings: RelaySettings) -> None:
        self.settings = settings
        self.params = PgConnectParams.from_url(settings.database_url)

    def __repr__(self) -> str:
        return f"PostgresDatabase(slot={self.settings.slot_name!r})"

    async def prepare_start(
        self, store: CheckpointStores, stats: RelayStats, stopping: asyncio.Event
    ) -> Position | None:
        """Check the server, the publication and the slot; start at the greater of the
        checkpoint and the slot (:mod:`.startup`). Retries while a server is unreachable."""
        s = self.settings

        async def attempt() -> PgStart:
            # Both copies lost: the slot holds the place (acknowledged events only).
            checkpoint = await store.load_start(s, stats, server_keeps_place=True)
            return await asyncio.to_thread(
                resolve_start,
                self.params,
                tables=list(s.tables),
                table_setting="outbox_tables" if s.multi_table else "outbox_table",
                publication=s.publication_name,
                slot_name=s.slot_name,
                create=s.pg_create,
                checkpoint=checkpoint,
                ran_before=store.ran_before and not s.ignore_checkpoint,
                pattern=s.outbox_table_pattern or None,
                stop_on_bad=s.on_rejected == "stop",
            )

        def verdict(exc: BaseException) -> BaseException | None:
            if isinstance(exc, PgServerError):
                return login_error(exc) or (None if exc.code in TRANSIENT else exc)
            return redis_misconfiguration(exc)

        start = await until_reachable(
            attempt,
            retried=(PgServerError, RedisError, OSError),
            verdict=verdict,
            stopping=stopping,
            max_delay=s.reconnect_max_ms / 1000,
        )
        if start is None:
            return None
        self.server = start
        p = self.params
        if s.multi_table:
            stats.count_tables((*s.tables, *start.matched))
        names = ", ".join(f"{a}.{b}" for a, b in (*s.tables, *start.matched)) or "no table"
        if s.outbox_table_pattern:
            names += f" and tables matching {s.outbox_table_pattern!r}"
        if s.pg_message_prefixes:
            names += f" and messages prefixed {', '.join(s.pg_message_prefixes)}"
        log.info(
            "relay %r: %s at %s:%d/%s, outbox %s, publication %s, slot %s, Kafka %s, Redis %s; "
            "starting at %s (%s)",
            s.relay_name,
            start.version,
            p.host,
            p.port,
            p.database,
            names,
            s.publication_name,
            s.slot_name,
            s.kafka.bootstrap_servers,
            mask_url(s.redis_url),
            start.position,
            start.why,
        )
        return start.position

    def open_source(
        self,
        start: Position,
        sink: Channel,
        *,
        router: TopicRouter,
        on_state: Callable[[str], None],
    ) -> Source:
        """A logical replication source from ``start`` (always a thread: the reader costs
        7-8 µs a transaction, docs/postgres-design.md)."""
        if not isinstance(start, LsnPosition):
            raise CheckpointError(f"{start} is no PostgreSQL position")
        s = self.settings
        settings = PgSourceSettings(
            connect=self.params,
            slot=s.slot_name,
            publication=s.publication_name,
            tables=s.tables,
            prefixes=s.pg_message_prefixes,
            other_prefixes=s.pg_other_message_prefixes,
            table_pattern=s.outbox_table_pattern or None,
            status_interval_seconds=min(1.0, s.checkpoint_interval_ms / 1000),
            idle_commit_seconds=min(1.0, s.checkpoint_interval_ms / 1000),
            max_reconnect_delay_seconds=s.reconnect_max_ms / 1000,
        )
        return LsnSource(settings, sink, start, router=router, on_state=on_state)

    async def release(self, position: Position) -> None:
        """Advance the slot to ``position`` (checkpointed) now that the source stopped:
        its last status update went out before the final save."""
        if isinstance(position, LsnPosition) and position.lsn > 0:
            slot = self.settings.slot_name
            await asyncio.to_thread(advance_slot, self.params, slot, position.lsn)

    def watch(
        self, start: Position, fail: Callable[[BaseException], None]
    ) -> asyncio.Future[None] | None:
        """Check the publication again every :data:`.publication.WATCH_SECONDS` while the
        session streams; a change that could hide outbox rows fails it (:mod:`.publication`)."""
        server = self.server
        if not isinstance(server, PgStart) or not isinstance(start, LsnPosition):
            return None
        s = self.settings
        watch = PublicationWatch(
            self.params,
            name=s.publication_name,
            slot=s.slot_name,
            tables=tuple(s.tables),
            pattern=s.outbox_table_pattern or None,
            oid=server.publication,
            after=start.lsn,
        )
        return asyncio.ensure_future(_watch_publication(watch, fail))

    def head(self, stats: RelayStats) -> Head:
        """The server's WAL end and the slot's retained WAL, over a connection of its own."""
        return WalHead(self.params, self.settings.slot_name, stats)


async def _watch_publication(
    watch: PublicationWatch, fail: Callable[[BaseException], None]
) -> None:
    try:
        while True:
            error = await asyncio.to_thread(watch.poll)
            if error is not None:
                fail(error)
                return
            await asyncio.sleep(WATCH_SECONDS)
    finally:
        watch.close()


class _LsnSink:
    """Turns the PostgreSQL source's batches (commit: an LSN) into the relay's."""

    __slots__ = ("_channel", "_system", "_timeline")

    def __init__(self, channel: Channel, start: LsnPosition) -> None:
        self._channel = channel
        self._system, self._timeline = start.system, start.timeline

    def put(self, batch: PgBatch) -> bool:
        lsn = batch.commit
        commit = (
            None
            if lsn is None
            else LsnPosition(lsn=lsn, system=self._system, timeline=self._timeline)
        )
        return self._channel.put(SourceBatch(batch.records, commit, batch.tables))

    def fail(self, error: BaseException) -> None:
        self._channel.fail(error)

    def close(self) -> None:
        self._channel.close()


class LsnSource:
    """A :class:`.source.PgSource` as the relay's :class:`~..database.Source`."""

    def __init__(
        self,
        settings: PgSourceSettings,
        channel: Channel,
        start: LsnPosition,
        *,
        router: TopicRouter,
        on_state: Callable[[str], None],
    ) -> None:
        self._pg = PgSource(
            settings, _LsnSink(channel, start), start.lsn, router=router, on_state=on_state
        )

    def __repr__(self) -> str:
        return f"LsnSource(position={self._pg.position}, confirmed={self._pg.confirmed})"

    @property
    def connected(self) -> bool:
        """True while streaming."""
        return self._pg.connected

    @property
    def reconnects(self) -> int:
        """Connections lost so far."""
        return self._pg.reconnects

    def start(self) -> None:
        """Start the reader thread."""
        self._pg.start()

    def stop(self) -> None:
        """Stop reading."""
        self._pg.stop()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the reader thread."""
        self._pg.join(timeout)

    def confirm(self, position: Position) -> None:
        """Let the slot release WAL before ``position`` (checkpointed)."""
        if isinstance(position, LsnPosition):
            self._pg.confirm(position.lsn)


class WalHead:
    """``pg_current_wal_lsn()`` and the slot's retained WAL, polled from a worker thread.

    Errors make the figures unknown: a progress display, never a reason to stop.
    """

    def __init__(self, params: PgConnectParams, slot: str, stats: RelayStats) -> None:
        self._params = params
        self._slot = slot
        self._stats = stats
        self._conn: PgWire | None = None
        self.current: int | None = None

    def poll(self) -> None:
        """Read the WAL end and the slot's retained bytes."""
        try:
            if self._conn is None:
                self._conn = PgWire(self._params)
            rows = self._conn.query("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")
            self.current = int(float(rows[0][0] or 0))
            lag = slot_lag_bytes(self._conn, self._slot)
            self._stats.slot_retained_bytes = None if lag is None else lag[0]
        except (PgServerError, OSError, IndexError, ValueError):
            self.current = None
            self._stats.slot_retained_bytes = None
            self.close()

    def behind(self, position: Position | None) -> int | None:
        """WAL bytes after ``position`` up to the end last polled."""
        if not isinstance(position, LsnPosition) or self.current is None:
            return None
        return max(0, self.current - position.lsn)

    def close(self) -> None:
        """Close the connection."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()
