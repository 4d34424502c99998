"""Binlog source: reads committed outbox rows in a thread and hands them to asyncio.

The replication socket blocks, so the reader runs in its own thread (or child
process) and feeds a bounded sink (:mod:`.channel`; backpressure: it waits
when the relay is behind). The dump protocol and the event parsing are the relay's own
(:mod:`.binlog`). Many transactions travel in one batch: the source hands
over what it has when the socket had nothing more buffered, or when a batch
reaches ``chunk_events`` rows, so a busy stream costs one hand-over per
socket read and an idle one adds no delay.

On a lost connection the thread closes it, waits, and reopens from the last
commit it handed over, skipping the rows of the open transaction it already
handed over: by that commit's GTID state when ``use_gtid`` (the server behind
the address may have changed: a failover), else by its FILE:POS after checking,
on the new connection, that it reached the same server at the same GTID state
(:mod:`.resume`). Each commit handed over names the server that streamed it.
A refused dump (1236) is explained by asking the server why. A silent stream
is detected with the replication heartbeat plus a socket read timeout. MariaDB
refusing a second connection with the same server id (error 4052, while an old
one is still registered) is retried the same way.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import pymysql

from ...exceptions import CheckpointError, OutboxError
from ..channel import BatchSink, SourceBatch
from ..position import BinlogPosition, Position
from ..routing import TopicRouter
from .binlog.events import BinlogParser, DumpEnded, ServerError
from .binlog.protocol import RECV_BYTES, DumpConnection
from .binlog.tablemap import TableLayout
from .resume import check_same_place, explain_refusal, read_identity

__all__ = ["BinlogSource", "SourceSettings"]

log = logging.getLogger("transactional_outbox.relay.source")

_CONNECTION_LOST = frozenset({2003, 2006, 2013, 2055})
# "A slave with the same server_uuid/server_id is already connected": MariaDB
# ends a dump with it when another connection registers our server_id (seen
# here: the older connection gets it at once), and may refuse a new one while
# an old one is still registered (a paused old leader). Both pass: retry.
_TRANSIENT = frozenset({4052})
# MySQL instead ends the older connection with 1236 and this text.
_SAME_ID = "same server_uuid/server_id"
_MAX_HOLD = 0.05  # seconds a read's committed rows may wait for the next read


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceSettings:
    """What the binlog source needs. Built by the relay from its settings."""

    host: str
    port: int
    user: str
    password: str = field(repr=False)
    server_id: int
    schema: str
    table: str
    is_mariadb: bool
    # Resume every connection by GTID (resume_by_gtid auto with GTIDs, or on).
    by_gtid: bool = False
    # Many outbox tables: these (schema, table) pairs and the tables whose
    # "schema.table" full-matches the pattern; schema/table are then unused.
    tables: tuple[tuple[str, str], ...] = ()
    table_pattern: str | None = None
    heartbeat_seconds: float = 2.0
    reconnect_delay_seconds: float = 1.0
    max_reconnect_delay_seconds: float = 30.0
    chunk_events: int = 2000
    idle_commit_seconds: float = 1.0
    connect_timeout_seconds: float = 10.0
    extra_connection_args: dict[str, Any] = field(default_factory=dict, repr=False)


class BinlogSource:
    """Reads the outbox table's inserts from ``start`` on, in a thread, into a sink.

    Rows arrive as the Kafka records ``router`` makes of them (decoding and
    record building happen here, in one pass over the row's bytes). ``start``
    must be a transaction boundary. The GTID state at ``start`` is taken from
    ``start.gtid`` and kept current so every commit position carries it.
    """

    def __init__(
        self,
        settings: SourceSettings,
        channel: BatchSink,
        start: BinlogPosition,
        *,
        on_state: Callable[[str], None] | None = None,
        use_gtid: bool = False,
        router: TopicRouter,
    ) -> None:
        self._s = settings
        self._router = router
        self._channel = channel
        self._position = start
        self._use_gtid = use_gtid and start.gtid is not None
        self._stop = threading.Event()
        self._dump: DumpConnection | None = None
        self._thread = threading.Thread(target=self._run, name="outbox-binlog", daemon=True)
        self._on_state = on_state or (lambda state: None)
        self._pushed_in_txn = 0
        self._layouts: dict[bytes, TableLayout] = {}
        self._announced: set[str] = set()  # pattern-matched tables logged once, not per connection
        self._server: str | None = start.server  # the server the open connection reached
        self.connected = False
        self.reconnects = 0
        self.last_packet_at = time.monotonic()

    @property
    def position(self) -> BinlogPosition:
        """The last commit position handed over."""
        return self._position

    def start(self) -> None:
        """Start the reader thread."""
        self._thread.start()

    def run(self) -> None:
        """Read in the calling thread until stopped or failed (what the thread runs)."""
        self._run()

    def stop(self) -> None:
        """Ask the thread to stop, waking it from a blocking read."""
        self._stop.set()
        self._channel.close()
        dump = self._dump
        if dump is not None:
            # shutdown() (unlike close()) is safe while another thread is in recv():
            # the read returns at once and the thread sees the stop flag.
            dump.shutdown()

    def confirm(self, position: Position) -> None:
        """Nothing to confirm: a MySQL server keeps no log for a reader (the source interface
        asks it of every source; a PostgreSQL slot needs it)."""

    def join(self, timeout: float | None = None) -> None:
        """Wait for the thread to exit."""
        self._thread.join(timeout)

    # -- the thread ---------------------------------------------------------

    def _open(self) -> DumpConnection:
        s = self._s
        args: dict[str, Any] = {
            "host": s.host,
            "port": s.port,
            "user": s.user,
            "password": s.password,
            "connect_timeout": s.connect_timeout_seconds,
            **s.extra_connection_args,
        }
        position = self._position
        gtid = position.gtid if self._use_gtid else None

        def check_server(cur: Any) -> None:
            # Positions handed over name the server they belong to; a FILE:POS
            # resume is only valid on the server (and at the GTID state) that wrote it.
            before, self._server = self._server, read_identity(cur, is_mariadb=s.is_mariadb)
            if self._pushed_in_txn and before is not None and self._server != before:
                # The rows of an open transaction already handed over are skipped on a
                # reconnect only when they are known to be read again: on another
                # server (a failover) the next transaction may be another one, and
                # skipping would drop its first rows in silence. Send them again.
                log.warning(
                    "reconnected to another server (%s, was %s) inside a transaction "
                    "whose first %d rows were handed over: reading it whole again "
                    "(those rows may be published twice)",
                    self._server,
                    before,
                    self._pushed_in_txn,
                )
                self._pushed_in_txn = 0
            if gtid is None and position.file:
                check_same_place(cur, position, self._server, is_mariadb=s.is_mariadb)

        return DumpConnection(
            args,
            server_id=s.server_id,
            is_mariadb=s.is_mariadb,
            heartbeat_seconds=s.heartbeat_seconds,
            # Heartbeats arrive every heartbeat_seconds on an idle stream, so a
            # longer silence means a dead connection.
            read_timeout=max(3.0 * s.heartbeat_seconds, 3.0),
            file=position.file,
            pos=position.pos,
            gtid=gtid,
            before_dump=check_server,
        )

    def _run(self) -> None:
        initial = delay = self._s.reconnect_delay_seconds
        while not self._stop.is_set():
            try:
                self._dump = self._open()
                if self._stop.is_set():
                    return
                self._stream(self._dump)
                return
            except (ServerError, DumpEnded, pymysql.err.OperationalError, OSError) as exc:
                # DumpEnded: a server shutting down ends the dump with an EOF packet.
                if self._stop.is_set():
                    return
                code = (
                    exc.args[0]
                    if isinstance(exc, ServerError | pymysql.err.OperationalError)
                    else None
                )
                if code == 1236 and _SAME_ID in str(exc.args[1:]):
                    code = 4052  # MySQL's way to say it: another connection took our id
                if code == 1236:
                    self._channel.fail(self._refused(str(exc.args[1])))
                    return
                if code is not None and code not in _CONNECTION_LOST and code not in _TRANSIENT:
                    self._channel.fail(
                        pymysql.err.OperationalError(*exc.args)
                        if isinstance(exc, ServerError)
                        else exc
                    )
                    return
                if self.connected:
                    delay = initial
                self.connected = False
                self._on_state("disconnected")
                self.reconnects += 1
                log.warning(
                    "binlog connection lost (%s); reconnecting from %s in %.1fs",
                    exc,
                    self._position,
                    delay,
                )
                self._stop.wait(delay)
                delay = min(delay * 2, self._s.max_reconnect_delay_seconds)
            except OutboxError as exc:
                self._channel.fail(exc)
                return
            except Exception as exc:
                if not self._stop.is_set():
                    log.exception("binlog source failed")
                    self._channel.fail(exc)
                return
            finally:
                dump, self._dump = self._dump, None
                if dump is not None:
                    dump.close()

    def _refused(self, text: str) -> CheckpointError:
        """Why the server refused to stream (1236), asked over an ordinary connection."""
        s = self._s
        args = {"host": s.host, "port": s.port, "user": s.user, "password": s.password}
        by_gtid = self._use_gtid and self._position.gtid is not None
        return explain_refusal(
            {**args, **s.extra_connection_args},
            self._position,
            text,
            by_gtid=by_gtid,
            is_mariadb=s.is_mariadb,
        )

    def _stream(self, dump: DumpConnection) -> None:
        s = self._s
        start = self._position
        parser = BinlogParser(
            schema=s.schema,
            table=s.table,
            router=self._router,
            start=start,
            is_mariadb=s.is_mariadb,
            track_gtid=start.gtid is not None,
            layouts=self._layouts,
            tables=s.tables,
            pattern=s.table_pattern,
            announced=self._announced,
            cap=s.chunk_events,
            # After a reconnect the open transaction is read again from its
            # start; its rows already handed over are skipped, not sent twice.
            skip=self._pushed_in_txn,
        )
        put = self._channel.put
        stop = self._stop
        idle = s.idle_commit_seconds
        recv = dump.recv
        buf = recv()
        full = len(buf) == RECV_BYTES
        self.connected = True
        self._on_state("connected")
        pos = 0
        last_push = now = time.monotonic()
        while not stop.is_set():
            try:
                pos = parser.feed(buf, pos)
            except OutboxError:
                # The parser stops at an event it cannot pass (a statement-logged
                # outbox write, a bad CRC): what committed before it goes out first.
                if parser.commits:
                    self._hand_over(parser, put, open_too=False)
                raise
            if parser.full:
                # A full batch in the middle of a read: hand it over, read on.
                if not self._hand_over(parser, put, open_too=True):
                    return
                last_push = time.monotonic()
                continue
            # After a read that did not fill the buffer the socket had (almost)
            # nothing more: hand over what there is now rather than wait, so
            # latency stays low at low rates, while a busy stream sends one
            # batch per read. After full reads (a backlog), still every
            # _MAX_HOLD seconds, for sparse outbox rows among other tables'.
            # Commits without outbox rows only move the checkpoint: hand those
            # over now and then.
            if parser.commits and (
                (parser.committed and (not full or now - last_push >= _MAX_HOLD))
                or now - last_push >= idle
            ):
                if not self._hand_over(parser, put, open_too=False):
                    return
                last_push = now
            data = recv()
            full = len(data) == RECV_BYTES
            now = self.last_packet_at = time.monotonic()
            buf = buf[pos:] + data if pos < len(buf) else data
            pos = 0

    def _hand_over(
        self, parser: BinlogParser, put: Callable[[SourceBatch], bool], *, open_too: bool
    ) -> bool:
        if parser.commits:
            records, commit = parser.take_committed()
            if commit.server != self._server:
                commit = replace(commit, server=self._server)
            if not put(SourceBatch(records, commit, parser.handed_tables)):
                return False
            self._position = commit
            self._pushed_in_txn = 0
        if open_too and parser.open_rows >= self._s.chunk_events:
            records = parser.take_open()
            if not put(SourceBatch(records, None, parser.handed_tables)):
                return False
            # While a prepared XA transaction holds the position before it, a
            # reconnect reads this transaction again from its start: skip none.
            self._pushed_in_txn += 0 if parser.holding else len(records)
        return True
