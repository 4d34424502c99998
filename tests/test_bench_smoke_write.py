"""bench/write_concurrency.py and bench/write_overhead_split.py run and print their tables
(numbers are not asserted)."""

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


def test_write_overhead_split_smoke(stack: Stack) -> None:
    env = {**os.environ, "OUTBOX_MYSQL_URL": stack.mysql_url.render_as_string(hide_password=False)}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "write_overhead_split.py"), "--quick"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    names = [line[:22].strip() for line in proc.stdout.splitlines()[2:]]
    assert names == [
        "no outbox",
        "0 events",
        "1 event, not sent",
        "1 event, DO 1 sent",
        "1 event, raw cursor",
        "1 event",
    ]
