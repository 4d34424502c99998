"""The PostgreSQL source: the outbox's committed events from a logical replication slot.

Like the binlog source (:mod:`..source`), it reads in a thread and hands
batches to a bounded sink: many transactions per batch (what one socket read
held), a large transaction in parts. The position is an LSN: a batch's
``commit`` is the end LSN of its last transaction, the place to resume from.

**Confirming.** The slot's ``confirmed_flush_lsn`` (what PostgreSQL may
forget) moves only by :meth:`PgSource.confirm`: the caller passes the LSN up
to which Kafka has acknowledged every event (the relay's watermark), and
every standby status update reports exactly that, never a position read but
not acknowledged. When the stream is idle (no open transaction) the server's
WAL end is handed over as an empty batch, so a caller that acknowledges it
lets the slot advance past other tables' WAL too.

On a lost connection (a PostgreSQL restart, say) the thread reconnects from
the last commit it handed over, skipping the rows of the open transaction it
had already handed over.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ...exceptions import ConfigurationError, OutboxError
from ..routing import KafkaRecord, TopicRouter
from ..rowrecord import RejectedRow
from .checks import SlotLostError
from .pgoutput import PgOutputParser, StreamEnded
from .publication import publication_gone
from .wire import RECV_BYTES, PgConnectParams, PgServerError, PgWire, format_lsn, quote_literal

__all__ = ["PgBatch", "PgBatchSink", "PgSource", "PgSourceSettings"]

log = logging.getLogger("transactional_outbox.relay.postgres")

_MAX_HOLD = 0.05  # seconds committed rows of a full read may wait for the next read
_PG_EPOCH_US = 946_684_800_000_000
# Retried like a lost connection: shutdown / crash of the server, too many
# connections or WAL senders (53300), a slot still active for an old
# connection (55006: PostgreSQL refuses a second consumer).
_TRANSIENT_CODES = frozenset({"57P01", "57P02", "57P03", "53300", "55006", "08006", "08003"})


@dataclass(frozen=True, slots=True)
class PgBatch:
    """Records of committed (or, ``commit=None``, one open) transactions, in commit order.

    ``commit``: the end LSN of the batch's last transaction. ``tables``: how many
    records came from each outbox (``schema.table``, or ``database.prefix``).
    """

    records: list[KafkaRecord | RejectedRow]
    commit: int | None
    tables: dict[str, int] | None = None


class PgBatchSink(Protocol):
    """Where the source hands its batches (the relay's channel)."""

    def put(self, batch: PgBatch) -> bool:
        """Hand over ``batch`` (may block); False once the sink is closed."""

    def fail(self, error: BaseException) -> None:
        """Report a fatal source error."""

    def close(self) -> None:
        """Refuse later batches."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PgSourceSettings:
    """What the PostgreSQL source needs (built by the relay from its settings)."""

    connect: PgConnectParams
    slot: str
    publication: str
    tables: tuple[tuple[str, str], ...]
    prefixes: tuple[str, ...] = ()
    other_prefixes: tuple[str, ...] = ()  # another relay's: not an unlisted outbox
    table_pattern: str | None = None  # schema.table full-matched: outbox tables too
    chunk_events: int = 2000
    status_interval_seconds: float = 1.0
    idle_commit_seconds: float = 1.0
    reconnect_delay_seconds: float = 1.0
    max_reconnect_delay_seconds: float = 30.0


class PgSource:
    """Reads the outbox's events from ``start`` (an LSN, 0: the slot's position) on."""

    def __init__(
        self,
        settings: PgSourceSettings,
        sink: PgBatchSink,
        start: int,
        *,
        router: TopicRouter,
        on_state: Callable[[str], None] | None = None,
    ) -> None:
        self._s = settings
        self._sink = sink
        self._router = router
        self._position = start
        # ``start`` is acknowledged (a checkpoint, or the slot's own position):
        # reporting it confirms nothing new. 0 reports no flush position at all.
        self._confirmed = start
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wire: PgWire | None = None
        self._pushed_in_txn = 0
        self._pushed_tables: dict[str, int] = {}  # their counts per outbox
        self._on_state = on_state or (lambda state: None)
        self._thread = threading.Thread(target=self.run, name="outbox-pg", daemon=True)
        self.connected = False
        self.reconnects = 0

    @property
    def position(self) -> int:
        """The end LSN of the last transaction handed over."""
        return self._position

    @property
    def confirmed(self) -> int:
        """The LSN the caller confirmed last (what status updates report)."""
        return self._confirmed

    def confirm(self, lsn: int) -> None:
        """Let the slot forget WAL before ``lsn``: every event before it is acknowledged.

        Thread-safe; never moves back. Reported with the next status update
        (at most ``status_interval_seconds`` later).
        """
        with self._lock:
            if lsn > self._confirmed:
                self._confirmed = lsn

    def start(self) -> None:
        """Start the reader thread."""
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to stop, waking it from a blocking read."""
        self._stop.set()
        self._sink.close()
        wire = self._wire
        if wire is not None:
            wire.shutdown()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the thread to exit."""
        self._thread.join(timeout)

    def run(self) -> None:
        """Read in the calling thread until stopped or failed (what the thread runs)."""
        s = self._s
        delay = s.reconnect_delay_seconds
        while not self._stop.is_set():
            try:
                self._wire = PgWire(s.connect, replication=True)
                if self._stop.is_set():
                    return
                self._stream(self._wire)
                return
            except (OSError, StreamEnded, PgServerError) as exc:
                if self._stop.is_set():
                    return
                if isinstance(exc, PgServerError) and exc.code not in _TRANSIENT_CODES:
                    self._sink.fail(_fatal(exc, s, self._position))
                    return
                if self.connected:
                    delay = s.reconnect_delay_seconds
                self.connected = False
                self._on_state("disconnected")
                self.reconnects += 1
                log.warning(
                    "replication connection lost (%s); reconnecting from %s in %.1fs",
                    exc,
                    format_lsn(self._position),
                    delay,
                )
                self._stop.wait(delay)
                delay = min(delay * 2, s.max_reconnect_delay_seconds)
            except OutboxError as exc:
                self._sink.fail(exc)
                return
            except Exception as exc:
                if not self._stop.is_set():
                    log.exception("PostgreSQL source failed")
                    self._sink.fail(exc)
                return
            finally:
                wire, self._wire = self._wire, None
                if wire is not None:
                    wire.close()

    def _stream(self, wire: PgWire) -> None:
        s = self._s
        options = {
            "proto_version": "1",
            "publication_names": s.publication,
            "binary": "true",
            # Always: a message of an outbox under a prefix not listed must be seen
            # to stop the relay (pgoutput.py), not left unread.
            "messages": "true",
        }
        wire.start_replication(s.slot, self._position, options)
        # Wake at least every status interval: updates go out even on a silent stream.
        wire.settimeout(s.status_interval_seconds)
        parser = PgOutputParser(
            router=self._router,
            tables=frozenset(f"{a}.{b}" for a, b in s.tables),
            prefixes=frozenset(s.prefixes),
            other_prefixes=frozenset(s.other_prefixes),
            database=s.connect.database,
            cap=s.chunk_events,
            pattern=re.compile(s.table_pattern) if s.table_pattern else None,
        )
        skip = self._pushed_in_txn  # rows of the open transaction handed over before
        self.connected = True
        self._on_state("connected")
        sent = -1
        last_status = last_push = time.monotonic()
        buf, pos, full = b"", 0, False
        while not self._stop.is_set():
            try:
                data = wire.recv()
                # A read that filled the buffer: more is waiting (the binlog source's rule).
                full = len(data) == RECV_BYTES
                buf = buf[pos:] + data if pos < len(buf) else data
                pos = 0
            except TimeoutError:
                full = False
            while True:
                pos = parser.feed(buf, pos)
                if skip and parser.records:
                    n = min(skip, len(parser.records))
                    del parser.records[:n]
                    parser.committed = max(0, parser.committed - n)
                    skip -= n
                    if not skip:  # the same rows again: take their counts back out
                        for name, k in self._pushed_tables.items():
                            parser.open_tables[name] = parser.open_tables.get(name, 0) - k
                if len(parser.records) - parser.committed >= s.chunk_events:
                    if parser.commit_lsn is not None and not self._hand_over(parser):
                        return
                    records, tables = parser.take_open()
                    if not self._sink.put(PgBatch(records, None, tables)):
                        return
                    self._pushed_in_txn += len(records)
                    for name, k in tables.items():
                        self._pushed_tables[name] = self._pushed_tables.get(name, 0) + k
                    continue
                if len(parser.records) >= s.chunk_events:
                    if not self._hand_over(parser):
                        return
                    continue
                break
            now = time.monotonic()
            if parser.commit_lsn is not None and (not full or now - last_push >= _MAX_HOLD):
                if not self._hand_over(parser):
                    return
                last_push = now
            elif (
                not parser.in_txn
                and parser.commit_lsn is None
                and not parser.records
                and parser.wal_end > self._position
                and now - last_push >= s.idle_commit_seconds
            ):
                # Idle: the server has sent everything before its WAL end.
                if not self._sink.put(PgBatch([], parser.wal_end, None)):
                    return
                self._position = parser.wal_end
                last_push = now
            confirmed = self._confirmed
            if (
                parser.reply_requested
                or confirmed != sent
                or now - last_status >= s.status_interval_seconds
            ):
                wire.send_status(confirmed, _now_pg_micros())
                parser.reply_requested = False
                sent, last_status = confirmed, now

    def _hand_over(self, parser: PgOutputParser) -> bool:
        records, lsn, tables = parser.take_committed()
        if lsn is None:
            return True
        if not self._sink.put(PgBatch(records, lsn, tables or None)):
            return False
        self._position = lsn
        self._pushed_in_txn = 0
        self._pushed_tables = {}
        return True


def _now_pg_micros() -> int:
    return time.time_ns() // 1000 - _PG_EPOCH_US


def _fatal(exc: PgServerError, s: PgSourceSettings, position: int) -> OutboxError:
    slot = s.slot
    if exc.code == "42704":  # undefined_object: the slot, or the publication here
        if _slot_exists(s):
            # pgoutput found no publication at this place in the WAL (dropped, or
            # created after it).
            return publication_gone(s.publication, slot, position)
        return SlotLostError(
            f"replication slot {slot} disappeared while the relay read it ({exc.message}); "
            "events committed since may be lost. To accept that, start the relay once with "
            "--ignore-checkpoint (it creates a new slot)"
        )
    if exc.code.startswith("28"):
        return ConfigurationError("database_url", f"login refused: {exc.message}")
    return exc


def _slot_exists(s: PgSourceSettings) -> bool | None:
    """Whether the slot exists (None: could not ask)."""
    try:
        conn = PgWire(s.connect)
    except (OSError, PgServerError):
        return None
    try:
        rows = conn.query(
            f"SELECT 1 FROM pg_replication_slots WHERE slot_name = {quote_literal(s.slot)}"
        )
        return bool(rows)
    except (OSError, PgServerError):
        return None
    finally:
        conn.close()
