"""Fixtures that connect to the local stack of real servers (:mod:`outbox_dev.stack`).

The stack is started if it is not up. Each test gets isolated resources: its
own MariaDB database, Kafka topic prefix and Redis key prefix, so tests cannot
see each other's data even though the servers (and the binlog) are shared.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pymysql
import pytest
import redis
import redis.asyncio
import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from outbox_dev import stack as local_stack

ROOT = Path(__file__).resolve().parent.parent

# The outbox table as the SDK creates it on MySQL/MariaDB (DESIGN §1).
OUTBOX_DDL = """
CREATE TABLE IF NOT EXISTS `{table}` (
  id BINARY(16) NOT NULL PRIMARY KEY,
  aggregatetype VARCHAR(255) NOT NULL,
  aggregateid VARCHAR(255) NOT NULL,
  type VARCHAR(255) NOT NULL,
  payload LONGBLOB NOT NULL,
  headers TEXT NULL,
  `timestamp` DATETIME(6) NOT NULL
) ENGINE=InnoDB
"""


@dataclass(frozen=True)
class Stack:
    """Where the servers of the local stack listen."""

    mysql_url: URL  # pymysql URL of the default database
    redis_url: str
    kafka_bootstrap: str

    def mysql_connect(self, database: str | None = None) -> pymysql.Connection:  # type: ignore[type-arg]
        """A plain PyMySQL connection (autocommit) as the stack's admin user."""
        return pymysql.connect(
            host=self.mysql_url.host,
            port=self.mysql_url.port or 3306,
            user=self.mysql_url.username,
            password=self.mysql_url.password or "",
            database=database,
            autocommit=True,
        )


@pytest.fixture(scope="session")
def stack() -> Stack:
    """Start the local stack if needed and return its addresses."""
    if not os.environ.get("OUTBOX_TEST_NO_STACK_START"):
        subprocess.run(
            [sys.executable, "-m", "outbox_dev.stack", "start"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    env = local_stack.env_vars()
    return Stack(
        mysql_url=make_url(env["OUTBOX_MYSQL_URL"]),
        redis_url=env["OUTBOX_REDIS_URL"],
        kafka_bootstrap=env["OUTBOX_KAFKA_BOOTSTRAP_SERVERS"],
    )


def unique(prefix: str) -> str:
    """A short unique name: safe as a database, topic or key prefix."""
    return f"{prefix}{uuid.uuid4().hex[:12]}"


@pytest.fixture
def database(stack: Stack) -> Iterator[str]:
    """A fresh MariaDB database for this test, dropped afterwards."""
    name = unique("t_")
    with stack.mysql_connect() as conn, conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}`")
    yield name
    with stack.mysql_connect() as conn, conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS `{name}`")


@pytest.fixture
def mysql_url(stack: Stack, database: str) -> URL:
    """A sync (PyMySQL) SQLAlchemy URL of this test's database."""
    return stack.mysql_url.set(database=database)


@pytest.fixture
def async_mysql_url(mysql_url: URL) -> URL:
    """An async (asyncmy) SQLAlchemy URL of this test's database."""
    return mysql_url.set(drivername="mysql+asyncmy")


@pytest.fixture
def engine(mysql_url: URL) -> Iterator[sa.Engine]:
    """A sync engine on this test's database."""
    eng = sa.create_engine(mysql_url)
    yield eng
    eng.dispose()


@pytest.fixture
async def async_engine(async_mysql_url: URL) -> AsyncIterator[AsyncEngine]:
    """An async engine on this test's database."""
    eng = create_async_engine(async_mysql_url)
    yield eng
    await eng.dispose()


@pytest.fixture
def redis_prefix(stack: Stack) -> Iterator[str]:
    """A Redis key prefix for this test; its keys are deleted afterwards."""
    prefix = unique("test:") + ":"
    yield prefix
    client = redis.Redis.from_url(stack.redis_url)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def redis_url(stack: Stack) -> str:
    """URL of the stack's Redis."""
    return stack.redis_url


@pytest.fixture
async def aredis(stack: Stack) -> AsyncIterator[redis.asyncio.Redis]:
    """An asyncio Redis client on the stack's Redis."""
    client = redis.asyncio.Redis.from_url(stack.redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def kafka_bootstrap(stack: Stack) -> str:
    """Bootstrap servers of the stack's Kafka-compatible broker."""
    return stack.kafka_bootstrap


@pytest.fixture
def topic_prefix() -> str:
    """A topic-name prefix unique to this test."""
    return unique("t") + "."


@pytest.fixture
def conn(stack: Stack, database: str) -> Iterator[pymysql.Connection]:
    """A connection to this test's database, with an outbox table in it."""
    c = stack.mysql_connect(database)
    with c.cursor() as cur:
        cur.execute(OUTBOX_DDL.format(table="outbox"))
    yield c
    c.close()


@pytest.fixture
def settings_kw(
    stack: Stack, conn: pymysql.Connection, mysql_url: URL, topic_prefix: str, redis_prefix: str
) -> dict[str, Any]:
    """Keywords for ``relay_harness.relay_settings``: this test's database, topics and keys,
    starting where the test begins rather than at the shared server's first binlog."""
    with conn.cursor() as cur:
        cur.execute("SHOW MASTER STATUS")
        file, pos = cur.fetchone()[:2]
    return {
        "mysql_url": mysql_url,
        "redis_url": stack.redis_url,
        "kafka_bootstrap": stack.kafka_bootstrap,
        "topic_prefix": topic_prefix,
        "redis_prefix": redis_prefix,
        "start_position": f"{file}:{pos}",
    }
