"""The binlog source in a child process, so decoding does not wait for the GIL.

In one process the relay is bound by its interpreter lock: reading and
decoding rows (~60% of its CPU) and publishing them take turns on one core.
:class:`ProcessSource` runs the same :class:`BinlogSource` in a child
process and hands its batches to the relay's :class:`Channel` through a pipe,
so both halves run at once.

The child keeps no state of its own: the relay resumes from its watermark,
never from the child. So stopping it is a kill, and a child that dies ends
the session with an error. It ignores SIGINT and SIGTERM (the relay decides
when to stop) and is killed by the kernel if the relay dies.

Wire format, one message per pipe message: a tag byte, then

* ``M``: ``marshal`` of ``(records as plain tuples, commit as (file, pos, gtid, server) or None,
  rows by table or None)``,
  for batches of valid records only (marshal of plain tuples is ~5x faster
  than pickling named tuples);
* ``P``: ``pickle`` of ``("batch", SourceBatch)``, ``("state", str)`` or
  ``("error", exception)``: the rare messages.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import logging
import marshal
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from ...exceptions import OutboxError
from ..channel import Channel, SourceBatch
from ..position import BinlogPosition, Position
from ..routing import KafkaRecord, TopicRouter
from .rowdecoder import RejectedRow
from .source import BinlogSource, SourceSettings

__all__ = ["ProcessSource", "child_main", "decode_message", "encode_batch"]

log = logging.getLogger("transactional_outbox.relay.source")

_new_record: Any = tuple.__new__
_PR_SET_PDEATHSIG = 1


def encode_batch(batch: SourceBatch) -> bytes:
    """One pipe message for ``batch``."""
    records = batch.records
    if not any(type(r) is RejectedRow for r in records):
        c = batch.commit
        assert c is None or isinstance(c, BinlogPosition)  # a binlog source's batch
        commit = None if c is None else (c.file, c.pos, c.gtid, c.server)
        plain = [tuple(r) for r in records]  # type: ignore[arg-type]
        return b"M" + marshal.dumps((plain, commit, batch.tables))
    return _pickled(("batch", batch))


def _pickled(message: tuple[str, Any]) -> bytes:
    return b"P" + pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)


def decode_message(data: bytes) -> tuple[str, Any]:
    """``("batch", SourceBatch)``, ``("state", str)`` or ``("error", exception)``."""
    if data[:1] == b"M":
        plain, commit, tables = marshal.loads(data[1:])
        records = [_new_record(KafkaRecord, r) for r in plain]
        position = (
            None
            if commit is None
            else BinlogPosition(file=commit[0], pos=commit[1], gtid=commit[2], server=commit[3])
        )
        return "batch", SourceBatch(records, position, tables)
    message: tuple[str, Any] = pickle.loads(data[1:])
    return message


def _portable(error: BaseException) -> BaseException:
    """``error`` if it survives pickling, else an OutboxError with its text."""
    try:
        copy: BaseException = pickle.loads(pickle.dumps(error))
    except Exception:
        return OutboxError(f"{type(error).__name__}: {error}")
    return copy


class _PipeSink:
    """The child's side: what BinlogSource puts into, sent down the pipe."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._closed = False

    def put(self, batch: SourceBatch) -> bool:
        return self._send(encode_batch(batch))

    def fail(self, error: BaseException) -> None:
        self._send(_pickled(("error", _portable(error))))

    def state(self, state: str) -> None:
        self._send(_pickled(("state", state)))

    def close(self) -> None:
        self._closed = True

    def _send(self, data: bytes) -> bool:
        if self._closed:
            return False
        try:
            self._conn.send_bytes(data)
        except OSError:  # the relay is gone or stopped reading
            self._closed = True
            return False
        return True


def _die_with_parent(parent: int) -> None:
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)

    # Elsewhere (and should prctl fail), notice within a second: an idle binlog
    # would otherwise keep an orphan reading until its next write to the pipe.
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="outbox-parent-watch", daemon=True).start()


def child_main() -> None:
    """The child process: read its arguments from stdin, then stream batches."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    args = pickle.load(sys.stdin.buffer)
    _die_with_parent(args["parent"])
    logging.basicConfig(
        level=args["log_level"],
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # The child allocates a few containers per row (record, headers) and holds
    # up to a batch of them: the default gen0 threshold (700) runs the cyclic
    # GC every ~100 rows, over every row still held. Its own objects form no
    # cycles, so collect rarely: 1,000-event transactions, 5.8 -> 4.8 µs CPU
    # per event (bench/reader_speed.py). gc.freeze() keeps the startup
    # objects out of every later collection.
    gc.freeze()
    gc.set_threshold(50_000, 50, 1000)
    conn = Connection(args["fd"], readable=False)
    sink = _PipeSink(conn)
    source = BinlogSource(
        args["settings"],
        sink,
        args["start"],
        on_state=sink.state,
        use_gtid=args["use_gtid"],
        router=args["router"],
    )
    source.run()
    conn.close()


# Run with -c rather than multiprocessing's spawn, which would import the
# relay's whole __main__ (SQLAlchemy, aiokafka, redis: ~40 MB) into the child.
_BOOTSTRAP = (
    "import sys, json; sys.path[:0] = json.loads(sys.stdin.buffer.readline()); "
    "from transactional_outbox.relay.mysql.reader_process import child_main; child_main()"
)


class ProcessSource:
    """A :class:`BinlogSource` in a child process, feeding ``channel`` in this one.

    Same interface as :class:`BinlogSource` for the relay: ``start``, ``stop``,
    ``join``. A receiving thread turns pipe messages back into batches.
    """

    def __init__(
        self,
        settings: SourceSettings,
        channel: Channel,
        start: BinlogPosition,
        *,
        on_state: Callable[[str], None] | None = None,
        use_gtid: bool = False,
        router: TopicRouter,
    ) -> None:
        self._args = (settings, start, use_gtid, router)
        self._channel = channel
        self._on_state = on_state or (lambda state: None)
        self._stopping = threading.Event()
        self._process: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._thread = threading.Thread(target=self._receive, name="outbox-binlog", daemon=True)
        self.connected = False
        self.reconnects = 0  # as BinlogSource counts them: connections lost

    def start(self) -> None:
        """Start the child process and the receiving thread."""
        settings, start, use_gtid, router = self._args
        read_fd, write_fd = os.pipe()
        try:
            # A new interpreter, not a fork: the relay has threads (event loop,
            # health server) whose locks a forked child could inherit held.
            self._process = subprocess.Popen(
                [sys.executable, "-c", _BOOTSTRAP],
                stdin=subprocess.PIPE,
                pass_fds=(write_fd,),
                close_fds=True,
            )
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)  # the child's copy is its own: its exit reads as EOF here
        self._conn = Connection(read_fd, writable=False)
        args = {
            "parent": os.getpid(),
            "fd": write_fd,
            "settings": settings,
            "start": start,
            "use_gtid": use_gtid,
            "router": router,
            "log_level": logging.getLogger().getEffectiveLevel(),
        }
        stdin = self._process.stdin
        assert stdin is not None
        with contextlib.suppress(OSError):  # a child dead at birth reads as EOF below
            stdin.write(json.dumps(sys.path).encode() + b"\n")
            stdin.write(pickle.dumps(args, protocol=pickle.HIGHEST_PROTOCOL))
            stdin.close()
        self._thread.start()

    def stop(self) -> None:
        """Stop reading: the child is killed (it holds nothing to save)."""
        self._stopping.set()
        self._channel.close()
        process = self._process
        if process is not None and process.poll() is None:
            with contextlib.suppress(OSError):
                process.kill()

    def confirm(self, position: Position) -> None:
        """Nothing to confirm: a MySQL server keeps no log for a reader (the source interface
        asks it of every source; a PostgreSQL slot needs it)."""

    def join(self, timeout: float | None = None) -> None:
        """Wait for the receiving thread and the child to end."""
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self._process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout)
        if self._conn is not None and not self._thread.is_alive():
            self._conn.close()

    def _receive(self) -> None:
        conn = self._conn
        assert conn is not None
        channel = self._channel
        while True:
            try:
                kind, body = decode_message(conn.recv_bytes())
            except (EOFError, OSError):
                if not self._stopping.is_set():
                    self._child_died()
                return
            if kind == "batch":
                if not channel.put(body):
                    return
            elif kind == "state":
                self.connected = body == "connected"
                if body == "disconnected":
                    self.reconnects += 1
                self._on_state(body)
            elif kind == "error":
                channel.fail(body)
                return

    def _child_died(self) -> None:
        process = self._process
        code = None
        if process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = process.wait(5)
        self._channel.fail(
            OutboxError(
                f"the binlog reader process exited unexpectedly (exit code {code}); "
                "restart the relay, or run it with --reader thread"
            )
        )
