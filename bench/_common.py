"""What the benchmark scripts share: the local stack's addresses and small helpers."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pymysql
from aiokafka import AIOKafkaConsumer, TopicPartition

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "dev"))
import stack as stack_script  # noqa: E402

sys.path.pop(0)

HOST, PORT = "127.0.0.1", stack_script.MYSQL_PORT
USER, PASSWORD = stack_script.MYSQL_USER, stack_script.MYSQL_PASSWORD
BOOTSTRAP = stack_script.env_vars()["OUTBOX_KAFKA_BOOTSTRAP_SERVERS"]
REDIS_URL = stack_script.env_vars()["OUTBOX_REDIS_URL"]


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


def connect(db: str | None = None) -> pymysql.Connection:
    """An autocommit connection to the stack's MariaDB as its admin user."""
    return pymysql.connect(
        host=HOST, port=PORT, user=USER, password=PASSWORD, database=db, autocommit=True
    )


async def assign_from_start(consumer: AIOKafkaConsumer, topic: str) -> None:
    """Assign every partition of ``topic`` (waiting for it to exist) from offset 0."""
    parts = None
    for _ in range(200):
        metadata = await consumer._client.fetch_all_metadata()
        parts = metadata.partitions_for_topic(topic)
        if parts:
            break
        await asyncio.sleep(0.05)
    if not parts:
        raise SystemExit(f"topic {topic} not found")
    tps = [TopicPartition(topic, p) for p in sorted(parts)]
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
