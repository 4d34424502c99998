"""The relay as a benchmark's child process: start and stop it, read its checkpoint,
and the CPU time and peak RSS of it and its binlog reader process (on PostgreSQL the
reader is a thread: one process)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import redis
from _common import REDIS_URL

from transactional_outbox.relay.config import RelaySettings
from transactional_outbox.relay.position import Position, decode_checkpoint


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def family(pid: int) -> list[int]:
    """``pid`` and its live descendants (the relay's binlog reader), ``pid`` first."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int(_stat(int(entry.name))[1])
            except (OSError, IndexError, ValueError):
                continue
    out = [pid]
    for p in out:  # grows while iterating: breadth first
        out.extend(child for child, parent in parents.items() if parent == p)
    return out


def cpu_by_process(root: int) -> dict[int, float]:
    """User + system CPU seconds so far of ``root`` and each of its children (root first)."""
    out = {}
    for pid in family(root):
        with contextlib.suppress(OSError):
            fields = _stat(pid)
            out[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def peak_rss_mb(pids: list[int]) -> float:
    """Sum of the processes' peak resident sizes (VmHWM)."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) / 1024
    return total


class RelayChild:
    """``python -m transactional_outbox.relay`` with ``env``; its Redis keys are deleted
    when it stops. ``relay_src``: run the relay from another checkout's ``src/``."""

    def __init__(self, env: dict[str, str], log: Path, relay_src: str | None = None) -> None:
        self.env = dict(env)
        if relay_src:
            self.env["PYTHONPATH"] = relay_src  # ahead of the installed package
        settings = RelaySettings.from_env(self.env)
        self.key = settings.checkpoint_key
        self.key_pattern = f"{settings.key_prefix}{settings.relay_name}:*"
        self.log = log
        self.redis = redis.Redis.from_url(REDIS_URL)
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    def start(self) -> None:
        """Start the process (``started_at``: perf_counter just before)."""
        with open(self.log, "wb") as out:
            self.started_at = time.perf_counter()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "transactional_outbox.relay"],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def check_alive(self) -> None:
        """Exit the benchmark if the relay has exited."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            tail = self.log.read_text(errors="replace")[-2000:]
            raise SystemExit(f"relay exited with {self.proc.returncode}; log {self.log}:\n{tail}")

    def checkpoint(self) -> tuple[str, int] | None:
        """The saved checkpoint's (file, pos), or None before the first save."""
        raw = self.redis.get(self.key)
        if raw is None:
            return None
        cp = decode_checkpoint(raw)
        return cp.file, cp.pos

    def saved(self) -> Position | None:
        """The saved checkpoint (a binlog position or, on PostgreSQL, an LSN), or None
        before the first save."""
        raw = self.redis.get(self.key)
        return None if raw is None else decode_checkpoint(raw)

    def cpu(self) -> dict[int, float]:
        """CPU seconds so far per process: the relay first, then its reader."""
        return cpu_by_process(self.pid)

    def follow(
        self, acked: Callable[[], float | None], *, limit: float = 900
    ) -> tuple[float, list[tuple[float, float, dict[int, float]]]]:
        """Poll ``acked()`` (the fraction of the range acknowledged, None before the
        first checkpoint) until it reaches 1: the seconds since start, and the (time,
        fraction, CPU by process) marks at 10% and 90% (both at the start and the end
        when everything was acknowledged at once: a tiny run)."""
        marks: list[tuple[float, float, dict[int, float]]] = []
        while True:
            fraction = acked()
            if fraction is not None:
                if len(marks) < 2 and fraction >= (0.1, 0.9)[len(marks)]:
                    now, cpu = time.perf_counter(), self.cpu()
                    while len(marks) < 2 and fraction >= (0.1, 0.9)[len(marks)]:
                        marks.append((now, fraction, cpu))  # both at once: a tiny run
                if fraction >= 1.0:
                    break
            self.check_alive()
            if time.perf_counter() - self.started_at > limit:
                raise SystemExit(f"relay did not finish in {limit:.0f} s")
            time.sleep(0.01)
        elapsed = time.perf_counter() - self.started_at
        if marks[1][0] <= marks[0][0]:  # all acknowledged at once (a tiny run)
            marks = [(self.started_at, 0.0, {}), (self.started_at + elapsed, 1.0, self.cpu())]
        return elapsed, marks

    def peak_rss_mb(self) -> float:
        """Peak RSS of the relay and its reader process, summed."""
        return peak_rss_mb(family(self.pid))

    def stop(self) -> None:
        """SIGTERM (SIGKILL after 30 s), then delete the relay's keys."""
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for key in self.redis.scan_iter(match=self.key_pattern):
            self.redis.delete(key)
        self.redis.close()
