"""A dedup store that cannot be reached (a Redis failover, a network cut, the SQL inbox's
database gone) is neither a handler failure nor a reason to stop: the runner waits for
it, however long, and every event is then handled once; none is dead-lettered for an
outage."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import AsyncIterator

import pytest
import redis.asyncio
import sqlalchemy as sa
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from outbox_dev.tcp_proxy import TcpProxy
from transactional_outbox.consumer import (
    AsyncRedisStore,
    AsyncSqlStore,
    ReceivedEvent,
    idempotent_consumer,
    inbox_table,
)

from ._consumer_helpers import order_event, publish
from .conftest import Stack
from .polling import wait_until
from .test_consumer_runner import Harness


@pytest.fixture
async def kafka(kafka_bootstrap: str, topic_prefix: str) -> AsyncIterator[Harness]:
    harness = Harness(kafka_bootstrap, topic_prefix)
    yield harness
    await harness.close()


async def _dead_letters(harness: Harness) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=harness.bootstrap)
    await consumer.start()
    try:
        if harness.dlq not in await consumer.topics():
            return 0
        parts = consumer.partitions_for_topic(harness.dlq) or set()
        ends = await consumer.end_offsets([TopicPartition(harness.dlq, p) for p in parts])
        return sum(ends.values())
    finally:
        await consumer.stop()


async def test_an_outage_longer_than_the_retry_budget_stops_nothing_and_loses_nothing(
    kafka: Harness, stack: Stack, redis_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="transactional_outbox.consumer")
    redis_port = int(stack.redis_url.rsplit(":", 1)[1].split("/")[0])
    with TcpProxy(redis_port) as proxy:
        client = redis.asyncio.Redis.from_url(
            f"redis://127.0.0.1:{proxy.port}/0", socket_timeout=1, socket_connect_timeout=1
        )
        store = AsyncRedisStore(client, prefix=redis_prefix + "processed:")
        handled: Counter[str] = Counter()

        @idempotent_consumer(store=store, consumer_name="outage")
        async def handler(event: ReceivedEvent) -> None:
            handled[str(event.id)] += 1

        events = [order_event(i) for i in range(6)]
        proxy.cut()
        await publish(kafka.bootstrap, kafka.topic, events)
        # max_attempts 3 with 10-50 ms backoff: a budget of about 0.1 s, used up many times.
        task = kafka.start(handler)

        def waits() -> int:
            return sum("store unavailable" in r.getMessage() for r in caplog.records)

        await wait_until(lambda: waits() >= 10 or task.done(), what="the runner waiting")
        assert not task.done(), task.exception()
        assert handled == Counter()
        proxy.restore()
        await wait_until(kafka.committed_is(len(events), total=True), what="every event done")
        assert handled == {str(e.id): 1 for e in events}
        assert not task.done()
        assert await _dead_letters(kafka) == 0
        await client.aclose()


_sql = sa.MetaData()
_inbox = inbox_table(_sql)
_effects = sa.Table(
    "outage_effects",
    _sql,
    sa.Column("n", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("event_id", sa.String(36), nullable=False),
)


@pytest.mark.parametrize("batch_transactions", [False, True], ids=["per-event", "batch"])
async def test_an_inbox_database_outage_is_waited_for_and_dead_letters_nothing(
    kafka: Harness,
    async_mysql_url: URL,
    caplog: pytest.LogCaptureFixture,
    batch_transactions: bool,
) -> None:
    caplog.set_level(logging.WARNING, logger="transactional_outbox.consumer")
    with TcpProxy(async_mysql_url.port or 3306) as proxy:
        engine = create_async_engine(async_mysql_url.set(port=proxy.port))
        async with engine.begin() as conn:
            await conn.run_sync(_sql.create_all)
        store = AsyncSqlStore(
            async_sessionmaker(engine), table=_inbox, batch_transactions=batch_transactions
        )

        @idempotent_consumer(store=store, consumer_name="sql-outage")
        async def handler(event: ReceivedEvent, session: AsyncSession) -> None:
            await session.execute(sa.insert(_effects).values(event_id=str(event.id)))

        events = [order_event(i) for i in range(6)]
        # One handled first: the pool then holds a connection that the cut breaks
        # mid-use (a lost connection), and later ones cannot connect at all.
        await publish(kafka.bootstrap, kafka.topic, events[:1])
        task = kafka.start(handler)
        await wait_until(kafka.committed_is(1, total=True), what="the first event done")
        proxy.cut()
        await publish(kafka.bootstrap, kafka.topic, events[1:])

        def waits() -> int:
            return sum("store unavailable" in r.getMessage() for r in caplog.records)

        # max_attempts 3 with 10-50 ms backoff: the old behaviour dead-lettered at once.
        await wait_until(lambda: waits() >= 10 or task.done(), what="the runner waiting")
        assert not task.done(), task.exception()
        proxy.restore()
        await wait_until(kafka.committed_is(len(events), total=True), what="every event done")
        async with engine.connect() as conn:
            rows = (await conn.execute(sa.select(_effects.c.event_id))).scalars().all()
        await engine.dispose()
    assert Counter(rows) == {str(e.id): 1 for e in events}
    assert await _dead_letters(kafka) == 0
