"""End-to-end latency: an outbox transaction commits → a Kafka consumer receives the event.

    .venv/bin/python bench/latency.py [--rates 100,1000,5000] [--seconds 10] [--writers N]
                                      [--quick] [--plot bench/out/latency.png]

Against the local stack (./dev/stack start). One relay (``python -m
transactional_outbox.relay``, a subprocess, default producer settings) runs for the
whole benchmark; for each target rate (transactions/s, one event per transaction, as
``session.add_event()`` + commit writes in a typical request) writer processes commit
at a steady pace for ``--seconds``, then the next rate starts once every event has
arrived.

* Writers: ``--writers`` processes (default: one per 500 transactions/s of the target,
  at most 8), each paced at its share of the rate and offset from the others, so the
  writer is not the limit. One transaction per round trip (``BEGIN; INSERT; DELETE;
  COMMIT`` as one multi-statement body). A writer up to 20 ms behind its pace catches
  up; one further behind goes on at its pace from there (no burst that would inflate
  latency) and counts as late; ``achieved/s`` is what was really committed
  (first to last commit, all writers), and a line says so when the server or the
  machine could not reach the target. The commit time of an event is the wall clock
  when its ``COMMIT`` returned (what an application sees as "committed"); the payload
  also carries the clock just before the transaction was sent.
* Consumer (this process, asyncio): aiokafka, no group, every partition assigned,
  ``fetch_max_wait_ms=5``; receive time = wall clock when ``getmany`` returned the
  record. Latency = receive time - commit time, on one machine clock.

Prints a table (target and achieved rate, events, p50/p95/p99/max in ms) and writes a
latency-over-time plot (PNG).

Not covered: transactions of several events (bench/relay_throughput.py covers the
shapes); noise from other tables; a relay that is behind (bench/keeps_up.py); network
latency (everything on one machine); a consumer in another process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _common import (
    OUTBOX_DDL,
    ROOT,
    TopicReader,
    connect,
    create_topics,
    master_status,
    one_event_sql,
    paced_writers,
    relay_env,
    run_multi,
)
from _relay import RelayChild

from transactional_outbox.relay.config import RelaySettings

PARTITIONS = 4
CATCH_UP = 0.02  # a writer up to 20 ms behind its pace catches up; further behind, it resets
HEADER = (
    f"{'target/s':>8} {'achieved/s':>10} {'writers':>7} {'events':>7} {'p50 ms':>7}"
    f" {'p95 ms':>7} {'p99 ms':>7} {'max ms':>7} {'missing':>7}"
)


def write_txn(cur: Any, eid: bytes, seq: int) -> float:
    """One one-event outbox transaction, one round trip; returns the wall clock when its
    COMMIT returned. The payload carries the clock just before it was sent."""
    now = datetime.now(UTC).replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")
    payload = json.dumps(
        {"seq": seq, "t_precommit": time.time(), "customer": "c-1234", "total": "42.50"}
    )
    run_multi(cur, one_event_sql(eid, f"order-{random.randrange(100)}", payload, now))
    return time.time()


def writer_main(
    db: str, rate: float, seconds: float, phase: float, sync: tuple[Any, Any, Any], out: Any
) -> None:
    """Child process: commit at ``rate``/s for ``seconds`` from the shared ``start``
    (monotonic clock) + ``phase``; send back [(id, commit time)] and the late count."""
    conn = connect(db, multi=True)
    cur = conn.cursor()
    interval = 1 / rate
    total = max(1, round(rate * seconds))
    commits: list[tuple[bytes, float]] = []
    late = 0
    ready, go, start = sync
    ready.wait()  # every writer connected
    go.wait()  # the parent has set ``start``
    t_next = start.value + phase
    for seq in range(total):
        now = time.monotonic()
        if now < t_next:
            time.sleep(t_next - now)
        elif now > t_next + max(interval, CATCH_UP):
            t_next = now  # fell behind: go on at the pace from here, no burst
            late += 1
        eid = uuid.uuid4().bytes
        commits.append((eid, write_txn(cur, eid, seq)))
        t_next += interval
    conn.close()
    out.send((commits, late))
    out.close()


class Receiver(TopicReader):
    """Reads every partition of one topic from the start; first receive time per event id."""

    max_records = None  # everything fetched at once: no wait added to latency

    def __init__(self, topic: str) -> None:
        super().__init__([topic])
        self.received: dict[bytes, float] = {}
        self.duplicates = 0

    def on_record(self, event_id: bytes, topic: str, now: float) -> None:
        if event_id in self.received:
            self.duplicates += 1
        else:
            self.received[event_id] = now

    async def wait_for(self, ids: list[bytes], within: float) -> bool:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if all(i in self.received for i in ids):
                return True
            await asyncio.sleep(0.05)
        return False


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
            f"target {ph['target']} txn/s, achieved {ph['achieved']:.0f}/s, "
            f"{ph['writers']} writer(s), one event per transaction",
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


def default_writers(rate: int) -> int:
    """One writer process per 500 transactions/s (one connection commits ~2,700/s at one
    transaction per round trip here, alone), at most 8."""
    return min(8, max(1, math.ceil(rate / 500)))


async def run_rate(
    db: str, rate: int, args: argparse.Namespace
) -> tuple[list[tuple[bytes, float]], int]:
    """Commit one-event transactions at ``rate``/s from several paced writer processes."""
    writers = args.writers or default_writers(rate)
    commits, late = await paced_writers(
        writer_main,
        writers,
        lambda w, sync, pipe: (db, rate / writers, args.seconds, w / rate, sync, pipe),
        lead=0.1,  # every writer connected: start together
    )
    commits.sort(key=lambda c: c[1])
    return commits, late


async def run(args: argparse.Namespace) -> tuple[list[dict[str, Any]], RelaySettings]:
    run_id = uuid.uuid4().hex[:8]
    db = f"bench_{run_id}"
    topic = f"bench{run_id}.latency.order"
    with connect() as conn, conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE {db}")
    log = Path(tempfile.gettempdir()) / f"bench-latency-{run_id}-relay.log"
    relay: RelayChild | None = None
    receiver = Receiver(topic)
    phases: list[dict[str, Any]] = []
    try:
        conn = connect(db, multi=True)
        cur = conn.cursor()
        cur.execute(OUTBOX_DDL)
        env = relay_env(
            db, master_status(cur), f"bench-{run_id}", f"bench{run_id}.latency.{{aggregatetype}}"
        )
        if args.linger_ms is not None:
            env["OUTBOX_LINGER_MS"] = str(args.linger_ms)
        settings = RelaySettings.from_env(env)  # what the relay will run with
        await create_topics([topic], PARTITIONS)
        await receiver.start()
        relay = RelayChild(env, log)
        relay.start()
        # Warm up: the relay is connected and publishing once these arrive.
        for k in range(5):
            warm = uuid.uuid4().bytes
            write_txn(cur, warm, -1 - k)
            if not await receiver.wait_for([warm], 60):
                raise SystemExit(f"warm-up event not received; relay log: {log}")
        conn.close()

        for rate in args.rates:
            commits, late = await run_rate(db, rate, args)
            relay.check_alive()
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
                    "achieved": (len(commits) - 1) / span if span > 0 else float("nan"),
                    "writers": args.writers or default_writers(rate),
                    "events": len(commits),
                    "latencies": sorted(latencies),
                    "missing": len(commits) - len(latencies),
                    "late": late,
                    "points": points,
                }
            )
            await asyncio.sleep(0.5)
        return phases, settings
    finally:
        if relay is not None:
            relay.stop()
        await receiver.stop()
        with connect() as conn, conn.cursor() as cur:
            cur.execute(f"DROP DATABASE {db}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rates", default="100,1000,5000", help="target transactions/s, comma-separated"
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per rate")
    parser.add_argument(
        "--writers", type=int, default=0, help="writer processes (default: 1 per 500/s, max 8)"
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
        f"end-to-end latency (commit returned → consumer received), one event per "
        f"transaction: {args.seconds:g} s per rate, {os.cpu_count()} cores"
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
            f"{ph['target']:>8} {ph['achieved']:>10.0f} {ph['writers']:>7} {ph['events']:>7}"
            + "".join(f" {v:>7.1f}" for v in stats)
            + f" {ph['missing']:>7}"
        )
    for ph in phases:
        if ph["achieved"] < 0.95 * ph["target"]:
            print(
                f"note: target {ph['target']}/s not reached: {ph['achieved']:.0f}/s committed "
                f"by {ph['writers']} paced writer process(es), which fell behind their pace "
                f"{ph['late']} time(s); the server or the machine was the limit"
            )
    plot(args.plot, phases, settings)
    print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
