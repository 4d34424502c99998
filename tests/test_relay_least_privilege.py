"""Least privilege and secrets.

The relay runs end to end with a MySQL user holding only the replication grants and
SELECT on the outbox table, with a password-protected Redis, and no password (MySQL,
Redis, Kafka SASL) ever reaches its output, its reprs or its error messages.
"""

from __future__ import annotations

import signal
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pymysql
import pytest
import redis
from sqlalchemy.engine import make_url

from outbox_dev.scratch import RelayChild, ScratchRedis, free_port
from transactional_outbox.relay import KafkaConnection, RelaySettings
from transactional_outbox.relay.position import BinlogPosition, decode_checkpoint

from . import _binlog
from .conftest import Stack, unique
from .polling import wait_until_sync
from .relay_harness import (
    OUTBOX_DDL,
    Collector,
    make_event,
    relay_settings,
    running_relay,
    wait_until,
    write_events,
)

# What the README's "Relay: least-privilege user" section tells users to grant.
GRANTS = {
    # MariaDB 10.5+: REPLICATION CLIENT is an alias of BINLOG MONITOR; SLAVE MONITOR
    # lets the startup check read SHOW ALL SLAVES STATUS (is this a replica that drops rows?)
    "MariaDB": "REPLICATION SLAVE, BINLOG MONITOR, SLAVE MONITOR",
    "MySQL": "REPLICATION SLAVE, REPLICATION CLIENT",
}


@pytest.fixture
def outbox_db(stack: Stack, database: str) -> str:
    """This test's database with an outbox table and one other table."""
    with stack.mysql_connect(database) as conn, conn.cursor() as cur:
        cur.execute(OUTBOX_DDL.format(table="outbox"))
        cur.execute("CREATE TABLE orders (id INT PRIMARY KEY)")
    return database


@contextmanager
def relay_user(stack: Stack, database: str, password: str, grants: str) -> Iterator[str]:
    """A MySQL user with ``grants`` on ``*.*`` and SELECT on the outbox only; dropped after."""
    user = unique("relay_")
    with stack.mysql_connect() as conn, conn.cursor() as cur:
        cur.execute(f"CREATE USER '{user}'@'%%' IDENTIFIED BY %s", (password,))
        cur.execute(f"GRANT {grants} ON *.* TO '{user}'@'%'")
        cur.execute(f"GRANT SELECT ON `{database}`.`outbox` TO '{user}'@'%'")
    try:
        yield user
    finally:
        with stack.mysql_connect() as conn, conn.cursor() as cur:
            cur.execute(f"DROP USER IF EXISTS '{user}'@'%'")


def checkpoint(client: redis.Redis, key: str) -> BinlogPosition | None:
    raw = client.get(key)
    return None if raw is None else decode_checkpoint(raw)


@pytest.mark.parametrize("server_flavour", list(GRANTS))
async def test_relay_runs_with_replication_grants_and_select_on_the_outbox_only(
    stack: Stack,
    outbox_db: str,
    topic_prefix: str,
    redis_prefix: str,
    server_flavour: str,
) -> None:
    password = "pw-" + uuid.uuid4().hex
    with relay_user(stack, outbox_db, password, GRANTS[server_flavour]) as user:
        with stack.mysql_connect() as conn, conn.cursor() as cur:
            cur.execute(f"SHOW GRANTS FOR '{user}'@'%'")
            grants = sorted(str(r[0]).split(" TO ")[0] for r in cur.fetchall())
        # Both statements give the same grants on MariaDB (but SLAVE MONITOR): nothing more.
        monitor = ", SLAVE MONITOR" if server_flavour == "MariaDB" else ""
        assert grants == [
            f"GRANT REPLICATION SLAVE, BINLOG MONITOR{monitor} ON *.*",
            f"GRANT SELECT ON `{outbox_db}`.`outbox`",
        ]
        url = stack.mysql_url.set(database=outbox_db, username=user, password=password)
        with (
            pymysql.connect(
                host=url.host, port=url.port, user=user, password=password, database=outbox_db
            ) as conn,
            conn.cursor() as cur,
        ):
            with pytest.raises(pymysql.err.OperationalError) as denied:
                cur.execute("SELECT * FROM orders")  # the business tables stay out of reach
            assert denied.value.args[0] == 1142

        file, pos = _binlog.position(stack)
        settings = relay_settings(
            mysql_url=url,
            redis_url=stack.redis_url,
            kafka_bootstrap=stack.kafka_bootstrap,
            topic_prefix=topic_prefix,
            redis_prefix=redis_prefix,
            start_position=f"{file}:{pos}",
        )
        events = [make_event(aggregate_id=str(i % 3)) for i in range(6)]
        client = redis.Redis.from_url(stack.redis_url)
        async with Collector(stack.kafka_bootstrap) as col:
            await col.watch([topic_prefix + "order"])
            async with running_relay(settings) as relay:
                with stack.mysql_connect(outbox_db) as conn:
                    write_events(conn, events[:3])
                    with conn.cursor() as cur:
                        cur.execute("INSERT INTO orders VALUES (1)")  # not an outbox row
                    write_events(conn, events[3:])
                end = _binlog.position(stack)
                await col.wait_for(6)
                await wait_until(
                    lambda: (
                        (cp := checkpoint(client, settings.checkpoint_key)) is not None
                        and (cp.file, cp.pos) >= end
                    ),
                    what="checkpoint past the events",
                )
                assert relay.stats.database == "ok"
        client.close()
    assert sorted(col.ids()) == sorted(str(e.id) for e in events)


@pytest.fixture
def redis_with_password(tmp_path: Path) -> Iterator[ScratchRedis]:
    server = ScratchRedis(tmp_path / "redis", password="redis-pw-" + uuid.uuid4().hex)
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_relay_with_redis_auth_publishes_and_checkpoints(
    stack: Stack,
    outbox_db: str,
    topic_prefix: str,
    redis_with_password: ScratchRedis,
    tmp_path: Path,
) -> None:
    with pytest.raises(redis.exceptions.AuthenticationError):  # AUTH really is required
        redis.Redis(port=redis_with_password.port).ping()
    assert redis_with_password.url.startswith(f"redis://:{redis_with_password.password}@")
    file, pos = _binlog.position(stack)
    settings = relay_settings(
        mysql_url=stack.mysql_url.set(database=outbox_db),
        redis_url=redis_with_password.url,
        kafka_bootstrap=stack.kafka_bootstrap,
        topic_prefix=topic_prefix,
        redis_prefix="auth:",
        start_position=f"{file}:{pos}",
        relay_name="auth",
    )
    relay = RelayChild(
        {
            "database_url": settings.database_url,
            "redis_url": settings.redis_url,
            "kafka_bootstrap_servers": settings.kafka.bootstrap_servers,
            "topic_template": settings.topic_template,
            "key_prefix": settings.key_prefix,
            "server_id": settings.server_id,
            "start_position": settings.start_position,
            "enable_idempotence": False,
            "checkpoint_interval_ms": 100,
            "linger_ms": 1,
        },
        tmp_path / "relay.log",
        ["--relay-name", settings.relay_name],
    )
    events = [make_event(aggregate_id=str(i)) for i in range(5)]
    client = redis.Redis.from_url(redis_with_password.url)
    async with Collector(stack.kafka_bootstrap) as col:
        await col.watch([topic_prefix + "order"])
        relay.start()
        try:
            with stack.mysql_connect(outbox_db) as conn:
                write_events(conn, events)
            end = _binlog.position(stack)
            await col.wait_for(5)
            await wait_until(
                lambda: (
                    (cp := checkpoint(client, settings.checkpoint_key)) is not None
                    and (cp.file, cp.pos) >= end
                ),
                what="checkpoint saved in the password-protected Redis",
            )
        finally:
            rc = relay.signal(signal.SIGTERM)
    client.close()
    assert rc == 0, relay.log()[-3000:]
    assert sorted(col.ids()) == sorted(str(e.id) for e in events)
    assert redis_with_password.password not in relay.log()


# -- secrets ---------------------------------------------------------------------------


MODES = [
    "wrong MySQL password",
    "Redis unreachable",
    "Kafka SASL, broker unreachable",
    "normal run at DEBUG with progress lines",
    "invalid MySQL URL",
    "--help",
]
# The modes in which the relay keeps running until it is signalled (it retries or works).
KEEPS_RUNNING = {
    "Redis unreachable",
    "Kafka SASL, broker unreachable",
    "normal run at DEBUG with progress lines",
}


@pytest.mark.parametrize("mode", MODES)
def test_no_password_reaches_the_relays_output(
    stack: Stack,
    outbox_db: str,
    redis_with_password: ScratchRedis,
    topic_prefix: str,
    tmp_path: Path,
    mode: str,
) -> None:
    mysql_secret = "mysql-pw-" + uuid.uuid4().hex
    sasl_secret = "sasl-pw-" + uuid.uuid4().hex
    redis_secret = redis_with_password.password
    secrets = {"MySQL": mysql_secret, "Redis": redis_secret, "SASL": sasl_secret}
    with relay_user(stack, outbox_db, mysql_secret, GRANTS["MariaDB"]) as user:
        url = stack.mysql_url.set(database=outbox_db, username=user, password=mysql_secret)
        file, pos = _binlog.position(stack)
        env: dict[str, object] = {
            "database_url": url.render_as_string(hide_password=False),
            "redis_url": redis_with_password.url,
            "kafka_bootstrap_servers": stack.kafka_bootstrap,
            "kafka_sasl_password": sasl_secret,  # set in every mode; used with SASL only
            "topic_template": topic_prefix + "{aggregatetype}",
            "key_prefix": "secrets:",
            "start_position": f"{file}:{pos}",
            "enable_idempotence": False,
            "log_level": "DEBUG",
            "progress_interval_ms": 200,
            "reconnect_max_ms": 500,
            "request_timeout_ms": 2000,
            "lease_ttl_ms": 2000,
            "lease_renew_ms": 300,
        }
        args = ["--relay-name", "secrets"]
        client = redis.Redis.from_url(redis_with_password.url)
        cp_key = "secrets:secrets:checkpoint"
        if mode == "wrong MySQL password":
            env["database_url"] = url.set(password="wrong-" + mysql_secret).render_as_string(
                hide_password=False
            )
            secrets["MySQL (wrong)"] = "wrong-" + mysql_secret
        elif mode == "Redis unreachable":
            env["redis_url"] = f"redis://:{redis_secret}@127.0.0.1:{free_port()}/0"
        elif mode == "Kafka SASL, broker unreachable":
            env.update(
                kafka_security_protocol="SASL_PLAINTEXT",
                kafka_sasl_mechanism="PLAIN",
                kafka_sasl_username="relay",
                kafka_bootstrap_servers=f"127.0.0.1:{free_port()}",
            )
        elif mode == "invalid MySQL URL":
            env["database_url"] = f"mysql+pymysql://{user}:{mysql_secret}@/{outbox_db}"  # no host
        elif mode == "--help":
            args.append("--help")
        relay = RelayChild(env, tmp_path / "relay.log", args)
        relay.start()
        assert relay.proc is not None
        try:
            if mode == "wrong MySQL password":
                assert relay.proc.wait(60) == 2  # misconfiguration, not an unexpected error
                assert "Access denied" in relay.log()
            elif mode == "Redis unreachable":
                wait_until_sync(
                    lambda: relay.log().count("cannot reach Redis") >= 3, what="Redis retries"
                )
            elif mode == "Kafka SASL, broker unreachable":
                # At startup (reading the checkpoint's Kafka copy) or in a session.
                wait_until_sync(
                    lambda: sum(map(relay.log().count, ("Kafka error", "checkpoint copy"))) >= 2,
                    what="Kafka retries",
                )
            elif mode == "normal run at DEBUG with progress lines":
                events = [make_event(aggregate_id=str(i)) for i in range(5)]
                wait_until_sync(lambda: "progress:" in relay.log(), what="a first progress line")
                with stack.mysql_connect(outbox_db) as conn:
                    write_events(conn, events)
                end = _binlog.position(stack)
                wait_until_sync(
                    lambda: (
                        (cp := checkpoint(client, cp_key)) is not None and (cp.file, cp.pos) >= end
                    ),
                    what="the events published and checkpointed",
                )
                wait_until_sync(lambda: relay.log().count("progress:") >= 5, what="progress lines")
                assert " DEBUG " in relay.log()
            elif mode == "invalid MySQL URL":
                assert relay.proc.wait(60) == 2
                assert "database_url" in relay.log()
            else:
                assert relay.proc.wait(60) == 0
                assert "OUTBOX_KAFKA_SASL_PASSWORD" in relay.log()
            if mode in KEEPS_RUNNING:
                # Retrying (or publishing): still up, so a crash cannot pass for a clean stop.
                assert relay.running(), f"the relay exited ({mode}):\n{relay.log()[-3000:]}"
        finally:
            rc = relay.signal(signal.SIGTERM)
            client.close()
        if mode in KEEPS_RUNNING:
            assert rc == 0, relay.log()[-3000:]
        else:
            assert rc is None  # it had exited by itself, with the code checked above
    output = relay.log()
    assert output
    leaked = [name for name, secret in secrets.items() if secret in output]
    assert not leaked, f"{leaked} password(s) in the relay's output ({mode}):\n{output[-3000:]}"


def test_settings_repr_hides_every_password() -> None:
    mysql_secret, redis_secret, sasl_secret = (uuid.uuid4().hex for _ in range(3))
    settings = RelaySettings(
        database_url=f"mysql+pymysql://relay:{mysql_secret}@db.example:3306/app",
        redis_url=f"redis://:{redis_secret}@cache.example:6379/0",
        kafka=KafkaConnection(
            bootstrap_servers="kafka.example:9092",
            security_protocol="SASL_SSL",
            sasl_mechanism="SCRAM-SHA-512",
            sasl_username="relay",
            sasl_password=sasl_secret,
        ),
    )
    for text in (repr(settings), str(settings), f"{settings!r}"):
        for secret in (mysql_secret, redis_secret, sasl_secret):
            assert secret not in text
    assert "relay:***@db.example:3306/app" in repr(settings)
    assert "redis://:***@cache.example:6379/0" in repr(settings)
    assert "sasl_password='***'" in repr(settings)
    # A setting that fails validation does not quote the URL's password either.
    with pytest.raises(Exception) as info:
        RelaySettings(
            database_url=f"mysql+pymysql://relay:{mysql_secret}@/app",
            redis_url="redis://cache.example:6379/0",
            kafka=KafkaConnection(bootstrap_servers="kafka.example:9092"),
        )
    assert mysql_secret not in str(info.value)
    assert "database_url" in str(info.value)
    assert make_url(settings.database_url).password == mysql_secret  # still usable
