"""What the outbox adds to a business transaction, on the local stack's MariaDB.

A transaction inserts one row into a small business table and commits, with no
outbox (baseline), then through an outbox session with 0, 1 and 10 events
(insert-then-delete). Sync (PyMySQL) and async (asyncmy). Scenarios run in
interleaved rounds and the median round is reported, so drift on a shared
machine hits every scenario alike. The benchmark creates its own database
and drops it afterwards.

    .venv/bin/python bench/write_overhead.py            # full size
    .venv/bin/python bench/write_overhead.py --quick    # a few iterations (smoke test)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from transactional_outbox import AsyncOutboxSession, OutboxSession, outbox_table

STACK_URL = "mysql+pymysql://outbox:outbox@127.0.0.1:13306/outbox"
HEADER = f"{'mode':<6} {'scenario':<12} {'us/txn':>9} {'txn/s':>8} {'ratio':>6}"
EVENT_COUNTS = (0, 1, 10)


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "items"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(sa.String(64))
    qty: Mapped[int]


def payload(i: int) -> dict[str, Any]:
    """A typical small event body (~150 bytes of JSON)."""
    return {
        "order_id": i,
        "customer": "c-1234",
        "lines": [{"sku": "SKU-1", "qty": 2}, {"sku": "SKU-2", "qty": 1}],
        "total": "42.50",
        "currency": "EUR",
    }


def sync_txn(factory: sessionmaker[Any], events: int | None) -> Callable[[int], None]:
    def run(i: int) -> None:
        with factory.begin() as session:
            session.add(Item(name="widget", qty=i))
            for n in range(events or 0):
                session.add_event(
                    aggregate_type="order", aggregate_id=i, event_type=f"E{n}", payload=payload(i)
                )

    return run


def async_txn(
    factory: async_sessionmaker[Any], events: int | None
) -> Callable[[int], Coroutine[Any, Any, None]]:
    async def run(i: int) -> None:
        async with factory.begin() as session:
            session.add(Item(name="widget", qty=i))
            for n in range(events or 0):
                session.add_event(
                    aggregate_type="order", aggregate_id=i, event_type=f"E{n}", payload=payload(i)
                )

    return run


def scenarios() -> list[tuple[str, int | None]]:
    return [("no outbox", None)] + [(f"{n} event{'' if n == 1 else 's'}", n) for n in EVENT_COUNTS]


def run_sync(url: URL, iterations: int, rounds: int) -> dict[str, float]:
    engine = sa.create_engine(url)
    try:
        plain = sessionmaker(engine)
        outbox = sessionmaker(engine, class_=OutboxSession)
        runs = {name: sync_txn(plain if n is None else outbox, n) for name, n in scenarios()}
        for run in runs.values():  # warm up pool, caches and compiled statements
            for i in range(max(10, iterations // 20)):
                run(i)
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(rounds):
            for name, run in runs.items():
                start = time.perf_counter()
                for i in range(iterations):
                    run(i)
                times[name].append((time.perf_counter() - start) / iterations)
        return {name: statistics.median(t) for name, t in times.items()}
    finally:
        engine.dispose()


async def run_async(url: URL, iterations: int, rounds: int) -> dict[str, float]:
    engine: AsyncEngine = create_async_engine(url.set(drivername="mysql+asyncmy"))
    try:
        plain = async_sessionmaker(engine)
        outbox = async_sessionmaker(engine, class_=AsyncOutboxSession)
        runs = {name: async_txn(plain if n is None else outbox, n) for name, n in scenarios()}
        for run in runs.values():
            for i in range(max(10, iterations // 20)):
                await run(i)
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(rounds):
            for name, run in runs.items():
                start = time.perf_counter()
                for i in range(iterations):
                    await run(i)
                times[name].append((time.perf_counter() - start) / iterations)
        return {name: statistics.median(t) for name, t in times.items()}
    finally:
        await engine.dispose()


def print_table(results: dict[str, dict[str, float]]) -> None:
    print(HEADER)
    print("-" * len(HEADER))
    for mode, per_txn in results.items():
        base = per_txn["no outbox"]
        for name, seconds in per_txn.items():
            print(
                f"{mode:<6} {name:<12} {seconds * 1e6:>9.0f} {1 / seconds:>8.0f}"
                f" {seconds / base:>6.2f}"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny iteration counts")
    parser.add_argument("--iterations", type=int, default=500, help="transactions per round")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (median)")
    args = parser.parse_args(argv)
    iterations, rounds = (5, 1) if args.quick else (args.iterations, args.rounds)

    server = make_url(os.environ.get("OUTBOX_MYSQL_URL", STACK_URL))
    database = f"bench_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(server)
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE `{database}`")
    url = server.set(database=database)
    try:
        setup = sa.create_engine(url)
        Base.metadata.create_all(setup)
        outbox_table(sa.MetaData()).create(setup)
        setup.dispose()
        results = {
            "sync": run_sync(url, iterations, rounds),
            "async": asyncio.run(run_async(url, iterations, rounds)),
        }
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS `{database}`")
        admin.dispose()
    print(f"{iterations} transactions x {rounds} rounds per scenario; median round")
    print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
