"""Relay throughput per transaction shape and noise, against its limits, on one binlog range.

    .venv/bin/python bench/relay_throughput.py [--shapes 1,5,1000] [--noise 0,90]
        [--events 100000] [--noise-events 30000] [--size 200] [--runs 3] [--writers 8]
        [--measures library,reader,kafka,relay] [--plot bench/out/throughput.png]
        [--relay-src DIR] [--quick]

Against the local stack (./dev/stack start). One cell per (events per transaction,
noise): its binlog range is written once (bench/_prewrite.py: several processes,
many transactions per round trip, each still its own binlog transaction; then counted
with SHOW BINLOG EVENTS, which must hold exactly the transactions written), then each
run measures on that same range:

  (a)  python-mysql-replication alone: BinLogStreamReader with only_schemas,
       only_tables and only_events=[WriteRowsEvent], as a naive user would write it;
  (a2) the relay's reader alone: ``BinlogSource`` with a counting sink, in a thread of
       this process, until it hands over the range's last commit;
  (b)  aiokafka alone: the same number of records with send(), pipelined (no MySQL);
  relay: ``python -m transactional_outbox.relay`` (a child process, with its reader
       process), from process start until its checkpoint reaches the range's end, and
       "steady": from 10% to 90% of the range acknowledged (checkpoint saved every
       50 ms; the fraction is the checkpoint's byte offset in the range). CPU µs per
       transaction and cores while steady (the relay and its reader process), peak RSS.

Noise 0: outbox transactions only. Noise N (e.g. 90): each outbox transaction also
inserts one business row per event, and unrelated transactions (single-row inserts
and updates in another database) are interleaved so that N% of the range's row events
are not the outbox table's; the cell prints the measured share.

Rates are transactions/s (outbox transactions; unrelated ones are not counted) and
events/s. With --runs K each cell prints the median, min and max; the summary shows
medians; --plot draws one panel per cell.

Not covered: the writers' own cost (the range is written before anything reads it),
latency (bench/latency.py) and a relay that keeps pace with live writers
(bench/keeps_up.py); UPDATE/DELETE-heavy or DDL-heavy noise; large payloads beyond
--size; MySQL 8 (no server here); a real Kafka cluster (tansu, memory only, no
idempotent producer: the relay runs with OUTBOX_ENABLE_IDEMPOTENCE=false).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import resource
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from _common import (
    BOOTSTRAP,
    HOST,
    PASSWORD,
    PORT,
    USER,
    BinlogOffsets,
    bench_database,
    connect,
    relay_env,
)
from _prewrite import Shape, Written, payload_text, prepare, prewrite
from _relay import RelayChild
from _throughput_report import plot, report_cell, report_summary
from aiokafka import AIOKafkaProducer
from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.row_event import WriteRowsEvent

from transactional_outbox.event import OutboxEvent
from transactional_outbox.relay.mysql.source import BinlogSource, SourceSettings
from transactional_outbox.relay.position import BinlogPosition
from transactional_outbox.relay.routing import TopicRouter, build_record

MEASURES = ("library", "reader", "kafka", "relay")


def cpu_seconds() -> float:
    """User + system CPU of this process so far."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def library_alone(db: str, w: Written, n_events: int) -> tuple[float, float]:
    """(a): seconds and CPU seconds for python-mysql-replication to read the range's rows."""
    reader = BinLogStreamReader(
        connection_settings={"host": HOST, "port": PORT, "user": USER, "password": PASSWORD},
        server_id=random.randrange(990_000, 999_999),
        log_file=w.start[0],
        log_pos=w.start[1],
        resume_stream=True,
        blocking=False,
        only_schemas=[db],
        only_tables=["outbox"],
        only_events=[WriteRowsEvent],
    )
    t0, c0 = time.perf_counter(), cpu_seconds()
    rows = 0
    for ev in reader:
        rows += len(ev.rows)
        if rows >= n_events:
            break
    elapsed, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    reader.close()
    if rows != n_events:
        raise SystemExit(f"python-mysql-replication read {rows} outbox rows, expected {n_events}")
    return elapsed, cpu


class CountingSink:
    """A ``BatchSink`` that counts records and signals once it has them all and a commit
    at or past ``end`` (when batches carry commits)."""

    def __init__(self, n: int, end: tuple[str, int]) -> None:
        self.n, self.end = n, end
        self.count = 0
        self.error: BaseException | None = None
        self.done = threading.Event()
        self._closed = False
        self._at_end = False

    def put(self, batch: Any) -> bool:
        if self._closed:
            return False
        self.count += len(batch.records)
        commit = getattr(batch, "commit", None)
        if commit is not None and (commit.file, commit.pos) >= self.end:
            self._at_end = True
        if self.count >= self.n and (self._at_end or not hasattr(batch, "commit")):
            self.done.set()
        return True

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.done.set()

    def close(self) -> None:
        self._closed = True


def reader_alone(db: str, w: Written, n_events: int) -> tuple[float, float]:
    """(a2): seconds and CPU seconds for the relay's BinlogSource to hand over the range."""
    sink = CountingSink(n_events, w.end)
    source = BinlogSource(
        SourceSettings(
            host=HOST,
            port=PORT,
            user=USER,
            password=PASSWORD,
            server_id=random.randrange(990_000, 999_999),
            schema=db,
            table="outbox",
            is_mariadb=True,
        ),
        sink,
        BinlogPosition(file=w.start[0], pos=w.start[1]),
        router=TopicRouter(template="bench.{aggregatetype}"),
        use_gtid=False,
    )
    t0, c0 = time.perf_counter(), cpu_seconds()
    source.start()
    finished = sink.done.wait(600)
    elapsed, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    source.stop()
    source.join(10)
    if sink.error is not None:
        raise SystemExit(f"relay reader failed: {sink.error!r}")
    if not finished or sink.count != n_events:
        raise SystemExit(f"relay reader handed over {sink.count} records, expected {n_events}")
    return elapsed, cpu


async def kafka_alone(n: int, size: int, topic_prefix: str) -> float:
    """(b): seconds for aiokafka's send() to have ``n`` records acknowledged."""
    body = payload_text(size).encode()
    now = datetime.now(UTC)
    router = TopicRouter(template=topic_prefix + "{aggregatetype}")
    records = [
        build_record(
            OutboxEvent(
                id=uuid.uuid4(),
                aggregate_type="order",
                aggregate_id=f"order-{i % 1000}",
                event_type="OrderPlaced",
                payload=body,
                headers={},
                timestamp=now + timedelta(microseconds=40 * i),
            ),
            router,
        )
        for i in range(n)
    ]
    producer = AIOKafkaProducer(
        bootstrap_servers=BOOTSTRAP, acks="all", linger_ms=5, max_batch_size=262_144
    )
    await producer.start()
    await producer.send_and_wait(records[0].topic, b"warm-up")
    t0 = time.perf_counter()
    futures = [
        await producer.send(
            r.topic, r.value, key=r.key, headers=r.headers, timestamp_ms=r.timestamp_ms
        )
        for r in records
    ]
    await asyncio.gather(*futures)
    elapsed = time.perf_counter() - t0
    await producer.stop()
    return elapsed


def relay_run(db: str, w: Written, run_id: str, relay_src: str | None) -> dict[str, float]:
    """The relay end to end over the range: see the module docstring."""
    conn = connect()
    offsets = BinlogOffsets(conn.cursor())
    lo, hi = offsets(*w.start), offsets(*w.end)
    env = relay_env(db, w.start, f"bench-{run_id}", f"bench{run_id}.relay.{{aggregatetype}}")
    env["OUTBOX_CHECKPOINT_INTERVAL_MS"] = "50"
    relay = RelayChild(env, Path(f"/tmp/bench-throughput-{run_id}-relay.log"), relay_src)
    relay.start()

    def acked() -> float | None:
        cp = relay.checkpoint()
        return None if cp is None else min((offsets(*cp) - lo) / (hi - lo), 1.0)

    try:
        elapsed, marks = relay.follow(acked)
        (t1, f1, cpu1), (t2, f2, cpu2) = marks
        steady_cpu = [cpu2[pid] - cpu1.get(pid, 0.0) for pid in cpu2]  # relay, then reader
        rss = relay.peak_rss_mb()
    finally:
        relay.stop()
        conn.close()
    txns = (f2 - f1) * w.txns
    return {
        "start_s": elapsed,
        "steady_s": t2 - t1,
        "steady_txns": txns,
        "cpu_main": steady_cpu[0],
        "cpu_reader": sum(steady_cpu[1:]),
        "rss": rss,
    }


def measure(db: str, w: Written, per_txn: int, args: argparse.Namespace) -> dict[str, float]:
    """One run on the cell's range: transactions/s per measure, CPU, RSS."""
    run_id = uuid.uuid4().hex[:8]
    n = w.txns * per_txn
    out: dict[str, float] = {}
    if "library" in args.measures:
        seconds, cpu = library_alone(db, w, n)
        out.update(library=w.txns / seconds, library_us=cpu * 1e6 / w.txns)
    if "reader" in args.measures:
        seconds, cpu = reader_alone(db, w, n)
        out.update(reader=w.txns / seconds, reader_us=cpu * 1e6 / w.txns)
    if "kafka" in args.measures:
        seconds = asyncio.run(kafka_alone(n, args.size, f"bench{run_id}.alone."))
        out["kafka"] = w.txns / seconds
    if "relay" in args.measures:
        r = relay_run(db, w, run_id, args.relay_src)
        steady_cpu = r["cpu_main"] + r["cpu_reader"]
        out.update(
            relay=w.txns / r["start_s"],
            steady=r["steady_txns"] / r["steady_s"],
            relay_us=steady_cpu * 1e6 / r["steady_txns"],
            relay_us_main=r["cpu_main"] * 1e6 / r["steady_txns"],
            relay_us_reader=r["cpu_reader"] * 1e6 / r["steady_txns"],
            cores=steady_cpu / r["steady_s"],
            rss=r["rss"],
        )
    return out


def run_cell(per_txn: int, noise: int, args: argparse.Namespace) -> dict[str, Any]:
    """Write the cell's range once, then measure it ``--runs`` times."""
    events = args.noise_events if noise else args.events
    txns = max(2, -(-events // per_txn))
    db = f"bench_{uuid.uuid4().hex[:8]}"
    other = f"{db}_other"
    try:
        with bench_database(db):
            prepare(db, other, noise > 0)
            shape = Shape(per_txn, args.size, business=noise > 0)
            written = prewrite(db, other, shape, txns, noise, args.writers)
            runs = [measure(db, written, per_txn, args) for _ in range(args.runs)]
    finally:
        with connect() as conn, conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {other}")
    cell = {"per_txn": per_txn, "noise": noise, "size": args.size, "written": written}
    cell["runs"] = runs
    report_cell(cell)
    return cell


def int_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", type=int_list, default=[1, 5, 1000], help="events per txn")
    parser.add_argument(
        "--noise", type=int_list, default=[0, 90], help="noise: percent of row events"
    )
    parser.add_argument("--events", type=int, default=100_000, help="events per cell, no noise")
    parser.add_argument("--noise-events", type=int, default=30_000, help="events per noisy cell")
    parser.add_argument("--size", type=int, default=200, help="payload bytes")
    parser.add_argument("--runs", type=int, default=1, help="runs per cell (median, min, max)")
    parser.add_argument("--writers", type=int, default=8, help="processes pre-writing a range")
    parser.add_argument(
        "--measures",
        type=lambda s: s.split(","),
        default=list(MEASURES),
        help="subset of " + ",".join(MEASURES),
    )
    parser.add_argument("--plot", type=Path, help="write the bar charts (PNG) here")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    parser.add_argument(
        "--relay-src", metavar="DIR", help="run the relay from another checkout's src/"
    )
    args = parser.parse_args()
    if bad := set(args.measures) - set(MEASURES):
        parser.error(f"--measures: unknown {', '.join(sorted(bad))}")
    if not args.shapes or any(k < 1 for k in args.shapes):
        parser.error(f"--shapes: events per transaction, 1 or more, got {args.shapes}")
    if any(not 0 <= v < 100 for v in args.noise):
        parser.error(f"--noise: percentages in 0..99, got {args.noise}")
    if args.quick:
        args.events = args.noise_events = 300
    print(
        f"relay throughput: shapes {args.shapes} events/txn x noise {args.noise}%, "
        f"{args.size} B events, {args.runs} run(s) per cell, {os.cpu_count()} cores"
    )
    cells = [run_cell(k, noise, args) for k in args.shapes for noise in args.noise]
    report_summary(cells)
    if args.plot:
        plot(args.plot, cells)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
