"""bench/write_concurrency.py runs and prints its table (numbers are not asserted)."""

from __future__ import annotations

import os
import subprocess
import sys

from .conftest import ROOT, Stack


def test_write_concurrency_smoke(stack: Stack) -> None:
    env = {**os.environ, "OUTBOX_MYSQL_URL": stack.mysql_url.render_as_string(hide_password=False)}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "write_concurrency.py"), "--quick"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:1] == ["events/txn"])
    rows = [line.split() for line in lines[header + 2 :]]
    assert [r[0] for r in rows] == ["1", "5", "40"]
    assert all(r[-4:-1] == ["0", "0", "0"] for r in rows)  # no deadlock, timeout or failure
