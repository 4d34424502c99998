"""Where the one-event cost of ``bench/write_overhead.py`` goes (sync, PyMySQL).

A diagnostic: the same harness and transaction (one business row + commit), with
the outbox session's write step (its private ``_outbox_write``) replaced to leave
out one part at a time, in interleaved rounds, median round:

- ``1 event, not sent``: the event built and buffered, nothing sent;
- ``1 event, DO 1 sent``: an empty statement instead of the outbox's (one round trip);
- ``1 event, raw cursor``: the outbox's statement sent on the DBAPI cursor, not
  through SQLAlchemy's ``exec_driver_sql``;
- ``1 event``: the SDK as shipped.

    .venv/bin/python bench/write_overhead_split.py            # full size
    .venv/bin/python bench/write_overhead_split.py --quick    # smoke test
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.orm import sessionmaker
from write_overhead import STACK_URL, Base, sync_txn

from transactional_outbox import OutboxSession, outbox_table
from transactional_outbox._outbox_sql import write_rows
from transactional_outbox.session import _row


class NotSent(OutboxSession):
    def _outbox_write(self, *, at_commit: bool = False) -> None:
        self._outbox_pending = []


class EmptyStatement(OutboxSession):
    def _outbox_write(self, *, at_commit: bool = False) -> None:
        if self._outbox_pending:
            self._outbox_pending = []
            self.connection().exec_driver_sql("DO 1")


class _CursorConnection:
    """What write_rows uses of a Connection, sending on the DBAPI cursor directly."""

    def __init__(self, conn: sa.Connection) -> None:
        self.dialect = conn.dialect
        self.get_execution_options = conn.get_execution_options
        self._cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]

    def exec_driver_sql(self, sql: str, params: Any) -> None:
        self._cursor.execute(sql, params)


class RawCursor(OutboxSession):
    def _outbox_write(self, *, at_commit: bool = False) -> None:
        events, self._outbox_pending = self._outbox_pending, []
        if events:
            plan = self._outbox.plan
            conn = _CursorConnection(self.connection(bind_arguments={"clause": plan.table}))
            write_rows(conn, plan, [_row(e) for e in events], delete=True)  # type: ignore[arg-type]


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
    try:
        engine = sa.create_engine(server.set(database=database))
        Base.metadata.create_all(engine)
        outbox_table(sa.MetaData()).create(engine)
        runs: dict[str, Callable[[int], None]] = {
            "no outbox": sync_txn(sessionmaker(engine), None),
            "0 events": sync_txn(sessionmaker(engine, class_=OutboxSession), 0),
            "1 event, not sent": sync_txn(sessionmaker(engine, class_=NotSent), 1),
            "1 event, DO 1 sent": sync_txn(sessionmaker(engine, class_=EmptyStatement), 1),
            "1 event, raw cursor": sync_txn(sessionmaker(engine, class_=RawCursor), 1),
            "1 event": sync_txn(sessionmaker(engine, class_=OutboxSession), 1),
        }
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
        engine.dispose()
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS `{database}`")
        admin.dispose()
    base = statistics.median(times["no outbox"])
    print(f"{iterations} transactions x {rounds} rounds per scenario; median round (sync)")
    print(f"{'scenario':<22} {'us/txn':>7} {'ratio':>6}")
    for name, seconds in times.items():
        median = statistics.median(seconds)
        print(f"{name:<22} {median * 1e6:>7.0f} {median / base:>6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
