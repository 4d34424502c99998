"""Keeps up: writers commit one-event transactions as fast as the server allows; how far
behind the binlog head does the relay fall?

    .venv/bin/python bench/keeps_up.py [--seconds 60] [--writers 8] [--sample-ms 100]
                                       [--checkpoint-ms 100] [--plot PATH] [--quick]

Against the local stack (./dev/stack start). The relay (``python -m
transactional_outbox.relay``, a child process, default settings but its checkpoint
saved every ``--checkpoint-ms``) starts at the binlog head and publishes one warm-up
event. Then ``--writers`` processes commit one-event outbox transactions (insert, then
delete, one round trip each, as ``session.add_event()`` + commit writes them) back to
back for ``--seconds``. Every ``--sample-ms`` this process reads the binlog head (SHOW
MASTER STATUS), the writers' commit count, and the relay's checkpoint (what Kafka has
acknowledged, saved at most every ``--checkpoint-ms``).

Lag at a sample = how long ago, and how many commits ago, the head was where the
checkpoint is now: the checkpoint's binlog offset is placed between the two head
samples around it (linear), which gives the commit time and commit count at that
position. So lag includes up to ``--checkpoint-ms`` of checkpoint cadence, and its
resolution is about one sample interval. Prints the commit rate, the lag's max, p50,
p99 and its value when the writers stop, the time to catch up after that, and the
relay's CPU and peak RSS.

Not covered: several events per transaction or noise from other tables
(bench/relay_throughput.py), per-event latency (bench/latency.py), a durable server
(the stack's MariaDB does not flush at commit, so it commits faster than most
production servers, which makes this harder for the relay, not easier), and
transactions committed by other work on a shared server (they move the head too).
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import multiprocessing as mp
import os
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _common import (
    BinlogOffsets,
    bench_database,
    connect,
    master_status,
    one_event_sql,
    relay_env,
    run_multi,
)
from _prewrite import payload_text
from _relay import RelayChild


def writer_main(db: str, index: int, size: int, sync: tuple[Any, ...]) -> None:
    """Child process: commit one-event transactions until the shared deadline; keep the
    count in ``counts[index]``."""
    ready, go, deadline, counts, done = sync
    conn = connect(db, multi=True)
    cur = conn.cursor()
    payload = payload_text(size)
    ready.wait()
    go.wait()
    stop_at = deadline.value
    n = 0
    while time.monotonic() < stop_at:
        now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
        run_multi(cur, one_event_sql(uuid.uuid4().bytes, f"order-{n % 100}", payload, now))
        n += 1
        counts[index] = n
    done[index] = 1  # before closing: process exit takes a while
    conn.close()


def lags(samples: list[tuple[float, int, int, int]]) -> list[tuple[float, float, float]]:
    """(time, lag seconds, lag transactions) per sample of (time, head offset, commits,
    checkpoint offset)."""
    heads = [s[1] for s in samples]
    out = []
    for i, (t, head, commits, cp) in enumerate(samples):
        if cp >= head:
            out.append((t, 0.0, 0.0))
            continue
        j = bisect.bisect_left(heads, cp, 0, i + 1)  # first sample whose head reached cp
        if j == 0:
            t_cp, c_cp = samples[0][0], float(samples[0][2])
        else:
            (t0, h0, c0, _), (t1, h1, c1, _) = samples[j - 1], samples[j]
            f = (cp - h0) / (h1 - h0)
            t_cp, c_cp = t0 + f * (t1 - t0), c0 + f * (c1 - c0)
        out.append((t, max(t - t_cp, 0.0), max(commits - c_cp, 0.0)))
    return out


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[max(0, min(len(s) - 1, round(p / 100 * len(s)) - 1))]


def plot(path: Path, samples: list[tuple[float, int, int, int]], t_go: float, end: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lag = lags(samples)
    xs = [t - t_go for t, _, _ in lag]
    fig, ax = plt.subplots(figsize=(9, 3.6))
    ax.plot(xs, [s for _, s, _ in lag], color="C3", label="relay lag (s)")
    ax.axvline(end - t_go, color="grey", linestyle=":", linewidth=1, label="writers stop")
    ax.set_xlabel("seconds since the writers started")
    ax.set_ylabel("lag (s of commit time)")
    ax2 = ax.twinx()
    rates = [(b[2] - a[2]) / (b[0] - a[0]) for a, b in itertools.pairwise(samples)]
    ax2.plot(xs[1:], rates, color="C0", alpha=0.5, linewidth=0.8, label="commits/s")
    ax2.set_ylabel("commits/s")
    fig.legend(loc="upper left", fontsize=8)
    ax.grid(True, alpha=0.3)
    fig.suptitle(f"relay lag under saturating one-event writers, {os.cpu_count()} cores")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(args: argparse.Namespace) -> None:
    run_id = uuid.uuid4().hex[:8]
    db = f"bench_{run_id}"
    log = Path(tempfile.gettempdir()) / f"bench-keepsup-{run_id}-relay.log"
    with bench_database(db):
        conn = connect(db, multi=True)
        cur = conn.cursor()
        offsets = BinlogOffsets(conn.cursor())
        template = f"bench{run_id}.keepsup.{{aggregatetype}}"
        env = relay_env(db, master_status(cur), f"bench-{run_id}", template)
        env["OUTBOX_CHECKPOINT_INTERVAL_MS"] = str(args.checkpoint_ms)
        relay = RelayChild(env, log)
        relay.start()
        try:
            # Warm-up: one event acknowledged, so start-up stays out.
            run_multi(cur, one_event_sql(uuid.uuid4().bytes, "order-0", "{}", "2026-01-01"))
            warm = offsets(*master_status(cur))
            deadline = time.monotonic() + 120
            while (cp := relay.checkpoint()) is None or offsets(*cp) < warm:
                relay.check_alive()
                if time.monotonic() > deadline:
                    raise SystemExit(f"the relay did not publish the warm-up event; log {log}")
                time.sleep(0.05)

            ctx = mp.get_context("spawn")
            counts = ctx.Array("q", args.writers, lock=False)
            done = ctx.Array("b", args.writers, lock=False)
            sync = (ctx.Barrier(args.writers + 1), ctx.Event(), ctx.Value("d", 0.0), counts, done)
            procs = [
                ctx.Process(target=writer_main, args=(db, w, args.size, sync), daemon=True)
                for w in range(args.writers)
            ]
            for proc in procs:
                proc.start()
            sync[0].wait()
            cpu0 = relay.cpu()
            t_go = time.monotonic()
            t_end = t_go + args.seconds
            sync[2].value = t_end
            sync[1].set()
            samples: list[tuple[float, int, int, int]] = []
            caught_up: float | None = None
            final_head = None
            while True:
                finished = all(done)  # before reading the head: it then has every commit
                t = time.monotonic()
                head = offsets(*master_status(cur))
                commits = sum(counts)
                cp = relay.checkpoint()
                samples.append((t, head, commits, offsets(*cp) if cp else 0))
                if final_head is None and finished:
                    final_head, n_commits, cpu1 = head, commits, relay.cpu()
                if final_head is not None and samples[-1][3] >= final_head:
                    caught_up = t - t_end
                    break
                relay.check_alive()
                if any(proc.exitcode for proc in procs):
                    raise SystemExit("a writer process failed; see its traceback above")
                if final_head is not None and t - t_end > args.drain:
                    break
                time.sleep(max(0.0, t + args.sample_ms / 1000 - time.monotonic()))
            rss = relay.peak_rss_mb()
            for proc in procs:
                proc.join()
        finally:
            relay.stop()
            conn.close()
    report(args, samples, t_go, t_end, n_commits, caught_up, cpu0, cpu1, rss)
    if args.plot:
        plot(args.plot, samples, t_go, t_end)
        print(f"plot: {args.plot}")


def report(
    args: argparse.Namespace,
    samples: list[tuple[float, int, int, int]],
    t_go: float,
    t_end: float,
    n_commits: int,
    caught_up: float | None,
    cpu0: dict[int, float],
    cpu1: dict[int, float],
    rss: float,
) -> None:
    lag = lags(samples)
    during = [x for x in lag if x[0] <= t_end]
    worst = max(during, key=lambda x: x[1])
    most = max(during, key=lambda x: x[2])
    last = during[-1]
    cpu = sum(cpu1[pid] - cpu0.get(pid, 0.0) for pid in cpu1)
    span = t_end - t_go  # writers start no transaction after t_end
    print(
        f"keeps up: {args.writers} writer processes, one-event transactions of {args.size} B, "
        f"{args.seconds:g} s, {os.cpu_count()} cores"
    )
    print(
        f"relay: checkpoint saved every {args.checkpoint_ms} ms; lag sampled every "
        f"{args.sample_ms} ms ({len(during)} samples while writing)"
    )
    print(f"commit rate: {n_commits / span:.0f} transactions/s ({n_commits} in {span:.1f} s)")
    print(
        f"lag max: {worst[1]:.2f} s (at {worst[0] - t_go:.1f} s), {most[2]:.0f} transactions "
        f"(at {most[0] - t_go:.1f} s)"
    )
    secs = [x[1] for x in during]
    txns = [x[2] for x in during]
    print(
        f"lag p50: {pct(secs, 50):.2f} s, {pct(txns, 50):.0f} transactions; "
        f"p99: {pct(secs, 99):.2f} s, {pct(txns, 99):.0f} transactions"
    )
    print(f"lag at the end: {last[1]:.2f} s, {last[2]:.0f} transactions (when the writers stopped)")
    if caught_up is None:
        print(f"caught up: not within {args.drain:g} s after the writers stopped")
    else:
        print(f"caught up: {caught_up:.2f} s after the writers stopped")
    print(
        f"relay while writing: {cpu / span:.2f} cores, {cpu * 1e6 / max(n_commits, 1):.0f} µs "
        f"CPU per transaction (both processes); peak RSS {rss:.0f} MB"
    )
    if args.samples:
        print("   t s  head offset  commits  checkpoint offset  lag s  lag txns")
        for (t, head, commits, cp), (_, lag_s, lag_n) in zip(samples, lag, strict=True):
            print(f"{t - t_go:6.2f} {head:12} {commits:8} {cp:18} {lag_s:6.2f} {lag_n:9.0f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="seconds of writing")
    parser.add_argument("--writers", type=int, default=8, help="writer processes")
    parser.add_argument("--size", type=int, default=200, help="payload bytes")
    parser.add_argument("--sample-ms", type=int, default=100, help="lag sampling interval")
    parser.add_argument(
        "--checkpoint-ms", type=int, default=100, help="the relay's checkpoint interval"
    )
    parser.add_argument(
        "--drain", type=float, default=120.0, help="seconds to wait for the relay to catch up"
    )
    parser.add_argument("--plot", type=Path, help="write a lag-over-time plot (PNG) here")
    parser.add_argument("--samples", action="store_true", help="print every sample")
    parser.add_argument("--quick", action="store_true", help="tiny run (smoke test)")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.writers = 2.0, 2
    if args.writers < 1 or args.seconds <= 0 or args.sample_ms <= 0:
        parser.error("--writers, --seconds and --sample-ms must be positive")
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
