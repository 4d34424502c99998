"""Example consumer: keeps a ``customer_stats`` read model from the order events (CQRS).

    python examples/consumer/consumer.py           # consume until SIGTERM / Ctrl-C
    python examples/consumer/consumer.py --show    # print the read model and exit
    python examples/consumer/consumer.py --show --json

Each event is handled once: ``@idempotent_consumer`` with ``AsyncSqlStore`` inserts the
event id into the inbox table (``outbox_inbox``) in the same transaction as the read
model update, so a redelivered event (the relay delivers at least once) hits the inbox
primary key and is skipped; the two writes commit or roll back together.

Read model, one row per customer:
  orders        orders placed (cancelled ones included)
  total_amount  sum of the amounts of orders not cancelled
  cancelled     orders cancelled

Settings (environment):
  STATS_DATABASE_URL              read-model database, MySQL/MariaDB or PostgreSQL; its
                                  driver is replaced by asyncmy (MySQL) or psycopg
                                  (PostgreSQL) (default: the local stack's MariaDB
                                  ``outbox_read`` database)
  OUTBOX_KAFKA_BOOTSTRAP_SERVERS  default 127.0.0.1:19092; the brokers and login are read
                                  as the relay reads them (``KafkaConnection.from_env``:
                                  OUTBOX_KAFKA_SECURITY_PROTOCOL, ..._SASL_*, ..._SSL_*)
  ORDERS_TOPIC                    default outbox.event.order
  CONSUMER_GROUP                  default customer-stats
  CONSUMER_SESSION_TIMEOUT_MS     default 10000 (the local tansu broker: 1000)
  CONSUMER_HEARTBEAT_INTERVAL_MS  default 3000 (the local tansu broker: 300)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
from decimal import Decimal

import sqlalchemy as sa
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from sqlalchemy.dialects.mysql import insert as mysql_insert
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from transactional_outbox.consumer import (
    AsyncSqlStore,
    ConsumerRunner,
    KafkaConnection,
    ReceivedEvent,
    RunnerSettings,
    idempotent_consumer,
)

DEFAULT_URL = "mysql+asyncmy://outbox:outbox@127.0.0.1:13306/outbox_read"
CONSUMER_NAME = "customer-stats"  # scopes the inbox rows of this consumer

ASYNC_DRIVERS = {
    "mysql": "mysql+asyncmy",
    "mariadb": "mysql+asyncmy",
    "postgresql": "postgresql+psycopg",
}

log = logging.getLogger("customer-stats")

metadata = sa.MetaData()
# Created by this example's alembic revision stats_0001.
customer_stats = sa.Table(
    "customer_stats",
    metadata,
    sa.Column("customer_id", sa.String(64), primary_key=True),
    sa.Column("orders", sa.Integer, nullable=False),
    sa.Column("total_amount", sa.Numeric(14, 2), nullable=False),
    sa.Column("cancelled", sa.Integer, nullable=False),
)


def database_url() -> str:
    url = make_url(os.environ.get("STATS_DATABASE_URL", DEFAULT_URL))
    driver = ASYNC_DRIVERS.get(url.get_backend_name(), url.drivername)
    return url.set(drivername=driver).render_as_string(hide_password=False)


async def _bump(session: AsyncSession, customer_id: str, **deltas: object) -> None:
    """Add ``deltas`` to the customer's row, creating it if needed (one upsert)."""
    c = customer_stats.c
    row = {"customer_id": customer_id, "orders": 0, "total_amount": Decimal(0), "cancelled": 0}
    updates = {name: c[name] + delta for name, delta in deltas.items()}
    values = {**row, **deltas}
    dialect = session.get_bind().dialect.name
    if dialect in ("mysql", "mariadb"):
        stmt = mysql_insert(customer_stats).values(values)
        await session.execute(stmt.on_duplicate_key_update(updates))
        return
    # PostgreSQL and SQLite (test_consumer.py) spell it the same way.
    insert = postgresql_insert if dialect == "postgresql" else sqlite_insert
    upsert = insert(customer_stats).values(values)
    await session.execute(
        upsert.on_conflict_do_update(index_elements=[c.customer_id], set_=updates)
    )


def make_handler(engine: AsyncEngine):
    store = AsyncSqlStore(async_sessionmaker(engine))

    @idempotent_consumer(store=store, consumer_name=CONSUMER_NAME)
    async def on_order_event(event: ReceivedEvent, session: AsyncSession) -> None:
        # Runs inside the store's transaction, after the inbox row was inserted.
        # Don't commit here: the store commits both.
        order = event.json()
        if event.event_type == "OrderPlaced":
            amount = Decimal(order["amount"])
            await _bump(session, order["customer_id"], orders=1, total_amount=amount)
        elif event.event_type == "OrderCancelled":
            amount = Decimal(order["amount"])
            await _bump(session, order["customer_id"], cancelled=1, total_amount=-amount)
        # OrderStatusChanged does not change these statistics (but is marked processed).

    async def handle(event: ReceivedEvent) -> None:
        ran = await on_order_event(event)
        log.info(
            "%s %s order=%s id=%s",
            "applied" if ran else "duplicate, skipped",
            event.event_type,
            event.aggregate_id,
            event.id,
        )

    return handle


async def ensure_topic(kafka: KafkaConnection, topic: str, partitions: int = 3) -> None:
    """Create the topic if missing, so the group's subscription finds it at once."""
    admin = AIOKafkaAdminClient(**kafka.client_args())
    await admin.start()
    try:
        if topic not in await admin.list_topics():
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()


async def consume() -> None:
    kafka = KafkaConnection.from_env(
        bootstrap_servers=os.environ.get("OUTBOX_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:19092")
    )
    topic = os.environ.get("ORDERS_TOPIC", "outbox.event.order")
    settings = RunnerSettings(
        kafka=kafka,
        group_id=os.environ.get("CONSUMER_GROUP", "customer-stats"),
        topics=[topic],
        dead_letter_topic="{topic}.dlq",
        max_attempts=3,
        session_timeout_ms=int(os.environ.get("CONSUMER_SESSION_TIMEOUT_MS", "10000")),
        heartbeat_interval_ms=int(os.environ.get("CONSUMER_HEARTBEAT_INTERVAL_MS", "3000")),
    )
    await ensure_topic(kafka, topic)
    engine = create_async_engine(database_url(), pool_pre_ping=True)
    try:
        # Stops cleanly on SIGTERM/SIGINT: running handlers finish, offsets are committed.
        await ConsumerRunner(make_handler(engine), settings).run()
    finally:
        await engine.dispose()


async def read_model() -> dict[str, dict[str, object]]:
    """The read model: {customer_id: {"orders", "total_amount" (str), "cancelled"}}."""
    engine = create_async_engine(database_url())
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(sa.select(customer_stats).order_by("customer_id"))
            return {
                r.customer_id: {
                    "orders": r.orders,
                    "total_amount": str(r.total_amount),
                    "cancelled": r.cancelled,
                }
                for r in rows
            }
    finally:
        await engine.dispose()


def show(as_json: bool) -> None:
    stats = asyncio.run(read_model())
    if as_json:
        print(json.dumps(stats, sort_keys=True))
        return
    print(f"{'customer':<12} {'orders':>6} {'total_amount':>13} {'cancelled':>9}")
    for customer, s in stats.items():
        print(f"{customer:<12} {s['orders']:>6} {s['total_amount']:>13} {s['cancelled']:>9}")
    if not stats:
        print("(no rows yet)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--show", action="store_true", help="print the read model and exit")
    parser.add_argument("--json", action="store_true", help="with --show: print JSON")
    args = parser.parse_args()
    if args.show:
        show(args.json)
        return 0
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    asyncio.run(consume())
    return 0


if __name__ == "__main__":
    sys.exit(main())
