"""Chaos run: writers commit events while the relay and its servers are hit by faults.

    .venv/bin/python bench/chaos.py [--minutes 10] [--seed N] [--quick] [--keep]

Starts its own servers on free ports (the shared stack is not touched): a scratch
MariaDB (binlog as the stack's), a redis-server persisting every write, and a tansu
broker behind a TCP proxy (advertised address = the proxy, so all Kafka traffic
crosses it). The relay runs as ``python -m transactional_outbox.relay --relay-name
...`` with ``OUTBOX_*`` settings.

Writer threads use the SDK (``OutboxSession``): each transaction updates business
rows, adds events for random aggregates and records them in a ``ledger`` table in the
same transaction (event id, aggregate, per-aggregate sequence taken from a counter
row updated under its row lock, so sequence order is commit order). Some
transactions roll back, some roll back a SAVEPOINT (``begin_nested()``). Writers
survive MariaDB restarts; when a COMMIT's outcome is unknown they reconnect and ask
the ledger.

Meanwhile, at random intervals, one fault at a time: SIGKILL the relay (restarted
after a moment), restart MariaDB (SIGTERM or SIGKILL), restart Redis (SIGTERM or
SIGKILL), restart Redis empty (as without persistence: checkpoint, lease and fencing
counter gone while the relay runs; it resumes from the checkpoint's Kafka copy), cut or
stall the Kafka proxy, SIGSTOP the broker; now and then the relay is also SIGKILLed in
the middle of another fault. A relay that exits by itself is
restarted (as a supervisor would) and reported.

``--redis-sentinel`` runs Redis as a Sentinel setup (a primary, a replica, one sentinel;
``redis+sentinel://`` for the relay) and replaces the Redis restarts with the "redis
failover" fault: SIGKILL the Redis primary while the relay runs, wait until the sentinel
promotes the replica, start the killed one again as the new primary's replica.

``--failover`` adds the "primary failover" fault: MariaDB runs as a GTID primary and
replica (``log_slave_updates``, ``gtid_strict_mode``, semi-synchronous AFTER_SYNC so a
COMMIT that returned is on the replica: an acknowledged write is never lost by the
database), the writers and the relay reach it through TCP proxies; the fault SIGKILLs
the primary mid-writes, promotes the replica, moves both addresses and starts a fresh
replica of the new primary. The relay's own path is cut just before (the replica
catches up with what it read): a promoted replica behind the relay is the case that
needs an operator (README "Running the relay"), not chaos.

At the end faults stop, writers stop, the relay catches up, and the ledger is
compared with what reached Kafka: every committed event delivered at least once
(lost), nothing that is not in the ledger (invented), per aggregate the order of
first occurrences equals the ledger sequence (misordered). Exit code 0 only if
lost = invented = misordered = 0, the ledger is consistent and the final SIGTERM
stops the relay cleanly (exits of the relay by itself are reported with their last
log lines; ``--fail-on-relay-exit`` makes them fail the run too). The last line is
``CHAOS_SUMMARY {json}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pymysql
import sqlalchemy as sa
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.orm import sessionmaker

from outbox_dev.redis_ha import ScratchSentinel
from outbox_dev.scratch import (
    HOST,
    RelayChild,
    ScratchBroker,
    ScratchMariaDB,
    ScratchRedis,
    ScratchReplicaPair,
)
from outbox_dev.tcp_proxy import TcpProxy
from transactional_outbox import OutboxSession, outbox_table

DB = "chaos"
TYPES = ("account", "order")
PARTITIONS = 4
KINDS = (
    "relay_kill",
    "mariadb_restart",
    "redis_restart",
    "kafka_cut",
    "kafka_stall",
    "broker_pause",
    "redis_restart_empty",
)
FAILOVER = "primary_failover"
REDIS_FAILOVER = "redis_failover"  # --redis-sentinel: instead of the Redis restarts
# Every server of the --failover pair: a COMMIT returns once the replica has the
# transaction (AFTER_SYNC: nobody sees it before), and without a replica connected
# (just after a promotion) commits do not wait.
SEMI_SYNC_FLAGS = (
    "--rpl-semi-sync-master-enabled=ON",
    "--rpl-semi-sync-slave-enabled=ON",
    "--rpl-semi-sync-master-wait-point=AFTER_SYNC",
    "--rpl-semi-sync-master-wait-no-slave=OFF",
    "--rpl-semi-sync-master-timeout=120000",
)
CONNECTION_ERRORS = frozenset({1053, 1927, 2003, 2006, 2013, 2055})

SCHEMA = [
    """CREATE TABLE aggregates (
         type VARCHAR(32) NOT NULL, id VARCHAR(64) NOT NULL, seq BIGINT NOT NULL DEFAULT 0,
         PRIMARY KEY (type, id)) ENGINE=InnoDB""",
    """CREATE TABLE ledger (
         event_id CHAR(36) NOT NULL PRIMARY KEY, aggregatetype VARCHAR(32) NOT NULL,
         aggregateid VARCHAR(64) NOT NULL, seq BIGINT NOT NULL, writer INT NOT NULL,
         UNIQUE KEY agg_seq (aggregatetype, aggregateid, seq)) ENGINE=InnoDB""",
    """CREATE TABLE business (
         id BIGINT AUTO_INCREMENT PRIMARY KEY, writer INT NOT NULL,
         note VARCHAR(64) NOT NULL) ENGINE=InnoDB""",
]


@dataclass(frozen=True)
class Plan:
    fault_seconds: float  # faults are injected until this much time has passed
    schedule: tuple[str, ...] | None  # a fixed list of faults (quick), else random kinds
    writers: int
    aggregates: int  # per aggregate type
    gap: tuple[float, float]  # pause between two faults (s)
    window: tuple[float, float]  # how long a cut / stall / pause lasts (s)
    down: tuple[float, float]  # how long a restarted server stays down (s)
    kill_during: float  # chance to also SIGKILL the relay in the middle of another fault
    catchup_seconds: float


def fault_kinds(args: argparse.Namespace) -> tuple[str, ...]:
    """The fault kinds of this run: ``--only``, else all (the failover with ``--failover``)."""
    kinds = (*KINDS, FAILOVER) if args.failover else KINDS
    if args.redis_sentinel:
        kinds = (*(k for k in kinds if not k.startswith("redis_")), REDIS_FAILOVER)
    return tuple(args.only) if args.only else kinds


def make_plan(args: argparse.Namespace, rng: random.Random) -> Plan:
    if args.quick:
        # Each kind once (the suite's time); twice when --only narrows the kinds, so a
        # single kind (a primary failover) also happens again after itself.
        schedule = list(fault_kinds(args)) * (2 if args.only else 1)
        rng.shuffle(schedule)
        return Plan(
            fault_seconds=60,
            schedule=tuple(schedule),
            writers=3,
            aggregates=20,
            gap=(0.2, 1.2),
            window=(0.5, 2.0),
            down=(0.0, 0.8),
            kill_during=0.25,
            catchup_seconds=90,
        )
    return Plan(
        fault_seconds=args.minutes * 60,
        schedule=None,
        writers=args.writers,
        aggregates=100,
        gap=(1.0, 6.0),
        window=(0.5, 6.0),
        down=(0.0, 3.0),
        kill_during=0.2,
        catchup_seconds=300,
    )


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- writers -----------------------------------------------------------------------


class Writer(threading.Thread):
    """Commits transactions with events and ledger rows until halted; survives restarts."""

    def __init__(
        self,
        n: int,
        factory: sessionmaker[OutboxSession],
        db: ScratchMariaDB | Address,
        seed: int,
        aggregates: int,
        halt: threading.Event,
    ) -> None:
        super().__init__(daemon=True, name=f"writer-{n}")
        self.n = n
        self.factory = factory
        self.db = db
        self.rng = random.Random(seed)
        self.aggregates = aggregates
        self.halt = halt
        self.counts: Counter[str] = Counter()
        self.committed: list[str] = []  # ids this writer knows committed
        self.rolled_back: list[str] = []  # ids this writer knows did not
        self.fatal: str | None = None

    def run(self) -> None:
        try:
            while not self.halt.is_set():
                self.transaction()
                self.halt.wait(self.rng.uniform(0, 0.01))
        except BaseException:
            self.fatal = traceback.format_exc()

    def event(self, session: OutboxSession) -> str:
        kind = self.rng.choice(TYPES)
        agg = f"{kind[:3]}-{self.rng.randrange(self.aggregates)}"
        key = {"t": kind, "a": agg}
        session.execute(text("UPDATE aggregates SET seq = seq + 1 WHERE type=:t AND id=:a"), key)
        seq = session.execute(
            text("SELECT seq FROM aggregates WHERE type=:t AND id=:a"), key
        ).scalar_one()
        event = session.add_event(
            aggregate_type=kind,
            aggregate_id=agg,
            event_type="Changed",
            payload={"seq": seq, "writer": self.n},
        )
        session.execute(
            text(
                "INSERT INTO ledger (event_id, aggregatetype, aggregateid, seq, writer)"
                " VALUES (:e, :t, :a, :s, :w)"
            ),
            {"e": str(event.id), "t": kind, "a": agg, "s": seq, "w": self.n},
        )
        return str(event.id)

    def transaction(self) -> None:
        rng = self.rng
        session = self.factory()
        ids: list[str] = []
        phase = "work"
        self.counts["transactions"] += 1
        try:
            session.execute(
                text("INSERT INTO business (writer, note) VALUES (:w, :n)"),
                {"w": self.n, "n": f"t{self.counts['transactions']}"},
            )
            ids += [self.event(session) for _ in range(rng.randint(1, 3))]
            if rng.random() < 0.3:
                nested = session.begin_nested()
                inner = [self.event(session) for _ in range(rng.randint(1, 2))]
                if rng.random() < 0.5:
                    session.flush()  # written inside the savepoint, not only buffered
                if rng.random() < 0.5:
                    nested.rollback()
                    self.counts["savepoint_rollbacks"] += 1
                    self.rolled_back += inner
                else:
                    nested.commit()
                    ids += inner
                if rng.random() < 0.5:
                    ids.append(self.event(session))
            if rng.random() < 0.1:
                session.rollback()
                self.counts["rollbacks"] += 1
                self.rolled_back += ids
                return
            phase = "commit"
            session.commit()
            self.counts["commits"] += 1
            self.committed += ids
        except sa_exc.DBAPIError as exc:
            with contextlib.suppress(Exception):
                session.rollback()
            orig = exc.orig
            code = orig.args[0] if orig is not None and orig.args else None
            lost_connection = code in CONNECTION_ERRORS or exc.connection_invalidated
            self.counts["deadlocks" if code == 1213 else "errors"] += 1
            if phase == "commit" and ids:
                if self.resolve(ids):
                    self.counts["unknown_committed"] += 1
                    self.committed += ids
                else:
                    self.counts["unknown_rolled_back"] += 1
                    self.rolled_back += ids
            else:
                self.rolled_back += ids
            if lost_connection:
                self.halt.wait(0.1)  # the server is restarting
        finally:
            session.close()

    def resolve(self, ids: list[str]) -> bool:
        """Did a transaction whose COMMIT failed commit? Its ledger rows tell."""
        deadline = time.monotonic() + 300
        while True:
            try:
                with self.db.connect(DB) as conn, conn.cursor() as cur:
                    marks = ",".join(["%s"] * len(ids))
                    cur.execute(f"SELECT COUNT(*) FROM ledger WHERE event_id IN ({marks})", ids)
                    found = int(cur.fetchone()[0])
                break
            except pymysql.err.MySQLError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        if found not in (0, len(ids)):
            raise AssertionError(f"half a transaction committed: {found} of {len(ids)} ledger rows")
        return found == len(ids)


class Address:
    """A MariaDB reached through a :class:`TcpProxy`, so a failover can move it."""

    def __init__(self, db: ScratchMariaDB, proxy: TcpProxy) -> None:
        self.user, self.password, self.proxy = db.user, db.password, proxy

    def connect(self, database: str | None = None) -> pymysql.Connection:
        return pymysql.connect(
            host=HOST,
            port=self.proxy.port,
            user=self.user,
            password=self.password,
            database=database,
            autocommit=True,
            connect_timeout=5,
        )

    def url(self, database: str) -> str:
        return f"mysql+pymysql://{self.user}:{self.password}@{HOST}:{self.proxy.port}/{database}"

    def move(self, db: ScratchMariaDB) -> None:
        self.proxy.target = (HOST, db.port)


# -- Kafka side -----------------------------------------------------------------------


class Collector:
    """Reads every partition of the topics from offset 0, without a group, forever.

    Records are kept by (partition, offset): a consumer that re-reads after an error
    does not count as a duplicate; only what the relay wrote twice does.
    """

    def __init__(self, bootstrap: str, topics: list[str]) -> None:
        self.bootstrap = bootstrap
        self.parts = [TopicPartition(t, p) for t in topics for p in range(PARTITIONS)]
        self.records: dict[TopicPartition, dict[int, tuple[str | None, str]]] = defaultdict(dict)
        self.next_offset: dict[TopicPartition, int] = dict.fromkeys(self.parts, 0)
        self.unique: set[str] = set()
        self.count = 0
        self.restarts = 0
        self.changed = asyncio.Event()  # set whenever new records were read

    async def run(self) -> None:
        while True:
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                fetch_max_wait_ms=100,
                request_timeout_ms=5000,
                metadata_max_age_ms=5000,
            )
            try:
                await consumer.start()
                consumer.assign(self.parts)
                for tp in self.parts:
                    consumer.seek(tp, self.next_offset[tp])
                while True:
                    batch = await consumer.getmany(timeout_ms=200)
                    if batch:
                        self.changed.set()
                    for tp, recs in batch.items():
                        for r in recs:
                            if r.offset in self.records[tp]:
                                continue
                            headers = dict(r.headers)
                            raw_id = headers.get("id")
                            eid = raw_id.decode() if raw_id is not None else None
                            key = r.key.decode() if r.key is not None else ""
                            self.records[tp][r.offset] = (eid, key)
                            self.count += 1
                            if eid is not None:
                                self.unique.add(eid)
                            self.next_offset[tp] = max(self.next_offset[tp], r.offset + 1)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.restarts += 1
                say(f"collector: {type(exc).__name__}: {exc}; reconnecting")
                await asyncio.sleep(0.5)
            finally:
                with contextlib.suppress(Exception):
                    await consumer.stop()


async def create_topics(bootstrap: str, topics: list[str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(t, PARTITIONS, 1) for t in topics])
    finally:
        await admin.close()


# -- the run --------------------------------------------------------------------------


class Chaos:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.seed = args.seed
        self.rng = random.Random(args.seed)
        self.plan = make_plan(args, self.rng)
        self.kinds = fault_kinds(args)
        self.workdir = workdir
        self.run_id = f"{os.getpid()}{self.rng.randrange(1 << 16):04x}"
        self.faults: Counter[str] = Counter()
        self.details: Counter[str] = Counter()
        self.unexpected_exits: list[int | None] = []
        self.exit_reasons: Counter[str] = Counter()
        self.relay_lock = asyncio.Lock()
        self.halt = threading.Event()
        self.writers: list[Writer] = []
        self.topic_prefix = f"chaos{self.run_id}."
        self.db: ScratchMariaDB  # the primary
        self.pair: ScratchReplicaPair | None = None  # --failover: the primary and its replica
        self.app: ScratchMariaDB | Address  # where the writers write
        self.relay_db: ScratchMariaDB | Address  # where the relay reads
        self.redis: ScratchRedis
        self.sentinel: ScratchSentinel | None = None  # --redis-sentinel: Redis is this
        self.broker: ScratchBroker
        self.relay: RelayChild
        self.collector: Collector

    # -- setup ---------------------------------------------------------------

    def start_servers(self, cleanup: contextlib.ExitStack) -> None:
        t0 = time.monotonic()
        if self.args.failover:
            self.start_pair(cleanup)
        else:
            self.db = self.app = self.relay_db = ScratchMariaDB(f"chaos-{self.run_id}")
            cleanup.callback(self.db.destroy)
            self.db.start()
        if self.args.redis_sentinel:
            self.sentinel = ScratchSentinel(self.workdir / "redis-sentinel")
            cleanup.callback(self.sentinel.stop)
            self.sentinel.start()
        self.redis = ScratchRedis(self.workdir / "redis")  # unused with --redis-sentinel
        cleanup.callback(self.redis.stop)
        if self.sentinel is None:
            self.redis.start()
        self.broker = ScratchBroker(self.workdir / "broker")
        cleanup.callback(self.broker.stop)
        self.broker.start()
        say(
            f"servers up in {time.monotonic() - t0:.1f}s: MariaDB :{self.db.port}, "
            f"Redis {self.sentinel.url if self.sentinel else f':{self.redis.port}'}, "
            f"tansu :{self.broker.broker_port} behind proxy "
            f":{self.broker.proxy.port}; logs in {self.workdir}"
        )

    def start_pair(self, cleanup: contextlib.ExitStack) -> None:
        pair = self.pair = ScratchReplicaPair(f"chaos-{self.run_id}", flags=SEMI_SYNC_FLAGS)
        cleanup.callback(pair.destroy)
        pair.start()
        self.db = pair.primary
        proxies = [cleanup.enter_context(TcpProxy(pair.primary.port)) for _ in range(2)]
        self.app, self.relay_db = (Address(self.db, proxy) for proxy in proxies)

    def create_schema(self) -> str:
        with self.db.connect() as conn, conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE {DB}")
            cur.execute(f"USE {DB}")
            for ddl in SCHEMA:
                cur.execute(ddl)
            cur.executemany(
                "INSERT INTO aggregates (type, id) VALUES (%s, %s)",
                [(t, f"{t[:3]}-{i}") for t in TYPES for i in range(self.plan.aggregates)],
            )
        engine = sa.create_engine(self.db.url(DB))
        outbox_table(sa.MetaData()).create(engine)
        engine.dispose()
        with self.db.connect() as conn, conn.cursor() as cur:
            cur.execute("SHOW MASTER STATUS")
            file, pos = cur.fetchone()[:2]
            if self.pair is not None:
                # A place every server of the pair knows (a FILE:POS is the primary's only).
                cur.execute("SELECT BINLOG_GTID_POS(%s, %s)", (file, pos))
                return f"gtid:{cur.fetchone()[0]}"
        return f"{file}:{pos}"

    def relay_child(self, start_position: str) -> RelayChild:
        settings = {
            "database_url": self.relay_db.url(DB),
            "redis_url": self.redis.url if self.sentinel is None else self.sentinel.url,
            "kafka_bootstrap_servers": self.broker.bootstrap,
            "topic_template": self.topic_prefix + "{aggregatetype}",
            "key_prefix": f"chaos:{self.run_id}:",
            "server_id": 4_000_000 + self.rng.randrange(1_000_000),
            "enable_idempotence": False,  # tansu has none (DESIGN §5)
            "start_position": start_position,
            "checkpoint_interval_ms": 100,
            "heartbeat_ms": 1000,
            "reconnect_max_ms": 1000,
            "request_timeout_ms": 3000,
            "lease_ttl_ms": 2000,
            "lease_renew_ms": 500,
            "linger_ms": 5,
            "progress_interval_ms": 10_000,
        }
        return RelayChild(
            settings, self.workdir / "relay.log", ["--relay-name", f"chaos-{self.run_id}"]
        )

    # -- faults --------------------------------------------------------------

    async def kill_relay(self, why: str) -> None:
        async with self.relay_lock:
            rc = await asyncio.to_thread(self.relay.signal, signal.SIGKILL)
            self.details[f"relay_kill:{why}"] += 1
            if rc is not None and rc != -signal.SIGKILL:
                self.unexpected_exits.append(rc)
            await asyncio.sleep(self.rng.uniform(0, 1.0))
            self.relay.start()

    async def maybe_kill_relay_during(self, kind: str) -> None:
        if self.rng.random() < self.plan.kill_during:
            self.faults["relay_kill"] += 1
            await self.kill_relay(f"during {kind}")

    async def inject(self, kind: str) -> None:
        rng, plan = self.rng, self.plan
        self.faults[kind] += 1
        if kind == FAILOVER:
            await self.fail_over()
        elif kind == "relay_kill":
            await self.kill_relay("alone")
        elif kind == REDIS_FAILOVER:
            await self.fail_over_redis()
        elif kind == "redis_restart_empty":
            await self.restart_redis_empty()
        elif kind in ("mariadb_restart", "redis_restart"):
            server: ScratchMariaDB | ScratchRedis = (
                self.db if kind == "mariadb_restart" else self.redis
            )
            kill = rng.random() < 0.5
            self.details[f"{kind}:{'SIGKILL' if kill else 'SIGTERM'}"] += 1
            await asyncio.to_thread(server.stop, kill=kill)
            await asyncio.sleep(rng.uniform(*plan.down))
            await self.maybe_kill_relay_during(kind)
            await asyncio.to_thread(server.start)
        else:
            proxy, broker = self.broker.proxy, self.broker
            apply, revert = {
                "kafka_cut": (proxy.cut, proxy.restore),
                "kafka_stall": (proxy.stall, proxy.restore),
                "broker_pause": (broker.pause, broker.resume),
            }[kind]
            duration = rng.uniform(*plan.window)
            apply()
            try:
                split = rng.uniform(0, duration)
                await asyncio.sleep(split)
                await self.maybe_kill_relay_during(kind)
                await asyncio.sleep(duration - split)
            finally:
                revert()

    async def fail_over(self) -> None:
        """SIGKILL the primary mid-writes, promote the replica, move both addresses,
        then give the new primary a fresh replica."""
        pair, rng = self.pair, self.rng
        assert pair is not None and isinstance(self.app, Address)
        assert isinstance(self.relay_db, Address)
        # What the relay read, the replica must have: else the relay stops for an
        # operator (the advice case, tested in tests/test_relay_failover.py).
        self.relay_db.proxy.cut()
        try:
            await asyncio.to_thread(pair.wait_replica, await asyncio.to_thread(pair.primary_gtid))
            await asyncio.sleep(rng.uniform(0, 0.5))  # writers go on committing meanwhile
            await asyncio.to_thread(pair.kill_primary)
            await self.maybe_kill_relay_during(FAILOVER)
            await asyncio.to_thread(pair.promote)
            self.db = pair.replica
            self.app.move(pair.replica)
            self.relay_db.move(pair.replica)
        finally:
            self.relay_db.proxy.restore()
        await asyncio.to_thread(pair.replace_replica)
        self.details[f"{FAILOVER}:to server_id {pair.primary.server_id}"] += 1

    async def fail_over_redis(self) -> None:
        """SIGKILL the Redis primary; the sentinel promotes the replica; the old one comes
        back as its replica."""
        assert self.sentinel is not None
        old_port = await asyncio.to_thread(self.sentinel.master_port)
        old = next(n for n in (self.sentinel.primary, self.sentinel.replica) if n.port == old_port)
        await self.maybe_kill_relay_during(REDIS_FAILOVER)
        await asyncio.to_thread(self.sentinel.kill_primary_and_promote)
        await asyncio.to_thread(self.sentinel.rejoin, old)

    async def restart_redis_empty(self) -> None:
        """Redis restarted without persistence while the relay runs: its keys are gone."""
        kill = self.rng.random() < 0.5
        self.details[f"redis_restart_empty:{'SIGKILL' if kill else 'SIGTERM'}"] += 1
        await asyncio.to_thread(self.redis.stop, kill=kill)
        await asyncio.to_thread(self.redis.forget)
        await asyncio.sleep(self.rng.uniform(*self.plan.down))
        await self.maybe_kill_relay_during("redis_restart_empty")
        await asyncio.to_thread(self.redis.start)

    async def supervise_relay(self) -> None:
        """Restart a relay that exited by itself (as systemd would) and remember it."""
        while True:
            await asyncio.sleep(0.2)
            if self.relay_lock.locked() or self.relay.running():
                continue
            assert self.relay.proc is not None
            rc = self.relay.proc.returncode
            self.unexpected_exits.append(rc)
            lines = [x for x in self.relay.last_run_log().splitlines() if x.strip()]
            reason = " | ".join(lines[-2:])[-300:]
            self.exit_reasons[f"exit {rc}: {reason}"] += 1
            say(f"relay exited by itself with code {rc} ({reason}); restarting it")
            await asyncio.sleep(1.0)
            if not self.relay_lock.locked() and not self.relay.running():
                self.relay.start()

    async def report_progress(self, t0: float) -> None:
        while True:
            await asyncio.sleep(30 if not self.args.quick else 10)
            committed = sum(len(w.committed) for w in self.writers)
            say(
                f"t={time.monotonic() - t0:.0f}s faults={sum(self.faults.values())} "
                f"committed={committed} received={self.collector.count} "
                f"unique={len(self.collector.unique)} relay_starts={self.relay.starts}"
            )

    async def inject_faults(self) -> None:
        plan, rng = self.plan, self.rng
        end = time.monotonic() + plan.fault_seconds
        queue = list(plan.schedule) if plan.schedule is not None else None
        while time.monotonic() < end:
            await asyncio.sleep(rng.uniform(*plan.gap))
            if queue is not None:
                if not queue:
                    break
                kind = queue.pop(0)
            else:
                kind = rng.choice(self.kinds)
            await self.inject(kind)

    # -- checks --------------------------------------------------------------

    def read_ledger(self) -> dict[str, tuple[str, str, int]]:
        with self.db.connect(DB) as conn, conn.cursor() as cur:
            cur.execute("SELECT event_id, aggregatetype, aggregateid, seq FROM ledger")
            return {r[0]: (r[1], r[2], int(r[3])) for r in cur.fetchall()}

    def check(self, ledger: dict[str, tuple[str, str, int]]) -> dict[str, Any]:
        col = self.collector
        received_ids = col.unique
        lost = set(ledger) - received_ids
        invented = received_ids - set(ledger)
        no_id = sum(1 for recs in col.records.values() for eid, _ in recs.values() if eid is None)

        # Ground truth: per aggregate, ids in sequence order (and the sequence has no gaps).
        expected: dict[tuple[str, str], list[tuple[int, str]]] = defaultdict(list)
        for eid, (kind, agg, seq) in ledger.items():
            expected[(kind, agg)].append((seq, eid))
        ledger_errors: list[str] = []
        for agg, items in expected.items():
            items.sort()
            if [s for s, _ in items] != list(range(1, len(items) + 1)):
                ledger_errors.append(f"sequence of {agg} has gaps")
        known_committed = {e for w in self.writers for e in w.committed}
        known_rolled_back = {e for w in self.writers for e in w.rolled_back}
        ids = set(ledger)
        if known_committed - ids:
            ledger_errors.append(f"{len(known_committed - ids)} committed ids not in the ledger")
        if known_rolled_back & ids:
            ledger_errors.append(f"{len(known_rolled_back & ids)} rolled-back ids in the ledger")
        if ids - known_committed:
            ledger_errors.append(f"{len(ids - known_committed)} ledger ids no writer committed")

        # What Kafka has: per aggregate, first occurrences in partition (offset) order.
        first: dict[tuple[str, str], list[str]] = defaultdict(list)
        seen: set[str] = set()
        misrouted = 0
        for tp, recs in col.records.items():
            kind = tp.topic[len(self.topic_prefix) :]
            for offset in sorted(recs):
                eid, key = recs[offset]
                if eid is None or eid in seen:
                    continue
                seen.add(eid)
                if eid in ledger and ledger[eid][:2] != (kind, key):
                    misrouted += 1
                first[(kind, key)].append(eid)
        misordered = []
        where: dict[str, list[tuple[int, int]]] = defaultdict(list)  # id -> (partition, offset)
        for tp, recs in col.records.items():
            for offset, (eid, _) in recs.items():
                if eid is not None:
                    where[eid].append((tp.partition, offset))
        details: list[str] = []
        for agg, items in expected.items():
            want = [e for _, e in items if e in received_ids]
            got = [e for e in first.get(agg, []) if e in ledger]
            if got != want:
                misordered.append(agg)
                k = next(i for i, (x, y) in enumerate(zip(got, want, strict=False)) if x != y)
                details.append(
                    f"{agg[0]}/{agg[1]}: first occurrences diverge at #{k}: "
                    + ", ".join(
                        f"seq {ledger[e][2]} at {sorted(where[e])}"
                        for e in got[max(k - 2, 0) : k + 4]
                    )
                )
        if details:
            (self.workdir / "misordered.txt").write_text("\n".join(details) + "\n")
        duplicates = col.count - len(received_ids)
        return {
            "committed": len(ledger),
            "delivered": len(received_ids & set(ledger)),
            "records": col.count,
            "lost": len(lost),
            "invented": len(invented) + no_id,
            "misordered": len(misordered),
            "misrouted": misrouted,
            "duplicates": duplicates,
            "duplicate_rate": round(duplicates / max(len(received_ids), 1), 6),
            "ledger_errors": ledger_errors,
            "lost_sample": sorted(lost)[:10],
            "invented_sample": sorted(invented)[:10],
            "misordered_sample": details[:5],
        }

    # -- main ------------------------------------------------------------------

    async def run(self) -> int:
        plan = self.plan
        say(
            f"chaos run: seed {self.seed}, {'quick' if self.args.quick else 'long'}, "
            f"faults for up to {plan.fault_seconds:.0f}s, {plan.writers} writers"
        )
        tasks: list[asyncio.Task[None]] = []
        with contextlib.ExitStack() as cleanup:
            self.start_servers(cleanup)
            start = self.create_schema()
            topics = [self.topic_prefix + t for t in TYPES]
            await create_topics(self.broker.bootstrap, topics)
            self.collector = Collector(self.broker.bootstrap, topics)
            self.relay = self.relay_child(start)
            cleanup.callback(lambda: self.relay.signal(signal.SIGKILL))
            engine = sa.create_engine(
                self.app.url(DB),
                pool_pre_ping=True,
                pool_size=plan.writers + 2,
                connect_args={"connect_timeout": 5},
            )
            cleanup.callback(engine.dispose)
            factory = sessionmaker(engine, class_=OutboxSession)
            self.writers = [
                Writer(n, factory, self.app, self.seed * 100 + n, plan.aggregates, self.halt)
                for n in range(plan.writers)
            ]
            cleanup.callback(self.stop_writers)
            try:
                t0 = time.monotonic()
                tasks.append(asyncio.create_task(self.collector.run()))
                self.relay.start()
                supervisor = asyncio.create_task(self.supervise_relay())
                tasks.append(supervisor)
                tasks.append(asyncio.create_task(self.report_progress(t0)))
                for w in self.writers:
                    w.start()
                await self.inject_faults()
                fault_time = time.monotonic() - t0
                say(f"faults over after {fault_time:.0f}s: {dict(self.faults)}; stopping writers")
                await asyncio.to_thread(self.stop_writers)
                ledger = await asyncio.to_thread(self.read_ledger)
                say(f"{len(ledger)} events committed; waiting for the relay to catch up")
                t1 = time.monotonic()
                deadline = t1 + plan.catchup_seconds
                while not set(ledger) <= self.collector.unique and time.monotonic() < deadline:
                    self.collector.changed.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.collector.changed.wait(), 1.0)
                catchup = time.monotonic() - t1
                supervisor.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await supervisor
                async with self.relay_lock:
                    stop_rc = await asyncio.to_thread(self.relay.signal, signal.SIGTERM)
                await asyncio.sleep(0.5)  # anything the relay sent last, read it too
            finally:
                for task in tasks:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            rc = self.summary(ledger, fault_time, catchup, stop_rc)
        return rc

    def stop_writers(self) -> None:
        self.halt.set()
        for w in self.writers:
            if w.is_alive():
                w.join(60)

    def summary(
        self,
        ledger: dict[str, tuple[str, str, int]],
        fault_time: float,
        catchup: float,
        stop_rc: int | None,
    ) -> int:
        result = self.check(ledger)
        counts: Counter[str] = Counter()
        for w in self.writers:
            counts.update(w.counts)
        fatal = [w.fatal for w in self.writers if w.fatal]
        failed = bool(
            result["lost"]
            or result["invented"]
            or result["misordered"]
            or result["misrouted"]
            or result["ledger_errors"]
            or fatal
            or stop_rc != 0
            or (self.args.fail_on_relay_exit and self.unexpected_exits)
        )
        total = sum(self.faults.values())
        print()
        print(f"== chaos summary: seed {self.seed}, faults for {fault_time:.0f}s ==")
        print(f"faults injected: {total}")
        for kind in self.kinds:
            extra = ", ".join(
                f"{k.split(':', 1)[1]} {n}"
                for k, n in sorted(self.details.items())
                if k.startswith(kind + ":")
            )
            print(f"  {kind:19} {self.faults[kind]:5}" + (f"   ({extra})" if extra else ""))
        print(
            f"writers: {counts['transactions']} transactions: {counts['commits']} committed, "
            f"{counts['rollbacks']} rolled back, {counts['savepoint_rollbacks']} savepoint "
            f"rollbacks, {counts['deadlocks']} deadlocks, {counts['errors']} failed by faults, "
            f"COMMIT outcome unknown {counts['unknown_committed'] + counts['unknown_rolled_back']}"
            f" (resolved: {counts['unknown_committed']} committed, "
            f"{counts['unknown_rolled_back']} rolled back)"
        )
        print(
            f"relay: started {self.relay.starts} times, exited by itself "
            f"{len(self.unexpected_exits)} times {self.unexpected_exits or ''}, "
            f"final SIGTERM exit code {stop_rc}; caught up in {catchup:.1f}s; "
            f"collector reconnects {self.collector.restarts}"
        )
        for reason, n in self.exit_reasons.most_common():
            print(f"  relay exited by itself {n}x: {reason}")
        print(
            f"events committed={result['committed']} delivered={result['delivered']} "
            f"records={result['records']}"
        )
        print(
            f"lost={result['lost']} invented={result['invented']} "
            f"misordered={result['misordered']} misrouted={result['misrouted']}"
        )
        rate = 100 * result["duplicate_rate"]
        print(f"duplicates={result['duplicates']} duplicate_rate={rate:.2f}%")
        for label in ("lost_sample", "invented_sample"):
            if result[label]:
                print(f"{label}: {result[label]}")
        for line in result["misordered_sample"]:
            print(f"misordered: {line}")
        for err in result["ledger_errors"]:
            print(f"ledger error: {err}")
        for text_ in fatal:
            print(f"writer failed:\n{text_}")
        print(f"RESULT: {'FAIL' if failed else 'PASS'}")
        summary = {
            "seed": self.seed,
            "fault_seconds": round(fault_time, 1),
            "faults": dict(self.faults),
            "fault_details": dict(self.details),
            "writer_counts": dict(counts),
            "relay_starts": self.relay.starts,
            "relay_unexpected_exits": self.unexpected_exits,
            "relay_exit_reasons": dict(self.exit_reasons),
            "relay_stop_rc": stop_rc,
            "catchup_seconds": round(catchup, 1),
            **{k: v for k, v in result.items() if not k.endswith("_sample")},
            "result": "FAIL" if failed else "PASS",
        }
        print("CHAOS_SUMMARY " + json.dumps(summary, sort_keys=True), flush=True)
        return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long to inject faults")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    parser.add_argument(
        "--quick", action="store_true", help="~15 s: each fault kind once (twice with --only)"
    )
    parser.add_argument("--writers", type=int, default=3, help="writer threads (long run)")
    parser.add_argument("--keep", action="store_true", help="keep the logs directory")
    parser.add_argument(
        "--fail-on-relay-exit",
        action="store_true",
        help="also fail if the relay exited by itself (it is restarted and reported anyway)",
    )
    parser.add_argument(
        "--failover",
        action="store_true",
        help="add the primary failover fault (a replica of the scratch MariaDB is started)",
    )
    parser.add_argument(
        "--redis-sentinel",
        action="store_true",
        help="Redis as a primary, a replica and a sentinel; the redis_failover fault replaces "
        "the Redis restarts",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=(*KINDS, FAILOVER, REDIS_FAILOVER),
        help="inject only this fault kind (repeatable)",
    )
    parser.add_argument(
        "--workdir", default=None, help="where the run's logs go (default: a temp dir)"
    )
    args = parser.parse_args(argv)
    if args.seed is None:
        args.seed = random.randrange(1 << 30)
    base = Path(args.workdir) if args.workdir else None
    if base is not None:
        base.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="chaos-", dir=base))

    def terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # run the cleanup (servers, relay) on SIGTERM too

    signal.signal(signal.SIGTERM, terminate)
    # The collector's consumer retries through every fault; its connection errors are noise.
    logging.basicConfig(level=logging.WARNING, format="%(name)s %(levelname)s: %(message)s")
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    # Writers' pooled connections die with every MariaDB restart; the pool says so loudly.
    logging.getLogger("sqlalchemy.pool").setLevel(logging.CRITICAL)
    rc = 1
    try:
        rc = asyncio.run(Chaos(args, workdir).run())
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        rc = 130
    finally:
        if rc == 0 and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"logs kept in {workdir}", flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
