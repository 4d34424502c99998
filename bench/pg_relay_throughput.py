"""Relay throughput on PostgreSQL per write mode, transaction shape and noise, against its limits.

    .venv/bin/python bench/pg_relay_throughput.py [--modes table,message] [--shapes 1,5,1000]
        [--noise 0,90] [--events 100000] [--noise-events 30000] [--size 200] [--runs 2]
        [--writers 2] [--measures reader,kafka,relay] [--plot bench/out/pg_throughput.png]
        [--quick]

Against the local stack (./dev/stack start: its PostgreSQL 15, Redis and the tansu
broker). One cell per (write mode, events per transaction, noise). A cell's WAL range is
written once (bench/_pg_bench.py: a schema of its own, server-side loops from
``--writers`` connections, each transaction committed on its own, as
``OutboxSession(outbox_mode=...)`` writes it; the last outbox transaction alone, after the
others, so the range ends at its commit), with one logical replication slot per measure
and run created before it; then each run measures on that same range:

  (a2) the relay's reader alone: ``PgSource`` (the relay's own protocol client and
       pgoutput parser, to Kafka records) with a counting sink, in a thread of this
       process, until it hands over the range's last commit;
  (b)  aiokafka alone: the same number of records with send(), pipelined (no database);
  relay: ``python -m transactional_outbox.relay`` (a child process; on PostgreSQL its
       reader is a thread of that process) on the pre-made slot, from process start until
       its checkpoint reaches the range's end (every event acknowledged by Kafka), and
       "steady": from 10% to 90% of the range acknowledged (checkpoint saved every 50 ms;
       the fraction is the checkpoint's LSN in the range's WAL bytes). CPU µs per
       transaction and cores while steady, peak RSS (VmHWM of the process tree). After
       each relay run the topic must hold exactly the range's events (read back).

Modes: ``table`` (INSERT + DELETE in the outbox table) and ``message``
(``pg_logical_emit_message(true, 'outbox', ...)``, the table-less outbox; the relay runs
with ``--outbox-table ''`` and ``--pg-message-prefixes outbox``).

Noise 0: outbox transactions only. Noise N (e.g. 90): each outbox transaction also inserts
one business row per event, and unrelated transactions (4 single-row INSERT/UPDATE each,
other tables of the same database, so in the same WAL the server decodes) are interleaved
so that N% of the row changes are not the outbox table's in table mode; message mode gets
the same noise per transaction (its share is printed, from pg_stat_user_tables).

Rates are outbox transactions/s and events/s. With --runs K each cell prints the median,
min and max; every cell prints the machine's load averages (``uptime``) before and after.

Not covered: the writers' own cost (the range is written before anything reads it; see
bench/pg_write_overhead.py); a relay keeping pace with live writers; UPDATE/DELETE-heavy
or DDL-heavy noise, large transactions of other tables; payloads other than --size; a
durable server (the stack's PostgreSQL runs with fsync=off); a real Kafka cluster (tansu,
memory only, no idempotent producer: OUTBOX_ENABLE_IDEMPOTENCE=false).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from _common import BOOTSTRAP, assign_from_start
from _pg_bench import (
    MODES,
    PREFIX,
    BenchSchema,
    Range,
    TxnShape,
    load,
    new_schema,
    noise_per_txn,
    params,
    prewrite,
    relay_env,
)
from _relay import RelayChild
from _throughput_report import med, print_measures
from aiokafka import AIOKafkaConsumer
from relay_throughput import cpu_seconds, kafka_alone

from transactional_outbox.relay.postgres import PgBatch, PgSource, PgSourceSettings
from transactional_outbox.relay.postgres.position import LsnPosition
from transactional_outbox.relay.routing import TopicRouter

MEASURES = ("reader", "kafka", "relay")
TARGETS = {(1, 0): 30_000, (1000, 0): 60_000}  # issue 25, events/s steady
RSS_TARGET = 150.0
ALIGN = 7  # the range's end is 8-byte aligned; a commit's end LSN may be up to 7 before it
LABELS = {
    "reader": "(a2) relay reader alone (PgSource)",
    "kafka": "(b)  aiokafka alone, produce",
    "relay": "relay, process start to all acked",
    "steady": "relay, steady (10% to 90% acked)",
}
CPU_KEYS = {"reader": "reader_us", "steady": "relay_us"}


class CountingSink:
    """A ``PgBatchSink`` that counts records and signals once it has them all and a
    commit at or past ``end``."""

    def __init__(self, n: int, end: int) -> None:
        self.n, self.end = n, end
        self.count = 0
        self.at_end = False
        self.error: BaseException | None = None
        self.done = threading.Event()

    def put(self, batch: PgBatch) -> bool:
        self.count += len(batch.records)
        if batch.commit is not None and batch.commit >= self.end - ALIGN:
            self.at_end = True
        if self.count >= self.n and self.at_end:
            self.done.set()
        return not self.done.is_set()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.done.set()

    def close(self) -> None:
        pass


def reader_alone(schema: BenchSchema, slot: str, r: Range) -> tuple[float, float]:
    """(a2): seconds and CPU seconds for PgSource to hand over the range."""
    sink = CountingSink(r.events, r.end)
    settings = PgSourceSettings(
        connect=params(),
        slot=slot,
        publication=schema.publication,
        tables=tuple(schema.tables),
        prefixes=(PREFIX,) if schema.mode == "message" else (),
    )
    t0, c0 = time.perf_counter(), cpu_seconds()
    source = PgSource(settings, sink, 0, router=TopicRouter(template="bench.{aggregatetype}"))
    source.start()
    finished = sink.done.wait(600)
    elapsed, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    source.stop()
    source.join(10)
    if sink.error is not None:
        raise SystemExit(f"relay reader failed: {sink.error!r}")
    if not finished or sink.count != r.events:
        raise SystemExit(f"relay reader handed over {sink.count} records, expected {r.events}")
    return elapsed, cpu


async def published(topic: str, expected: int) -> int:
    """Records in ``topic``, read from the start until ``expected`` arrived (and 0.3 s
    more, to see any extra) or none came for 5 s. (tansu's end offsets count batches,
    not records, so they cannot be summed.)"""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=BOOTSTRAP, enable_auto_commit=False, fetch_max_wait_ms=50
    )
    await consumer.start()
    try:
        await assign_from_start(consumer, topic)
        count, idle_since, extra_until = 0, time.monotonic(), None
        while True:
            batch = await consumer.getmany(timeout_ms=100, max_records=50_000)
            got = sum(len(records) for records in batch.values())
            count += got
            now = time.monotonic()
            if got:
                idle_since = now
            if count >= expected and extra_until is None:
                extra_until = now + 0.3
            if (extra_until is not None and now >= extra_until) or now - idle_since > 5:
                return count
    finally:
        await consumer.stop()


def relay_run(schema: BenchSchema, slot: str, r: Range, run_id: str) -> dict[str, float]:
    """The relay end to end over the range: see the module docstring."""
    template = f"bench{run_id}.pg.{{aggregatetype}}"
    env = relay_env(schema, slot, f"bench-{run_id}", template)
    env["OUTBOX_CHECKPOINT_INTERVAL_MS"] = "50"
    relay = RelayChild(env, Path(f"/tmp/bench-pg-throughput-{run_id}-relay.log"))
    lo, hi = r.start, r.end - ALIGN
    relay.start()

    def acked() -> float | None:
        cp = relay.saved()
        if not isinstance(cp, LsnPosition):
            return None
        return min(max(cp.lsn - lo, 0) / (hi - lo), 1.0)

    try:
        elapsed, marks = relay.follow(acked)
        (t1, f1, cpu1), (t2, f2, cpu2) = marks
        steady_cpu = sum(cpu2[pid] - cpu1.get(pid, 0.0) for pid in cpu2)
        rss = relay.peak_rss_mb()
    finally:
        relay.stop()
    count = asyncio.run(published(template.format(aggregatetype="order"), r.events))
    if count != r.events:
        raise SystemExit(f"the relay published {count} records, expected {r.events}")
    txns = (f2 - f1) * r.txns
    return {"start_s": elapsed, "steady_s": t2 - t1, "steady_txns": txns, "cpu": steady_cpu,
            "rss": rss}  # fmt: skip


def measure(
    schema: BenchSchema, slots: dict[str, str], r: Range, args: argparse.Namespace
) -> dict[str, float]:
    """One run on the cell's range: transactions/s per measure, CPU, RSS, load."""
    run_id = uuid.uuid4().hex[:8]
    out: dict[str, float] = {}
    if "reader" in args.measures:
        seconds, cpu = reader_alone(schema, slots["reader"], r)
        out.update(reader=r.txns / seconds, reader_us=cpu * 1e6 / r.txns)
    if "kafka" in args.measures:
        seconds = asyncio.run(kafka_alone(r.events, args.size, f"bench{run_id}.alone."))
        out["kafka"] = r.txns / seconds
    if "relay" in args.measures:
        m = relay_run(schema, slots["relay"], r, run_id)
        out.update(
            relay=r.txns / m["start_s"],
            steady=m["steady_txns"] / m["steady_s"],
            relay_us=m["cpu"] * 1e6 / m["steady_txns"],
            cores=m["cpu"] / m["steady_s"],
            rss=m["rss"],
            load=os.getloadavg()[0],
        )
    return out


def run_cell(mode: str, per_txn: int, noise: int, args: argparse.Namespace) -> dict[str, Any]:
    """Write the cell's range once (a slot per measure and run first), then measure it."""
    events = args.noise_events if noise else args.events
    txns = max(2, -(-events // per_txn))
    schema = new_schema(mode)
    load_before = load()
    try:
        schema.create(args.writers)
        slots = [
            {m: schema.add_slot() for m in ("reader", "relay") if m in args.measures}
            for _ in range(args.runs)
        ]
        shape = TxnShape(per_txn, args.size, mode, noise_per_txn(per_txn, noise))
        r = prewrite(schema, shape, txns, args.writers)
        runs = [measure(schema, slots[i], r, args) for i in range(args.runs)]
    finally:
        schema.drop()
    cell = {"mode": mode, "per_txn": per_txn, "noise": noise, "range": r, "runs": runs}
    cell["load"] = (load_before, load())
    report_cell(cell, args)
    return cell


def report_cell(cell: dict[str, Any], args: argparse.Namespace) -> None:
    r: Range = cell["range"]
    k, runs = cell["per_txn"], cell["runs"]
    print(
        f"\n== {cell['mode']}, {k} event(s)/txn, noise {cell['noise']}%: {r.txns} transactions, "
        f"{r.events} events of {args.size} B, {len(runs)} run(s), {os.cpu_count()} cores"
    )
    changes = ", ".join(f"{t} {n}" for t, n in sorted(r.changes.items()))
    print(
        f"range: {(r.end - r.start) / 1e6:.1f} MB of WAL; row changes (and messages): "
        f"{changes}; not outbox: {100 * r.noise_fraction:.1f}%; written in "
        f"{r.write_seconds:.1f} s ({r.txns / r.write_seconds:.0f} outbox txn/s)"
    )
    print_measures(runs, k, LABELS, CPU_KEYS)
    if "steady" in runs[0]:
        print(
            f"relay while steady: {med(runs, 'relay_us'):.1f} µs CPU per transaction, "
            f"{med(runs, 'cores'):.2f} cores; peak RSS {max(x['rss'] for x in runs):.0f} MB "
            "(largest run)"
        )
        print("steady txn/s per run:", ", ".join(f"{x['steady']:.0f}" for x in runs))
    print(f"machine: {cell['load'][0]} before, {cell['load'][1]} after")


def report_summary(cells: list[dict[str, Any]]) -> None:
    print(f"\nsummary: medians of {len(cells[0]['runs'])} run(s); transactions/s unless marked")
    header = (
        f"{'mode':>7} {'ev/txn':>6} {'noise':>5} {'reader':>8} {'aiokafka':>8} {'start':>8} "
        f"{'steady':>8} {'steady-ev/s':>11} {'µs/txn':>7} {'RSS-MB':>6}"
    )
    print(header)
    print("-" * len(header))
    for cell in cells:
        runs = cell["runs"]
        vals = [
            f"{med(runs, c):>8.0f}" if c in runs[0] else f"{'-':>8}"
            for c in ("reader", "kafka", "relay", "steady")
        ]
        if "steady" in runs[0]:
            extra = (
                f" {med(runs, 'steady') * cell['per_txn']:>11.0f} {med(runs, 'relay_us'):>7.1f}"
                f" {max(x['rss'] for x in runs):>6.0f}"
            )
        else:
            extra = f" {'-':>11} {'-':>7} {'-':>6}"
        row = f"{cell['mode']:>7} {cell['per_txn']:>6} {cell['noise']:>4}% "
        print(row + " ".join(vals) + extra)
    print(
        "(reader, aiokafka: each alone; start: the relay from process start to all acked; "
        "steady: the relay from 10% to 90% acked; µs/txn: the relay's CPU while steady)"
    )
    for cell in cells:
        runs = cell["runs"]
        if "steady" not in runs[0]:
            continue
        target = TARGETS.get((cell["per_txn"], cell["noise"]))
        what = f"{cell['mode']}, {cell['per_txn']} event(s)/txn, noise {cell['noise']}%"
        if target:
            got = med(runs, "steady") * cell["per_txn"]
            verdict = "met" if got >= target else "MISSED"
            print(f"target {what}: steady {got:,.0f} events/s, target {target:,}: {verdict}")
        rss = max(x["rss"] for x in runs)
        if rss > RSS_TARGET:
            print(f"target {what}: peak RSS {rss:.0f} MB, target {RSS_TARGET:.0f} MB: MISSED")


def plot(path: Path, cells: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in LABELS if k in cells[0]["runs"][0]]
    short = {"reader": "reader\nalone", "kafka": "aiokafka\nalone", "relay": "relay incl.\nstart",
             "steady": "relay\nsteady"}  # fmt: skip
    rows = sorted({(c["per_txn"], c["noise"]) for c in cells})
    modes = [m for m in MODES if any(c["mode"] == m for c in cells)]
    fig, axes = plt.subplots(
        len(rows), len(modes), figsize=(4.6 * len(modes), 3.3 * len(rows)), squeeze=False
    )
    for cell in cells:
        ax = axes[rows.index((cell["per_txn"], cell["noise"]))][modes.index(cell["mode"])]
        k, runs = cell["per_txn"], cell["runs"]
        meds = [med(runs, key) * k for key in keys]
        lows = [m - min(x[key] * k for x in runs) for m, key in zip(meds, keys, strict=True)]
        highs = [max(x[key] * k for x in runs) - m for m, key in zip(meds, keys, strict=True)]
        bars = ax.bar(range(len(keys)), meds, yerr=[lows, highs], capsize=3, color="C2")
        ax.bar_label(bars, labels=[f"{m / 1000:.1f}k" for m in meds], fontsize=7, padding=2)
        target = TARGETS.get((k, cell["noise"]))
        if target:
            ax.axhline(target, color="C3", linestyle="--", linewidth=1)
        ax.set_xticks(range(len(keys)), [short[key] for key in keys], fontsize=7)
        ax.set_title(f"{cell['mode']}: {k} event(s)/txn, noise {cell['noise']}%", fontsize=9)
        ax.set_ylabel("events/s", fontsize=8)
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle(
        f"relay throughput on PostgreSQL 15, median of {len(cells[0]['runs'])} run(s) "
        f"(bars: min-max), {os.cpu_count()} cores",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.98))  # room for the title
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def int_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", type=lambda s: s.split(","), default=list(MODES))
    parser.add_argument("--shapes", type=int_list, default=[1, 5, 1000], help="events per txn")
    parser.add_argument("--noise", type=int_list, default=[0, 90], help="percent of row changes")
    parser.add_argument("--events", type=int, default=100_000, help="events per cell, no noise")
    parser.add_argument("--noise-events", type=int, default=30_000, help="events per noisy cell")
    parser.add_argument("--size", type=int, default=200, help="payload bytes")
    parser.add_argument("--runs", type=int, default=2, help="runs per cell (median, min, max)")
    parser.add_argument("--writers", type=int, default=2, help="connections pre-writing a range")
    parser.add_argument(
        "--measures",
        type=lambda s: s.split(","),
        default=list(MEASURES),
        help="subset of " + ",".join(MEASURES),
    )
    parser.add_argument("--plot", type=Path, help="write the bar charts (PNG) here")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    args = parser.parse_args()
    if bad := set(args.measures) - set(MEASURES):
        parser.error(f"--measures: unknown {', '.join(sorted(bad))}")
    if bad := set(args.modes) - set(MODES):
        parser.error(f"--modes: unknown {', '.join(sorted(bad))}")
    if not args.shapes or any(k < 1 for k in args.shapes):
        parser.error(f"--shapes: events per transaction, 1 or more, got {args.shapes}")
    if any(not 0 <= v < 100 for v in args.noise):
        parser.error(f"--noise: percentages in 0..99, got {args.noise}")
    if args.runs < 1 or args.writers < 1:
        parser.error("--runs and --writers: 1 or more")
    if args.quick:
        args.events = args.noise_events = 300
    print(
        f"PostgreSQL relay throughput: modes {args.modes} x shapes {args.shapes} events/txn x "
        f"noise {args.noise}%, {args.size} B events, {args.runs} run(s) per cell, "
        f"{os.cpu_count()} cores, {load()}"
    )
    cells = [
        run_cell(mode, k, noise, args)
        for mode in args.modes
        for k in args.shapes
        for noise in args.noise
    ]
    report_summary(cells)
    if args.plot:
        plot(args.plot, cells)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
