"""bench/relay_tracing.py runs end to end (``--quick``) against the local stack's broker:
exits 0 and prints a row per mode; never how fast anything was."""

from __future__ import annotations

import subprocess
import sys

from .conftest import ROOT, Stack


def test_relay_tracing_bench_smoke(stack: Stack) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "relay_tracing.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    modes = [line.split()[0] for line in lines if line.split()[:1] in (["off"], ["api"], ["sdk"])]
    assert modes == ["off", "api", "sdk"]
    assert any(line.startswith("consumer: CPU µs per event") for line in lines)
    assert "lost: 0" in lines
