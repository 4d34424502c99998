"""Startup: server checks, start policies and checkpoints that cannot be used."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator

import pymysql
import pytest
import redis

from transactional_outbox import BinlogPurgedError, CheckpointError, ServerConfigurationError
from transactional_outbox.relay import BinlogPosition, Relay, RelaySettings
from transactional_outbox.relay.config import env_var
from transactional_outbox.relay.position import encode_checkpoint

from .conftest import Stack, unique
from .relay_harness import (
    OUTBOX_DDL,
    Collector,
    free_port,
    make_event,
    running_relay,
    wait_until,
    write_events,
)
from .scratch_server import ScratchServer, scratch_mariadb


@pytest.fixture(scope="module")
def binlog_server(stack: Stack) -> Iterator[ScratchServer]:
    with scratch_mariadb("scratch-checks", free_port()) as server:
        yield server


@pytest.fixture(scope="module")
def no_binlog_server(stack: Stack) -> Iterator[ScratchServer]:
    with scratch_mariadb("scratch-nobinlog", free_port(), log_bin=False) as server:
        yield server


@pytest.fixture
def scratch_db(binlog_server: ScratchServer) -> Iterator[str]:
    name = unique("s_")
    with binlog_server.connect() as conn, conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
        cur.execute(f"USE {name}")
        cur.execute(OUTBOX_DDL.format(table="outbox"))
    yield name
    with binlog_server.connect() as conn, conn.cursor() as cur:
        cur.execute(f"DROP DATABASE {name}")


def settings_for(
    url: str, stack: Stack, redis_prefix: str, topic_prefix: str = "x.", **kw: object
) -> RelaySettings:
    values: dict[str, object] = {
        "database_url": url,
        "redis_url": stack.redis_url,
        "kafka_bootstrap_servers": stack.kafka_bootstrap,
        "key_prefix": redis_prefix,
        "topic_template": topic_prefix + "{aggregatetype}",
        "enable_idempotence": False,
        "progress_interval_ms": 0,
        "heartbeat_ms": 1000,
        "checkpoint_interval_ms": 100,
    }
    values.update(kw)
    return RelaySettings.from_env({}, **values)


async def startup_error(settings: RelaySettings) -> Exception:
    with pytest.raises(Exception) as info:
        await Relay(settings).run()
    return info.value


@pytest.mark.parametrize(
    ("variable", "bad"),
    [
        ("binlog_format", "MIXED"),
        ("binlog_row_image", "MINIMAL"),
        ("binlog_row_metadata", "MINIMAL"),
    ],
)
async def test_binlog_setting_errors_name_the_variable(
    binlog_server: ScratchServer,
    scratch_db: str,
    stack: Stack,
    redis_prefix: str,
    variable: str,
    bad: str,
) -> None:
    with binlog_server.connect() as conn, conn.cursor() as cur:
        cur.execute(f"SELECT @@GLOBAL.{variable}")
        old = cur.fetchone()[0]
        cur.execute(f"SET GLOBAL {variable} = %s", (bad,))
    try:
        err = await startup_error(settings_for(binlog_server.url(scratch_db), stack, redis_prefix))
    finally:
        with binlog_server.connect() as conn, conn.cursor() as cur:
            cur.execute(f"SET GLOBAL {variable} = %s", (old,))
    assert isinstance(err, ServerConfigurationError)
    assert err.setting == variable
    assert (bad in str(err) and "FULL" in str(err)) or "ROW" in str(err)


async def test_log_bin_off_is_refused(
    no_binlog_server: ScratchServer, stack: Stack, redis_prefix: str
) -> None:
    with no_binlog_server.connect() as conn, conn.cursor() as cur:
        cur.execute("CREATE DATABASE IF NOT EXISTS app")
    err = await startup_error(settings_for(no_binlog_server.url("app"), stack, redis_prefix))
    assert isinstance(err, ServerConfigurationError)
    assert err.setting == "log_bin"
    assert "--log-bin" in str(err)


def test_cli_exits_2_naming_log_bin(
    no_binlog_server: ScratchServer, stack: Stack, redis_prefix: str
) -> None:
    env = {
        env_var("database_url"): no_binlog_server.url("app"),
        env_var("redis_url"): stack.redis_url,
        env_var("kafka_bootstrap_servers"): stack.kafka_bootstrap,
        env_var("key_prefix"): redis_prefix,
        env_var("enable_idempotence"): "false",  # tansu has no idempotent producer
        "PATH": "/usr/bin:/bin",
    }
    with no_binlog_server.connect() as conn, conn.cursor() as cur:
        cur.execute("CREATE DATABASE IF NOT EXISTS app")
    proc = subprocess.run(
        [sys.executable, "-m", "transactional_outbox.relay"],
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert b"log_bin" in proc.stderr
    assert b"outbox:outbox@" not in proc.stderr  # the password never reaches the log


@pytest.mark.parametrize(
    ("grants", "missing"),
    [
        ("BINLOG MONITOR", "REPLICATION SLAVE"),
        ("REPLICATION SLAVE", "BINLOG MONITOR"),
    ],
)
async def test_missing_privilege_is_named(
    binlog_server: ScratchServer,
    scratch_db: str,
    stack: Stack,
    redis_prefix: str,
    grants: str,
    missing: str,
) -> None:
    user = unique("u")
    with binlog_server.connect() as conn, conn.cursor() as cur:
        cur.execute(f"CREATE USER '{user}'@'%' IDENTIFIED BY 'pw-{user}'")
        cur.execute(f"GRANT {grants} ON *.* TO '{user}'@'%'")
        cur.execute(f"GRANT SELECT ON {scratch_db}.outbox TO '{user}'@'%'")
    try:
        url = binlog_server.url(scratch_db, user=user, password=f"pw-{user}")
        err = await startup_error(settings_for(url, stack, redis_prefix))
    finally:
        with binlog_server.connect() as conn, conn.cursor() as cur:
            cur.execute(f"DROP USER '{user}'@'%'")
    assert isinstance(err, ServerConfigurationError)
    assert missing in str(err)
    assert f"pw-{user}" not in str(err)


async def test_missing_table_and_missing_column_are_named(
    binlog_server: ScratchServer, scratch_db: str, stack: Stack, redis_prefix: str
) -> None:
    err = await startup_error(
        settings_for(binlog_server.url(scratch_db), stack, redis_prefix, outbox_table="nope")
    )
    assert isinstance(err, ServerConfigurationError) and err.setting == "outbox_table"
    assert "nope" in str(err) and "alembic upgrade head" in str(err)
    with binlog_server.connect(scratch_db) as conn, conn.cursor() as cur:
        cur.execute("ALTER TABLE outbox DROP COLUMN headers")
    err = await startup_error(settings_for(binlog_server.url(scratch_db), stack, redis_prefix))
    assert isinstance(err, ServerConfigurationError) and err.setting == "outbox_table"
    assert "headers" in str(err)


def current_position(conn: pymysql.Connection) -> BinlogPosition:
    with conn.cursor() as cur:
        cur.execute("SHOW MASTER STATUS")
        file, pos = cur.fetchone()[:2]
        cur.execute("SELECT BINLOG_GTID_POS(%s, %s)", (file, pos))
        return BinlogPosition(file=file, pos=pos, gtid=cur.fetchone()[0])


async def test_purged_checkpoint_refuses_unless_an_explicit_position_is_given(
    binlog_server: ScratchServer,
    scratch_db: str,
    stack: Stack,
    redis_prefix: str,
    topic_prefix: str,
) -> None:
    conn = binlog_server.connect(scratch_db)
    old = current_position(conn)
    write_events(conn, [make_event(aggregate_id="lost")])
    with conn.cursor() as cur:
        cur.execute("FLUSH BINARY LOGS")
    after_flush = current_position(conn)
    kept = make_event(aggregate_id="kept")
    write_events(conn, [kept])
    await purge_binlogs_before(conn, after_flush.file)
    settings = settings_for(binlog_server.url(scratch_db), stack, redis_prefix, topic_prefix)
    client = redis.Redis.from_url(stack.redis_url)
    client.set(settings.checkpoint_key, encode_checkpoint(old))
    err = await startup_error(settings)
    assert isinstance(err, BinlogPurgedError)
    assert old.file in str(err) and "--start-position" in str(err)

    proc = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "transactional_outbox.relay"],
        env={**_env(settings), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == 3, proc.stderr

    explicit = settings_for(
        binlog_server.url(scratch_db),
        stack,
        redis_prefix,
        topic_prefix,
        start_position=f"{after_flush.file}:{after_flush.pos}",
    )
    async with Collector(stack.kafka_bootstrap) as col:
        await col.watch([topic_prefix + "order"])
        async with running_relay(explicit):
            await col.wait_for(1)
    assert col.ids() == [str(kept.id)]
    conn.close()
    client.close()


async def purge_binlogs_before(conn: pymysql.Connection, file: str) -> None:
    """PURGE, retried: MariaDB keeps a binlog until InnoDB's binlog checkpoint passes it."""

    def purged() -> bool:
        with conn.cursor() as cur:
            cur.execute("PURGE BINARY LOGS TO %s", (file,))
            cur.execute("SHOW BINARY LOGS")
            return cur.fetchone()[0] == file

    await wait_until(purged, what=f"binlogs before {file} purged")


def _env(settings: RelaySettings) -> dict[str, str]:
    kafka = {env_var("kafka_bootstrap_servers"): str(settings.kafka.bootstrap_servers)}
    return kafka | {
        env_var(name): str(getattr(settings, name)).lower()
        if isinstance(getattr(settings, name), bool)
        else str(getattr(settings, name))
        for name in (
            "database_url",
            "redis_url",
            "key_prefix",
            "topic_template",
            "enable_idempotence",
        )
    }


async def test_corrupt_checkpoint_is_refused(
    binlog_server: ScratchServer, scratch_db: str, stack: Stack, redis_prefix: str
) -> None:
    settings = settings_for(binlog_server.url(scratch_db), stack, redis_prefix)
    client = redis.Redis.from_url(stack.redis_url)
    client.set(settings.checkpoint_key, b"\xff not json")
    err = await startup_error(settings)
    client.close()
    assert isinstance(err, CheckpointError)
    assert "not valid JSON" in str(err)


async def test_start_policies(
    binlog_server: ScratchServer, scratch_db: str, stack: Stack, topic_prefix: str
) -> None:
    conn = binlog_server.connect(scratch_db)
    before_a = current_position(conn)
    a = make_event(aggregate_id="a")
    write_events(conn, [a])
    before_b = current_position(conn)
    b = make_event(aggregate_id="b")
    write_events(conn, [b])
    cases = {
        "earliest": [a, b],
        f"{before_b.file}:{before_b.pos}": [b],
        f"{before_a.file}:{before_a.pos}": [a, b],
        str(before_b.gtid): [b],
        f"gtid:{before_a.gtid}": [a, b],
    }
    async with Collector(stack.kafka_bootstrap) as col:
        for n, (policy, expected) in enumerate(cases.items()):
            topic = f"{topic_prefix}{n}."
            await col.watch([topic + "order"])
            settings = settings_for(
                binlog_server.url(scratch_db), stack, unique("p:"), topic, start_position=policy
            )
            async with running_relay(settings):
                await col.wait_for(
                    len([r for r in col.records if r.topic != topic + "order"]) + len(expected)
                )
            got = [
                dict(r.headers)["id"].decode() for r in col.records if r.topic == topic + "order"
            ]
            assert got == [str(e.id) for e in expected], policy

        # latest: only what is written after the start
        topic = f"{topic_prefix}latest."
        await col.watch([topic + "order"])
        settings = settings_for(
            binlog_server.url(scratch_db), stack, unique("p:"), topic, start_position="latest"
        )
        async with running_relay(settings) as relay:
            await wait_until(
                lambda: relay.server is not None and relay.stats.database == "ok", what="connected"
            )
            c = make_event(aggregate_id="c")
            write_events(conn, [c])
            await wait_until(lambda: any(r.topic == topic + "order" for r in col.records), what="c")
        got = [dict(r.headers)["id"].decode() for r in col.records if r.topic == topic + "order"]
        assert got == [str(c.id)]
    conn.close()
