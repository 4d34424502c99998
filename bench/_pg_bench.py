"""What the PostgreSQL relay benchmarks share: the stack's PostgreSQL, a schema per run
with its outbox, publication and slots, server-side writers of one-shape transactions
(both write modes, optional noise), and the relay's environment.

Everything runs as the stack's ``outbox`` role (LOGIN REPLICATION, owner of the
database ``outbox``): each run gets a schema of its own (``bench_<id>``) holding the
outbox table and the noise tables, dropped afterwards with its slots.

Write modes (what ``OutboxSession(outbox_mode=...)`` writes):

* ``table``: INSERT of the events into the outbox table, DELETE of them, COMMIT;
* ``message``: one ``pg_logical_emit_message(true, 'outbox', content)`` per event
  (``_pg_message`` version 1: the same bytes ``encode_message`` builds), COMMIT.

Events carry the SDK's default header (``content-type: application/json``), a
``--size`` byte JSON payload, aggregate ids ``order-0`` .. ``order-999``.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from dataclasses import dataclass

from _common import BOOTSTRAP, REDIS_URL
from _prewrite import payload_text

from outbox_dev import stack
from outbox_dev.pg import DATABASE, HOST, PASSWORD, USER
from transactional_outbox.relay.postgres import (
    PgConnectParams,
    PgWire,
    ensure_publication,
    ensure_slot,
    parse_lsn,
)

PORT = stack.PG_PORT
URL = f"postgresql://{USER}:{PASSWORD}@{HOST}:{PORT}/{DATABASE}"
PREFIX = "outbox"  # the message prefix (the SDK's default)
MODES = ("table", "message")
HEADERS = '{"content-type":"application/json"}'  # what the SDK writes by default
NOISE_STATEMENTS = 4  # single-row statements per unrelated transaction
ACCOUNTS_PER_WRITER = 100  # each writer updates its own accounts: no lock waits

TABLES_DDL = """
CREATE TABLE {s}.outbox (id bytea PRIMARY KEY, aggregatetype varchar(255) NOT NULL,
  aggregateid varchar(255) NOT NULL, type varchar(255) NOT NULL, payload bytea NOT NULL,
  headers text, "timestamp" timestamp NOT NULL);
CREATE TABLE {s}.orders (id bigserial PRIMARY KEY, customer varchar(32) NOT NULL,
  total numeric(10,2) NOT NULL, created timestamp NOT NULL);
CREATE TABLE {s}.ledger (id bigserial PRIMARY KEY, account int NOT NULL,
  amount numeric(12,2) NOT NULL, note varchar(64) NOT NULL);
CREATE TABLE {s}.accounts (id int PRIMARY KEY, balance numeric(14,2) NOT NULL,
  updated timestamp NOT NULL);
"""


def params() -> PgConnectParams:
    """The stack's PostgreSQL as the ``outbox`` role."""
    return PgConnectParams.from_url(URL)


def sql(statement: str) -> list[tuple[str | None, ...]]:
    """Run one simple-protocol statement (or several, ``;``-separated) on a new connection."""
    conn = PgWire(params())
    try:
        return conn.query(statement)
    finally:
        conn.close()


def current_lsn(conn: PgWire | None = None) -> int:
    """The WAL insert position (the end of the last record written, 8-byte aligned)."""
    query = "SELECT pg_current_wal_insert_lsn()"
    rows = conn.query(query) if conn is not None else sql(query)
    return parse_lsn(str(rows[0][0]))


def load() -> str:
    """The machine's 1/5/15-minute load averages, as ``uptime`` prints them."""
    return "load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


@dataclass
class BenchSchema:
    """One run's schema: the outbox table, the noise tables, the publication, the slots."""

    name: str
    mode: str
    slots: list[str]

    @property
    def publication(self) -> str:
        return f"{self.name}_pub"

    @property
    def tables(self) -> list[tuple[str, str]]:
        """The relay's outbox tables: none in message mode (table-less outbox)."""
        return [(self.name, "outbox")] if self.mode == "table" else []

    def create(self, writers: int) -> None:
        """The schema, its tables (owned by ``outbox``), the accounts and the publication."""
        accounts = writers * ACCOUNTS_PER_WRITER + ACCOUNTS_PER_WRITER
        sql(
            f"CREATE SCHEMA {self.name};"
            + TABLES_DDL.format(s=self.name)
            + f"INSERT INTO {self.name}.accounts SELECT g, 0, now() "
            f"FROM generate_series(0, {accounts}) g"
        )
        conn = PgWire(params())
        try:
            ensure_publication(conn, self.publication, self.tables, create=True)
        finally:
            conn.close()

    def add_slot(self) -> str:
        """A new slot at the current WAL position: it will stream what is written next."""
        slot = f"{self.name}_{len(self.slots)}"
        conn = PgWire(params())
        try:
            ensure_slot(conn, slot, ran_before=False, create=True)
        finally:
            conn.close()
        self.slots.append(slot)
        return slot

    def drop(self) -> None:
        """The slots (once no relay holds them), the publication and the schema."""
        for slot in self.slots:
            for _ in range(100):
                rows = sql(f"SELECT active FROM pg_replication_slots WHERE slot_name = '{slot}'")
                if not rows:
                    break
                if rows[0][0] == "f":
                    sql(f"SELECT pg_drop_replication_slot('{slot}')")
                    break
                time.sleep(0.1)  # a stopped relay's walsender is still exiting
        sql(f"DROP PUBLICATION IF EXISTS {self.publication}; DROP SCHEMA {self.name} CASCADE")


def new_schema(mode: str) -> BenchSchema:
    return BenchSchema(f"bench_{uuid.uuid4().hex[:8]}", mode, [])


@dataclass(frozen=True)
class TxnShape:
    """Events per outbox transaction, payload bytes, write mode, and noise: business
    rows in the outbox transaction plus ``noise_per_txn`` unrelated transactions
    (``NOISE_STATEMENTS`` single-row INSERT/UPDATE each) after each one, on average."""

    per_txn: int
    size: int
    mode: str
    noise_per_txn: float = 0.0

    @property
    def business(self) -> bool:
        return self.noise_per_txn > 0


def noise_per_txn(per_txn: int, noise_pct: int) -> float:
    """Unrelated transactions per outbox transaction so that ``noise_pct`` % of the row
    changes are not the outbox table's, counted in table mode (an event is two outbox
    row changes, its INSERT and its DELETE, and brings one business row). Message mode
    gets the same noise per transaction (so a higher share: an event is one message)."""
    if noise_pct <= 0:
        return 0.0
    f = noise_pct / 100
    # (k + 4n) / (2k + k + 4n) = f  ->  n = k (3f - 1) / (4 (1 - f))
    return per_txn * (3 * f - 1) / (NOISE_STATEMENTS * (1 - f))


def _event_values(s: str, shape: TxnShape) -> str:
    """The loop body's statement writing one outbox transaction's events (``i``: its
    number, ``g``: the event's within it)."""
    k = shape.per_txn
    payload = "\\x" + payload_text(shape.size).encode().hex()
    agg = f"'order-' || ((i * {k} + g) % 1000)"
    if shape.mode == "table":
        return (
            f"WITH ins AS (INSERT INTO {s}.outbox SELECT uuid_send(gen_random_uuid()), 'order', "
            f"{agg}, 'OrderPlaced', '{payload}'::bytea, '{HEADERS}', "
            f"clock_timestamp() AT TIME ZONE 'UTC' FROM generate_series(1, {k}) g RETURNING id) "
            f"SELECT array_agg(id) INTO ids FROM ins; "
            f"DELETE FROM {s}.outbox WHERE id = ANY(ids);"
        )
    headers = HEADERS.encode()
    tail = (
        len(b"OrderPlaced").to_bytes(2, "big").hex()
        + b"OrderPlaced".hex()
        + len(headers).to_bytes(4, "big").hex()
        + headers.hex()
    )
    content = (
        "'\\x01'::bytea || uuid_send(gen_random_uuid()) "
        "|| int8send((extract(epoch FROM clock_timestamp()) * 1000000)::int8) "
        "|| '\\x0005'::bytea || convert_to('order', 'UTF8') "
        "|| int2send(octet_length(a)::int2) || convert_to(a, 'UTF8') "
        f"|| '\\x{tail}'::bytea || '{payload}'::bytea"
    )
    return (
        f"PERFORM pg_logical_emit_message(true, '{PREFIX}', {content}) "
        f"FROM (SELECT {agg} AS a, g FROM generate_series(1, {k}) g) t ORDER BY g;"
    )


def write_loop_sql(
    s: str, shape: TxnShape, txns: int, first: int, writer: int, *, noise: bool = True
) -> str:
    """A DO block committing ``txns`` outbox transactions of ``shape`` (numbered from
    ``first``), each followed by its share of unrelated transactions (unless not
    ``noise``)."""
    k = shape.per_txn
    body = ""
    if shape.business:
        body += (
            f"INSERT INTO {s}.orders (customer, total, created) SELECT 'c-' || ((i * {k} + g) "
            f"% 5000), ((i * {k} + g) % 997) + 0.5, clock_timestamp() "
            f"FROM generate_series(1, {k}) g;"
        )
    body += _event_values(s, shape) + " COMMIT;"
    after = ""
    if shape.noise_per_txn and noise:
        base = writer * ACCOUNTS_PER_WRITER
        stmts = []
        for j in range(NOISE_STATEMENTS):
            acct = f"{base} + (n * {NOISE_STATEMENTS} + {j}) % {ACCOUNTS_PER_WRITER}"
            if j % 2 == 0:
                stmts.append(
                    f"INSERT INTO {s}.ledger (account, amount, note) VALUES ({acct}, "
                    f"(n % 1000) + 0.25, 'transfer ' || n);"
                )
            else:
                stmts.append(
                    f"UPDATE {s}.accounts SET balance = balance + 1, updated = clock_timestamp()"
                    f" WHERE id = {acct};"
                )
        after = (
            f"acc := acc + {shape.noise_per_txn!r}; WHILE acc >= 1 LOOP n := n + 1; "
            + " ".join(stmts)
            + " COMMIT; acc := acc - 1; END LOOP;"
        )
    return (
        "DO $$ DECLARE ids bytea[]; acc float8 := 0; n int8 := 0; BEGIN "
        f"FOR i IN {first}..{first + txns - 1} LOOP {body} {after} END LOOP; END $$"
    )


@dataclass(frozen=True)
class Range:
    """A pre-written WAL range: ``txns`` outbox transactions from LSN ``start`` to
    ``end`` (the end of the last one's commit, 8-byte aligned), how long writing took,
    and the row changes per table it made (from ``pg_stat_user_tables``)."""

    start: int
    end: int
    txns: int
    events: int
    write_seconds: float
    changes: dict[str, int]

    @property
    def noise_fraction(self) -> float:
        """Share of the range's row changes (and messages) that are not the outbox's."""
        outbox = self.changes.get("outbox", 0) + self.changes.get("(messages)", 0)
        total = sum(self.changes.values())
        return (total - outbox) / total if total else 0.0


def _changes(s: str) -> dict[str, int]:
    rows = sql(
        "SELECT relname, n_tup_ins + n_tup_upd + n_tup_del FROM pg_stat_user_tables "
        f"WHERE schemaname = '{s}'"
    )
    return {str(r[0]): int(r[1] or 0) for r in rows}


def prewrite(schema: BenchSchema, shape: TxnShape, txns: int, writers: int) -> Range:
    """Write ``txns`` outbox transactions of ``shape`` (and the noise) from ``writers``
    connections, each a server-side loop; the last outbox transaction alone, after
    the others, so the range ends at its commit."""
    s = schema.name
    before = _changes(s)
    start = current_lsn()
    share = [(txns - 1) // writers + (1 if w < (txns - 1) % writers else 0) for w in range(writers)]
    errors: list[BaseException] = []

    def run(w: int, first: int, n: int) -> None:
        conn = PgWire(params())
        conn.settimeout(None)  # a loop of many transactions is one statement
        try:
            conn.query(write_loop_sql(s, shape, n, first, w))
            conn.query("SELECT pg_stat_force_next_flush()")
            conn.query("SELECT 1")  # idle in between: the stats are flushed
        except BaseException as exc:
            errors.append(exc)
        finally:
            conn.close()

    t0 = time.perf_counter()
    threads, first = [], 0
    for w, n in enumerate(share):
        if n:
            threads.append(threading.Thread(target=run, args=(w, first, n)))
            first += n
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise SystemExit(f"a writer failed: {errors[0]}")
    conn = PgWire(params())
    conn.settimeout(None)
    try:
        conn.query(write_loop_sql(s, shape, 1, first, writers, noise=False))
        end = current_lsn(conn)
        conn.query("SELECT pg_stat_force_next_flush()")
        conn.query("SELECT 1")
    finally:
        conn.close()
    elapsed = time.perf_counter() - t0
    after = _changes(s)
    changes = {t: after.get(t, 0) - before.get(t, 0) for t in after}
    changes = {t: n for t, n in changes.items() if n}
    if shape.mode == "message":
        changes["(messages)"] = txns * shape.per_txn
    return Range(start, end, txns, txns * shape.per_txn, elapsed, changes)


def relay_env(schema: BenchSchema, slot: str, name: str, template: str) -> dict[str, str]:
    """Environment for ``python -m transactional_outbox.relay`` reading ``schema``'s outbox
    (its table, or its messages) from the existing ``slot``, as relay ``name``."""
    env = dict(os.environ)
    env.update(
        OUTBOX_DATABASE_URL=URL,
        OUTBOX_REDIS_URL=REDIS_URL,
        OUTBOX_KAFKA_BOOTSTRAP_SERVERS=BOOTSTRAP,
        OUTBOX_ENABLE_IDEMPOTENCE="false",  # tansu has no idempotent producer (DESIGN §5)
        OUTBOX_OUTBOX_SCHEMA=schema.name,
        OUTBOX_OUTBOX_TABLE="outbox" if schema.mode == "table" else "",
        OUTBOX_PG_MESSAGE_PREFIXES=PREFIX if schema.mode == "message" else "",
        OUTBOX_PG_SLOT=slot,
        OUTBOX_PG_PUBLICATION=schema.publication,
        OUTBOX_PG_CREATE="false",  # made before the range was written: never a new one
        OUTBOX_TOPIC_TEMPLATE=template,
        OUTBOX_RELAY_NAME=name,
        OUTBOX_PROGRESS_INTERVAL_MS="0",
    )
    env.pop("OUTBOX_MYSQL_URL", None)
    return env
