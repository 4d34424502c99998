"""What bench/relay_throughput.py prints and plots: a table per cell (events per
transaction x noise), a summary of medians, and one bar chart per cell."""

from __future__ import annotations

import os
import statistics
from pathlib import Path
from typing import Any

from _prewrite import Written

TARGETS = {(1, 0): 30_000, (1, 90): 15_000, (1000, 0): 60_000}  # issue 14, events/s

LABELS = {
    "library": "(a)  python-mysql-replication alone, read",
    "reader": "(a2) relay reader alone (BinlogSource)",
    "kafka": "(b)  aiokafka alone, produce",
    "relay": "relay, process start to all acked",
    "steady": "relay, steady (10% to 90% acked)",
}
CPU_KEYS = {"library": "library_us", "reader": "reader_us", "steady": "relay_us"}


def med(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def print_measures(
    runs: list[dict[str, float]], k: int, labels: dict[str, str], cpu_keys: dict[str, str]
) -> None:
    """The measures table of one cell: txn/s median, min, max, events/s (``k`` events
    per transaction) and CPU per transaction, for each measure the runs have."""
    header = f"{'measure':42} {'txn/s':>8} {'min':>8} {'max':>8} {'events/s':>9} {'CPU µs/txn':>10}"
    print(header)
    print("-" * len(header))
    for key, label in labels.items():
        if key not in runs[0]:
            continue
        values = [r[key] for r in runs]
        m = med(runs, key)
        cpu = f"{med(runs, cpu_keys[key]):>10.1f}" if key in cpu_keys else f"{'':>10}"
        print(f"{label:42} {m:>8.0f} {min(values):>8.0f} {max(values):>8.0f} {m * k:>9.0f} {cpu}")


def report_cell(cell: dict[str, Any]) -> None:
    w: Written = cell["written"]
    k, runs = cell["per_txn"], cell["runs"]
    rc = w.count
    print(
        f"\n== {k} event(s)/txn, noise {cell['noise']}%: {w.txns} transactions, "
        f"{w.txns * k} events of {cell['size']} B, {len(runs)} run(s), {os.cpu_count()} cores"
    )
    print(
        f"range: {rc.events} binlog events, {w.noise_txns} unrelated transactions, "
        f"{rc.txns['foreign']} foreign; row events not outbox: {100 * rc.noise_fraction:.1f}%; "
        f"written in {w.write_seconds:.1f} s ({w.txns / w.write_seconds:.0f} outbox txn/s, "
        f"{w.retries} deadlock retries); counted in {w.count_seconds:.1f} s"
    )
    print_measures(runs, k, LABELS, CPU_KEYS)
    if "steady" in runs[0]:
        print(
            f"relay while steady: {med(runs, 'relay_us'):.1f} µs CPU per transaction "
            f"({med(runs, 'relay_us_main'):.1f} main + {med(runs, 'relay_us_reader'):.1f} "
            f"reader), {med(runs, 'cores'):.2f} cores; peak RSS "
            f"{max(r['rss'] for r in runs):.0f} MB (both processes, largest run)"
        )
        print("steady txn/s per run:", ", ".join(f"{r['steady']:.0f}" for r in runs))


def report_summary(cells: list[dict[str, Any]]) -> None:
    runs_n = len(cells[0]["runs"])
    print(f"\nsummary: medians of {runs_n} run(s); transactions/s unless marked")
    cols = ["library", "reader", "kafka", "relay", "steady"]
    header = (
        f"{'ev/txn':>6} {'noise':>5} {'library':>8} {'reader':>8} {'aiokafka':>8} "
        f"{'start':>8} {'steady':>8} {'steady-ev/s':>11} {'µs/txn':>7} {'RSS-MB':>6}"
    )
    print(header)
    print("-" * len(header))
    for cell in cells:
        runs = cell["runs"]
        vals = [f"{med(runs, c):>8.0f}" if c in runs[0] else f"{'-':>8}" for c in cols]
        if "steady" in runs[0]:
            extra = (
                f" {med(runs, 'steady') * cell['per_txn']:>11.0f} {med(runs, 'relay_us'):>7.1f}"
                f" {max(r['rss'] for r in runs):>6.0f}"
            )
        else:
            extra = f" {'-':>11} {'-':>7} {'-':>6}"
        print(f"{cell['per_txn']:>6} {cell['noise']:>4}% " + " ".join(vals) + extra)
    print(
        "(library, reader, aiokafka: each alone; start: the relay from process start to all "
        "acked; steady: the relay from 10% to 90% acked; µs/txn: the relay's CPU while steady)"
    )


def plot(path: Path, cells: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in LABELS if k in cells[0]["runs"][0]]
    short = {
        "library": "library\nalone",
        "reader": "relay's reader\nalone",
        "kafka": "aiokafka\nalone",
        "relay": "relay incl.\nstart",
        "steady": "relay\nsteady",
    }
    shapes = sorted({c["per_txn"] for c in cells})
    noises = sorted({c["noise"] for c in cells})
    fig, axes = plt.subplots(
        len(shapes), len(noises), figsize=(4.6 * len(noises), 3.3 * len(shapes)), squeeze=False
    )
    for cell in cells:
        ax = axes[shapes.index(cell["per_txn"])][noises.index(cell["noise"])]
        k, runs = cell["per_txn"], cell["runs"]
        meds = [med(runs, key) * k for key in keys]
        lows = [m - min(r[key] * k for r in runs) for m, key in zip(meds, keys, strict=True)]
        highs = [max(r[key] * k for r in runs) - m for m, key in zip(meds, keys, strict=True)]
        bars = ax.bar(range(len(keys)), meds, yerr=[lows, highs], capsize=3, color="C0")
        ax.bar_label(bars, labels=[f"{m / 1000:.1f}k" for m in meds], fontsize=7, padding=2)
        target = TARGETS.get((k, cell["noise"]))
        if target:
            ax.axhline(target, color="C3", linestyle="--", linewidth=1)
            ax.text(len(keys) - 0.5, target, f"target {target // 1000}k ", color="C3",
                    fontsize=7, ha="right", va="bottom")  # fmt: skip
        ax.set_xticks(range(len(keys)), [short[key] for key in keys], fontsize=7)
        ax.set_title(f"{k} event(s)/txn, noise {cell['noise']}%", fontsize=9)
        ax.set_ylabel("events/s" + (" (= txn/s)" if k == 1 else ""), fontsize=8)
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle(
        f"relay throughput, median of {len(cells[0]['runs'])} run(s) (bars: min-max), "
        f"{cells[0]['size']} B events, {os.cpu_count()} cores",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
