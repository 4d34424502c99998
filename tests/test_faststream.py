"""``transactional_outbox.faststream`` with FastStream's Kafka broker on the stack (tansu, Redis,
MariaDB): each event handled once through a duplicate storm, duplicates acked without a
handler call, a failure not marked done and delivered again by FastStream
(``AckPolicy.NACK_ON_ERROR``), with an async Redis store and a sync SQL inbox; a store
outage waited for, never committed past; and the example app's ``--once`` mode.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import uuid
from collections import Counter

import pytest
import redis.asyncio
import sqlalchemy as sa
from aiokafka import AIOKafkaConsumer, TopicPartition
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from sqlalchemy.orm import Session, sessionmaker

from outbox_dev.tcp_proxy import TcpProxy
from transactional_outbox import OutboxEvent
from transactional_outbox.consumer import AsyncRedisStore, ReceivedEvent, SqlStore, inbox_table
from transactional_outbox.faststream import exactly_once

from ._consumer_helpers import order_event, publish_sent
from .conftest import ROOT, Stack
from .relay_harness import ensure_topics, wait_until

Ends = dict[TopicPartition, int]
FAST = {"session_timeout_ms": 1000, "heartbeat_interval_ms": 300}  # tansu (DESIGN §5)


async def publish_storm(bootstrap: str, topic: str, events: list[OutboxEvent], copies: int) -> Ends:
    """Publish every event ``copies`` times, as the relay would; each partition's end offset.

    (From the producer's answers: tansu's ListOffsets answers the end of a partition
    written in batches wrongly, 1 where 20 records were written.)
    """
    ends: Ends = {}
    for meta in await publish_sent(bootstrap, topic, events * copies, partition=None):
        tp = TopicPartition(topic, meta.partition)
        ends[tp] = max(ends.get(tp, 0), meta.offset + 1)
    return ends


async def all_committed(bootstrap: str, group: str, ends: Ends) -> bool:
    """Whether ``group`` committed every partition to its end: every record acked."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    await consumer.start()
    try:
        committed = {tp: (await consumer.committed(tp)) or 0 for tp in ends}
        return all(committed[tp] >= end for tp, end in ends.items())
    finally:
        await consumer.stop()


async def test_duplicate_storm_through_two_faststream_apps_handles_each_event_once(
    kafka_bootstrap: str, aredis: redis.asyncio.Redis, topic_prefix: str, redis_prefix: str
) -> None:
    topic = topic_prefix + "outbox.event.order"
    await ensure_topics(kafka_bootstrap, [topic], partitions=4)
    events = [order_event(n) for n in range(40)]
    ends = await publish_storm(kafka_bootstrap, topic, events, 3)

    handled: Counter[uuid.UUID] = Counter()
    failures: Counter[uuid.UUID] = Counter()
    flaky = events[7].id  # fails at its first call: not done, delivered again
    store = AsyncRedisStore(aredis, prefix=redis_prefix)

    def app(group: str) -> KafkaBroker:
        # Two deployments sharing one dedup scope (e.g. blue/green): both read every copy.
        broker = KafkaBroker(kafka_bootstrap)

        @broker.subscriber(
            topic,
            group_id=group,
            auto_offset_reset="earliest",
            ack_policy=AckPolicy.NACK_ON_ERROR,
            **FAST,
        )
        @exactly_once(store=store, consumer_name="billing")
        async def on_order(event: ReceivedEvent) -> None:
            assert event.topic == topic and event.offset >= 0
            if event.id == flaky and not failures[flaky]:
                failures[flaky] += 1
                raise RuntimeError("payment service down")
            await asyncio.sleep(0)  # let the other app race for the same ids
            handled[event.id] += 1

        return broker

    groups = [topic_prefix + "blue", topic_prefix + "green"]
    brokers = [app(group) for group in groups]
    for broker in brokers:
        await broker.start()
    try:

        async def everything_acked() -> bool:
            return all([await all_committed(kafka_bootstrap, g, ends) for g in groups])

        await wait_until(everything_acked, what=lambda: f"{len(handled)} handled, acks pending")
    finally:
        for broker in brokers:
            await broker.stop()
    # 6 deliveries of each id (3 copies x 2 apps), every one acked; one handler call each.
    assert handled == {e.id: 1 for e in events}
    assert failures == {flaky: 1}


async def test_sync_sql_inbox_store_commits_each_effect_once_and_rolls_back_a_failure(
    kafka_bootstrap: str, engine: sa.Engine, topic_prefix: str
) -> None:
    topic = topic_prefix + "outbox.event.order"
    await ensure_topics(kafka_bootstrap, [topic], partitions=2)
    metadata = sa.MetaData()
    effects = sa.Table("effects", metadata, sa.Column("event_id", sa.String(36)))
    inbox = inbox_table(metadata)
    metadata.create_all(engine)
    events = [order_event(n) for n in range(10)]
    ends = await publish_storm(kafka_bootstrap, topic, events, 2)
    flaky, calls = events[3].id, Counter[uuid.UUID]()

    broker = KafkaBroker(kafka_bootstrap)

    @broker.subscriber(
        topic,
        group_id=topic_prefix + "g",
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.NACK_ON_ERROR,
        **FAST,
    )
    @exactly_once(store=SqlStore(sessionmaker(engine), table=inbox), consumer_name="sync")
    def on_order(event: ReceivedEvent, session: Session) -> None:  # a plain function
        calls[event.id] += 1
        session.execute(sa.insert(effects).values(event_id=str(event.id)))
        if event.id == flaky and calls[flaky] == 1:
            raise RuntimeError("rolled back with its inbox row")

    await broker.start()
    try:

        async def everything_acked() -> bool:
            return await all_committed(kafka_bootstrap, topic_prefix + "g", ends)

        await wait_until(everything_acked, what=lambda: f"calls {dict(calls)}")
    finally:
        await broker.stop()
    with engine.connect() as conn:
        rows = Counter(r.event_id for r in conn.execute(sa.select(effects)))
        done = conn.execute(sa.select(sa.func.count()).select_from(inbox)).scalar()
    assert rows == {str(e.id): 1 for e in events}  # the failed call's insert rolled back
    assert done == len(events)
    assert calls[flaky] == 2
    assert all(calls[e.id] == 1 for e in events if e.id != flaky)  # duplicates: no call


def test_example_app_once_counts_each_event_once(
    kafka_bootstrap: str, redis_prefix: str, topic_prefix: str, stack: Stack
) -> None:
    topic = topic_prefix + "outbox.event.order"
    events = [
        order_event(n, payload={"order_id": n, "customer_id": "c-1" if n < 2 else "c-2"})
        for n in range(5)
    ]

    async def setup() -> None:
        await ensure_topics(kafka_bootstrap, [topic], partitions=3)
        await publish_storm(kafka_bootstrap, topic, events, 2)

    asyncio.run(setup())
    env = {
        **os.environ,
        "OUTBOX_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "OUTBOX_REDIS_URL": stack.redis_url,
        "ORDERS_TOPIC": topic,
        "CONSUMER_GROUP": topic_prefix + "counts",
        "DEDUP_KEY_PREFIX": redis_prefix,
        "CONSUMER_SESSION_TIMEOUT_MS": "1000",
        "CONSUMER_HEARTBEAT_INTERVAL_MS": "300",
    }
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "faststream" / "order_counts.py"), "--once"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"c-1": 2, "c-2": 3}


async def test_a_store_outage_is_waited_for_not_committed_past(
    kafka_bootstrap: str,
    stack: Stack,
    topic_prefix: str,
    redis_prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # AckPolicy.ACK (on Kafka what REJECT_ON_ERROR does too) commits past a record whose
    # handler raised: an outage must not be that, or every event read while the store is
    # down would be skipped unhandled.
    caplog.set_level(logging.WARNING, logger="transactional_outbox.faststream")
    topic = topic_prefix + "outbox.event.order"
    await ensure_topics(kafka_bootstrap, [topic], partitions=1)
    events = [order_event(n) for n in range(5)]
    ends = await publish_storm(kafka_bootstrap, topic, events, 1)
    handled: Counter[uuid.UUID] = Counter()
    redis_port = int(stack.redis_url.rsplit(":", 1)[1].split("/")[0])
    with TcpProxy(redis_port) as proxy:
        client = redis.asyncio.Redis.from_url(
            f"redis://127.0.0.1:{proxy.port}/0", socket_timeout=1, socket_connect_timeout=1
        )
        broker = KafkaBroker(kafka_bootstrap)

        @broker.subscriber(
            topic,
            group_id=topic_prefix + "g",
            auto_offset_reset="earliest",
            ack_policy=AckPolicy.ACK,
            **FAST,
        )
        @exactly_once(store=AsyncRedisStore(client, prefix=redis_prefix), consumer_name="o")
        async def on_order(event: ReceivedEvent) -> None:
            handled[event.id] += 1

        proxy.cut()
        await broker.start()
        try:

            def waits() -> int:
                return sum("store unavailable" in r.getMessage() for r in caplog.records)

            await wait_until(lambda: waits() >= 3, what="the subscriber waiting for Redis")
            assert not handled
            assert not await all_committed(kafka_bootstrap, topic_prefix + "g", ends)
            proxy.restore()

            async def everything_acked() -> bool:
                return await all_committed(kafka_bootstrap, topic_prefix + "g", ends)

            await wait_until(everything_acked, what=lambda: f"{len(handled)} handled")
        finally:
            await broker.stop()
            await client.aclose()
    assert handled == {e.id: 1 for e in events}
