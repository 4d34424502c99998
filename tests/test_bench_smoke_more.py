"""The latency, recovery, keeps-up and multi-table benchmarks run end to end (``--quick``)
against the local stack.

Smoke tests only: they check that each script exits 0 and prints its table, and that
its loss columns (counts, not timings) are 0; never how fast anything was.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from .conftest import ROOT, Stack


def run_bench(script: str, *args: str) -> list[str]:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), "--quick", *args],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.splitlines()


def table(lines: list[str], header: str) -> list[list[str]]:
    """The rows under ``header`` (after its dashed rule), split on whitespace."""
    at = next(i for i, line in enumerate(lines) if line.split() == header.split())
    assert set(lines[at + 1]) == {"-"}
    rows = []
    for line in lines[at + 2 :]:
        if not line.strip() or ":" in line:
            break
        rows.append(line.split())
    return rows


def test_latency_smoke(stack: Stack, tmp_path: Path) -> None:
    png = tmp_path / "latency.png"
    lines = run_bench("latency.py", "--plot", str(png))
    rows = table(lines, "target/s achieved/s writers events p50 ms p95 ms p99 ms max ms missing")
    assert [r[0] for r in rows] == ["100", "500"]
    for row in rows:
        assert len(row) == 9
        values = [float(v) for v in row]  # every column numeric
        assert values[2] >= 1  # writer processes
        assert values[3] > 0  # events written at that rate
        assert row[8] == "0", f"events committed but never received: {row}"  # missing
    assert any(line.startswith("relay: linger_ms=") for line in lines)
    assert "one event per transaction" in lines[0]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_recovery_smoke(stack: Stack) -> None:
    lines = run_bench("recovery.py")
    rows = table(
        lines,
        "scenario backlog at kill lease s first s all s ckpt s resent events/s received dups lost",
    )
    assert [" ".join(r[:2]) for r in rows] == ["killed idle", "killed mid-backlog"]
    for row in rows:
        assert len(row) == 13
        assert int(row[2]) == 2000  # backlog
        for v in row[3:]:
            float(v)  # every column numeric
        received, lost = int(row[10]), int(row[12])
        assert lost == 0, f"committed events never received: {row}"
        assert received >= 2000
    assert any(line.startswith("relay: checkpoint_interval_ms=") for line in lines)


def test_keeps_up_smoke(stack: Stack, tmp_path: Path) -> None:
    png = tmp_path / "keeps_up.png"
    lines = run_bench("keeps_up.py", "--plot", str(png), "--samples")
    assert lines[0].startswith("keeps up: 2 writer processes, one-event transactions")
    text = "\n".join(lines)
    for pattern in (
        r"commit rate: [\d.]+ transactions/s \(\d+ in [\d.]+ s\)",
        r"lag max: [\d.]+ s \(at [\d.]+ s\), \d+ transactions \(at [\d.]+ s\)",
        r"lag p50: [\d.]+ s, \d+ transactions; p99: [\d.]+ s, \d+ transactions",
        r"lag at the end: [\d.]+ s, \d+ transactions",
        r"caught up: [\d.]+ s after the writers stopped",
        r"relay while writing: [\d.]+ cores, \d+ µs CPU per transaction .*peak RSS \d+ MB",
    ):
        assert re.search(pattern, text), pattern
    m = re.search(r"\((\d+) in", text)
    assert m
    committed = int(m[1])
    assert committed > 0
    # --samples: one line per sample; the commit count ends at what was committed.
    at = lines.index("   t s  head offset  commits  checkpoint offset  lag s  lag txns")
    samples = []
    for line in lines[at + 1 :]:
        if len(line.split()) != 6:
            break
        samples.append(line.split())
    assert int(samples[-1][2]) == committed
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_multi_tables_smoke(stack: Stack, tmp_path: Path) -> None:
    png = tmp_path / "multi_tables.png"
    lines = run_bench(
        "multi_tables.py", "--modes", "baseline,Nx1,1xN", "--pattern", "--plot", str(png)
    )
    header = (
        "mode relays dumps txn/s relay-s relay-core ms/1k-ev RSS-MB server-s over-base dump-s"
        " broker-s p50-ms p99-ms max-ms delivered committed load"
    )
    rows = table(lines, header)
    # 3 tables: one relay each, then one relay for all (by pattern), one dump thread
    assert [r[:3] for r in rows] == [
        ["baseline", "0", "0"],
        ["3x1", "3", "3"],
        ["1x3", "1", "1"],
    ]
    for row in rows:
        assert len(row) == 18
    baseline, each, one = rows
    assert baseline[-3] == "-" and int(baseline[-2]) == 400  # 200/s for 2 s, no relay
    for mode in (each, one):
        assert mode[-3] == mode[-2] == "400"  # every committed event delivered
        for v in mode[3:-3]:
            float(v)  # every relay column numeric
    text = "\n".join(lines)
    assert "3x1: every table delivered = committed" in text
    assert "1x3: every table delivered = committed" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
