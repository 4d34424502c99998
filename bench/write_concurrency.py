"""Concurrent writers through OutboxSession on the local stack's MariaDB: throughput,
deadlocks and failures.

8 threads (one connection each) commit transactions of one business row plus N events
(``add_event``), retrying a transaction up to 5 times after a deadlock (1213) or a lock
wait timeout (1205), as an application would. Printed per N: transactions and events
per second, deadlocks, lock wait timeouts, transactions that failed after 5 tries, and
InnoDB's row lock waits (``Innodb_row_lock_waits``: waits that ended in time too).
Default sizes are the ones issue 26 reported (2,400 / 1,600 / 240 transactions at 1 /
5 / 40 events). The benchmark creates its own database and drops it afterwards.

    .venv/bin/python bench/write_concurrency.py             # full size
    .venv/bin/python bench/write_concurrency.py --quick     # a few transactions (smoke test)
    .venv/bin/python bench/write_concurrency.py --isolation "READ COMMITTED"
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import pymysql
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from transactional_outbox import OutboxSession, outbox_table

STACK_URL = "mysql+pymysql://outbox:outbox@127.0.0.1:13306/outbox"
TRIES = 5
# Transactions per writer for each events-per-transaction count (x8 writers: 2,400,
# 1,600 and 240, the figures).
SHAPES = {1: 300, 5: 200, 40: 30}
HEADER = (
    f"{'events/txn':>10} {'txns':>6} {'seconds':>8} {'txn/s':>7} {'events/s':>9}"
    f" {'deadlocks':>9} {'timeouts':>8} {'failed':>7} {'row lock waits':>14}"
)


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "items"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(sa.String(64))
    qty: Mapped[int]


@dataclass
class Counts:
    committed: int = 0
    deadlocks: int = 0
    lock_waits: int = 0
    failed: int = 0


def writer(factory: sessionmaker[Any], events: int, txns: int, go: threading.Barrier) -> Counts:
    counts = Counts()
    with factory.begin() as session:  # open this thread's connection before the clock starts
        session.execute(sa.text("SELECT 1"))
    go.wait()
    for i in range(txns):
        for _ in range(TRIES):
            try:
                with factory.begin() as session:
                    session.add(Item(name="widget", qty=i))
                    for n in range(events):
                        session.add_event(
                            aggregate_type="order",
                            aggregate_id=i,
                            event_type=f"E{n}",
                            payload={"order_id": i, "line": n, "total": "42.50"},
                        )
                counts.committed += 1
                break
            except sa.exc.OperationalError as exc:
                code = exc.orig.args[0] if isinstance(exc.orig, pymysql.MySQLError) else None
                if code == 1213:
                    counts.deadlocks += 1
                elif code == 1205:
                    counts.lock_waits += 1
                else:
                    raise
        else:
            counts.failed += 1
    return counts


def run(engine: sa.Engine, events: int, txns: int, writers: int) -> tuple[Counts, float]:
    factory = sessionmaker(engine, class_=OutboxSession)
    go = threading.Barrier(writers + 1)
    results: list[Counts] = []
    lock = threading.Lock()

    def work() -> None:
        counts = writer(factory, events, txns, go)
        with lock:
            results.append(counts)

    threads = [threading.Thread(target=work) for _ in range(writers)]
    for t in threads:
        t.start()
    go.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    total = Counts()
    for c in results:
        total.committed += c.committed
        total.deadlocks += c.deadlocks
        total.lock_waits += c.lock_waits
        total.failed += c.failed
    return total, seconds


def row_lock_waits(admin: sa.Engine) -> int:
    """The server's count of InnoDB row lock waits so far (global: the whole server)."""
    with admin.connect() as conn:
        row = conn.exec_driver_sql("SHOW GLOBAL STATUS LIKE 'Innodb_row_lock_waits'").one()
    return int(row[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few transactions per writer")
    parser.add_argument("--writers", type=int, default=8, help="threads, one connection each")
    parser.add_argument(
        "--isolation",
        default="REPEATABLE READ",
        choices=["REPEATABLE READ", "READ COMMITTED"],
        help="the writers' transaction isolation level",
    )
    parser.add_argument(
        "--lock-wait-timeout", type=int, default=50, help="innodb_lock_wait_timeout (session)"
    )
    args = parser.parse_args(argv)
    shapes = {n: 2 for n in SHAPES} if args.quick else SHAPES

    server = make_url(os.environ.get("OUTBOX_MYSQL_URL", STACK_URL))
    database = f"bench_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(server)
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE `{database}`")
    try:
        engine = sa.create_engine(
            server.set(database=database),
            isolation_level=args.isolation,
            pool_size=args.writers,
            max_overflow=0,
        )

        @sa.event.listens_for(engine, "connect")
        def lock_wait_timeout(dbapi_conn: Any, _record: Any) -> None:
            with dbapi_conn.cursor() as cur:
                cur.execute(f"SET SESSION innodb_lock_wait_timeout = {args.lock_wait_timeout}")

        Base.metadata.create_all(engine)
        outbox_table(sa.MetaData()).create(engine)
        print(f"{args.writers} writers, {args.isolation}, up to {TRIES} tries a transaction")
        print(HEADER)
        print("-" * len(HEADER))
        for events, txns in shapes.items():
            waits = row_lock_waits(admin)
            counts, seconds = run(engine, events, txns, args.writers)
            waits = row_lock_waits(admin) - waits
            print(
                f"{events:>10} {counts.committed + counts.failed:>6} {seconds:>8.2f}"
                f" {counts.committed / seconds:>7.0f} {counts.committed * events / seconds:>9.0f}"
                f" {counts.deadlocks:>9} {counts.lock_waits:>8} {counts.failed:>7} {waits:>14}",
                flush=True,
            )
        engine.dispose()
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS `{database}`")
        admin.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
