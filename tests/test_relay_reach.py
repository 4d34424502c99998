"""Rows that never reach the binlog the relay reads: refused at startup and after a reconnect.

Scratch servers of their own (a primary started with ``--binlog-ignore-db``, a
replica without ``log_slave_updates``, one with it whose filters a test changes),
never the shared stack's MariaDB.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
import sys
import time
from collections.abc import Iterator

import pymysql
import pytest

from outbox_dev import stack as dev_stack
from outbox_dev.scratch import ScratchMariaDB
from transactional_outbox import ServerConfigurationError
from transactional_outbox.relay import Relay, RelaySettings
from transactional_outbox.relay.config import env_var

from .conftest import Stack, unique
from .relay_harness import (
    OUTBOX_DDL,
    Collector,
    make_event,
    running_relay,
    wait_until,
    write_events,
)

SCHEMA = "reachdb"  # replicated, logged
IGNORED = "ignoreddb"  # the primary's --binlog-ignore-db


def _server(name: str, *flags: str) -> ScratchMariaDB:
    server = ScratchMariaDB(name)
    server.server.flags = [
        *(f for f in dev_stack.MARIADB_FLAGS if not f.startswith("--server-id")),
        *flags,
    ]
    server.destroy()
    server.start()
    return server


def _replicate(replica: ScratchMariaDB, primary: ScratchMariaDB) -> None:
    with replica.connect() as conn, conn.cursor() as cur:
        cur.execute(
            "CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT=%s, MASTER_USER=%s, "
            "MASTER_PASSWORD=%s, MASTER_USE_GTID=slave_pos",
            (primary.port, primary.user, primary.password),
        )
        cur.execute("START SLAVE")


def _has_table(server: ScratchMariaDB, schema: str) -> bool:
    with server.connect() as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA=%s "
            "AND TABLE_NAME='outbox'",
            (schema,),
        )
        return bool(cur.fetchone()[0])


@pytest.fixture(scope="module")
def servers(stack: Stack) -> Iterator[dict[str, ScratchMariaDB]]:
    primary = _server("reach-primary", "--server-id=1", f"--binlog-ignore-db={IGNORED}")
    no_updates = _server("reach-replica-plain", "--server-id=2")
    updates = _server("reach-replica-lsu", "--server-id=3", "--log-slave-updates")
    made = {"primary": primary, "no_updates": no_updates, "updates": updates}
    try:
        with primary.connect() as conn, conn.cursor() as cur:
            for schema in (SCHEMA, IGNORED):
                # The ignored schema exists on the primary alone (its DDL would be
                # logged, in part: the replicas' SQL threads would stop on it).
                cur.execute(f"SET SESSION sql_log_bin = {int(schema != IGNORED)}")
                cur.execute(f"CREATE DATABASE {schema}")
                cur.execute(OUTBOX_DDL.format(table=f"{schema}`.`outbox"))
        for replica in (no_updates, updates):
            _replicate(replica, primary)
            deadline = time.monotonic() + 30
            while not _has_table(replica, SCHEMA):
                assert time.monotonic() < deadline, "the replica did not catch up"
                time.sleep(0.05)
        yield made
    finally:
        for server in made.values():
            server.destroy()


def _settings(server: ScratchMariaDB, schema: str, stack: Stack, **kw: object) -> RelaySettings:
    prefix = unique("reach")
    values: dict[str, object] = {
        "database_url": server.url(schema),
        "redis_url": stack.redis_url,
        "kafka_bootstrap_servers": stack.kafka_bootstrap,
        "key_prefix": f"{prefix}:",
        "topic_template": prefix + ".{aggregatetype}",
        "enable_idempotence": False,
        "progress_interval_ms": 0,
        "heartbeat_ms": 1000,
        "checkpoint_interval_ms": 100,
        "reconnect_max_ms": 500,
    }
    values.update(kw)
    return RelaySettings.from_env({}, **values)


async def _startup_error(settings: RelaySettings) -> ServerConfigurationError:
    with pytest.raises(ServerConfigurationError) as info:
        await asyncio.wait_for(Relay(settings).run(), 60)
    return info.value


async def test_replica_without_log_slave_updates_is_refused(
    servers: dict[str, ScratchMariaDB], stack: Stack
) -> None:
    exc = await _startup_error(_settings(servers["no_updates"], SCHEMA, stack))
    assert exc.setting == "log_slave_updates"
    assert "replica of 127.0.0.1:" in str(exc) and "--log-slave-updates" in str(exc)


async def test_binlog_ignore_db_on_the_outbox_schema_is_refused(
    servers: dict[str, ScratchMariaDB], stack: Stack
) -> None:
    exc = await _startup_error(_settings(servers["primary"], IGNORED, stack))
    assert exc.setting == "binlog_ignore_db"
    assert f"`{IGNORED}`.`outbox`" in str(exc)


def test_cli_exits_2_with_one_line_naming_binlog_ignore_db(
    servers: dict[str, ScratchMariaDB], stack: Stack
) -> None:
    settings = _settings(servers["primary"], IGNORED, stack)
    env = {
        env_var("database_url"): settings.database_url,
        env_var("redis_url"): settings.redis_url,
        env_var("kafka_bootstrap_servers"): stack.kafka_bootstrap,
        env_var("key_prefix"): settings.key_prefix,
        env_var("enable_idempotence"): "false",  # tansu has no idempotent producer
        "PATH": "/usr/bin:/bin",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "transactional_outbox.relay"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, proc.stderr
    assert "configuration error: binlog_ignore_db: is 'ignoreddb'" in errors[0]
    assert (
        "Traceback" not in proc.stderr
        and f":{settings.database_url.split(':')[2].split('@')[0]}@" not in proc.stderr
    )


async def test_correct_replica_starts_and_publishes_the_primarys_rows(
    servers: dict[str, ScratchMariaDB], stack: Stack
) -> None:
    settings = _settings(servers["updates"], SCHEMA, stack)
    events = [make_event(aggregate_id=str(i)) for i in range(5)]
    async with Collector(stack.kafka_bootstrap) as col:
        await col.watch([settings.topic_template.format(aggregatetype="order")])
        async with running_relay(settings) as relay:
            await wait_until(
                lambda: relay.stats.database == "ok", within=60, what="relay streaming"
            )
            with servers["primary"].connect(SCHEMA) as conn:
                write_events(conn, events)
            await col.wait_for(5)
    assert set(col.ids()) == {str(e.id) for e in events}


def _set_filter(replica: ScratchMariaDB, value: str) -> None:
    with replica.connect() as conn, conn.cursor() as cur:
        cur.execute("STOP SLAVE")
        cur.execute("SET GLOBAL replicate_ignore_db = %s", (value,))
        cur.execute("START SLAVE")


async def test_replication_filter_on_the_outbox_schema_is_refused(
    servers: dict[str, ScratchMariaDB], stack: Stack
) -> None:
    replica = servers["updates"]
    _set_filter(replica, SCHEMA)
    try:
        exc = await _startup_error(_settings(replica, SCHEMA, stack))
    finally:
        _set_filter(replica, "")
    assert exc.setting == "replicate_ignore_db"
    assert f"is '{SCHEMA}' on this replica of 127.0.0.1:" in str(exc)


def _kill_binlog_dumps(server: ScratchMariaDB) -> int:
    with server.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT ID FROM information_schema.PROCESSLIST WHERE COMMAND='Binlog Dump'")
        ids = [int(r[0]) for r in cur.fetchall()]
        for pid in ids:
            with contextlib.suppress(pymysql.err.OperationalError):  # ended meanwhile
                cur.execute(f"KILL {pid}")
    return len(ids)


@pytest.mark.parametrize("reader", ["thread", "process"])
async def test_a_filter_found_after_a_reconnect_stops_the_relay(
    servers: dict[str, ScratchMariaDB], stack: Stack, reader: str
) -> None:
    replica = servers["updates"]
    relay = Relay(_settings(replica, SCHEMA, stack, reader=reader))
    task = asyncio.create_task(relay.run())
    try:
        await wait_until(lambda: relay.stats.database == "ok", within=60, what="relay streaming")
        _set_filter(replica, SCHEMA)
        assert _kill_binlog_dumps(replica) >= 1
        with pytest.raises(ServerConfigurationError) as info:
            await asyncio.wait_for(task, 60)
    finally:
        _set_filter(replica, "")
        relay.stop()
        if not task.done():
            await asyncio.wait_for(task, 30)
    assert info.value.setting == "replicate_ignore_db"


def _least_privileged(server: ScratchMariaDB) -> tuple[str, str]:
    """A user with the relay's documented grants but SLAVE MONITOR (created on ``server``
    alone)."""
    with server.connect() as conn, conn.cursor() as cur:
        cur.execute("SET SESSION sql_log_bin = 0")
        cur.execute("CREATE USER IF NOT EXISTS 'lp'@'%' IDENTIFIED BY 'lp-secret'")
        cur.execute("GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* TO 'lp'@'%'")
        cur.execute(f"GRANT SELECT ON `{SCHEMA}`.`outbox` TO 'lp'@'%'")
    return "lp", "lp-secret"


async def test_without_slave_monitor_a_running_replica_is_still_checked(
    servers: dict[str, ScratchMariaDB], stack: Stack
) -> None:
    replica = servers["no_updates"]
    user, password = _least_privileged(replica)
    settings = _settings(replica, SCHEMA, stack, database_url=replica.url(SCHEMA, user, password))
    exc = await _startup_error(settings)
    assert exc.setting == "log_slave_updates"


async def test_without_slave_monitor_a_primary_starts_with_one_warning(
    servers: dict[str, ScratchMariaDB], stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    primary = servers["primary"]
    user, password = _least_privileged(primary)
    settings = _settings(primary, SCHEMA, stack, database_url=primary.url(SCHEMA, user, password))
    with caplog.at_level(logging.WARNING, logger="transactional_outbox.relay"):
        async with running_relay(settings) as relay:
            await wait_until(
                lambda: relay.stats.database == "ok", within=60, what="relay streaming"
            )
    warnings = [r.getMessage() for r in caplog.records if "SLAVE MONITOR" in r.getMessage()]
    assert len(warnings) == 1
    assert "GRANT SLAVE MONITOR ON *.* TO 'lp'@'%';" in warnings[0]


async def test_canary_alarms_when_the_primarys_rows_stop_reaching_the_replica(
    servers: dict[str, ScratchMariaDB], stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    """The relay reads a correct replica; a replication filter added while it runs (no
    reconnect, so no new startup check) drops the outbox rows: only the canary sees it."""
    replica, primary = servers["updates"], servers["primary"]
    settings = _settings(
        replica,
        SCHEMA,
        stack,
        canary_interval_ms=200,
        canary_timeout_ms=3000,
        canary_mysql_url=primary.url(SCHEMA),
    )
    with caplog.at_level(logging.INFO, logger="transactional_outbox.relay"):
        async with running_relay(settings) as relay:
            await wait_until(
                lambda: relay.stats.canaries_seen >= 2, within=60, what="canaries coming back"
            )
            assert relay.stats.canary == "ok" and relay.stats.health()["ready"]
            _set_filter(replica, SCHEMA)
            try:
                await wait_until(
                    lambda: relay.stats.canary == "late", within=60, what="the canary alarm"
                )
                health = relay.stats.health()
                assert health["canary"] == "late" and health["ready"] is False
            finally:
                _set_filter(replica, "")
            await wait_until(
                lambda: relay.stats.canary == "ok", within=60, what="the canary recovering"
            )
            assert relay.stats.published == 0  # canaries are never published
    canary_lines = [r for r in caplog.records if "canary" in r.getMessage()]
    errors = [r.getMessage() for r in canary_lines if r.levelno == logging.ERROR]
    infos = [r.getMessage() for r in canary_lines if r.levelno == logging.INFO]
    assert len(errors) == 1 and "has not come back through the binlog" in errors[0], errors
    assert len(infos) == 1 and "canary recovered" in infos[0], infos
