"""Consumer throughput: events/s and CPU per event, raw aiokafka vs ConsumerRunner with dedup.

    .venv/bin/python bench/consumer_throughput.py [--events 20000] [--partitions 4 ...]
        [--keys 10000 ...] [--mode raw --mode plain --mode redis --mode sql ...]
        [--handler noop --handler sleep] [--runs 3] [--plot bench/out/consumer.png] [--quick]

Against the local stack (./dev/stack start). Per (partitions, keys) it publishes one
topic as the relay would: N events over K aggregate keys (a key always in the same
partition), then the same N again (a re-sent range: duplicates), then one sentinel
per partition. Then each mode consumes it from the start, in a new group, in this
process:

  raw    aiokafka ``getmany`` alone (no decoding, no handler): the ceiling
  plain  ``ConsumerRunner`` with an undecorated handler (no deduplication)
  redis  runner + ``@idempotent_consumer(AsyncRedisStore)``
  sql    runner + ``@idempotent_consumer(AsyncSqlStore(batch_transactions=True))``
         on MariaDB (asyncmy), a new inbox table per run
  sql1   runner + ``AsyncSqlStore`` with one transaction per event

Handlers: ``noop`` (returns at once) and ``sleep`` (awaits 1 ms, I/O-bound).
events/s is counted from the first handled event to the N-th (group join left
out); CPU per event is this process's user+system time over the same window
(Redis and MariaDB are other processes). ``dups/s``: for dedup modes, the re-sent
range from the N-th original to the last sentinel (every duplicate is skipped
without calling the handler; the bench checks that the handler ran N times).
Keys run concurrently, so the windows' edges are approximate by up to a batch.
Median (min-max) of --runs; --plot draws the medians.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis.asyncio
import sqlalchemy as sa
from _common import BOOTSTRAP, REDIS_URL, connect, create_topics, mysql_url
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from transactional_outbox.consumer import (
    AsyncRedisStore,
    AsyncSqlStore,
    ConsumerRunner,
    KafkaConnection,
    ReceivedEvent,
    RunnerSettings,
    idempotent_consumer,
    inbox_table,
)
from transactional_outbox.event import OutboxEvent, kafka_headers

MODES = ("raw", "plain", "redis", "sql", "sql1")
DEDUP = ("redis", "sql", "sql1")


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def publish(n: int, partitions: int, keys: int) -> str:
    """A new topic holding N events, the same N again, then a sentinel per partition."""
    topic = f"bench.consumer.{uuid.uuid4().hex[:10]}"
    await create_topics([topic], partitions)
    events = []
    for i in range(n):
        key = i % keys
        event = OutboxEvent.create(
            aggregate_type="order", aggregate_id=f"k{key}", event_type="Placed", payload={"i": i}
        )
        events.append((key % partitions, event))
    sentinels = [
        (
            p,
            OutboxEvent.create(
                aggregate_type="end", aggregate_id=f"end{p}", event_type="End", payload={}
            ),
        )
        for p in range(partitions)
    ]
    # The relay's producer settings (256 KB batches, 5 ms linger): consumers fetch
    # what the broker stored in batches that size.
    producer = AIOKafkaProducer(
        bootstrap_servers=BOOTSTRAP, acks=1, linger_ms=5, max_batch_size=262_144
    )
    await producer.start()
    try:
        futures = []
        for partition, event in events + events + sentinels:
            futures.append(
                await producer.send(
                    topic,
                    value=event.payload,
                    key=event.aggregate_id.encode(),
                    headers=kafka_headers(event),
                    partition=partition,
                )
            )
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return topic


class Clock:
    """First handled event → N-th, then N-th → the last sentinel."""

    def __init__(self, n: int, partitions: int) -> None:
        self.n, self.sentinels = n, partitions
        self.handled = 0
        self.t0 = self.c0 = self.t1 = self.c1 = self.t2 = 0.0
        self.done = asyncio.Event()  # the last sentinel was handled
        self.reached = asyncio.Event()  # the N-th event was handled

    def tick(self, event: ReceivedEvent) -> None:
        if event.aggregate_type == "end":
            self.sentinels -= 1
        else:
            self.handled += 1
            if self.handled == 1:
                self.t0, self.c0 = time.perf_counter(), cpu()
            if self.handled == self.n:
                self.t1, self.c1 = time.perf_counter(), cpu()
                self.reached.set()
        # Keys run concurrently: a sentinel may finish before other keys' records.
        if self.sentinels == 0 and self.handled == self.n and not self.done.is_set():
            self.t2 = time.perf_counter()
            self.done.set()

    def result(self, dedup: bool) -> dict[str, float]:
        rate = (self.n - 1) / (self.t1 - self.t0)
        out = {"rate": rate, "cpu_us": (self.c1 - self.c0) / (self.n - 1) * 1e6}
        if dedup:
            out["dups"] = self.n / (self.t2 - self.t1)
        return out


async def run_raw(topic: str, n: int) -> dict[str, float]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=BOOTSTRAP, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    try:
        # No group here: the clock starts at the first fetch.
        got, t0, c0 = 0, time.perf_counter(), cpu()
        while got < n:
            batch = await consumer.getmany(timeout_ms=1000, max_records=500)
            got += sum(len(records) for records in batch.values())
        t1, c1 = time.perf_counter(), cpu()
        return {"rate": (got - 1) / (t1 - t0), "cpu_us": (c1 - c0) / (got - 1) * 1e6}
    finally:
        await consumer.stop()


def make_handler(mode: str, kind: str, clock: Clock, store: Any) -> Callable[..., Any]:
    if mode == "plain":

        async def plain(event: ReceivedEvent) -> None:
            if kind == "sleep":
                await asyncio.sleep(0.001)
            clock.tick(event)

        return plain
    if mode == "redis":

        @idempotent_consumer(store=store, consumer_name="bench")
        async def on_redis(event: ReceivedEvent) -> None:
            if kind == "sleep":
                await asyncio.sleep(0.001)
            clock.tick(event)

        return on_redis

    @idempotent_consumer(store=store, consumer_name="bench")
    async def on_sql(event: ReceivedEvent, session: AsyncSession) -> None:
        if kind == "sleep":
            await asyncio.sleep(0.001)
        clock.tick(event)

    return on_sql


@contextlib.asynccontextmanager
async def sql_store(batch: bool) -> Any:
    db = f"bench_consumer_{uuid.uuid4().hex[:8]}"
    with connect() as conn, conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE {db}")
    try:
        sync_engine = sa.create_engine(mysql_url(db))
        metadata = sa.MetaData()
        inbox_table(metadata)
        metadata.create_all(sync_engine)
        sync_engine.dispose()
        url = mysql_url(db).replace("mysql+pymysql", "mysql+asyncmy")
        engine = create_async_engine(url, pool_size=32, max_overflow=0)
        try:
            yield AsyncSqlStore(
                async_sessionmaker(engine, expire_on_commit=False), batch_transactions=batch
            )
        finally:
            await engine.dispose()
    finally:
        with connect() as conn, conn.cursor() as cur:
            cur.execute(f"DROP DATABASE {db}")


async def run_runner(mode: str, kind: str, topic: str, n: int, partitions: int) -> dict[str, float]:
    clock = Clock(n, partitions)
    async with contextlib.AsyncExitStack() as stack:
        store: Any = None
        if mode == "redis":
            client = redis.asyncio.Redis.from_url(REDIS_URL)
            stack.push_async_callback(client.aclose)
            store = AsyncRedisStore(
                client, prefix=f"bench:{uuid.uuid4().hex[:8]}:", done_ttl_ms=600_000
            )
        elif mode in ("sql", "sql1"):
            store = await stack.enter_async_context(sql_store(batch=mode == "sql"))
        settings = RunnerSettings(
            kafka=KafkaConnection(bootstrap_servers=BOOTSTRAP),
            group_id=f"bench-{uuid.uuid4().hex[:8]}",
            topics=[topic],
            session_timeout_ms=3000,
            heartbeat_interval_ms=300,
        )
        runner = ConsumerRunner(make_handler(mode, kind, clock, store), settings)
        task = asyncio.ensure_future(runner.run(install_signal_handlers=False))
        wait = asyncio.ensure_future((clock.done if mode in DEDUP else clock.reached).wait())
        await asyncio.wait({task, wait}, timeout=600, return_when=asyncio.FIRST_COMPLETED)
        runner.stop()
        await task  # raises the runner's error, if any
        wait.cancel()
        if mode in DEDUP and clock.handled != n:
            raise SystemExit(f"{mode}: handler ran {clock.handled} times for {n} events")
        return clock.result(mode in DEDUP)
    raise AssertionError("unreachable")


def fmt(values: list[float]) -> str:
    med = statistics.median(values)
    return f"{med:>9,.0f} ({min(values):,.0f}-{max(values):,.0f})"


async def main_async(args: argparse.Namespace) -> list[tuple[str, str, int, int, dict[str, Any]]]:
    n = 300 if args.quick else args.events
    rows = []
    print(
        f"consumer throughput: {n} events per run, {args.runs} run(s), {os.cpu_count()} cores;"
        " events/s median (min-max), CPU us/event of this process"
    )
    print(
        f"{'mode':<6} {'handler':<6} {'parts':>5} {'keys':>6} {'events/s':>24} {'cpu us':>7}"
        f" {'dups/s':>24}"
    )
    for partitions in args.partitions or [4]:
        for keys in args.keys or [10_000]:
            topic = await publish(n, partitions, keys)
            for mode in args.mode or list(MODES):
                for kind in ["noop"] if mode == "raw" else args.handler or ["noop", "sleep"]:
                    runs = []
                    for _ in range(args.runs):
                        if mode == "raw":
                            runs.append(await run_raw(topic, n))
                        else:
                            runs.append(await run_runner(mode, kind, topic, n, partitions))
                    rate = [r["rate"] for r in runs]
                    cpu_us = statistics.median(r["cpu_us"] for r in runs)
                    dups = fmt([r["dups"] for r in runs]) if "dups" in runs[0] else ""
                    print(
                        f"{mode:<6} {kind:<6} {partitions:>5} {keys:>6} {fmt(rate):>24}"
                        f" {cpu_us:>7.1f} {dups:>24}",
                        flush=True,
                    )
                    rows.append((mode, kind, partitions, keys, {"rate": rate, "runs": runs}))
    return rows


def plot(path: Path, rows: list[tuple[str, str, int, int, dict[str, Any]]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = sorted({r[1] for r in rows if r[0] != "raw"}) or ["noop"]
    fig, axes = plt.subplots(len(kinds), 1, figsize=(11, 3.6 * len(kinds)), squeeze=False)
    groups = sorted({(r[2], r[3]) for r in rows})
    modes = [m for m in MODES if any(r[0] == m for r in rows)]
    width = 0.8 / max(len(modes), 1)
    for ax, kind in zip(axes[:, 0], kinds, strict=True):
        for k, mode in enumerate(modes):
            meds = []
            for g in groups:
                hit = [r for r in rows if r[0] == mode and (r[0] == "raw" or r[1] == kind)]
                hit = [r for r in hit if (r[2], r[3]) == g]
                meds.append(statistics.median(hit[0][4]["rate"]) if hit else 0)
            xs = [i + (k - (len(modes) - 1) / 2) * width for i in range(len(groups))]
            ax.bar(xs, meds, width, label=mode)
        ax.set_xticks(range(len(groups)), [f"{p} parts\n{k} keys" for p, k in groups], fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("events/s (median)")
        ax.set_title(f"handler: {kind}", fontsize=10)
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8, ncol=len(modes))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--partitions", type=int, action="append", help="default 4 (repeatable)")
    parser.add_argument("--keys", type=int, action="append", help="default 10000 (repeatable)")
    parser.add_argument("--mode", choices=MODES, action="append", help="default: all")
    parser.add_argument("--handler", choices=("noop", "sleep"), action="append")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--plot", type=Path, help="write a bar chart (PNG) here")
    parser.add_argument("--quick", action="store_true", help="tiny run (smoke test)")
    args = parser.parse_args()
    rows = asyncio.run(main_async(args))
    if args.plot:
        plot(args.plot, rows)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    sys.exit(main())
