"""The write-overhead benchmark runs end to end (tiny sizes) against the local stack."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .conftest import ROOT, Stack


def test_write_overhead_smoke(stack: Stack) -> None:
    env = {
        **os.environ,
        "OUTBOX_MYSQL_URL": stack.mysql_url.render_as_string(hide_password=False),
    }
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "write_overhead.py"), "--quick"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["mode", "scenario"])
    assert lines[header].split() == ["mode", "scenario", "us/txn", "txn/s", "ratio"]
    rows = [line.split() for line in lines[header + 2 :]]
    assert [r[0] for r in rows] == ["sync"] * 4 + ["async"] * 4
    assert all(r[-1] == "1.00" for r in rows if r[1:3] == ["no", "outbox"])


def test_relay_throughput_smoke(stack: Stack, tmp_path: Path) -> None:
    png = tmp_path / "throughput.png"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "relay_throughput.py"),
            "--quick",
            "--runs",
            "2",
            "--size",
            "200",
            "--size",
            "300",
            "--plot",
            str(png),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "relay throughput: 1000 events of 200 B, " in out
    assert "relay throughput: 1000 events of 300 B, " in out
    for label in (
        "(a) pymysqlreplication alone",
        "(a2) relay reader alone",
        "(b) aiokafka alone",
        "relay, process start to all acked",
        "relay, steady",
    ):
        lines = [line for line in out.splitlines() if line.startswith(label)]
        assert len(lines) == 2  # one per size
        for line in lines:
            median, low, high = (float(v) for v in line.split()[-3:])
            assert 0 < low <= median <= high
    assert "relay steady / min(a, b) =" in out and "peak RSS" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
