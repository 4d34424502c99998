"""The PostgreSQL relay benchmarks run end to end (``--quick``) against the local stack.

Smoke tests only: the scripts exit 0 and print every cell, measure and summary field,
each pre-written range holds the row changes it should, and every event arrives (a
count, not a speed); never how fast anything was.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from .conftest import ROOT, Stack

BENCH = ROOT / "bench"
LABELS = (
    "(a2) relay reader alone (PgSource)",
    "(b) aiokafka alone, produce",
    "relay, process start to all acked",
    "relay, steady (10% to 90% acked)",
)
SUMMARY = "mode ev/txn noise reader aiokafka start steady steady-ev/s µs/txn RSS-MB"


def run(script: str, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(BENCH / script), "--quick", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout


def test_throughput_both_modes_shapes_and_noise(stack: Stack, tmp_path: Path) -> None:
    png = tmp_path / "pg.png"
    out = run(
        "pg_relay_throughput.py",
        *("--modes", "table,message", "--shapes", "1,5", "--noise", "90", "--runs", "1"),
        *("--plot", str(png)),
    )
    cells = {}
    for block in out.split("\n== ")[1:]:
        m = re.match(r"(\w+), (\d+) event\(s\)/txn, noise (\d+)%: (\d+) transactions", block)
        assert m, block[:200]
        cells[(m[1], int(m[2]))] = block.split("\n\nsummary")[0].splitlines()
        assert int(m[4]) == max(2, -(-300 // int(m[2])))
    assert sorted(cells) == [("message", 1), ("message", 5), ("table", 1), ("table", 5)]
    for (mode, k), lines in cells.items():
        share = float(re.search(r"not outbox: ([\d.]+)%", lines[1])[1])  # type: ignore[index]
        # From pg_stat_user_tables: 90% of row changes in table mode; the same noise
        # per transaction is a larger share of message mode's (one message an event).
        assert (89.0 <= share <= 91.0) if mode == "table" else (94.0 <= share <= 95.5)
        outbox = "outbox" if mode == "table" else r"\(messages\)"
        events = max(2, -(-300 // k)) * k
        assert re.search(rf"{outbox} {events * (2 if mode == 'table' else 1)}\b", lines[1])
        rows = {}
        for line in lines:
            norm = " ".join(line.split())
            for label in LABELS:
                if norm.startswith(label):
                    rows[label] = [float(v) for v in norm[len(label) :].split()]
        assert sorted(rows) == sorted(LABELS)
        assert all(len(v) in (4, 5) and all(x > 0 for x in v[:4]) for v in rows.values())
        assert any(line.startswith("relay while steady: ") and "peak RSS" in line for line in lines)
        assert any(line.startswith("machine: load ") for line in lines)
    at = out.splitlines().index(next(x for x in out.splitlines() if x.split() == SUMMARY.split()))
    summary = [x.split() for x in out.splitlines()[at + 2 : at + 6]]
    assert [(r[0], r[1], r[2]) for r in summary] == [
        ("table", "1", "90%"), ("table", "5", "90%"), ("message", "1", "90%"),
        ("message", "5", "90%"),
    ]  # fmt: skip
    assert all(len(r) == 10 and all(float(v) >= 0 for v in r[3:]) for r in summary)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_latency_both_modes(stack: Stack, tmp_path: Path) -> None:
    png = tmp_path / "lat.png"
    out = run("pg_latency.py", "--plot", str(png))
    lines = out.splitlines()
    at = next(i for i, x in enumerate(lines) if x.split()[:3] == ["mode", "target/s", "achieved/s"])
    rows = [x.split() for x in lines[at + 2 : at + 4]]
    assert [r[:2] for r in rows] == [["table", "200"], ["message", "200"]]
    for r in rows:
        assert r[4] == "100" and r[-1] == "0"  # every event committed and received
        assert all(float(v) > 0 for v in r[5:9])
    assert sum(x.startswith("machine, ") for x in lines) == 2
    probes = [x for x in lines if "commit → read by the relay's reader" in x]
    assert len(probes) == 2 and all("(100 events)" in x for x in probes)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_arguments_are_one_line_errors() -> None:
    for script, args, needle in (
        ("pg_relay_throughput.py", ["--modes", "table,rows"], "--modes: unknown rows"),
        ("pg_latency.py", ["--modes", "binlog"], "--modes: unknown binlog"),
    ):
        proc = subprocess.run(
            [sys.executable, str(BENCH / script), *args], capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 2
        assert needle in proc.stderr and "Traceback" not in proc.stderr
