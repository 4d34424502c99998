"""What bench/multi_tables.py prints and plots: one table per rate (a row per mode) and
a bar chart of CPU and lag."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from latency import percentile

HEADER = (
    "mode relays dumps txn/s relay-s relay-core ms/1k-ev RSS-MB server-s over-base dump-s"
    " broker-s p50-ms p99-ms max-ms delivered committed load"
)
WIDTHS = [8, 6, 5, 6, 7, 10, 9, 6, 8, 9, 6, 8, 6, 6, 7, 9, 9, 4]


@dataclass
class Result:
    """One mode at one rate."""

    mode: str
    relays: int
    committed: int
    achieved: float
    window: float
    server_s: float
    broker_s: float
    load: float
    dumps: int = 0
    relay_s: float = 0.0
    dump_s: float = 0.0
    rss_mb: float = 0.0
    delivered: int = 0
    latencies: list[float] = field(default_factory=list)
    lost: dict[str, int] = field(default_factory=dict)


def cells(r: Result, base: Result | None) -> list[str]:
    """One table row (``-`` where a baseline has nothing to show)."""
    relay = lag = over = ["-"]
    if r.relays:
        relay = [
            f"{r.relay_s:.1f}",
            f"{r.relay_s / r.window:.2f}",
            f"{r.relay_s * 1e6 / r.committed:.0f}",
            f"{r.rss_mb:.0f}",
        ]
        over = [f"{r.server_s - base.server_s:+.1f}" if base else "-", f"{r.dump_s:.1f}"]
        if r.latencies:
            lag = [f"{percentile(r.latencies, p):.1f}" for p in (50, 99)]
            lag.append(f"{r.latencies[-1]:.1f}")
    return [
        r.mode,
        str(r.relays),
        str(r.dumps),
        f"{r.achieved:.0f}",
        *(relay * 4 if len(relay) == 1 else relay),
        f"{r.server_s:.1f}",
        *(over * 2 if len(over) == 1 else over),
        f"{r.broker_s:.1f}",
        *(lag * 3 if len(lag) == 1 else lag),
        str(r.delivered) if r.relays else "-",
        str(r.committed),
        f"{r.load:.1f}",
    ]


def report(rate: int, results: list[Result], args: argparse.Namespace) -> None:
    base = next((r for r in results if not r.relays), None)
    print(
        f"\n== {rate} one-event transactions/s in total over {args.tables} tables, "
        f"{args.seconds:g} s, {os.cpu_count()} cores"
    )
    print(" ".join(h.rjust(w) for h, w in zip(HEADER.split(), WIDTHS, strict=True)))
    print("-" * (sum(WIDTHS) + len(WIDTHS) - 1))
    for r in results:
        print(" ".join(c.rjust(w) for c, w in zip(cells(r, base), WIDTHS, strict=True)))
    for r in results:
        if r.lost:
            print(f"LOST in {r.mode}: " + ", ".join(f"{t} {n}" for t, n in sorted(r.lost.items())))
        elif r.relays:
            print(f"{r.mode}: every table delivered = committed ({r.window:.1f} s window)")
    sys.stdout.flush()


def pct(values: list[float], p: float) -> float:
    """Percentile of an ascending list; 0 for none."""
    return percentile(values, p) if values else 0.0


def plot(path: Path, by_rate: dict[int, list[Result]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(rate, r) for rate, rs in by_rate.items() for r in rs if r.relays]
    names = [f"{r.mode}\n{rate}/s" for rate, r in rows]
    xs = range(len(rows))
    fig, (cpu, lag) = plt.subplots(1, 2, figsize=(10, 3.6))
    base = {rate: next((r for r in rs if not r.relays), None) for rate, rs in by_rate.items()}
    over = [r.server_s - b.server_s if (b := base[rate]) else 0.0 for rate, r in rows]
    for k, (values, name) in enumerate(
        (
            ([r.relay_s for _, r in rows], "relay processes"),
            ([r.dump_s for _, r in rows], "server: the relays' dump threads"),
            (over, "server over baseline"),
        )
    ):
        cpu.bar([x + (k - 1) * 0.27 for x in xs], values, 0.27, label=name)
    cpu.set_ylabel("CPU seconds for the run")
    lag.bar([x - 0.2 for x in xs], [pct(r.latencies, 50) for _, r in rows], 0.4, label="p50")
    lag.bar([x + 0.2 for x in xs], [pct(r.latencies, 99) for _, r in rows], 0.4, label="p99")
    lag.set_ylabel("commit → consumer (ms)")
    for ax in (cpu, lag):
        ax.set_xticks(list(xs), names, fontsize=8)
        ax.legend(fontsize=8)
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle(f"one relay per table vs one relay for all, {os.cpu_count()} cores", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
