"""The write-overhead benchmark runs end to end (tiny sizes) against the local stack.

(The throughput benchmark's smoke tests are in ``test_bench_smoke_throughput.py``.)
"""

from __future__ import annotations

import os
import subprocess
import sys

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
