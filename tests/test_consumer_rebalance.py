"""Partitions that change hands while their handlers run: a joining member, a member
stopped gracefully, a member SIGKILLed mid-batch.

Every record of 8 keys x 12 (4 partitions) must take effect exactly once (the
SQL inbox: one ``effects`` row per handling, in the inbox's transaction), per
key in order across the hand-over, and a group's committed offset must never
pass a record that has not taken effect (a monitor checks every commit it sees
against the effects committed by then). Handlers are slow, fail once on every
record with ``seq % 4 == 1``, and the record ``GATE_SEQ`` of each key waits at a
gate, so the hand-over happens with work in flight by construction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from transactional_outbox.consumer import ConsumerRunner, ReceivedEvent
from transactional_outbox.event import kafka_headers

from . import _consumer_member as member
from ._consumer_helpers import order_event
from .polling import wait_until
from .relay_harness import ensure_topics

PARTITIONS, KEYS, PER_KEY = 4, 8, 12


def key_of(k: int) -> str:
    return f"k{k}"


def partition_of(key: str) -> int:
    return int(key[1:]) % PARTITIONS


class Group:
    """A topic of 4 partitions with 8 keys x 12 records, the group's members, and checks."""

    def __init__(self, bootstrap: str, prefix: str, engine: AsyncEngine) -> None:
        self.bootstrap = bootstrap
        self.topic = prefix + "outbox.event.order"
        self.group = prefix + "group"
        self.engine = engine
        self.sessions = async_sessionmaker(engine)
        self.ids: dict[tuple[int, int], str] = {}  # (partition, offset) -> event id
        self.ends: dict[int, int] = {}
        self.runs: list[tuple[ConsumerRunner, asyncio.Task[None]]] = []
        self.violations: list[str] = []
        self.commits_seen = 0
        self._offsets: AIOKafkaConsumer | None = None

    async def setup(self) -> None:
        await ensure_topics(self.bootstrap, [self.topic], PARTITIONS)
        async with self.engine.begin() as conn:
            await conn.run_sync(member.metadata.create_all)
        self._offsets = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, group_id=self.group, enable_auto_commit=False
        )
        await self._offsets.start()

    async def publish(self) -> None:
        """Every key's records in seq order, keys interleaved, key k in partition k % 4."""
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all")
        await producer.start()
        try:
            for seq in range(PER_KEY):
                for k in range(KEYS):
                    event = order_event(aggregate_id=key_of(k), payload={"seq": seq})
                    meta = await producer.send_and_wait(
                        self.topic,
                        value=event.payload,
                        key=event.aggregate_id.encode(),
                        headers=kafka_headers(event),
                        partition=partition_of(event.aggregate_id),
                    )
                    self.ids[(meta.partition, meta.offset)] = str(event.id)
                    self.ends[meta.partition] = meta.offset + 1
        finally:
            await producer.stop()

    def start(self, name: str, gate: member.Gate | None = None) -> ConsumerRunner:
        runner = ConsumerRunner(
            member.handler(name, self.sessions, gate),
            member.settings(self.bootstrap, self.topic, self.group),
        )
        self.runs.append((runner, asyncio.ensure_future(runner.run(install_signal_handlers=False))))
        return runner

    async def committed(self) -> dict[int, int | None]:
        assert self._offsets is not None
        return {
            p: await self._offsets.committed(TopicPartition(self.topic, p))
            for p in range(PARTITIONS)
        }

    async def effects(self) -> list[Any]:
        async with self.engine.connect() as conn:
            query = sa.select(member.EFFECTS).order_by(member.EFFECTS.c.pk)
            return list((await conn.execute(query)).all())

    async def monitor(self) -> None:
        """Check every committed offset seen: all records below it have taken effect.

        The offsets are read before the effects: a commit is only ever made after
        its records' transactions committed, so anything missing is a violation.
        """
        while True:
            committed = await self.committed()
            done = {row.event_id for row in await self.effects()}
            for p, offset in committed.items():
                if offset is None:
                    continue
                self.commits_seen += 1
                missing = [o for o in range(offset) if self.ids[(p, o)] not in done]
                if missing:
                    self.violations.append(f"partition {p} committed {offset}, not done {missing}")
            await asyncio.sleep(0.05)

    async def all_committed(self) -> bool:
        committed = await self.committed()
        return all(committed[p] == end for p, end in self.ends.items())

    async def check(self) -> list[Any]:
        """Every record once, per key in order; no commit seen past an unfinished record."""
        await wait_until(
            self.all_committed,
            within=60,
            what=lambda: f"every partition committed to its end {self.ends}",
        )
        assert self.violations == [], "a commit passed records not done"
        rows = await self.effects()
        counts = Counter(row.event_id for row in rows)
        lost = set(self.ids.values()) - set(counts)
        assert not lost, f"{len(lost)} records never took effect: {sorted(lost)[:5]}"
        assert {i: n for i, n in counts.items() if n > 1} == {}, "an effect happened twice"
        for k in range(KEYS):
            seqs = [row.seq for row in rows if row.k == key_of(k)]
            assert seqs == list(range(PER_KEY)), f"{key_of(k)} out of order: {seqs}"
        assert self.commits_seen > 0
        return rows

    async def close(self) -> None:
        for runner, _ in self.runs:
            runner.stop()
        for _, task in self.runs:
            with contextlib.suppress(asyncio.CancelledError):
                async with asyncio.timeout(15):
                    await asyncio.wait({task})
        if self._offsets is not None:
            await self._offsets.stop()


@pytest.fixture
async def group(
    kafka_bootstrap: str, topic_prefix: str, async_engine: AsyncEngine
) -> AsyncIterator[Group]:
    g = Group(kafka_bootstrap, topic_prefix, async_engine)
    await g.setup()
    monitor = asyncio.ensure_future(g.monitor())
    try:
        yield g
    finally:
        monitor.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await monitor
        await g.close()
    for _, task in g.runs:
        if task.done() and not task.cancelled():
            assert task.exception() is None, task.exception()


class Gate:
    """Holds each key's ``GATE_SEQ`` record in its open transaction until opened."""

    def __init__(self) -> None:
        self.keys: set[str] = set()
        self.opened = asyncio.Event()

    async def __call__(self, event: ReceivedEvent) -> None:
        self.keys.add(event.aggregate_id)
        await self.opened.wait()


class Revocations(logging.Handler):
    """Sees the runner's "partitions revoked" log line: a revocation has begun."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("partitions revoked"):
            self.seen.set()


@contextlib.contextmanager
def watching_revocations() -> Any:
    handler, log = Revocations(), logging.getLogger("transactional_outbox.consumer")
    log.addHandler(handler)
    level = log.level
    log.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


def hand_overs(rows: list[Any], k: int) -> list[str]:
    """The members that handled key ``k``, in order, each run of one member once."""
    members: list[str] = []
    for row in rows:
        if row.k == key_of(k) and (not members or members[-1] != row.member):
            members.append(row.member)
    return members


async def test_a_joining_member_takes_partitions_whose_handlers_are_running(group: Group) -> None:
    await group.publish()
    gate = Gate()
    a = group.start("a", gate)
    # Every key's gated record is running in a: each partition has work in flight.
    await wait_until(lambda: len(gate.keys) == KEYS, what=lambda: f"gates entered: {gate.keys}")
    with watching_revocations() as revocations:
        b = group.start("b")
        async with asyncio.timeout(30):
            await revocations.seen.wait()
    assert gate.keys and not gate.opened.is_set()  # revoked with the gated handlers running
    gate.opened.set()  # they finish (after failing once) while a's partitions are revoked
    await wait_until(
        lambda: len(a.assignment | b.assignment) == PARTITIONS and bool(b.assignment),
        within=30,
        what="the partitions split between a and b",
    )
    rows = await group.check()
    moved = {tp.partition for tp in b.assignment}
    for k in range(KEYS):
        # Keys of b's partitions: a up to its gated record, b from the next one on.
        expected = ["a", "b"] if partition_of(key_of(k)) in moved else ["a"]
        assert hand_overs(rows, k) == expected, key_of(k)
        by_a = [row.seq for row in rows if row.k == key_of(k) and row.member == "a"]
        if partition_of(key_of(k)) in moved:
            assert by_a == list(range(member.GATE_SEQ + 1)), key_of(k)


async def test_a_member_stopped_with_handlers_running_hands_over_what_it_did_not_finish(
    group: Group,
) -> None:
    gate = Gate()
    a = group.start("a", gate)
    b = group.start("b")
    await wait_until(
        lambda: (
            bool(a.assignment and b.assignment) and len(a.assignment | b.assignment) == PARTITIONS
        ),
        within=30,
        what="the partitions split between a and b",
    )
    await group.publish()
    mine = {key_of(k) for k in range(KEYS) if partition_of(key_of(k)) in _parts(a)}
    await wait_until(lambda: gate.keys == mine, what=lambda: f"a's gates: {gate.keys} of {mine}")
    a.stop()
    # The gated records fail once: stopping abandons their retry, so b redoes them.
    gate.opened.set()
    async with asyncio.timeout(30):
        await group.runs[0][1]
    rows = await group.check()
    for k in range(KEYS):
        expected = ["a", "b"] if key_of(k) in mine else ["b"]
        assert hand_overs(rows, k) == expected, key_of(k)


async def test_a_member_killed_mid_batch_loses_nothing_and_doubles_nothing(
    group: Group, async_mysql_url: URL, tmp_path: Path
) -> None:
    gates = tmp_path / "gates"
    gates.touch()
    b = group.start("b")
    child = member.start_child(
        group.bootstrap,
        group.topic,
        group.group,
        async_mysql_url.render_as_string(hide_password=False),
        gates,
        tmp_path / "child.log",
    )
    try:
        # b alone first has all four partitions; once the child joined, two.
        await wait_until(
            lambda: len(b.assignment) == PARTITIONS // 2 or child.poll() is not None,
            within=30,
            what="the child joining the group",
        )
        assert child.poll() is None, (tmp_path / "child.log").read_text()
        await group.publish()
        theirs = {key_of(k) for k in range(KEYS) if partition_of(key_of(k)) not in _parts(b)}
        await wait_until(
            lambda: set(gates.read_text().split()) == theirs,
            what=lambda: f"the child's gates: {gates.read_text().split()} of {theirs}",
        )
        child.send_signal(signal.SIGKILL)  # mid-batch: the gated transactions are open
        assert child.wait(10) == -signal.SIGKILL
        rows = await group.check()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
    for k in range(KEYS):
        expected = ["child", "b"] if key_of(k) in theirs else ["b"]
        assert hand_overs(rows, k) == expected, key_of(k)
        by_child = [row.seq for row in rows if row.k == key_of(k) and row.member == "child"]
        if key_of(k) in theirs:
            assert by_child == list(range(member.GATE_SEQ)), key_of(k)


def _parts(runner: ConsumerRunner) -> set[int]:
    return {tp.partition for tp in runner.assignment}
