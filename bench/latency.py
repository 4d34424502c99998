"""End-to-end latency: an outbox transaction commits → a Kafka consumer receives the event.

    .venv/bin/python bench/latency.py [--rates 100,1000,5000] [--seconds 10] [--quick]
                                      [--plot bench/out/latency.png]

Against the local stack (./dev/stack start). One relay (``python -m
transactional_outbox.relay``, a subprocess, default producer settings) runs for the
whole benchmark; for each target rate a writer process commits events at a steady
pace for ``--seconds``, then the next rate starts once every event has arrived.

* Writer (its own process, so it never holds this process's GIL): insert-then-delete,
  one transaction every 1/``--txn-rate`` s at most, so a rate above ``--txn-rate``
  puts several events in a transaction (100/s: 1 event per transaction, 1,000/s: 5,
  5,000/s: 25 with the default 200 transactions/s). The commit time of an event is
  the wall clock when its ``COMMIT`` returned (what an application sees as
  "committed"); the writer reports it per event id, and the payload also carries the
  wall clock just before ``COMMIT`` was sent.
* Consumer (this process, asyncio): aiokafka, no group, every partition assigned,
  ``fetch_max_wait_ms=5``; receive time = wall clock when ``getmany`` returned the
  record. Latency = receive time - commit time, on one machine clock.

Prints a table (target and achieved rate, events, p50/p95/p99/max in ms) and writes a
latency-over-time plot (PNG).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing as mp
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
from _common import (
    BOOTSTRAP,
    INSERT_OUTBOX,
    OUTBOX_DDL,
    REDIS_URL,
    ROOT,
    assign_from_start,
    connect,
    mysql_url,
)
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from transactional_outbox.relay.config import RelaySettings

PARTITIONS = 4
HEADER = (
    f"{'target/s':>8} {'achieved/s':>10} {'ev/txn':>6} {'events':>7} {'p50 ms':>7}"
    f" {'p95 ms':>7} {'p99 ms':>7} {'max ms':>7} {'missing':>7}"
)


def write_txn(cur: Any, ids: list[bytes], seq: int) -> None:
    """Insert then delete ``ids`` in one transaction; payload carries the pre-commit clock."""
    now = datetime.now(UTC).replace(tzinfo=None)
    t_pre = time.time()
    rows = []
    for k, eid in enumerate(ids):
        body = json.dumps(
            {"seq": seq + k, "t_precommit": t_pre, "customer": "c-1234", "total": "42.50"}
        ).encode()
        rows.append(
            (eid, "order", f"order-{random.randrange(100)}", "OrderPlaced", body, "{}", now)
        )
    cur.execute("BEGIN")
    cur.executemany(INSERT_OUTBOX, rows)
    cur.execute(f"DELETE FROM outbox WHERE id IN ({','.join(['%s'] * len(ids))})", ids)
    cur.execute("COMMIT")


def writer_main(db: str, rate: int, seconds: float, per_txn: int, out: Any) -> None:
    """Child process: commit ``rate`` events/s for ``seconds``; send back (id, commit time)."""
    conn = connect(db)
    cur = conn.cursor()
    interval = per_txn / rate
    total = max(per_txn, round(rate * seconds))
    commits: list[tuple[bytes, float]] = []
    seq = 0
    t_next = time.perf_counter()
    while seq < total:
        now = time.perf_counter()
        if now < t_next:
            time.sleep(t_next - now)
        elif now > t_next + interval:
            t_next = now  # fell behind: go on at the pace, never burst to catch up
        ids = [uuid.uuid4().bytes for _ in range(min(per_txn, total - seq))]
        write_txn(cur, ids, seq)
        committed = time.time()
        commits.extend((i, committed) for i in ids)
        seq += len(ids)
        t_next += interval
    conn.close()
    out.send(commits)
    out.close()


class Receiver:
    """Reads every partition of one topic from the start; first receive time per event id."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.received: dict[bytes, float] = {}
        self.duplicates = 0
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=BOOTSTRAP, enable_auto_commit=False, fetch_max_wait_ms=5
        )
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.consumer.start()
        await assign_from_start(self.consumer, self.topic)
        self.task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            batch = await self.consumer.getmany(timeout_ms=100)
            now = time.time()
            for records in batch.values():
                for r in records:
                    eid = uuid.UUID(dict(r.headers)["id"].decode()).bytes
                    if eid in self.received:
                        self.duplicates += 1
                    else:
                        self.received[eid] = now

    async def wait_for(self, ids: list[bytes], within: float) -> bool:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if all(i in self.received for i in ids):
                return True
            await asyncio.sleep(0.05)
        return False

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        await self.consumer.stop()


async def create_topic(topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
    finally:
        await admin.close()


def relay_env(
    db: str, start: tuple[str, int], run_id: str, linger_ms: int | None
) -> dict[str, str]:
    env = dict(os.environ)
    if linger_ms is not None:
        env["OUTBOX_LINGER_MS"] = str(linger_ms)
    env.update(
        OUTBOX_MYSQL_URL=mysql_url(db),
        OUTBOX_REDIS_URL=REDIS_URL,
        OUTBOX_KAFKA_BOOTSTRAP_SERVERS=BOOTSTRAP,
        OUTBOX_ENABLE_IDEMPOTENCE="false",  # tansu has no idempotent producer (DESIGN §5)
        OUTBOX_START_POSITION=f"{start[0]}:{start[1]}",
        OUTBOX_TOPIC_TEMPLATE=f"bench{run_id}.latency.{{aggregatetype}}",
        OUTBOX_RELAY_NAME=f"bench-{run_id}",
        OUTBOX_PROGRESS_INTERVAL_SECONDS="0",
    )
    return env


def start_relay(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "transactional_outbox.relay"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    k = max(math.ceil(p / 100 * len(sorted_values)) - 1, 0)
    return sorted_values[k]


def plot(path: Path, phases: list[dict[str, Any]], settings: RelaySettings) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(len(phases), 1, figsize=(10, 2.6 * len(phases)), squeeze=False)
    for ax, ph in zip(axes[:, 0], phases, strict=True):
        points = ph["points"]  # (seconds since phase start, latency ms), commit order
        if points:
            xs, ys = zip(*points, strict=True)
            ax.scatter(xs, ys, s=4, alpha=0.5, linewidths=0, label="event")
            # p50 and p99 per 0.5 s window
            windows: dict[int, list[float]] = {}
            for x, y in points:
                windows.setdefault(int(x * 2), []).append(y)
            wx = [(k + 0.5) / 2 for k in sorted(windows)]
            w_sorted = [sorted(windows[k]) for k in sorted(windows)]
            ax.plot(wx, [percentile(w, 50) for w in w_sorted], color="C1", label="p50 (0.5 s)")
            ax.plot(wx, [percentile(w, 99) for w in w_sorted], color="C3", label="p99 (0.5 s)")
            ax.set_yscale("log")
            ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
            ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_title(
            f"target {ph['target']}/s, achieved {ph['achieved']:.0f}/s, "
            f"{ph['per_txn']} event(s)/txn",
            fontsize=9,
        )
        ax.set_ylabel("latency (ms)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="upper right", fontsize=7)
    axes[-1, 0].set_xlabel("seconds since the rate started (commit time)")
    fig.suptitle(
        f"commit → consumer latency (relay linger_ms={settings.linger_ms}, {os.cpu_count()} cores)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


async def run(args: argparse.Namespace) -> tuple[list[dict[str, Any]], RelaySettings]:
    run_id = uuid.uuid4().hex[:8]
    db = f"bench_{run_id}"
    topic = f"bench{run_id}.latency.order"
    with connect() as conn, conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE {db}")
    log = Path(tempfile.gettempdir()) / f"bench-latency-{run_id}-relay.log"
    proc: subprocess.Popen[bytes] | None = None
    receiver = Receiver(topic)
    phases: list[dict[str, Any]] = []
    try:
        conn = connect(db)
        cur = conn.cursor()
        cur.execute(OUTBOX_DDL)
        cur.execute("SHOW MASTER STATUS")
        file, pos = cur.fetchone()[:2]
        env = relay_env(db, (file, pos), run_id, args.linger_ms)
        settings = RelaySettings.from_env(env)  # what the relay will run with
        await create_topic(topic)
        await receiver.start()
        proc = start_relay(env, log)
        # Warm up: the relay is connected and publishing once these arrive.
        for k in range(5):
            warm = [uuid.uuid4().bytes]
            write_txn(cur, warm, -1 - k)
            if not await receiver.wait_for(warm, 60):
                raise SystemExit(f"warm-up event not received; relay log: {log}")
        conn.close()

        ctx = mp.get_context("spawn")
        for rate in args.rates:
            per_txn = max(1, math.ceil(rate / args.txn_rate))
            parent, child = ctx.Pipe(duplex=False)
            writer = ctx.Process(
                target=writer_main, args=(db, rate, args.seconds, per_txn, child), daemon=True
            )
            writer.start()
            child.close()
            commits: list[tuple[bytes, float]] = await asyncio.to_thread(parent.recv)
            await asyncio.to_thread(writer.join)
            if proc.poll() is not None:
                raise SystemExit(f"relay exited with {proc.returncode}; log: {log}")
            ids = [i for i, _ in commits]
            await receiver.wait_for(ids, args.drain)
            t0 = commits[0][1]
            span = commits[-1][1] - t0
            latencies = []
            points = []
            for eid, committed in commits:
                got = receiver.received.get(eid)
                if got is not None:
                    latencies.append((got - committed) * 1000)
                    points.append((committed - t0, (got - committed) * 1000))
            phases.append(
                {
                    "target": rate,
                    "achieved": (len(commits) - per_txn) / span if span > 0 else float("nan"),
                    "per_txn": per_txn,
                    "events": len(commits),
                    "latencies": sorted(latencies),
                    "missing": len(commits) - len(latencies),
                    "points": points,
                }
            )
            await asyncio.sleep(0.5)
        return phases, settings
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        await receiver.stop()
        client = redis.Redis.from_url(REDIS_URL)
        client.delete(f"outbox:relay:bench-{run_id}:checkpoint")
        client.close()
        with connect() as conn, conn.cursor() as cur:
            cur.execute(f"DROP DATABASE {db}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="100,1000,5000", help="target events/s, comma-separated")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per rate")
    parser.add_argument(
        "--txn-rate", type=int, default=200, help="at most this many transactions/s"
    )
    parser.add_argument(
        "--drain", type=float, default=30.0, help="seconds to wait for the last events"
    )
    parser.add_argument(
        "--linger-ms", type=int, default=None, help="relay producer linger (default: relay's)"
    )
    parser.add_argument("--plot", type=Path, default=ROOT / "bench" / "out" / "latency.png")
    parser.add_argument("--quick", action="store_true", help="tiny run (smoke test)")
    args = parser.parse_args(argv)
    args.rates = [int(r) for r in args.rates.split(",")]
    if args.quick:
        args.rates, args.seconds = [100, 500], 1.0

    phases, settings = asyncio.run(run(args))
    print(
        f"end-to-end latency (commit returned → consumer received): {args.seconds:g} s per rate, "
        f"{os.cpu_count()} cores"
    )
    print(
        f"relay: linger_ms={settings.linger_ms}, max_batch_size={settings.max_batch_size}, "
        f"acks={settings.kafka_acks}, binlog read blocking (no polling interval); "
        f"consumer fetch_max_wait_ms=5; topic with {PARTITIONS} partitions"
    )
    print(HEADER)
    print("-" * len(HEADER))
    for ph in phases:
        lat = ph["latencies"]
        stats = (
            [percentile(lat, p) for p in (50, 95, 99)] + [lat[-1]] if lat else [float("nan")] * 4
        )
        print(
            f"{ph['target']:>8} {ph['achieved']:>10.0f} {ph['per_txn']:>6} {ph['events']:>7}"
            + "".join(f" {v:>7.1f}" for v in stats)
            + f" {ph['missing']:>7}"
        )
    plot(args.plot, phases, settings)
    print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
