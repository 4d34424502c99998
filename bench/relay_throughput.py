"""Relay throughput: committed events → acknowledged by Kafka, against its two limits.

    .venv/bin/python bench/relay_throughput.py [--events 100000] [--size 200 [--size 2000]]
        [--runs 3] [--plot bench/out/throughput.png] [--relay-src DIR] [--quick]

Against the local stack (./dev/stack start). Writes N events (insert-then-delete,
1,000 per transaction), then measures on the same binlog:

  (a)  python-mysql-replication alone reading the rows (no Kafka),
  (a2) the relay's own binlog reader alone (its outbox row decoder, in a thread),
  (b)  aiokafka alone producing the same records with send(), pipelined (no MySQL),
  relay: ``python -m transactional_outbox.relay`` from its start until its checkpoint
         passes the last event (every event acknowledged), and "steady": from 10% to
         90% of the events acknowledged; its peak RSS and steady CPU, reader process
         included.

Each run uses a new database and topics. With --runs, the table shows the median,
min and max per measure; --plot draws them (one bar group per measure, one bar per size).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import redis
from _common import (
    HOST,
    INSERT_OUTBOX,
    PASSWORD,
    PORT,
    USER,
    bench_database,
    connect,
    mysql_url,
    stack_script,
)
from aiokafka import AIOKafkaProducer
from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.row_event import WriteRowsEvent

from transactional_outbox.event import OutboxEvent, encode_headers
from transactional_outbox.relay.position import BinlogPosition, decode_checkpoint
from transactional_outbox.relay.routing import TopicRouter, build_record
from transactional_outbox.relay.source import BinlogSource, Channel, SourceSettings


def make_events(n: int, size: int) -> list[OutboxEvent]:
    body = (b'{"data":"' + b"x" * max(size - 11, 0) + b'"}')[:size]
    now = datetime.now(UTC)
    return [
        OutboxEvent(
            id=uuid.uuid4(),
            aggregate_type="order",
            aggregate_id=f"order-{i % 1000}",
            event_type="OrderPlaced",
            payload=body,
            headers={"content-type": "application/json"},
            # Distinct, as in real use: one event every 40 µs (25k/s).
            timestamp=now + timedelta(microseconds=40 * i),
        )
        for i in range(n)
    ]


def write(db: str, events: list[OutboxEvent]) -> tuple[tuple[str, int], tuple[str, int], float]:
    conn = connect(db)
    cur = conn.cursor()
    cur.execute("FLUSH BINARY LOGS")  # a new file: the run's events stay in one
    cur.execute("SHOW MASTER STATUS")
    start = cur.fetchone()[:2]
    t0 = time.perf_counter()
    for k in range(0, len(events), 1000):
        chunk = events[k : k + 1000]
        cur.execute("BEGIN")
        cur.executemany(
            INSERT_OUTBOX,
            [
                (
                    e.id.bytes,
                    e.aggregate_type,
                    e.aggregate_id,
                    e.event_type,
                    e.payload,
                    encode_headers(e.headers),
                    e.timestamp.replace(tzinfo=None),
                )
                for e in chunk
            ],
        )
        cur.execute(
            f"DELETE FROM outbox WHERE id IN ({','.join(['%s'] * len(chunk))})",
            [e.id.bytes for e in chunk],
        )
        cur.execute("COMMIT")
    elapsed = time.perf_counter() - t0
    cur.execute("SHOW MASTER STATUS")
    end = cur.fetchone()[:2]
    conn.close()
    return (start[0], start[1]), (end[0], end[1]), elapsed


def read_alone(db: str, start: tuple[str, int], n: int) -> float:
    reader = BinLogStreamReader(
        connection_settings={"host": HOST, "port": PORT, "user": USER, "password": PASSWORD},
        server_id=990_001,
        log_file=start[0],
        log_pos=start[1],
        resume_stream=True,
        blocking=False,
        only_schemas=[db],
        only_tables=["outbox"],
        only_events=[WriteRowsEvent],
    )
    t0 = time.perf_counter()
    rows = 0
    for ev in reader:
        rows += len(ev.rows)
    elapsed = time.perf_counter() - t0
    reader.close()
    assert rows == n, f"read {rows} rows, expected {n}"
    return rows / elapsed


async def source_alone(db: str, start: tuple[str, int], n: int) -> float:
    """The relay's own binlog reader (specialised row decoder) alone, into its channel."""
    channel = Channel(asyncio.get_running_loop(), max_events=20_000)
    source = BinlogSource(
        SourceSettings(
            host=HOST,
            port=PORT,
            user=USER,
            password=PASSWORD,
            server_id=990_002,
            schema=db,
            table="outbox",
            is_mariadb=True,
        ),
        channel,
        BinlogPosition(file=start[0], pos=start[1]),
        router=TopicRouter(template="bench.{aggregatetype}"),
    )
    t0 = time.perf_counter()
    source.start()
    got = 0
    while got < n:
        for batch in await channel.get():
            got += len(batch.records)
    elapsed = time.perf_counter() - t0
    source.stop()
    await asyncio.to_thread(source.join, 10)
    return got / elapsed


async def produce_alone(events: list[OutboxEvent], topic_prefix: str) -> float:
    router = TopicRouter(template=topic_prefix + "{aggregatetype}")
    records = [build_record(e, router) for e in events]
    producer = AIOKafkaProducer(
        bootstrap_servers=stack_script.env_vars()["OUTBOX_KAFKA_BOOTSTRAP_SERVERS"],
        acks="all",
        linger_ms=5,
        max_batch_size=262_144,
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
    return len(records) / elapsed


def peak_rss_mb(pids: list[int]) -> float:
    """Sum of the processes' peak resident sizes."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) / 1024
    return total


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def family(pid: int) -> list[int]:
    """``pid`` and its live child processes (the relay's binlog reader)."""
    out = [pid]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int(_stat(int(entry.name))[1]) == pid:
                    out.append(int(entry.name))
            except (OSError, IndexError):
                continue
    return out


def cpu_by_process(root: int) -> dict[int, float]:
    """User + system CPU seconds so far of ``root`` and each of its children."""
    out = {}
    for pid in family(root):
        with contextlib.suppress(OSError):
            fields = _stat(pid)
            out[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def run_relay(
    db: str, start: tuple[str, int], end: tuple[str, int], run_id: str, relay_src: str | None
) -> tuple[float, float, float, list[float], float]:
    """Run the relay over the written events.

    Returns (seconds from process start to all acked, seconds and fraction of the
    events of the steady window, CPU seconds per process in that window, peak RSS).
    The steady window runs from 10% to 90% of the events acknowledged, read from the
    checkpoint's binlog offset (saved every 50 ms; the events are evenly spread over
    the one binlog file they were written to). Start-up effects stay out: the reader
    can run ahead while the first batch waits for the topic to be created.
    """
    env = dict(os.environ)
    if relay_src:
        env["PYTHONPATH"] = relay_src  # ahead of the installed package
    env.update(
        OUTBOX_MYSQL_URL=mysql_url(db),
        OUTBOX_REDIS_URL=stack_script.env_vars()["OUTBOX_REDIS_URL"],
        OUTBOX_KAFKA_BOOTSTRAP_SERVERS=stack_script.env_vars()["OUTBOX_KAFKA_BOOTSTRAP_SERVERS"],
        OUTBOX_ENABLE_IDEMPOTENCE="false",
        OUTBOX_START_POSITION=f"{start[0]}:{start[1]}",
        OUTBOX_TOPIC_TEMPLATE=f"bench{run_id}.relay.{{aggregatetype}}",
        OUTBOX_RELAY_NAME=f"bench-{run_id}",
        OUTBOX_CHECKPOINT_INTERVAL_MS="50",
        OUTBOX_PROGRESS_INTERVAL_SECONDS="0",
    )
    assert start[0] == end[0], "the events must lie in one binlog file"
    span = end[1] - start[1]
    key = f"outbox:relay:bench-{run_id}:checkpoint"
    client = redis.Redis.from_url(env["OUTBOX_REDIS_URL"])
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "transactional_outbox.relay"], env=env)
    marks: list[tuple[float, float, dict[int, float]]] = []  # (time, fraction acked, CPU)
    try:
        while True:
            raw = client.get(key)
            if raw is not None:
                cp = decode_checkpoint(raw)
                done = (cp.file, cp.pos) >= end
                fraction = 1.0 if done else (cp.pos - start[1]) / span
                if len(marks) < 2 and fraction >= (0.1, 0.9)[len(marks)]:
                    cpu = cpu_by_process(proc.pid)
                    marks.append((time.perf_counter(), fraction, cpu))
                if done:
                    break
            if proc.poll() is not None:
                raise SystemExit(f"relay exited with {proc.returncode}")
            if time.perf_counter() - t0 > 600:
                raise SystemExit("relay did not finish in 600 s")
            time.sleep(0.01)
        elapsed = time.perf_counter() - t0
        if len(marks) < 2 or marks[1][0] <= marks[0][0]:
            # All of it acknowledged at once (a tiny run): the whole run is the window.
            cpu = cpu_by_process(proc.pid)
            marks = [(t0, 0.0, {}), (t0 + elapsed, 1.0, cpu)]
        (t1, f1, cpu1), (t2, f2, cpu2) = marks
        # Per process: the main one first, then its binlog reader (if any).
        steady_cpu = [cpu2[pid] - cpu1.get(pid, 0.0) for pid in cpu2]
        rss = peak_rss_mb(family(proc.pid))
    finally:
        proc.terminate()
        proc.wait(30)
        client.delete(key)
        client.close()
    return elapsed, t2 - t1, f2 - f1, steady_cpu, rss


LABELS = {
    "writes": "writes (insert+delete, 1000/txn)",
    "a": "(a) pymysqlreplication alone, read",
    "b": "(b) aiokafka alone, produce",
    "a2": "(a2) relay reader alone (outbox row decoder)",
    "relay": "relay, process start to all acked",
    "steady": "relay, steady (10% to 90% acked)",
}


def measure(n: int, size: int, relay_src: str | None) -> dict[str, float]:
    """One run on a fresh database: events/s per measure, plus the relay's RSS and CPU."""
    run_id = uuid.uuid4().hex[:8]
    db = f"bench_{run_id}"
    with bench_database(db):
        events = make_events(n, size)
        start, end, write_s = write(db, events)
        read_rate = read_alone(db, start, n)
        source_rate = asyncio.run(source_alone(db, start, n))
        produce_rate = asyncio.run(produce_alone(events, f"bench{run_id}.alone."))
        relay_s, steady_s, steady_part, steady_cpu, rss = run_relay(
            db, start, end, run_id, relay_src
        )
    steady_n = n * steady_part
    return {
        "writes": n / write_s,
        "a": read_rate,
        "b": produce_rate,
        "a2": source_rate,
        "relay": n / relay_s,
        "steady": steady_n / steady_s if steady_s > 0 else float("nan"),
        "rss": rss,
        "cores": sum(steady_cpu) / steady_s,
        "cores_main": steady_cpu[0] / steady_s,
        "cores_reader": sum(steady_cpu[1:]) / steady_s,
        "us_per_event": sum(steady_cpu) * 1e6 / steady_n if steady_n else float("nan"),
    }


def report(n: int, size: int, runs: list[dict[str, float]]) -> None:
    def med(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    print(f"relay throughput: {n} events of {size} B, {os.cpu_count()} cores, {len(runs)} run(s)")
    print(f"{'measure (events/s)':44} {'median':>8} {'min':>8} {'max':>8}")
    for key, label in LABELS.items():
        values = [r[key] for r in runs]
        print(f"{label:44} {med(key):>8.0f} {min(values):>8.0f} {max(values):>8.0f}")
    print(
        f"relay steady / min(a, b) = {med('steady') / min(med('a'), med('b')):.2f}; "
        f"/ min(a2, b) = {med('steady') / min(med('a2'), med('b')):.2f} (medians)"
    )
    print(
        f"relay peak RSS {max(r['rss'] for r in runs):.0f} MB (both processes, largest run); "
        f"CPU while steady {med('cores'):.2f} cores ({med('cores_main'):.2f} main + "
        f"{med('cores_reader'):.2f} reader), {med('us_per_event'):.1f} µs per event"
    )
    print("steady events/s per run:", ", ".join(f"{r['steady']:.0f}" for r in runs))


def plot(path: Path, n: int, results: dict[int, list[dict[str, float]]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ["a", "b", "a2", "relay", "steady"]
    short = [
        "(a) library\nread alone",
        "(b) aiokafka\nsend() alone",
        "(a2) our reader\nalone",
        "relay, incl.\nprocess start",
        "relay, steady\n(10-90% acked)",
    ]
    fig, ax = plt.subplots(figsize=(9, 4.2))
    width = 0.8 / len(results)
    for k, (size, runs) in enumerate(sorted(results.items())):
        meds = [statistics.median(r[key] for r in runs) for key in keys]
        lows = [m - min(r[key] for r in runs) for m, key in zip(meds, keys, strict=True)]
        highs = [max(r[key] for r in runs) - m for m, key in zip(meds, keys, strict=True)]
        xs = [i + (k - (len(results) - 1) / 2) * width for i in range(len(keys))]
        bars = ax.bar(xs, meds, width, yerr=[lows, highs], capsize=3, label=f"{size} B payload")
        ax.bar_label(bars, labels=[f"{m / 1000:.1f}k" for m in meds], fontsize=7, padding=2)
    ax.axhline(50_000, color="C3", linestyle="--", linewidth=1)
    ax.text(
        len(keys) - 0.55,
        50_000,
        "goal 50k/s (200 B) ",
        color="C3",
        fontsize=7,
        ha="right",
        va="bottom",
    )
    ax.set_xticks(range(len(keys)), short, fontsize=8)
    ax.set_ylabel("events/s (median; bars: min-max)")
    runs_n = len(next(iter(results.values())))
    ax.set_title(
        f"relay throughput, {n} events per run, {runs_n} run(s), {os.cpu_count()} cores",
        fontsize=10,
    )
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument(
        "--size", type=int, action="append", help="payload bytes (repeatable; default 200)"
    )
    parser.add_argument("--runs", type=int, default=1, help="runs per size (median, min, max)")
    parser.add_argument("--plot", type=Path, help="write a bar chart (PNG) here")
    parser.add_argument("--quick", action="store_true", help="tiny run (smoke test)")
    parser.add_argument(
        "--relay-src",
        metavar="DIR",
        help="run the relay from another checkout's src/ (before/after comparisons)",
    )
    args = parser.parse_args()
    n = 1_000 if args.quick else args.events
    results: dict[int, list[dict[str, float]]] = {}
    for size in args.size or [200]:
        results[size] = [measure(n, size, args.relay_src) for _ in range(args.runs)]
        report(n, size, results[size])
    if args.plot:
        plot(args.plot, n, results)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
