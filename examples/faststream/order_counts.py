"""Example FastStream app: counts the order events per customer, each event once.

    python examples/faststream/order_counts.py           # consume until Ctrl-C
    python examples/faststream/order_counts.py --once    # handle what the topic holds,
                                                         # print the counts (JSON), exit
    faststream run order_counts:create_app --factory     # FastStream's own CLI

The subscriber is FastStream's; ``@exactly_once`` (``transactional_outbox.faststream``)
hands it our ``ReceivedEvent`` and skips an event whose id is done in the store (Redis
here), so the relay's redeliveries are acked without counting twice. A handler that
raises is not marked done, and ``AckPolicy.NACK_ON_ERROR`` makes FastStream deliver the
record again. The counts live in memory: a real service would write them in a database
(with ``AsyncSqlStore``, in the same transaction as its inbox row).

Settings (environment):
  OUTBOX_KAFKA_BOOTSTRAP_SERVERS  default 127.0.0.1:19092
  OUTBOX_REDIS_URL                the dedup store (default redis://127.0.0.1:16379/0)
  ORDERS_TOPIC                    default outbox.event.order
  CONSUMER_GROUP                  default order-counts (also the dedup scope)
  DEDUP_KEY_PREFIX                default order-counts:done: (the store's Redis keys)
  CONSUMER_SESSION_TIMEOUT_MS     default 10000 (the local tansu broker: 1000)
  CONSUMER_HEARTBEAT_INTERVAL_MS  default 3000 (the local tansu broker: 300)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from collections import Counter

import redis.asyncio
from aiokafka import AIOKafkaConsumer, TopicPartition
from faststream import AckPolicy, FastStream
from faststream.kafka import KafkaBroker

from transactional_outbox.consumer import (
    AsyncDedupStore,
    AsyncInboxStore,
    AsyncRedisStore,
    ReceivedEvent,
)
from transactional_outbox.faststream import exactly_once

BOOTSTRAP = os.environ.get("OUTBOX_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:19092")
TOPIC = os.environ.get("ORDERS_TOPIC", "outbox.event.order")
GROUP = os.environ.get("CONSUMER_GROUP", "order-counts")

counts: Counter[str] = Counter()


def create_broker(
    store: AsyncDedupStore | AsyncInboxStore, bootstrap: str = BOOTSTRAP
) -> KafkaBroker:
    """The broker with the one subscriber: ``counts[customer] += 1`` per order event."""
    broker = KafkaBroker(bootstrap)

    @broker.subscriber(
        TOPIC,
        group_id=GROUP,
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.NACK_ON_ERROR,  # a failure is delivered again
        session_timeout_ms=int(os.environ.get("CONSUMER_SESSION_TIMEOUT_MS", "10000")),
        heartbeat_interval_ms=int(os.environ.get("CONSUMER_HEARTBEAT_INTERVAL_MS", "3000")),
    )
    @exactly_once(store=store, consumer_name=GROUP)
    async def on_order(event: ReceivedEvent) -> None:
        order = event.json()
        counts[str(order.get("customer_id", event.aggregate_id))] += 1

    return broker


def redis_store() -> AsyncRedisStore:
    url = os.environ.get("OUTBOX_REDIS_URL", "redis://127.0.0.1:16379/0")
    prefix = os.environ.get("DEDUP_KEY_PREFIX", "order-counts:done:")
    return AsyncRedisStore(redis.asyncio.Redis.from_url(url), prefix=prefix)


def create_app() -> FastStream:
    """The FastStream app (``faststream run order_counts:create_app --factory``)."""
    return FastStream(create_broker(redis_store()))


async def once(idle_s: float = 1.0, nothing_s: float = 15.0) -> dict[str, int]:
    """Handle what the topic holds, then stop: once the group's committed offsets have
    not moved for ``idle_s`` (or never moved in ``nothing_s``: nothing to do)."""
    # A plain consumer of the same group reads the group's committed offsets. (Not the
    # partitions' end offsets: the local tansu broker answers those wrongly.)
    offsets = AIOKafkaConsumer(bootstrap_servers=BOOTSTRAP, group_id=GROUP)
    await offsets.start()
    broker = create_broker(redis_store())
    loop = asyncio.get_running_loop()
    try:
        await offsets.topics()  # fetches the cluster's metadata
        partitions = [TopicPartition(TOPIC, p) for p in offsets.partitions_for_topic(TOPIC) or ()]
        await broker.start()
        started = moved = loop.time()
        seen: dict[TopicPartition, int | None] = {tp: None for tp in partitions}
        while True:
            await asyncio.sleep(0.1)
            now = {tp: await offsets.committed(tp) for tp in partitions}
            if now != seen:
                seen, moved = now, loop.time()
            if moved > started and loop.time() - moved >= idle_s:
                break
            if moved == started and loop.time() - started >= nothing_s:
                break
    finally:
        await broker.stop()
        await offsets.stop()
    return dict(counts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--once", action="store_true", help="handle what the topic holds, print counts, exit"
    )
    args = parser.parse_args()
    if args.once:
        print(json.dumps(asyncio.run(once()), sort_keys=True))
        return 0
    asyncio.run(create_app().run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
