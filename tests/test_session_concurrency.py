"""Concurrent writers on the stack's MariaDB: bulk transactions never wait on each other.

8 writers commit transactions of one business row plus 1, 5, 40 or 1,000 events (each
size alone, then mixed, then two flushes of 20), under REPEATABLE READ and READ
COMMITTED, with a short
``innodb_lock_wait_timeout``, and no retries: one deadlock (1213) or lock wait timeout
(1205) fails the test. Afterwards the outbox table is empty and the relay's own reader
finds every event on the binlog exactly once. Before the SDK deleted several ids
through the primary key (``DELETE ... IN`` was a locking full scan), 8 writers of 40
events deadlocked 464 times in 240 transactions.
"""

from __future__ import annotations

import random
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from transactional_outbox import OutboxSession
from transactional_outbox.relay.routing import TopicRouter

from ._binlog import count_rows, create_outbox, position
from ._own_reader import read_records
from .conftest import Stack

WRITERS = 8
LOCK_WAIT_TIMEOUT = 5  # seconds; per session. A wait on another writer's rows would hit it
# Per phase: the events of each flush of a writer's transactions, and the flushes per
# transaction (2: as when autoflush writes events mid-transaction). ~20,000 events per
# isolation level.
PHASES: dict[str, tuple[list[int], int]] = {
    "1": ([1] * 20, 1),
    "5": ([5] * 10, 1),
    "40": ([40] * 5, 1),
    "1000": ([1000], 1),
    "mixed": ([1, 5, 40, 1000, 1, 5, 40], 1),
    "2 x 20, two flushes": ([20] * 5, 2),
}
ROUTER = TopicRouter(template="t.{aggregatetype}")


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "items"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    writer: Mapped[int]


@pytest.fixture(params=["REPEATABLE READ", "READ COMMITTED"])
def writer_engine(request: pytest.FixtureRequest, mysql_url: URL) -> Iterator[sa.Engine]:
    engine = sa.create_engine(
        mysql_url, isolation_level=request.param, pool_size=WRITERS, max_overflow=0
    )

    @sa.event.listens_for(engine, "connect")
    def short_lock_waits(dbapi_conn: Any, _record: Any) -> None:
        with dbapi_conn.cursor() as cur:
            cur.execute(f"SET SESSION innodb_lock_wait_timeout = {LOCK_WAIT_TIMEOUT}")

    yield engine
    engine.dispose()


def run_writers(
    factory: sessionmaker[OutboxSession], sizes: list[int], flushes: int, seed: int
) -> list[str]:
    """Each writer commits one transaction per size (in its own shuffled order), of
    ``flushes`` flushes of that many events; returns the ids of the events committed.
    Any error fails the test."""
    start = threading.Barrier(WRITERS)
    written: list[list[str]] = [[] for _ in range(WRITERS)]
    errors: list[BaseException] = []

    def writer(w: int) -> None:
        order = random.Random(seed * 100 + w).sample(sizes, len(sizes))
        try:
            start.wait()
            for n in order:
                events = []
                with factory.begin() as session:
                    session.add(Item(writer=w))
                    for _ in range(flushes):
                        # Random (v4) ids for odd writers: their rows land anywhere in the
                        # index, not only at its end as the default time-ordered v7 ids do.
                        events += [
                            session.add_event(
                                aggregate_type="item",
                                aggregate_id=w,
                                event_type=f"E{i}",
                                payload={"w": w, "i": i},
                                id=uuid.uuid4() if w % 2 else None,
                            )
                            for i in range(n)
                        ]
                        session.flush()
                written[w].extend(str(e.id) for e in events)
        except BaseException as exc:
            errors.append(exc)
            start.abort()

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(WRITERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    return [i for ids in written for i in ids]


def test_concurrent_writers_never_deadlock_or_wait(
    writer_engine: sa.Engine, stack: Stack, database: str
) -> None:
    Base.metadata.create_all(writer_engine)
    outbox = create_outbox(writer_engine)
    factory = sessionmaker(writer_engine, class_=OutboxSession)
    start = position(stack)
    written: list[str] = []
    for seed, (sizes, flushes) in enumerate(PHASES.values()):
        written += run_writers(factory, sizes, flushes, seed)
    assert count_rows(writer_engine, outbox) == 0
    records, _ = read_records(stack, database, start, ROUTER)
    on_binlog = Counter(dict(r.headers)["id"].decode() for r in records)  # type: ignore[union-attr]
    assert on_binlog == Counter(written)
    assert len(written) == WRITERS * sum(sum(sizes) * n for sizes, n in PHASES.values())
