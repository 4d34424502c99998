"""End-to-end latency on PostgreSQL: an outbox transaction commits → a Kafka consumer has the event.

    .venv/bin/python bench/pg_latency.py [--modes table,message] [--rates 100,1000]
        [--seconds 10] [--writers N] [--quick] [--plot bench/out/pg_latency.png]

Against the local stack (./dev/stack start: its PostgreSQL 15, Redis, the tansu broker).
Per write mode, one relay (``python -m transactional_outbox.relay``, a subprocess, default
producer settings, on a publication and slot made just before) runs while, for each
target rate (transactions/s, one event per transaction), paced writer processes commit
for ``--seconds``; the next rate starts once every event has arrived. The method is
bench/latency.py's (same pacing, consumer and percentiles), on PostgreSQL:

* Writers: ``--writers`` processes (default one per 500 transactions/s, at most 8), each
  one psycopg (3) connection, one transaction per round trip: ``table`` mode sends
  ``BEGIN; INSERT INTO outbox ...; DELETE ...; COMMIT`` as one simple query; ``message``
  mode sends ``SELECT pg_logical_emit_message(true, 'outbox', ...)`` (a transaction of
  its own; the content is ``encode_message`` of the event). An event's commit time is
  the wall clock when that round trip returned.
* Consumer (this process): aiokafka, no group, every partition assigned,
  ``fetch_max_wait_ms=5``; receive time = wall clock when ``getmany`` returned the
  record. Latency = receive time - commit time (commit → consumed), one machine clock.
* Probe (this process, unless ``--no-probe``): the relay's reader (``PgSource``) on a
  second slot, recording when it hands each event over: commit → read, the part of the
  latency before the relay's publishing (it costs a second WAL sender, decoding the
  same WAL).

Prints per mode and rate: achieved rate, p50/p95/p99/max in ms, events missing, and the
machine's load averages; writes a latency-over-time plot (PNG).

Not covered: several events per transaction (bench/pg_relay_throughput.py covers the
shapes), noise from other tables, a relay that is behind, network latency (one machine),
a durable server (the stack's PostgreSQL runs with fsync=off).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from _common import ROOT, create_topics, paced_writers
from _pg_bench import (
    HEADERS,
    MODES,
    PREFIX,
    URL,
    BenchSchema,
    load,
    new_schema,
    params,
    relay_env,
)
from _relay import RelayChild
from latency import CATCH_UP, HEADER, Receiver, default_writers, percentile

from transactional_outbox import OutboxEvent
from transactional_outbox._pg_message import encode_message
from transactional_outbox.relay.postgres import PgBatch, PgSource, PgSourceSettings
from transactional_outbox.relay.routing import TopicRouter

PARTITIONS = 4


def txn_sql(schema: str, mode: str, seq: int) -> tuple[bytes, str]:
    """One one-event outbox transaction of ``mode`` as one simple query: (event id, SQL).
    The payload carries the clock just before it was sent."""
    payload = {"seq": seq, "t_precommit": time.time(), "customer": "c-1234", "total": "42.50"}
    event = OutboxEvent.create(
        aggregate_type="order",
        aggregate_id=f"order-{random.randrange(100)}",
        event_type="OrderPlaced",
        payload=payload,
    )
    if mode == "message":
        content = encode_message(event).hex()
        return event.id.bytes, (
            f"SELECT pg_logical_emit_message(true, '{PREFIX}', '\\x{content}'::bytea)"
        )
    eid = event.id.bytes.hex()
    ts = event.timestamp.replace(tzinfo=None).isoformat()
    body = json.dumps(payload).encode().hex()
    return event.id.bytes, (
        f"BEGIN; INSERT INTO {schema}.outbox VALUES ('\\x{eid}', 'order', "
        f"'{event.aggregate_id}', 'OrderPlaced', '\\x{body}', '{HEADERS}', '{ts}'); "
        f"DELETE FROM {schema}.outbox WHERE id = '\\x{eid}'; COMMIT"
    )


class Probe:
    """The relay's reader alone on a second slot of the same WAL, in this process: when
    each event is handed over (commit → read, the database's share of the latency)."""

    def __init__(self, schema: BenchSchema) -> None:
        self.read: dict[bytes, float] = {}
        self.error: BaseException | None = None
        settings = PgSourceSettings(
            connect=params(),
            slot=schema.add_slot(),
            publication=schema.publication,
            tables=tuple(schema.tables),
            prefixes=(PREFIX,) if schema.mode == "message" else (),
            status_interval_seconds=0.2,
        )
        self.source = PgSource(settings, self, 0, router=TopicRouter())

    def put(self, batch: PgBatch) -> bool:
        now = time.time()
        for r in batch.records:
            headers = getattr(r, "headers", None)
            if headers:
                self.read.setdefault(uuid.UUID(dict(headers)["id"].decode()).bytes, now)
        return True

    def fail(self, error: BaseException) -> None:
        self.error = error

    def close(self) -> None:
        pass


def connect() -> Any:
    import psycopg

    return psycopg.connect(URL, autocommit=True)


def write_one(conn: Any, schema: str, mode: str, seq: int) -> tuple[bytes, float]:
    """Commit one event; (its id, the wall clock when the commit returned)."""
    eid, statement = txn_sql(schema, mode, seq)
    conn.execute(statement)
    return eid, time.time()


def writer_main(
    schema: str,
    mode: str,
    rate: float,
    seconds: float,
    phase: float,
    sync: tuple[Any, Any, Any],
    out: Any,
) -> None:
    """Child process: commit at ``rate``/s for ``seconds`` from the shared start +
    ``phase``; send back [(id, commit time)] and the late count."""
    conn = connect()
    interval = 1 / rate
    total = max(1, round(rate * seconds))
    commits: list[tuple[bytes, float]] = []
    late = 0
    ready, go, start = sync
    ready.wait()
    go.wait()
    t_next = start.value + phase
    for seq in range(total):
        now = time.monotonic()
        if now < t_next:
            time.sleep(t_next - now)
        elif now > t_next + max(interval, CATCH_UP):
            t_next = now  # fell behind: go on at the pace from here, no burst
            late += 1
        commits.append(write_one(conn, schema, mode, seq))
        t_next += interval
    conn.close()
    out.send((commits, late))
    out.close()


async def run_mode(schema: BenchSchema, args: argparse.Namespace) -> list[dict[str, Any]]:
    """One relay for ``schema``'s mode; every rate in turn."""
    run_id = uuid.uuid4().hex[:8]
    topic = f"bench{run_id}.pglatency.order"
    template = topic.replace("order", "{aggregatetype}")
    env = relay_env(schema, schema.add_slot(), f"bench-{run_id}", template)
    log = Path(tempfile.gettempdir()) / f"bench-pglatency-{run_id}-relay.log"
    await create_topics([topic], PARTITIONS)
    receiver = Receiver(topic)
    await receiver.start()
    relay = RelayChild(env, log)
    probe = Probe(schema) if args.probe else None
    phases: list[dict[str, Any]] = []
    try:
        relay.start()
        if probe is not None:
            probe.source.start()
        conn = connect()
        for k in range(5):  # warm up: the relay streams once these arrive
            warm, _ = write_one(conn, schema.name, schema.mode, -1 - k)
            if not await receiver.wait_for([warm], 60):
                relay.check_alive()
                raise SystemExit(f"warm-up event not received; relay log: {log}")
        conn.close()
        for rate in args.rates:
            writers = args.writers or default_writers(rate)
            load_before = load()
            commits, late = await paced_writers(
                writer_main,
                writers,
                lambda w, sync, pipe, r=rate, n=writers: (
                    schema.name,
                    schema.mode,
                    r / n,
                    args.seconds,
                    w / r,
                    sync,
                    pipe,
                ),
                lead=0.1,
            )
            commits.sort(key=lambda c: c[1])
            relay.check_alive()
            await receiver.wait_for([i for i, _ in commits], args.drain)
            t0 = commits[0][1]
            span = commits[-1][1] - t0
            latencies, points, reads = [], [], []
            for eid, committed in commits:
                got = receiver.received.get(eid)
                if got is not None:
                    latencies.append((got - committed) * 1000)
                    points.append((committed - t0, (got - committed) * 1000))
                read = probe.read.get(eid) if probe is not None else None
                if read is not None:
                    reads.append((read - committed) * 1000)
            phases.append(
                {
                    "mode": schema.mode,
                    "target": rate,
                    "achieved": (len(commits) - 1) / span if span > 0 else float("nan"),
                    "writers": writers,
                    "events": len(commits),
                    "latencies": sorted(latencies),
                    "reads": sorted(reads),
                    "missing": len(commits) - len(latencies),
                    "late": late,
                    "points": points,
                    "load": (load_before, load()),
                }
            )
            if rate != args.rates[-1]:
                await asyncio.sleep(0.5)
    finally:
        relay.stop()
        await receiver.stop()
        if probe is not None:
            probe.source.stop()
            probe.source.join(10)
            if probe.error is not None:
                raise SystemExit(f"the probe's reader failed: {probe.error!r}")
    return phases


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    phases: list[dict[str, Any]] = []
    for mode in args.modes:
        schema = new_schema(mode)
        try:
            schema.create(1)
            phases += await run_mode(schema, args)
        finally:
            schema.drop()
    return phases


def plot(path: Path, phases: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(len(phases), 1, figsize=(10, 2.6 * len(phases)), squeeze=False)
    for ax, ph in zip(axes[:, 0], phases, strict=True):
        if ph["points"]:
            xs, ys = zip(*ph["points"], strict=True)
            ax.scatter(xs, ys, s=4, alpha=0.5, linewidths=0, label="event")
            windows: dict[int, list[float]] = {}
            for x, y in ph["points"]:
                windows.setdefault(int(x * 2), []).append(y)
            wx = [(k + 0.5) / 2 for k in sorted(windows)]
            w_sorted = [sorted(windows[k]) for k in sorted(windows)]
            ax.plot(wx, [percentile(w, 50) for w in w_sorted], color="C1", label="p50 (0.5 s)")
            ax.plot(wx, [percentile(w, 99) for w in w_sorted], color="C3", label="p99 (0.5 s)")
            ax.set_yscale("log")
        ax.set_title(
            f"{ph['mode']} mode: target {ph['target']} txn/s, achieved {ph['achieved']:.0f}/s, "
            f"{ph['writers']} writer(s), one event per transaction",
            fontsize=9,
        )
        ax.set_ylabel("latency (ms)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="upper right", fontsize=7)
    axes[-1, 0].set_xlabel("seconds since the rate started (commit time)")
    fig.suptitle(f"PostgreSQL: commit → consumer latency ({os.cpu_count()} cores)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", type=lambda s: s.split(","), default=list(MODES))
    parser.add_argument("--rates", default="100,1000", help="target transactions/s, a,b,...")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per rate")
    parser.add_argument(
        "--writers", type=int, default=0, help="writer processes (default: 1 per 500/s, max 8)"
    )
    parser.add_argument("--drain", type=float, default=30.0, help="seconds to wait for the last")
    parser.add_argument("--plot", type=Path, default=ROOT / "bench" / "out" / "pg_latency.png")
    parser.add_argument(
        "--no-probe",
        dest="probe",
        action="store_false",
        help="no second reader (commit → read from a slot of its own) in this process",
    )
    parser.add_argument("--quick", action="store_true", help="tiny run (smoke test)")
    args = parser.parse_args(argv)
    if bad := set(args.modes) - set(MODES):
        parser.error(f"--modes: unknown {', '.join(sorted(bad))}")
    args.rates = [int(r) for r in args.rates.split(",")]
    if args.quick:
        args.rates, args.seconds = [200], 0.5
    print(
        f"PostgreSQL end-to-end latency (commit returned → consumer received), one event per "
        f"transaction: {args.seconds:g} s per rate, {os.cpu_count()} cores, {load()}"
    )
    phases = asyncio.run(run(args))
    print(
        f"relay: default producer settings; consumer fetch_max_wait_ms=5; {PARTITIONS} partitions"
    )
    print(f"{'mode':>7} " + HEADER)
    print("-" * (len(HEADER) + 8))
    for ph in phases:
        lat = ph["latencies"]
        stats = (
            [percentile(lat, p) for p in (50, 95, 99)] + [lat[-1]] if lat else [float("nan")] * 4
        )
        print(
            f"{ph['mode']:>7} {ph['target']:>8} {ph['achieved']:>10.0f} {ph['writers']:>7} "
            f"{ph['events']:>7}" + "".join(f" {v:>7.1f}" for v in stats) + f" {ph['missing']:>7}"
        )
    for ph in phases:
        if ph["reads"]:
            r = ph["reads"]
            print(
                f"{ph['mode']:>7} {ph['target']:>8}: commit → read by the relay's reader on a "
                f"slot of its own: p50 {percentile(r, 50):.1f}, p95 {percentile(r, 95):.1f}, "
                f"p99 {percentile(r, 99):.1f}, max {r[-1]:.1f} ms ({len(r)} events)"
            )
    for ph in phases:
        before, after = ph["load"]
        print(f"machine, {ph['mode']} at {ph['target']}/s: {before} before, {after} after")
        if ph["achieved"] < 0.95 * ph["target"]:
            print(
                f"note: {ph['mode']} target {ph['target']}/s not reached: {ph['achieved']:.0f}/s "
                f"committed by {ph['writers']} paced writer(s), {ph['late']} time(s) behind pace"
            )
        if ph["target"] == 1000 and ph["latencies"]:
            p99 = percentile(ph["latencies"], 99)
            verdict = "met" if p99 <= 50 else "MISSED"
            print(f"target {ph['mode']}: p99 {p99:.1f} ms at 1,000 txn/s, target 50 ms: {verdict}")
    plot(args.plot, phases)
    print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
