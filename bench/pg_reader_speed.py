"""Reading PostgreSQL logical replication: the relay's own reader vs pg_recvlogical and psycopg2.

Starts a scratch PostgreSQL 15 (``outbox_dev.pg``), writes N one-event
transactions (200 B payloads) in one of two modes, then reads the same stream
(pgoutput, ``binary``/``messages`` on, the outbox publication) from a slot
of its own with each reader, to the end:

* ``pg_recvlogical``: the server's own client, output to /dev/null: the
  walsender's decoding speed, the ceiling for any reader;
* ``psycopg2``: ``LogicalReplicationConnection.consume_stream`` with a callback
  that only counts commits: one ``ReplicationMessage`` per pgoutput message,
  no parsing at all (what a psycopg2-based reader costs before doing anything);
* ``own``: :class:`PgSource` (raw socket, in-place parsing) to Kafka records;
  and its parser alone on the captured stream (CPU per transaction, the
  figure least disturbed by the shared machine).

Modes: ``table`` (INSERT + DELETE in the outbox table, as ``add_event`` does)
and ``message`` (``pg_logical_emit_message(true, 'outbox', ...)``).
Each reader reads ``--repeat`` times (a slot each, the order rotated: the
machine is shared); prints the best and median wall seconds and
transactions/s per reader, and the reader process's CPU (median).

    python bench/pg_reader_speed.py --txns 100000 [--repeat 3] [--modes table,message]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from outbox_dev.pg import BIN, ScratchPostgres  # noqa: E402
from transactional_outbox import OutboxEvent  # noqa: E402
from transactional_outbox._pg_message import encode_message  # noqa: E402
from transactional_outbox.relay.postgres import (  # noqa: E402
    PgBatch,
    PgConnectParams,
    PgOutputParser,
    PgSource,
    PgSourceSettings,
    PgWire,
)
from transactional_outbox.relay.postgres.wire import RECV_BYTES  # noqa: E402
from transactional_outbox.relay.routing import TopicRouter  # noqa: E402

DDL = """CREATE TABLE outbox (id bytea PRIMARY KEY, aggregatetype varchar(255) NOT NULL,
  aggregateid varchar(255) NOT NULL, type varchar(255) NOT NULL, payload bytea NOT NULL,
  headers text, "timestamp" timestamp NOT NULL)"""
PAYLOAD = "x" * 200
OPTIONS = {
    "proto_version": "1",
    "publication_names": "pub",
    "binary": "true",
    "messages": "true",
}


def write(server: ScratchPostgres, mode: str, txns: int) -> None:
    if mode == "table":
        body = (
            "INSERT INTO outbox VALUES (uuid_send(gen_random_uuid()), 'order', (i % 100)::text,"
            f" 'Placed', convert_to('{PAYLOAD}', 'UTF8'), NULL, now()::timestamp"
            ") RETURNING id INTO x; DELETE FROM outbox WHERE id = x;"
        )
    else:
        event = OutboxEvent.create(
            aggregate_type="order", aggregate_id="1", event_type="Placed", payload=PAYLOAD
        )
        content = encode_message(event).hex()
        body = f"PERFORM pg_logical_emit_message(true, 'outbox', '\\x{content}'::bytea);"
    server.psql(
        f"DO $$ DECLARE x bytea; BEGIN FOR i IN 1..{txns} LOOP {body} COMMIT; END LOOP; END $$",
        database="outbox",
    )


def read_recvlogical(server: ScratchPostgres, slot: str, end: str) -> float:
    args = [str(BIN / "pg_recvlogical"), "-d", server.dsn(), "--slot", slot, "--start"]
    args += [f"--endpos={end}", "--no-loop", "-f", "/dev/null", "-s", "10"]
    for key, value in OPTIONS.items():
        args += ["-o", f"{key}={value}"]
    t = time.monotonic()
    subprocess.run(args, check=True)
    return time.monotonic() - t


def read_psycopg2(server: ScratchPostgres, slot: str, txns: int) -> tuple[float, float]:
    import psycopg2
    import psycopg2.extras

    conn = psycopg2.connect(
        server.dsn(), connection_factory=psycopg2.extras.LogicalReplicationConnection
    )
    cur = conn.cursor()
    t, cpu = time.monotonic(), time.process_time()
    cur.start_replication(slot_name=slot, decode=False, options=OPTIONS)
    seen = [0]

    def consume(msg: object) -> None:
        if msg.payload[:1] == b"C":  # type: ignore[attr-defined]
            seen[0] += 1
            if seen[0] >= txns:
                raise psycopg2.extras.StopReplication

    with contextlib.suppress(psycopg2.extras.StopReplication):
        cur.consume_stream(consume)
    out = time.monotonic() - t, time.process_time() - cpu
    conn.close()
    return out


class CountingSink:
    def __init__(self) -> None:
        self.records = 0
        self.done = threading.Event()
        self.want = 0

    def put(self, batch: PgBatch) -> bool:
        self.records += len(batch.records)
        if self.records >= self.want:
            self.done.set()
        return True

    def fail(self, error: BaseException) -> None:
        print("source failed:", error)
        self.done.set()

    def close(self) -> None:
        pass


def read_own(server: ScratchPostgres, slot: str, txns: int) -> tuple[float, float]:
    sink = CountingSink()
    sink.want = txns
    settings = PgSourceSettings(
        connect=PgConnectParams.from_url(server.url()),
        slot=slot,
        publication="pub",
        tables=(("public", "outbox"),),
        prefixes=("outbox",),
    )
    t, cpu = time.monotonic(), time.process_time()
    source = PgSource(settings, sink, 0, router=TopicRouter())
    source.start()
    sink.done.wait()
    out = time.monotonic() - t, time.process_time() - cpu
    source.stop()
    source.join()
    return out


def capture(server: ScratchPostgres, slot: str, txns: int) -> bytes:
    """The raw replication stream of a slot (the CopyData bytes), to the last commit."""
    wire = PgWire(PgConnectParams.from_url(server.url()), replication=True)
    wire.start_replication(slot, 0, OPTIONS)
    parser = PgOutputParser(router=TopicRouter(), tables=frozenset({"public.outbox"}), cap=10**9)
    chunks, seen, pos, buf = [], 0, 0, b""
    while seen < txns:
        data = wire.recv()
        chunks.append(data)
        buf = buf[pos:] + data
        pos = parser.feed(buf, 0)
        seen += parser.commits
        parser.take_committed()
    wire.close()
    return b"".join(chunks)


def parse_only(stream: bytes, txns: int) -> float:
    """CPU µs per transaction of framing, parsing and building records (best of 3)."""
    best = float("inf")
    for _ in range(3):
        parser = PgOutputParser(
            router=TopicRouter(),
            tables=frozenset({"public.outbox"}),
            prefixes=frozenset({"outbox"}),
        )
        t = time.process_time()
        buf, pos = b"", 0
        for i in range(0, len(stream), RECV_BYTES):
            buf = buf[pos:] + stream[i : i + RECV_BYTES]
            pos = 0
            while True:
                pos = parser.feed(buf, pos)
                parser.take_committed()
                if pos >= len(buf) or len(parser.records) < parser.cap:
                    break
        best = min(best, time.process_time() - t)
    return best / txns * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--txns", type=int, default=100_000)
    ap.add_argument("--modes", default="table,message")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3, help="reads per reader, order rotated")
    args = ap.parse_args()
    server = ScratchPostgres(Path(tempfile.mkdtemp(prefix="outbox-pg-bench-")), args.port or None)
    server.start()
    try:
        server.psql(DDL, database="outbox")
        server.psql("ALTER TABLE outbox OWNER TO outbox", database="outbox")
        server.psql(
            "CREATE PUBLICATION pub FOR TABLE outbox WITH (publish = 'insert')", database="outbox"
        )
        readers = ("recv", "pg2", "own")
        for mode in args.modes.split(","):
            slots = [f"{mode}_{r}_{i}" for i in range(args.repeat) for r in readers]
            slots.append(f"{mode}_raw")
            for slot in slots:
                create = f"SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')"
                server.psql(create, database="outbox")
            t = time.monotonic()
            write(server, mode, args.txns)
            wrote = time.monotonic() - t
            end = server.psql("SELECT pg_current_wal_lsn()", database="outbox").strip()
            print(f"{mode}: wrote {args.txns} one-event transactions in {wrote:.1f}s; end {end}")
            wall: dict[str, list[float]] = {r: [] for r in readers}
            cpu: dict[str, list[float]] = {r: [] for r in readers}
            for i in range(args.repeat):
                # Rotate the order: the shared machine's load drifts.
                for reader in readers[i % 3 :] + readers[: i % 3]:
                    slot = f"{mode}_{reader}_{i}"
                    if reader == "recv":
                        secs, used = read_recvlogical(server, slot, end), float("nan")
                    elif reader == "pg2":
                        secs, used = read_psycopg2(server, slot, args.txns)
                    else:
                        secs, used = read_own(server, slot, args.txns)
                    wall[reader].append(secs)
                    cpu[reader].append(used)
            names = {"recv": "pg_recvlogical", "pg2": "psycopg2 (count)", "own": "own reader"}
            for reader in readers:
                best, med = min(wall[reader]), statistics.median(wall[reader])
                line = f"  {names[reader]:16} best {best:5.2f}s ({args.txns / best:8,.0f} txn/s)"
                line += f"  median {med:5.2f}s ({args.txns / med:8,.0f} txn/s)"
                if reader != "recv":
                    c = statistics.median(cpu[reader])
                    line += f"  cpu {c:.2f}s ({c / args.txns * 1e6:.1f} µs/txn)"
                print(line)
            stream = capture(server, f"{mode}_raw", args.txns)
            print(
                f"  own parser alone (captured stream, {len(stream) / args.txns:.0f} B/txn): "
                f"{parse_only(stream, args.txns):.1f} µs CPU per transaction"
            )
            for slot in slots:
                drop = f"SELECT pg_drop_replication_slot('{slot}')"
                server.psql(drop, database="outbox")
    finally:
        server.destroy()


if __name__ == "__main__":
    main()
