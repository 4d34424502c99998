"""What the benchmark scripts share: the local stack's addresses and small helpers."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pymysql
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from pymysql.constants import CLIENT

from outbox_dev import stack

ROOT = Path(__file__).resolve().parent.parent
HOST, PORT = "127.0.0.1", stack.MYSQL_PORT
USER, PASSWORD = stack.MYSQL_USER, stack.MYSQL_PASSWORD
BOOTSTRAP = stack.env_vars()["OUTBOX_KAFKA_BOOTSTRAP_SERVERS"]
REDIS_URL = stack.env_vars()["OUTBOX_REDIS_URL"]


OUTBOX_DDL = """CREATE TABLE outbox (id BINARY(16) PRIMARY KEY, aggregatetype VARCHAR(255) NOT NULL,
 aggregateid VARCHAR(255) NOT NULL, type VARCHAR(255) NOT NULL, payload LONGBLOB NOT NULL,
 headers TEXT, `timestamp` DATETIME(6) NOT NULL)"""
INSERT_OUTBOX = "INSERT INTO outbox VALUES (%s,%s,%s,%s,%s,%s,%s)"


@contextlib.contextmanager
def bench_database(db: str) -> Iterator[None]:
    """Database ``db`` with an outbox table for one run, dropped afterwards."""
    with connect() as conn, conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE {db}")
    try:
        with connect(db) as conn, conn.cursor() as cur:
            cur.execute(OUTBOX_DDL)
        yield
    finally:
        with connect() as conn, conn.cursor() as cur:
            cur.execute(f"DROP DATABASE {db}")


def mysql_url(db: str) -> str:
    """The SQLAlchemy URL of database ``db`` on the stack, as the relay takes it."""
    return f"mysql+pymysql://{USER}:{PASSWORD}@{HOST}:{PORT}/{db}"


def connect(db: str | None = None, *, multi: bool = False) -> pymysql.Connection:
    """An autocommit connection to the stack's MariaDB as its admin user.

    ``multi``: allow several statements per round trip (``BEGIN; ...; COMMIT;`` bodies),
    whose results :func:`run_multi` reads.
    """
    return pymysql.connect(
        host=HOST,
        port=PORT,
        user=USER,
        password=PASSWORD,
        database=db,
        autocommit=True,
        client_flag=CLIENT.MULTI_STATEMENTS if multi else 0,
    )


def run_multi(cur: Any, sql: str) -> None:
    """Send a multi-statement body in one round trip and read every statement's result."""
    cur.execute(sql)
    while cur.nextset():
        pass


def master_status(cur: Any) -> tuple[str, int]:
    """The server's binlog head: (file, position)."""
    cur.execute("SHOW MASTER STATUS")
    file, pos = cur.fetchone()[:2]
    return str(file), int(pos)


def one_event_sql(
    eid: bytes, aggregate_id: str, payload: str, timestamp: str, table: str = "outbox"
) -> str:
    """One outbox transaction of one event, as one multi-statement body (one round trip):
    what ``session.add_event()`` + commit writes (insert, then delete, then commit).

    ``payload`` must be SQL-safe text (no quote or backslash); ids go in as hex literals.
    ``table``: the outbox table, ``schema.outbox`` for one outside the connection's database.
    """
    h = eid.hex()
    return (
        f"BEGIN;INSERT INTO {table} VALUES (X'{h}','order','{aggregate_id}','OrderPlaced',"
        f"'{payload}','{{}}','{timestamp}');DELETE FROM {table} WHERE id=X'{h}';COMMIT;"
    )


def relay_env(db: str, start: tuple[str, int], name: str, template: str) -> dict[str, str]:
    """Environment for ``python -m transactional_outbox.relay`` over database ``db`` of the
    stack, from binlog position ``start``, as relay ``name`` publishing to ``template``."""
    env = dict(os.environ)
    env.update(
        OUTBOX_DATABASE_URL=mysql_url(db),
        OUTBOX_REDIS_URL=REDIS_URL,
        OUTBOX_KAFKA_BOOTSTRAP_SERVERS=BOOTSTRAP,
        OUTBOX_ENABLE_IDEMPOTENCE="false",  # tansu has no idempotent producer (DESIGN §5)
        OUTBOX_START_POSITION=f"{start[0]}:{start[1]}",
        OUTBOX_TOPIC_TEMPLATE=template,
        OUTBOX_RELAY_NAME=name,
        OUTBOX_PROGRESS_INTERVAL_MS="0",
    )
    return env


async def assign_from_start(consumer: AIOKafkaConsumer, *topics: str) -> None:
    """Assign every partition of ``topics`` (waiting for them to exist) from offset 0."""
    tps: list[TopicPartition] = []
    for topic in topics:
        parts = None
        for _ in range(200):
            metadata = await consumer._client.fetch_all_metadata()
            parts = metadata.partitions_for_topic(topic)
            if parts:
                break
            await asyncio.sleep(0.05)
        if not parts:
            raise SystemExit(f"topic {topic} not found")
        tps += [TopicPartition(topic, p) for p in sorted(parts)]
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)


class TopicReader:
    """Reads every partition of ``topics`` from offset 0 in a background task and hands
    each record's event id (the ``id`` header), topic and receive time (wall clock, one
    per fetched batch) to :meth:`on_record`. ``max_records`` caps one fetch."""

    max_records: int | None = 10_000

    def __init__(self, topics: list[str]) -> None:
        self.topics = topics
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=BOOTSTRAP, enable_auto_commit=False, fetch_max_wait_ms=5
        )
        self.task: asyncio.Task[None] | None = None

    def on_record(self, event_id: bytes, topic: str, now: float) -> None:
        """One record read (override)."""
        raise NotImplementedError

    async def start(self) -> None:
        await self.consumer.start()
        await assign_from_start(self.consumer, *self.topics)
        self.task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            batch = await self.consumer.getmany(timeout_ms=100, max_records=self.max_records)
            now = time.time()
            for tp, records in batch.items():
                for r in records:
                    self.on_record(uuid.UUID(dict(r.headers)["id"].decode()).bytes, tp.topic, now)

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        await self.consumer.stop()


class BinlogOffsets:
    """Binlog positions as one byte offset across files (``SHOW BINARY LOGS`` sizes), so
    that a range spanning a rotation still has a length."""

    def __init__(self, cur: Any) -> None:
        self._cur = cur
        self._base: dict[str, int] = {}
        self.refresh()

    def refresh(self) -> None:
        """Re-read the file list (after a rotation: the old file's size is final)."""
        self._cur.execute("SHOW BINARY LOGS")
        total = 0
        for row in self._cur.fetchall():
            self._base[str(row[0])] = total
            total += int(row[1])

    def __call__(self, file: str, pos: int) -> int:
        if file not in self._base:
            self.refresh()
        return self._base[file] + pos


async def paced_writers(
    target: Callable[..., None],
    writers: int,
    args_of: Callable[[int, tuple[Any, Any, Any], Any], tuple[Any, ...]],
    *,
    lead: float,
    at_go: Callable[[], None] | None = None,
) -> tuple[list[Any], int]:
    """Run ``writers`` processes of ``target`` (spawned) and gather what they send back.

    ``args_of(w, sync, pipe)`` gives writer ``w``'s arguments; ``sync`` is (a barrier all
    writers and this process wait on once connected, an event set to start, a shared
    start time ``lead`` seconds ahead), so every writer starts at the same moment. Each
    writer sends ``(commits, late)`` down its pipe; returned: every writer's commits, in
    writer order, and the late count summed. ``at_go()`` runs once all are connected.
    """
    ctx = mp.get_context("spawn")
    sync = (ctx.Barrier(writers + 1), ctx.Event(), ctx.Value("d", 0.0, lock=False))
    procs, pipes = [], []
    for w in range(writers):
        parent, child = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=target, args=args_of(w, sync, child), daemon=True)
        proc.start()
        child.close()
        procs.append(proc)
        pipes.append(parent)
    await asyncio.to_thread(sync[0].wait)
    if at_go is not None:
        at_go()
    sync[2].value = time.monotonic() + lead
    sync[1].set()
    commits: list[Any] = []
    late = 0
    for parent, proc in zip(pipes, procs, strict=True):
        try:
            got, n_late = await asyncio.to_thread(parent.recv)
        except EOFError:
            raise SystemExit("a writer process failed; see its traceback above") from None
        commits += got
        late += n_late
        await asyncio.to_thread(proc.join)
    return commits, late


async def create_topics(topics: list[str], partitions: int, bootstrap: str = BOOTSTRAP) -> None:
    """Create ``topics`` with ``partitions`` partitions each, replication factor 1."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(t, partitions, 1) for t in topics])
    finally:
        await admin.close()
