"""The stack's servers are real: each answers with its own protocol."""

from __future__ import annotations

import uuid

import psycopg
import pytest
import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.event import XidEvent
from pymysqlreplication.row_event import WriteRowsEvent

from outbox_dev import stack as local_stack

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


def test_docker_compose_example_services_use_the_dockerfile_and_known_settings() -> None:
    import re

    import yaml

    from transactional_outbox.relay import RelaySettings
    from transactional_outbox.relay.config import env_var
    from transactional_outbox.relay.options import flat_fields

    from .conftest import ROOT

    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = doc["services"]
    apps = ("migrate", "relay", "api-server", "consumer")
    assert set(apps) <= set(services)
    dockerfile = ROOT / "Dockerfile"
    assert dockerfile.is_file()
    assert "FROM python:3.11-slim" in dockerfile.read_text()
    assert ".[relay,consumer,async,examples]" in dockerfile.read_text()
    for name in apps:
        service = services[name]
        assert service["build"]["context"] == "."
        assert service["build"]["dockerfile"] == "Dockerfile"
        assert "ports" not in service or name == "api-server"
    # The servers are reached by their compose hostnames, not the host's ports.
    env = {name: services[name]["environment"] for name in apps}
    for values in env.values():
        for value in values.values():
            assert "127.0.0.1" not in str(value) and "localhost" not in str(value)

    # The relay: every variable is a real setting; real Kafka gets the idempotent producer.
    relay_vars = {env_var(name) for name, _ in flat_fields(RelaySettings)}
    assert set(env["relay"]) <= relay_vars
    assert env["relay"]["OUTBOX_MYSQL_URL"].startswith("mysql+pymysql://")
    assert "@mysql:3306/" in env["relay"]["OUTBOX_MYSQL_URL"]
    assert env["relay"]["OUTBOX_KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert env["relay"]["OUTBOX_REDIS_URL"].startswith("redis://redis:6379")
    assert str(env["relay"]["OUTBOX_ENABLE_IDEMPOTENCE"]).lower() == "true"
    RelaySettings.from_env(env["relay"])  # valid as a whole

    # The examples: the variables are the ones their code reads.
    def reads(path: str) -> set[str]:
        return set(re.findall(r'os\.environ\.get\(\s*"([A-Z_]+)"', (ROOT / path).read_text()))

    migrate = (ROOT / "examples/migrate.py").read_text()
    assert set(env["migrate"]) == {"ORDERS_DATABASE_URL", "STATS_DATABASE_URL"}
    assert all(f'"{name}"' in migrate for name in env["migrate"])
    assert set(env["api-server"]) <= reads("examples/api-server/app.py")
    assert set(env["consumer"]) <= reads("examples/consumer/consumer.py")
    assert env["consumer"]["OUTBOX_KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
    # The app waits for the one-shot migration.
    for name in ("relay", "api-server", "consumer"):
        assert services[name]["depends_on"]["migrate"]["condition"] == (
            "service_completed_successfully"
        )


def test_postgres_has_logical_decoding_and_its_url_in_env(stack: Stack) -> None:
    url = local_stack.env_vars()["OUTBOX_PG_URL"]
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SHOW wal_level").fetchone() == ("logical",)
        assert conn.info.server_version >= 150000
        # A logical decoding message is what the table-less outbox writes.
        row = conn.execute("SELECT pg_logical_emit_message(true, 'smoke', 'x')").fetchone()
        assert row is not None and row[0] is not None
