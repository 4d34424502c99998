"""MySQL/MariaDB behind the source interface (:mod:`..database`): startup checks and the
start position (:mod:`..startup`), the binlog source in a thread or child process
(:mod:`..source`, :mod:`..reader_process`), the binlog head (:mod:`..progress`) and the
check after a reconnect (:mod:`..reach`)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

from ...exceptions import CheckpointError
from ..channel import Channel
from ..database import Database, Head, Source
from ..position import BinlogPosition, Position
from ..routing import TopicRouter
from . import startup
from .progress import BinlogHead
from .reach import recheck_after_reconnect
from .reader_process import ProcessSource
from .source import BinlogSource

if TYPE_CHECKING:
    from ..checkpoints import CheckpointStores
    from ..config import RelaySettings
    from ..stats import RelayStats

__all__ = ["MySQLDatabase"]


class MySQLDatabase(Database):
    """The binlog of the server ``settings.database_url`` names."""

    kind = "mysql"

    def __init__(self, settings: RelaySettings) -> None:
        self.settings = settings
        self.server_id = settings.server_id  # the replica id in use; chosen per term
        self._start: startup.Start | None = None

    def __repr__(self) -> str:
        return f"MySQLDatabase(server_id={self.server_id})"

    async def prepare_start(
        self, store: CheckpointStores, stats: RelayStats, stopping: asyncio.Event
    ) -> Position | None:
        """Check the server and resolve the start (:func:`..startup.prepare_start`)."""
        start = await startup.prepare_start(
            self.settings, store, stats, stopping, server_id=self.server_id
        )
        if start is None:
            return None
        self._start, self.server, self.server_id = start, start.server, start.server_id
        return start.position

    def open_source(
        self,
        start: Position,
        sink: Channel,
        *,
        router: TopicRouter,
        on_state: Callable[[str], None],
    ) -> Source:
        """A binlog source from ``start`` (the ``reader`` setting: process or thread)."""
        assert self._start is not None, "prepare_start first"
        if not isinstance(start, BinlogPosition):
            raise CheckpointError(f"{start} is no binlog position")
        source_settings = startup.source_settings(self.settings, self._start)
        # Every connection by GTID when the server has them (resume_by_gtid auto/on):
        # a reconnect may reach another server (a failover) whose FILE:POS differ.
        use_gtid = source_settings.by_gtid or (start.file == "" and start.gtid is not None)
        reader = ProcessSource if self.settings.reader == "process" else BinlogSource
        return reader(
            source_settings, sink, start, use_gtid=use_gtid, on_state=on_state, router=router
        )

    def head(self, stats: RelayStats) -> Head:
        """The binlog list, read over a connection of its own."""
        return BinlogHead(self.settings.mysql_connection_args())

    def recheck(self, fail: Callable[[BaseException], None]) -> asyncio.Future[None] | None:
        """After a reconnect the address may lead to another server: check again that the
        outbox rows reach the binlog read."""
        return recheck_after_reconnect(self.settings, fail)
