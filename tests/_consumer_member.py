"""One member of a consumer group for the rebalance tests: in this process or a child.

Its handler is slow, fails once on every record whose ``seq`` is 1 modulo 4, and
writes one ``effects`` row per handling in the SQL inbox's transaction (so an
effect that happened twice is a second row, and a rolled-back attempt none).
The record with ``seq == GATE_SEQ`` of every key waits at a gate, in the open
transaction, so the test decides when work is in flight.

As a child (``python -m tests._consumer_member BOOTSTRAP TOPIC GROUP DB_URL
GATE_FILE``) the gate appends the key to ``GATE_FILE`` and never opens: the test
kills the process there, mid-batch.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from transactional_outbox.consumer import (
    AsyncIdempotentHandler,
    AsyncSqlStore,
    ConsumerRunner,
    KafkaConnection,
    ReceivedEvent,
    RunnerSettings,
    idempotent_consumer,
    inbox_table,
)

GATE_SEQ = 5  # 5 % 4 == 1: the gated record also fails once

metadata = sa.MetaData()
INBOX = inbox_table(metadata)
EFFECTS = sa.Table(
    "effects",
    metadata,
    sa.Column("pk", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("event_id", sa.String(36), nullable=False),
    sa.Column("k", sa.String(16), nullable=False),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("member", sa.String(8), nullable=False),
)

Gate = Callable[[ReceivedEvent], Awaitable[None]]


def settings(bootstrap: str, topic: str, group: str) -> RunnerSettings:
    """The group's settings: small session timeouts, so tansu's joins are quick."""
    return RunnerSettings(
        kafka=KafkaConnection(bootstrap_servers=bootstrap),
        group_id=group,
        topics=[topic],
        max_attempts=10,
        backoff_initial_ms=10,
        backoff_max_ms=50,
        session_timeout_ms=1000,
        heartbeat_interval_ms=300,
        max_poll_records=20,  # several batches in flight per partition
    )


def handler(
    member: str, sessions: async_sessionmaker[AsyncSession], gate: Gate | None
) -> AsyncIdempotentHandler:
    """The member's handler (see the module docstring)."""
    failed: set[uuid.UUID] = set()

    @idempotent_consumer(store=AsyncSqlStore(sessions, table=INBOX), consumer_name="rebalance")
    async def on_event(event: ReceivedEvent, session: AsyncSession) -> None:
        seq = event.json()["seq"]
        await session.execute(
            sa.insert(EFFECTS).values(
                event_id=str(event.id), k=event.aggregate_id, seq=seq, member=member
            )
        )
        if gate is not None and seq == GATE_SEQ:
            await gate(event)
        await asyncio.sleep(0.005)
        if seq % 4 == 1 and event.id not in failed:
            failed.add(event.id)
            raise RuntimeError(f"{event.aggregate_id}/{seq} fails once")

    return on_event


def _note(path: Path, key: str) -> None:
    with path.open("a") as f:
        f.write(key + "\n")


def start_child(
    bootstrap: str, topic: str, group: str, db_url: str, gate_file: Path, log: Path
) -> subprocess.Popen[bytes]:
    """This member as a child process (its output in ``log``), from the repository root."""
    with log.open("wb") as out:
        args = [bootstrap, topic, group, db_url, str(gate_file)]
        return subprocess.Popen(
            [sys.executable, "-m", "tests._consumer_member", *args],
            cwd=Path(__file__).resolve().parent.parent,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def _child(bootstrap: str, topic: str, group: str, db_url: str, gate_file: str) -> None:
    engine = create_async_engine(db_url)

    async def gate(event: ReceivedEvent) -> None:
        _note(Path(gate_file), event.aggregate_id)
        await asyncio.Event().wait()  # until SIGKILL

    runner = ConsumerRunner(
        handler("child", async_sessionmaker(engine), gate), settings(bootstrap, topic, group)
    )
    await runner.run()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(_child(*sys.argv[1:6]))
