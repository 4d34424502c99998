"""Recovery after SIGKILL: how long a restarted relay takes to publish a backlog, and
how many events it publishes twice.

    .venv/bin/python bench/recovery.py [--events 50000] [--quick]

Against the local stack (./dev/stack start). Events are written insert-then-delete,
1,000 per transaction, ~200 B payloads. The relay is ``python -m
transactional_outbox.relay`` in a subprocess with its default settings (checkpoint
every 1,000 ms). Two scenarios, each with its own topic and checkpoint:

  killed idle:       the relay runs and has checkpointed (one warm-up event), is
                     SIGKILLed, N events are committed while it is down, it restarts;
  killed mid-backlog: N events are committed, the relay starts and is SIGKILLed once
                     the consumer has received half of them, it restarts.

Measured from the restart (process start, including Python start-up and the server
checks): the new relay taking the leader lease (a SIGKILLed relay does not release
its lease, so the restarted one waits until it expires: up to lease_ttl_ms), the first
record received, all N received, and the checkpoint in Redis passing the last commit
(every event acknowledged and recorded). ``--quick`` also shortens the lease to 1 s. A consumer
with no group reads the topic from offset 0 for the whole scenario: duplicates =
records received - distinct event ids; lost = committed ids never received.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis.asyncio
from _common import (
    INSERT_OUTBOX,
    REDIS_URL,
    TopicReader,
    bench_database,
    connect,
    create_topics,
    relay_env,
)

from transactional_outbox.relay.config import RelaySettings
from transactional_outbox.relay.position import decode_checkpoint

PER_TXN = 1000
PARTITIONS = 4
BODY = b'{"data":"' + b"x" * 189 + b'"}'  # 200 B
HEADER = (
    f"{'scenario':<18} {'backlog':>7} {'at kill':>7} {'lease s':>7} {'first s':>7}"
    f" {'all s':>7} {'ckpt s':>7} {'resent':>7} {'events/s':>8} {'received':>8}"
    f" {'dups':>6} {'lost':>5}"
)
LEGEND = (
    "at kill: backlog events the killed relay published (received before the restart)",
    "lease s: restart -> the new relay holds the leader lease (the killed one's lease must "
    "expire first)",
    "first s / all s: restart -> first record / every event received by the consumer",
    "ckpt s: restart -> checkpoint in Redis past the last commit (all acknowledged)",
    "resent: records received after the restart; events/s = resent / (all s - lease s), "
    "the catch-up rate once the new relay leads (includes its connecting to the servers)",
    "dups: records - distinct ids over the whole scenario; lost: committed, never received",
)
Position = tuple[str, int]


def master_position(cur: Any) -> Position:
    cur.execute("SHOW MASTER STATUS")
    file, pos = cur.fetchone()[:2]
    return file, int(pos)


def write(cur: Any, n: int) -> tuple[set[bytes], Position]:
    """Commit ``n`` events, PER_TXN per transaction; their ids and the position after."""
    ids: set[bytes] = set()
    now = datetime.now(UTC).replace(tzinfo=None)
    for k in range(0, n, PER_TXN):
        chunk = [uuid.uuid4().bytes for _ in range(min(PER_TXN, n - k))]
        cur.execute("BEGIN")
        cur.executemany(
            INSERT_OUTBOX,
            [
                (i, "order", f"order-{j % 1000}", "OrderPlaced", BODY, "{}", now)
                for j, i in enumerate(chunk)
            ],
        )
        cur.execute(f"DELETE FROM outbox WHERE id IN ({','.join(['%s'] * len(chunk))})", chunk)
        cur.execute("COMMIT")
        ids.update(chunk)
    return ids, master_position(cur)


class Receiver(TopicReader):
    """Reads every partition of one topic from offset 0; counts records per event id."""

    def __init__(self, topic: str) -> None:
        super().__init__([topic])
        self.counts: dict[bytes, int] = {}
        self.records = 0

    async def start(self) -> None:
        await create_topics(self.topics, PARTITIONS)
        await super().start()

    def on_record(self, event_id: bytes, topic: str, now: float) -> None:
        self.counts[event_id] = self.counts.get(event_id, 0) + 1
        self.records += 1

    def received(self, ids: set[bytes]) -> int:
        return sum(1 for i in ids if i in self.counts)


class Relay:
    """The relay as a child process, logging to a file."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log = env, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "transactional_outbox.relay"],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def check(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise SystemExit(f"relay exited with {self.proc.returncode}; log: {self.log}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


async def until(condition: Any, relay: Relay, within: float, what: str) -> float:
    """Poll ``condition`` (sync or async) every 10 ms; the time it first held."""
    deadline = time.perf_counter() + within
    while True:
        ok = condition()
        if asyncio.iscoroutine(ok):
            ok = await ok
        if ok:
            return time.perf_counter()
        relay.check()
        if time.perf_counter() > deadline:
            raise SystemExit(f"timed out after {within:.0f} s waiting for {what}; log: {relay.log}")
        await asyncio.sleep(0.01)


async def scenario(
    name: str, db: str, n: int, run_id: str, overrides: dict[str, int | None]
) -> dict[str, Any]:
    tag = f"{run_id}-{name.split()[-1]}"
    topic = f"bench{tag}.recovery.order"
    conn = connect(db)
    cur = conn.cursor()
    start = master_position(cur)
    env = relay_env(db, start, f"bench-{tag}", f"bench{tag}.recovery.{{aggregatetype}}")
    for var, value in overrides.items():
        if value is not None:
            env[var] = str(value)
    settings = RelaySettings.from_env(env)
    log = Path(tempfile.gettempdir()) / f"bench-recovery-{tag}-relay.log"
    relay = Relay(env, log)
    rds = redis.asyncio.Redis.from_url(REDIS_URL)
    receiver = Receiver(topic)
    result: dict[str, Any] = {"scenario": name, "backlog": n, "settings": settings}

    async def checkpoint_past(end: Position) -> bool:
        raw = await rds.get(settings.checkpoint_key)
        if raw is None:
            return False
        cp = decode_checkpoint(raw)
        return (cp.file, cp.pos) >= end

    try:
        await receiver.start()
        written: set[bytes] = set()
        # Every record on the topic is one of ``written``: distinct ids = len(counts).
        if name == "killed idle":
            relay.start()
            warm, warm_end = write(cur, 1)
            written |= warm
            await until(lambda: len(receiver.counts) == 1, relay, 60, "the warm-up event")
            await until(lambda: checkpoint_past(warm_end), relay, 60, "the warm-up checkpoint")
            relay.stop(signal.SIGKILL)
            backlog, end = write(cur, n)
        else:
            backlog, end = write(cur, n)
            relay.start()
            await until(lambda: len(receiver.counts) >= n // 2, relay, 120, "half the events")
            relay.stop(signal.SIGKILL)
        written |= backlog
        # Records the killed relay had published may still be on their way to the
        # consumer: let them arrive, so that what comes next is the new relay's.
        settled = -1
        while settled != receiver.records:
            settled = receiver.records
            await asyncio.sleep(0.5)
        result["at_kill"] = receiver.received(backlog)
        before = receiver.records
        lease_key = settings.checkpoint_key.removesuffix("checkpoint") + "leader"
        dead_lease = await rds.get(lease_key)  # the killed relay's, until its TTL runs out

        async def new_leader() -> bool:
            held = await rds.get(lease_key)
            return held is not None and held != dead_lease

        t0 = time.perf_counter()
        relay.start()
        leader = await until(new_leader, relay, 120, "the new relay to take the lease")
        first = await until(lambda: receiver.records > before, relay, 120, "a first record")
        everything = await until(
            lambda: len(receiver.counts) >= len(written), relay, 600, f"all {n} events"
        )
        acked = await until(lambda: checkpoint_past(end), relay, 600, "the final checkpoint")
        relay.stop(signal.SIGTERM)
        await asyncio.sleep(0.5)  # anything still in flight reaches the consumer
        result.update(
            lease=leader - t0,
            first=first - t0,
            all=everything - t0,
            ckpt=acked - t0,
            resent=receiver.records - before,
            received=receiver.records,
            dups=receiver.records - len(receiver.counts),
            lost=len(written) - receiver.received(written),
        )
        return result
    finally:
        relay.stop(signal.SIGKILL)
        await receiver.stop()
        base = settings.checkpoint_key.removesuffix("checkpoint")
        await rds.delete(settings.checkpoint_key, base + "leader", base + "fence")
        await rds.aclose()
        conn.close()


async def run(n: int, overrides: dict[str, int | None]) -> list[dict[str, Any]]:
    run_id = uuid.uuid4().hex[:8]
    db = f"bench_{run_id}"
    with bench_database(db):
        return [
            await scenario(name, db, n, run_id, overrides)
            for name in ("killed idle", "killed mid-backlog")
        ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000, help="backlog size")
    parser.add_argument(
        "--checkpoint-interval-ms", type=int, default=None, help="relay's (default: its own)"
    )
    parser.add_argument("--lease-ttl-ms", type=int, default=None, help="relay's (default: its own)")
    parser.add_argument(
        "--lease-renew-ms", type=int, default=None, help="relay's (default: its own)"
    )
    parser.add_argument("--quick", action="store_true", help="tiny run (smoke test)")
    args = parser.parse_args(argv)
    n = 2_000 if args.quick else args.events
    if args.quick:  # don't wait out a 10 s lease twice in a smoke test
        args.lease_ttl_ms = args.lease_ttl_ms or 1000
        args.lease_renew_ms = args.lease_renew_ms or 300
    overrides = {
        "OUTBOX_CHECKPOINT_INTERVAL_MS": args.checkpoint_interval_ms,
        "OUTBOX_LEASE_TTL_MS": args.lease_ttl_ms,
        "OUTBOX_LEASE_RENEW_MS": args.lease_renew_ms,
    }
    results = asyncio.run(run(n, overrides))
    s = results[0]["settings"]
    print(
        f"recovery after SIGKILL: backlog of {n} events ({PER_TXN}/txn, 200 B), "
        f"{os.cpu_count()} cores"
    )
    print(
        f"relay: checkpoint_interval_ms={s.checkpoint_interval_ms}, "
        f"lease_ttl_ms={s.lease_ttl_ms}, lease_renew_ms={s.lease_renew_ms}, "
        f"queue_max_events={s.queue_max_events}, linger_ms={s.linger_ms}; "
        "times in seconds from the restart"
    )
    print(HEADER)
    print("-" * len(HEADER))
    for r in results:
        rate = r["resent"] / max(r["all"] - r["lease"], 1e-3)
        print(
            f"{r['scenario']:<18} {r['backlog']:>7} {r['at_kill']:>7} {r['lease']:>7.2f}"
            f" {r['first']:>7.2f} {r['all']:>7.2f} {r['ckpt']:>7.2f} {r['resent']:>7}"
            f" {rate:>8.0f} {r['received']:>8} {r['dups']:>6} {r['lost']:>5}"
        )
    for line in LEGEND:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
