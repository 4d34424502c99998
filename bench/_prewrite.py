"""A pre-written binlog range of outbox transactions of one shape, with or without noise,
written fast, and counted afterwards (``SHOW BINLOG EVENTS``) so the range holds exactly
the transactions the benchmark says it does.

Writing one-event transactions is the slow part (MariaDB commits ~2,200/s from eight
connections one statement at a time here). So several processes each send many
transactions per round trip, as multi-statement bodies (``BEGIN; INSERT ...; DELETE
...; COMMIT; BEGIN; ...``): each transaction is still its own binlog transaction
(GTID ... XID), as ``session.add_event()`` + commit writes it. Measured here: one
connection 2,700 txn/s at one transaction per round trip, 5,200/s at 64.

Noise: each outbox transaction also inserts one business row per event (table
``orders`` of the outbox database, one multi-row INSERT), and unrelated transactions
of ``NOISE_STATEMENTS`` single-row statements on another database are interleaved
evenly with the outbox ones, sized so that ``noise_pct`` % of the range's row events
(WRITE/UPDATE/DELETE_ROWS) are not the outbox table's (measured per shape on one
calibration transaction, then checked on the whole range).
"""

from __future__ import annotations

import math
import multiprocessing as mp
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pymysql
from _common import connect, master_status, run_multi

from transactional_outbox._outbox_sql import delete_sql

NOISE_STATEMENTS = 4  # single-row statements per unrelated transaction
ACCOUNTS_PER_WRITER = 100  # each writer updates its own accounts: no lock waits
ORDERS_DDL = """CREATE TABLE orders (id BIGINT AUTO_INCREMENT PRIMARY KEY,
 customer VARCHAR(32) NOT NULL, total DECIMAL(10,2) NOT NULL, created DATETIME(6) NOT NULL)"""
LEDGER_DDL = """CREATE TABLE ledger (id BIGINT AUTO_INCREMENT PRIMARY KEY, account INT NOT NULL,
 amount DECIMAL(12,2) NOT NULL, note VARCHAR(64) NOT NULL)"""
ACCOUNTS_DDL = """CREATE TABLE accounts (id INT PRIMARY KEY, balance DECIMAL(14,2) NOT NULL,
 updated DATETIME(6) NOT NULL)"""


def payload_text(size: int) -> str:
    """A JSON payload of ``size`` bytes (SQL-safe: no quote or backslash)."""
    return ('{"data":"' + "x" * max(size - 11, 0) + '"}')[:size]


@dataclass(frozen=True)
class Shape:
    """Outbox events per transaction, payload bytes, and business rows or not."""

    per_txn: int
    size: int
    business: bool


def outbox_txn_sql(shape: Shape, first: int, base: datetime, payload: str) -> str:
    """One outbox transaction of ``shape.per_txn`` events numbered from ``first``: business
    rows (if any), the multi-row outbox INSERT, the DELETE, COMMIT. Event timestamps are
    ``base`` + 40 µs per event number (distinct, as in real use)."""
    ids, rows, orders = [], [], []
    for i in range(first, first + shape.per_txn):
        h = uuid.uuid4().hex
        ts = (base + timedelta(microseconds=40 * i)).strftime("%Y-%m-%d %H:%M:%S.%f")
        ids.append(f"X'{h}'")
        rows.append(f"(X'{h}','order','order-{i % 1000}','OrderPlaced','{payload}','{{}}','{ts}')")
        if shape.business:
            orders.append(f"('c-{i % 5000}',{i % 997}.50,'{ts}')")
    sql = "BEGIN;"
    if orders:
        sql += f"INSERT INTO orders (customer,total,created) VALUES {','.join(orders)};"
    sql += f"INSERT INTO outbox VALUES {','.join(rows)};"
    # As the SDK deletes (_outbox_sql.delete_sql): the ids joined to the table by primary
    # key, since an IN list of several ids is planned as a locking full scan here.
    sql += delete_sql("outbox", "id", ids) + ";"
    return sql + "COMMIT;"


def noise_txn_sql(other: str, writer: int, seq: int) -> str:
    """An unrelated transaction on database ``other``: single-row inserts and updates."""
    stmts = []
    for k in range(NOISE_STATEMENTS):
        account = writer * ACCOUNTS_PER_WRITER + (seq * NOISE_STATEMENTS + k) % ACCOUNTS_PER_WRITER
        if k % 2 == 0:
            stmts.append(
                f"INSERT INTO {other}.ledger (account,amount,note) "
                f"VALUES ({account},{seq % 1000}.25,'transfer {seq}')"
            )
        else:
            stmts.append(
                f"UPDATE {other}.accounts SET balance=balance+1,updated=NOW(6) WHERE id={account}"
            )
    return "BEGIN;" + ";".join(stmts) + ";COMMIT;"


@dataclass(frozen=True)
class Job:
    """One writer process's share: outbox transactions [first_txn, first_txn + txns), and
    ``noise_txns`` unrelated ones interleaved evenly."""

    db: str
    other: str
    shape: Shape
    base: datetime
    writer: int
    first_txn: int
    txns: int
    noise_txns: int


def run_txns(cur: Any, txns: list[str]) -> int:
    """Commit ``txns`` (each ``BEGIN;...;COMMIT;``) in one round trip; after a deadlock or
    lock wait timeout, roll back and send again from the transaction that failed. Returns
    the number of retries.

    Deadlocks happen with more than 32 events per transaction: the outbox ``DELETE ... WHERE
    id IN (...)`` of more than one id is planned as a full scan of the (nearly empty) table
    here (EXPLAIN: type ALL), so it waits for other writers' uncommitted rows.
    """
    retries = 0
    while txns:
        done = 0  # statements whose result was read
        try:
            cur.execute("".join(txns))
            done = 1
            while cur.nextset():
                done += 1
            return retries
        except pymysql.err.OperationalError as exc:
            if exc.args[0] not in (1205, 1213):
                raise
            cur.execute("ROLLBACK")  # a lock wait timeout leaves the transaction open
            retries += 1
            while txns and done >= (n := txns[0].count(";")):
                done -= n  # committed before the failure
                txns = txns[1:]
    return retries


def _writer_main(job: Job, ready: Any, go: Any, out: Any) -> None:
    conn = connect(job.db, multi=True)
    cur = conn.cursor()
    payload = payload_text(job.shape.size)
    per_trip = max(1, 64 // job.shape.per_txn)  # ~64 events per round trip
    ready.wait()
    go.wait()
    t0 = time.perf_counter()
    body: list[str] = []
    noise_done = retries = 0
    for j in range(job.txns):
        first = (job.first_txn + j) * job.shape.per_txn
        body.append(outbox_txn_sql(job.shape, first, job.base, payload))
        due = job.noise_txns * (j + 1) // job.txns
        while noise_done < due:
            body.append(noise_txn_sql(job.other, job.writer, noise_done))
            noise_done += 1
        if len(body) >= per_trip:
            retries += run_txns(cur, body)
            body = []
    while noise_done < job.noise_txns:  # a writer with no outbox transaction of its own
        body.append(noise_txn_sql(job.other, job.writer, noise_done))
        noise_done += 1
        if len(body) >= 64:
            retries += run_txns(cur, body)
            body = []
    if body:
        retries += run_txns(cur, body)
    conn.close()
    out.send((time.perf_counter() - t0, retries))
    out.close()


@dataclass
class RangeCount:
    """What a binlog range holds, by ``SHOW BINLOG EVENTS``."""

    events: int = 0
    txns: Counter[str] = field(default_factory=Counter)  # outbox, noise, foreign, other
    row_events: Counter[str] = field(default_factory=Counter)  # by table category
    last_outbox_end: tuple[str, int] | None = None

    @property
    def noise_fraction(self) -> float:
        """Share of the range's row events that are not the outbox table's (ours only)."""
        ours = self.row_events["outbox"] + self.row_events["business"]
        ours += self.row_events["unrelated"]
        return 1 - self.row_events["outbox"] / ours if ours else 0.0


def count_range(start: tuple[str, int], end: tuple[str, int], db: str, other: str) -> RangeCount:
    """Count the transactions and row events of ``[start, end)`` by table category:
    ``outbox`` (db.outbox), ``business`` (db's other tables), ``unrelated`` (``other``),
    ``foreign`` (anyone else's: other work on a shared server)."""
    conn = connect()
    with conn.cursor() as cur:
        cur.execute("SHOW BINARY LOGS")
        files = [str(r[0]) for r in cur.fetchall() if start[0] <= str(r[0]) <= end[0]]
    tables: dict[str, str] = {}
    rc = RangeCount()
    touched: set[str] | None = None

    def close(at: tuple[str, int]) -> None:
        nonlocal touched
        assert touched is not None
        if "outbox" in touched:
            rc.txns["outbox"] += 1
            rc.last_outbox_end = at
        elif touched and touched <= {"business", "unrelated"}:
            rc.txns["noise"] += 1
        else:
            rc.txns["foreign" if touched else "other"] += 1
        touched = None

    for f in files:
        with conn.cursor(pymysql.cursors.SSCursor) as scur:
            scur.execute(f"SHOW BINLOG EVENTS IN '{f}' FROM {start[1] if f == start[0] else 4}")
            for _, at, etype, _, end_pos, info in scur:
                if f == end[0] and at >= end[1]:
                    break
                rc.events += 1
                if etype == "Gtid":
                    touched = set()
                elif etype == "Table_map":
                    name = info.split("(", 1)[1].rstrip(")")
                    schema = name.split(".", 1)[0]
                    tables[info.split()[1]] = (
                        "outbox"
                        if name == f"{db}.outbox"
                        else "business"
                        if schema == db
                        else "unrelated"
                        if schema == other
                        else "foreign"
                    )
                elif "_rows" in etype:
                    category = tables.get(info.split()[1], "foreign")
                    rc.row_events[category] += 1
                    if touched is not None:
                        touched.add(category)
                elif touched is not None and (
                    etype == "Xid" or (etype == "Query" and not info.startswith("BEGIN"))
                ):
                    close((f, int(end_pos)))  # XID, COMMIT, or a DDL statement
    conn.close()
    return rc


@dataclass
class Written:
    """A pre-written range: ``end`` is the end of its last outbox transaction."""

    start: tuple[str, int]
    end: tuple[str, int]
    txns: int
    noise_txns: int
    write_seconds: float
    retries: int
    count: RangeCount
    count_seconds: float


def prepare(db: str, other: str, noise: bool) -> None:
    """Create the business and unrelated tables (the outbox table exists)."""
    with connect(db) as conn, conn.cursor() as cur:
        if noise:
            cur.execute(ORDERS_DDL)
            cur.execute(f"CREATE DATABASE {other}")
            cur.execute(f"USE {other}")
            cur.execute(LEDGER_DDL)
            cur.execute(ACCOUNTS_DDL)
            values = ",".join(f"({a},0,NOW(6))" for a in range(ACCOUNTS_PER_WRITER * 64))
            cur.execute(f"INSERT INTO accounts VALUES {values}")


def prewrite(db: str, other: str, shape: Shape, txns: int, noise_pct: int, writers: int) -> Written:
    """Write ``txns`` outbox transactions of ``shape`` (+ noise) with ``writers``
    processes, then one last outbox transaction alone, and count the range."""
    if writers > 64:
        raise SystemExit("--writers: at most 64")
    base = datetime.now(UTC).replace(tzinfo=None)
    payload = payload_text(shape.size)
    conn = connect(db, multi=True)
    cur = conn.cursor()
    noise_txns = 0
    if noise_pct:
        # Calibrate: the row events of one outbox transaction of this shape.
        before = master_status(cur)
        run_multi(cur, outbox_txn_sql(shape, 0, base, payload))
        one = count_range(before, master_status(cur), db, other)
        ours = one.row_events["outbox"] * noise_pct / (100 - noise_pct)
        per_txn = max(ours - one.row_events["business"], 0)
        noise_txns = math.ceil(per_txn * txns / NOISE_STATEMENTS)
    start = master_status(cur)
    ctx = mp.get_context("spawn")
    ready, go = ctx.Barrier(writers + 1), ctx.Event()
    procs, pipes = [], []
    body_txns = txns - 1  # the last one is written alone, after the writers
    for w in range(writers):
        a, b = body_txns * w // writers, body_txns * (w + 1) // writers
        n_a, n_b = noise_txns * w // writers, noise_txns * (w + 1) // writers
        job = Job(db, other, shape, base, w, a, b - a, n_b - n_a)
        parent, child = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_writer_main, args=(job, ready, go, child), daemon=True)
        proc.start()
        child.close()
        procs.append(proc)
        pipes.append(parent)
    ready.wait()
    t0 = time.perf_counter()
    go.set()
    retries = 0
    for parent, proc in zip(pipes, procs, strict=True):
        try:
            retries += parent.recv()[1]
        except EOFError:
            proc.join()
            raise SystemExit(f"a writer process failed (exit code {proc.exitcode})") from None
    run_multi(cur, outbox_txn_sql(shape, body_txns * shape.per_txn, base, payload))
    write_seconds = time.perf_counter() - t0
    for proc in procs:  # their exit is not part of the writing time
        proc.join()
    head = master_status(cur)
    conn.close()
    t1 = time.perf_counter()
    count = count_range(start, head, db, other)
    count_seconds = time.perf_counter() - t1
    if count.txns["outbox"] != txns or count.txns["noise"] != noise_txns:
        raise SystemExit(
            f"the binlog range holds {count.txns['outbox']} outbox and "
            f"{count.txns['noise']} unrelated transactions, expected {txns} and {noise_txns}"
        )
    assert count.last_outbox_end is not None
    return Written(
        start,
        count.last_outbox_end,
        txns,
        noise_txns,
        write_seconds,
        retries,
        count,
        count_seconds,
    )
