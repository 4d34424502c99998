"""The relay throughput benchmark runs end to end (``--quick``) against the local stack.

Smoke tests only: they check that the script exits 0 and prints every cell, measure and
summary field, and that each pre-written range holds what it should (that is a count,
not a speed); never how fast anything was.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT, Stack

SCRIPT = str(ROOT / "bench" / "relay_throughput.py")
SUMMARY = "ev/txn noise library reader aiokafka start steady steady-ev/s µs/txn RSS-MB"
LABELS = (
    "(a) python-mysql-replication alone, read",
    "(a2) relay reader alone (BinlogSource)",
    "(b) aiokafka alone, produce",
    "relay, process start to all acked",
    "relay, steady (10% to 90% acked)",
)


def run(*args: str) -> str:
    proc = subprocess.run(
        [sys.executable, SCRIPT, "--quick", *args], capture_output=True, text=True, timeout=280
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def cells(out: str) -> dict[tuple[int, int], list[str]]:
    """The lines of each cell's section, by (events per transaction, noise %)."""
    found: dict[tuple[int, int], list[str]] = {}
    for block in out.split("\n== ")[1:]:
        m = re.match(r"(\d+) event\(s\)/txn, noise (\d+)%: (\d+) transactions", block)
        assert m, block[:200]
        found[(int(m[1]), int(m[2]))] = block.split("\n\nsummary")[0].splitlines()
    return found


def measures(lines: list[str]) -> dict[str, list[float]]:
    """A cell's measure rows: label → the numbers after it."""
    out = {}
    for line in lines:
        norm = " ".join(line.split())
        for label in LABELS:
            if norm.startswith(label):
                out[label] = [float(v) for v in norm[len(label) :].split()]
    return out


def summary(out: str) -> list[list[str]]:
    lines = out.splitlines()
    at = next(i for i, line in enumerate(lines) if line.split() == SUMMARY.split())
    assert set(lines[at + 1]) == {"-"}
    rows = []
    for line in lines[at + 2 :]:
        if not line.strip() or line.startswith("("):
            break
        rows.append(line.split())
    return rows


def test_a_shape_with_and_without_noise(stack: Stack, tmp_path: Path) -> None:
    # The largest shape (the smallest runs in the next test; every shape runs the same
    # code, and a cell costs 5-8 s here: the others are left out for the suite's time).
    png = tmp_path / "throughput.png"
    out = run("--shapes", "1000", "--noise", "0,90", "--plot", str(png))
    found = cells(out)
    assert sorted(found) == [(1000, 0), (1000, 90)]
    for (_, noise), lines in found.items():
        m = re.search(r"row events not outbox: ([\d.]+)%", lines[1])
        assert m, lines[1]
        share = float(m[1])
        # Sized per shape from a calibration transaction, then counted on the range.
        assert (89.0 <= share <= 92.0) if noise else share == 0.0
        assert noise or ", 0 unrelated transactions" in lines[1]
        rows = measures(lines)
        assert sorted(rows) == sorted(LABELS)
        for values in rows.values():
            assert len(values) in (4, 5)  # txn/s median, min, max, events/s [, CPU µs/txn]
            assert all(v > 0 for v in values[:4])
        assert any(line.startswith("relay while steady: ") and "peak RSS" in line for line in lines)
    rows = summary(out)
    assert [(r[0], r[1]) for r in rows] == [("1000", "0%"), ("1000", "90%")]
    for row in rows:
        assert len(row) == 10
        assert all(float(v) >= 0 for v in row[2:])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_runs_and_a_subset_of_measures(stack: Stack) -> None:
    out = run("--shapes", "1", "--noise", "0", "--runs", "2", "--measures", "reader,kafka")
    rows = measures(cells(out)[(1, 0)])
    assert sorted(rows) == sorted(LABELS[1:3])  # only what was asked for
    for median, low, high, *_ in rows.values():
        assert 0 < low <= median <= high
    row = summary(out)[0]
    assert row[:2] == ["1", "0%"] and row[2] == "-" and row[5:] == ["-"] * 5


def test_bad_arguments_are_one_line_errors() -> None:
    for args, needle in (
        (["--measures", "reader,bogus"], "--measures: unknown bogus"),
        (["--noise", "100"], "--noise: percentages in 0..99"),
        (["--shapes", "0"], "--shapes: events per transaction, 1 or more"),
    ):
        proc = subprocess.run(
            [sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 2
        assert needle in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "script",
    ["relay_throughput.py", "latency.py", "keeps_up.py", "recovery.py", "write_overhead.py"],
)
def test_help(script: str) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--quick" in proc.stdout
