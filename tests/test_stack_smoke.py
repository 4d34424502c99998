"""The stack's servers are real: each answers with its own protocol."""

from __future__ import annotations

import uuid

import pytest
import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.event import XidEvent
from pymysqlreplication.row_event import WriteRowsEvent

from .conftest import Stack


def test_mariadb_row_is_read_back_from_binlog(stack: Stack, database: str) -> None:
    marker = uuid.uuid4().hex
    with stack.mysql_connect(database) as conn, conn.cursor() as cur:
        cur.execute("SHOW MASTER STATUS")
        log_file, log_pos = cur.fetchone()[:2]
        cur.execute("CREATE TABLE smoke (id INT PRIMARY KEY, v VARCHAR(64))")
        cur.execute("INSERT INTO smoke VALUES (1, %s)", (marker,))
    url = stack.mysql_url
    reader = BinLogStreamReader(
        connection_settings={
            "host": url.host,
            "port": url.port,
            "user": url.username,
            "passwd": url.password,
        },
        server_id=4242,
        log_file=log_file,
        log_pos=log_pos,
        resume_stream=True,
        blocking=False,
        only_schemas=[database],
        only_events=[WriteRowsEvent, XidEvent],
    )
    try:
        rows = [
            row["values"]
            for event in reader
            if isinstance(event, WriteRowsEvent) and event.table == "smoke"
            for row in event.rows
        ]
    finally:
        reader.close()
    assert rows == [{"id": 1, "v": marker}]


async def test_kafka_record_round_trips(stack: Stack, topic_prefix: str) -> None:
    topic = topic_prefix + "smoke"
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        meta = await producer.send_and_wait(topic, b"value", key=b"key", headers=[("h", b"1")])
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=stack.kafka_bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        record = await consumer.getone()
    finally:
        await consumer.stop()
    assert (record.partition, record.offset) == (meta.partition, meta.offset)
    assert (record.key, record.value, list(record.headers)) == (b"key", b"value", [("h", b"1")])


def test_redis_key_round_trips(stack: Stack, redis_prefix: str) -> None:
    client = redis.Redis.from_url(stack.redis_url)
    try:
        client.set(redis_prefix + "k", b"\x00\xffvalue")
        assert client.get(redis_prefix + "k") == b"\x00\xffvalue"
    finally:
        client.close()


def test_binlog_is_configured_for_the_relay(stack: Stack) -> None:
    with stack.mysql_connect() as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT @@log_bin, @@binlog_format, @@binlog_row_image, @@binlog_row_metadata,"
            " @@binlog_annotate_row_events"
        )
        assert cur.fetchone() == (1, "ROW", "FULL", "FULL", 0)


@pytest.mark.parametrize("path", ["docker-compose.yml"])
def test_docker_compose_parses_and_matches_the_stack(path: str) -> None:
    import yaml

    from .conftest import ROOT

    doc = yaml.safe_load((ROOT / path).read_text())
    services = doc["services"]
    assert {"mysql", "kafka", "redis"} <= set(services)
    ports = {name: services[name]["ports"] for name in ("mysql", "kafka", "redis")}
    assert "13306:3306" in ports["mysql"]
    assert "16379:6379" in ports["redis"]
    assert "19092:19092" in ports["kafka"]
    command = " ".join(services["mysql"]["command"])
    for flag in ("--binlog-format=ROW", "--binlog-row-image=FULL", "--binlog-row-metadata=FULL"):
        assert flag in command
