"""bench/consumer_throughput.py runs end to end (tiny sizes) against the local stack."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .conftest import ROOT, Stack


def test_consumer_throughput_smoke(stack: Stack, tmp_path: Path) -> None:
    png = tmp_path / "consumer.png"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "consumer_throughput.py"),
            "--quick",
            "--partitions",
            "2",
            "--keys",
            "10",
            "--handler",  # the sleep handler runs the same code, 1 ms slower (-8 s here)
            "noop",
            "--plot",
            str(png),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("consumer throughput: 300 events per run, 1 run(s)")
    rows = [line.split() for line in lines[2:] if line.split()[:1] != ["plot:"]]
    assert [(r[0], r[1]) for r in rows] == [
        ("raw", "noop"),
        *((mode, "noop") for mode in ("plain", "redis", "sql", "sql1")),
    ]
    assert all(r[2:4] == ["2", "10"] for r in rows)
    dedup = [r for r in rows if r[0] in ("redis", "sql", "sql1")]
    assert all(len(r) == 9 for r in dedup)  # events/s, cpu, and the duplicates' rate
    assert png.stat().st_size > 10_000
