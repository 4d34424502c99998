"""Binlog source: reads committed outbox rows in a thread and hands them to asyncio.

The replication socket blocks, so the reader runs in its own thread and feeds
a bounded :class:`Channel` (backpressure: the thread waits when the relay is
behind). The reconnect is ours, not the library's (DESIGN §7): on a lost
connection the thread closes the stream, waits, and reopens from the last
commit it read, skipping the rows of the open transaction it already handed
over. A silent stream is detected with the replication heartbeat plus a
socket read timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import pymysql
from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.event import GtidEvent, MariadbGtidEvent, RotateEvent, XidEvent
from pymysqlreplication.row_event import WriteRowsEvent

from ..exceptions import BinlogPurgedError, InvalidEventError, OutboxError
from .decode import row_to_event
from .position import BinlogPosition, MariaDBGtidState, MySQLGtidSet
from .routing import KafkaRecord, TopicRouter, build_record
from .rowdecoder import ColumnSpec, RejectedRow, RowPlan, decode_rows, plan_for, rejected

__all__ = ["BinlogSource", "Channel", "ChannelClosed", "SourceBatch", "SourceSettings"]

log = logging.getLogger("transactional_outbox.relay.source")

_CONNECTION_LOST = frozenset({2003, 2006, 2013, 2055})


class ChannelClosed(Exception):
    """The channel was closed: the relay is stopping."""


class StreamLost(Exception):
    """The replication connection dropped; raised instead of pymysql's error so the
    library's hidden reconnect (which replays from its original start) never runs."""


class _StreamConnection(pymysql.connections.Connection):
    def _read_packet(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super()._read_packet(*args, **kwargs)  # type: ignore[no-untyped-call]
        except pymysql.err.OperationalError as exc:
            if exc.args and exc.args[0] in _CONNECTION_LOST:
                raise StreamLost(str(exc)) from exc
            raise


def _remaining_body(ev: WriteRowsEvent) -> bytes | None:
    """The undecoded rows of ``ev``: the library has parsed its header, not its rows.

    Reads the library's packet internals; returns None if they are not as
    expected (another library version), and the caller falls back.
    """
    wrapper = ev.packet
    packet = getattr(wrapper, "packet", None)
    data = getattr(packet, "_data", None)
    position = getattr(packet, "_position", None)
    buffered = getattr(wrapper, "_BinLogPacketWrapper__data_buffer", None)
    if not isinstance(data, bytes) or not isinstance(position, int) or buffered is None:
        return None
    remaining = ev.event_size - wrapper.read_bytes
    if remaining < 0:
        return None
    return bytes(buffered) + data[position : position + remaining - len(buffered)]


@dataclass(frozen=True, slots=True)
class SourceBatch:
    """The Kafka records of outbox rows read from the binlog, in binlog order.

    A row that is no valid event keeps its place as a :class:`RejectedRow`.

    ``commit`` is set when the batch ends at a transaction's commit: the
    position to resume from after it. A large transaction arrives in several
    batches, all but the last with ``commit=None``.
    """

    records: list[KafkaRecord | RejectedRow]
    commit: BinlogPosition | None


class BatchSink(Protocol):
    """Where a :class:`BinlogSource` hands its batches: a :class:`Channel`, or a pipe
    to the relay when the source runs in its own process."""

    def put(self, batch: SourceBatch) -> bool:
        """Hand over ``batch`` (may block); False once the sink is closed."""

    def fail(self, error: BaseException) -> None:
        """Report a fatal source error."""

    def close(self) -> None:
        """Refuse later batches."""


class Channel:
    """A bounded hand-off from one producer thread to one asyncio consumer.

    The thread blocks in :meth:`put` while more than ``max_events`` are
    waiting; the consumer takes everything waiting in one :meth:`get`, so a
    busy stream costs one wake-up per drain, not one per transaction.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, *, max_events: int) -> None:
        self._loop = loop
        self._max = max_events
        self._cond = threading.Condition()
        self._items: deque[SourceBatch] = deque()
        self._size = 0
        self._ready = asyncio.Event()
        self._sleeping = False
        self._closed = False
        self._error: BaseException | None = None

    def put(self, batch: SourceBatch) -> bool:
        """Hand over ``batch``; False if the channel was closed meanwhile."""
        with self._cond:
            while self._size >= self._max and not self._closed:
                self._cond.wait(0.5)
            if self._closed:
                return False
            self._items.append(batch)
            self._size += len(batch.records) or 1
            wake, self._sleeping = self._sleeping, False
        if wake:
            self._loop.call_soon_threadsafe(self._ready.set)
        return True

    def fail(self, error: BaseException) -> None:
        """Report a fatal source error to the consumer."""
        with self._cond:
            self._error = error
            wake, self._sleeping = self._sleeping, False
        if wake:
            self._loop.call_soon_threadsafe(self._ready.set)

    async def get(self) -> list[SourceBatch]:
        """Everything waiting, in order (at least one batch). Raises the source's error."""
        while True:
            with self._cond:
                if self._items:
                    out = list(self._items)
                    self._items.clear()
                    self._size = 0
                    self._cond.notify_all()
                    return out
                if self._error is not None:
                    raise self._error
                if self._closed:
                    raise ChannelClosed
                self._sleeping = True
                self._ready.clear()
            await self._ready.wait()

    def close(self) -> None:
        """Release a blocked producer; later puts are refused."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._loop.call_soon_threadsafe(self._ready.set)

    @property
    def depth(self) -> int:
        """Events waiting to be taken."""
        return self._size


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
    heartbeat_seconds: float = 2.0
    reconnect_delay_seconds: float = 1.0
    max_reconnect_delay_seconds: float = 30.0
    chunk_events: int = 2000
    idle_commit_seconds: float = 1.0
    connect_timeout_seconds: float = 10.0
    extra_connection_args: dict[str, Any] = field(default_factory=dict, repr=False)


class BinlogSource:
    """Reads the outbox table's inserts from ``start`` on, in a thread, into a Channel.

    Rows arrive as the Kafka records ``router`` makes of them (decoding and
    record building happen here, in the reader thread, in one pass over the
    row's bytes). ``start`` must be a transaction boundary. The GTID state at ``start`` is
    taken from ``start.gtid`` and kept current so every commit position carries
    it.
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
        self._gtid: MariaDBGtidState | MySQLGtidSet = (
            MariaDBGtidState.parse(start.gtid)
            if settings.is_mariadb
            else MySQLGtidSet.parse(start.gtid)
        )
        self._track_gtid = start.gtid is not None
        self._stop = threading.Event()
        self._reader: BinLogStreamReader | None = None
        self._thread = threading.Thread(target=self._run, name="outbox-binlog", daemon=True)
        self._on_state = on_state or (lambda state: None)
        self._pushed_in_txn = 0
        self._plans: dict[int, tuple[Any, RowPlan | None]] = {}
        self.connected = False
        self.reconnects = 0
        self.last_packet_at = time.monotonic()

    @property
    def position(self) -> BinlogPosition:
        """The last commit position read."""
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
        reader = self._reader
        sock = getattr(getattr(reader, "_stream_connection", None), "_sock", None)
        if sock is not None:
            # shutdown() (unlike close()) is safe while another thread is in recv():
            # the read returns at once and the thread sees the stop flag.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def join(self, timeout: float | None = None) -> None:
        """Wait for the thread to exit."""
        self._thread.join(timeout)

    # -- the thread ---------------------------------------------------------

    def _open(self) -> BinLogStreamReader:
        s = self._s
        conn: dict[str, Any] = {
            "host": s.host,
            "port": s.port,
            "user": s.user,
            "password": s.password,
            "connect_timeout": s.connect_timeout_seconds,
            # Heartbeats arrive every heartbeat_seconds on an idle stream, so a
            # longer silence means a dead connection.
            "read_timeout": max(3.0 * s.heartbeat_seconds, 3.0),
            **s.extra_connection_args,
        }
        kwargs: dict[str, Any] = {}
        if self._use_gtid:
            kwargs["auto_position"] = str(self._gtid)
        else:
            kwargs.update(log_file=self._position.file, log_pos=self._position.pos)
        return BinLogStreamReader(
            connection_settings=conn,
            server_id=s.server_id,
            resume_stream=True,
            blocking=True,
            only_events=[WriteRowsEvent, XidEvent, RotateEvent, GtidEvent, MariadbGtidEvent],
            only_schemas=[s.schema],
            only_tables=[s.table],
            slave_heartbeat=s.heartbeat_seconds,
            is_mariadb=s.is_mariadb and self._use_gtid,
            pymysql_wrapper=_StreamConnection,
            enable_logging=False,
            **kwargs,
        )

    def _run(self) -> None:
        initial = delay = self._s.reconnect_delay_seconds
        while not self._stop.is_set():
            try:
                self._reader = self._open()
                self._stream(self._reader)
                return
            except (StreamLost, pymysql.err.OperationalError, OSError) as exc:
                if self._stop.is_set():
                    return
                code = exc.args[0] if isinstance(exc, pymysql.err.OperationalError) else None
                if code == 1236:
                    self._channel.fail(
                        BinlogPurgedError(
                            f"the server cannot stream from {self._position}: {exc.args[1]}; "
                            "the binlog there was purged and events after it may be lost. "
                            "Restart with an explicit --start-position to accept that."
                        )
                    )
                    return
                if isinstance(exc, pymysql.err.OperationalError) and code not in _CONNECTION_LOST:
                    self._channel.fail(exc)
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
                reader, self._reader = self._reader, None
                if reader is not None:
                    with contextlib.suppress(Exception):  # already broken; nothing to release
                        reader.close()

    def _decode(self, ev: WriteRowsEvent) -> list[KafkaRecord | RejectedRow]:
        """The records of one WRITE_ROWS event: the fast decoder when the table allows."""
        plan = self._plan(ev)
        if plan is not None:
            data = _remaining_body(ev)
            if data is not None:
                return decode_rows(data, plan, self._router)
        out: list[KafkaRecord | RejectedRow] = []
        for row in ev.rows:
            values = row["values"]
            try:
                out.append(build_record(row_to_event(values), self._router))
            except InvalidEventError as exc:
                out.append(rejected(exc, values.get("id"), values.get("aggregateid")))
        return out

    def _plan(self, ev: WriteRowsEvent) -> RowPlan | None:
        columns = ev.columns
        cached = self._plans.get(ev.table_id)
        if cached is not None and cached[0] is columns:
            return cached[1]
        plan = None
        if ev.complete and ev.number_of_columns == len(columns):
            plan = plan_for(
                [
                    ColumnSpec(
                        name=str(c.name or ""),
                        type=int(c.type),
                        max_length=int(getattr(c, "max_length", 0) or 0),
                        length_size=int(getattr(c, "length_size", 0) or 0),
                        fsp=int(getattr(c, "fsp", 0) or 0),
                    )
                    for c in columns
                ]
            )
            present = ev.columns_present_bitmap
            if plan is not None and int.from_bytes(present, "little") != (1 << len(columns)) - 1:
                plan = None  # not a FULL row image: let the library handle it
        self._plans[ev.table_id] = (columns, plan)
        return plan

    def _stream(self, reader: BinLogStreamReader) -> None:
        s = self._s
        pending: list[KafkaRecord | RejectedRow] = []
        # After a reconnect the open transaction is read again from its start;
        # its rows already handed over are skipped, not sent twice.
        skip = self._pushed_in_txn
        seen = 0
        pending_gtid: str | None = None
        last_push = time.monotonic()
        first = True
        for ev in reader:
            if first:
                first = False
                self.connected = True
                self._on_state("connected")
            self.last_packet_at = time.monotonic()
            if self._stop.is_set():
                return
            if isinstance(ev, WriteRowsEvent):
                if ev.schema != s.schema or ev.table != s.table:
                    continue
                for event in self._decode(ev):
                    seen += 1
                    if seen <= skip:
                        continue
                    if isinstance(event, RejectedRow):
                        event = dataclasses.replace(
                            event, where=f"in the transaction after {self._position}"
                        )
                    pending.append(event)
                if len(pending) >= s.chunk_events:
                    if not self._channel.put(SourceBatch(pending, None)):
                        return
                    self._pushed_in_txn += len(pending)
                    pending = []
                    last_push = time.monotonic()
            elif isinstance(ev, XidEvent):
                if pending_gtid is not None and self._track_gtid:
                    self._gtid.update(pending_gtid)
                pending_gtid = None
                commit = BinlogPosition(
                    file=reader.log_file,
                    pos=ev.packet.log_pos,
                    gtid=str(self._gtid) if self._track_gtid else None,
                )
                now = time.monotonic()
                # Transactions without outbox rows only move the checkpoint;
                # hand one over now and then, not one per commit.
                if pending or now - last_push >= s.idle_commit_seconds:
                    if not self._channel.put(SourceBatch(pending, commit)):
                        return
                    pending = []
                    last_push = now
                self._position = commit
                self._pushed_in_txn = 0
                skip = seen = 0
            elif isinstance(ev, MariadbGtidEvent | GtidEvent):
                pending_gtid = ev.gtid
            elif isinstance(ev, RotateEvent):
                # Table ids are per server lifetime, and a restart starts a new
                # binlog file: forget them at every file change. The library
                # only does so for some rotates, and never overwrites the id of
                # a table it filters out, so a stale id could make another
                # table's rows look like outbox rows.
                reader.table_map = {}
                self._plans.clear()
