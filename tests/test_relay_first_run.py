"""A new user's first relay runs (issue 24): the errors they hit name what to change.

- On the local broker (tansu: no idempotent producer) the relay's default
  ``enable_idempotence=True`` used to publish nothing and retry forever; it now
  exits 2 naming ``enable_idempotence``, and ``./dev/stack env`` turns it off.
- A relay user without ``SELECT`` on the outbox table used to get the server's
  "access denied to database" under ``mysql_url``; it now gets the ``GRANT``.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pymysql

from outbox_dev import stack as local_stack
from transactional_outbox.relay import RelaySettings
from transactional_outbox.relay.config import env_var

from .conftest import Stack, unique
from .relay_harness import (
    Collector,
    RelayProcess,
    make_event,
    relay_settings,
    running_relay,
    write_events,
)


def relay_env(settings_kw: dict[str, Any], tmp_path: Path, **env: str) -> dict[str, str]:
    out = RelayProcess(relay_settings(**settings_kw), tmp_path / "unused.log").env()
    out.update(env)
    return out


def run_relay(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "transactional_outbox.relay"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def config_error_line(out: subprocess.CompletedProcess[str]) -> str:
    """The one ``configuration error`` line of an exit-2 run (no traceback)."""
    text = out.stdout + out.stderr
    assert out.returncode == 2, text
    assert "Traceback" not in text, text
    lines = [line for line in text.splitlines() if "configuration error" in line]
    assert len(lines) == 1, text
    return lines[0]


def test_idempotence_on_a_broker_without_it_exits_2_naming_enable_idempotence(
    settings_kw: dict[str, Any], tmp_path: Path
) -> None:
    env = relay_env(settings_kw, tmp_path, **{env_var("enable_idempotence"): "true"})
    line = config_error_line(run_relay(env))
    assert "configuration error: enable_idempotence: " in line, line
    assert "InitProducerIdRequest" in line, line
    assert "OUTBOX_ENABLE_IDEMPOTENCE=false" in line, line


async def test_stack_env_lets_the_relay_publish_on_the_local_broker(
    stack: Stack, settings_kw: dict[str, Any], conn: pymysql.Connection
) -> None:
    exported = local_stack.shell_env()
    assert exported["OUTBOX_ENABLE_IDEMPOTENCE"] == "false"
    # What `eval "$(./dev/stack env)"` exports, with this test's database, topics and keys.
    settings = RelaySettings.from_env(
        exported,
        mysql_url=settings_kw["mysql_url"].render_as_string(hide_password=False),
        topic_template=settings_kw["topic_prefix"] + "{aggregatetype}",
        key_prefix=settings_kw["redis_prefix"],
        start_position=settings_kw["start_position"],
    )
    assert settings.enable_idempotence is False
    await publishes_one_event(stack, settings, conn, settings_kw["topic_prefix"])


async def publishes_one_event(
    stack: Stack, settings: RelaySettings, conn: pymysql.Connection, topic_prefix: str
) -> None:
    event = make_event()
    async with Collector(stack.kafka_bootstrap) as col:
        await col.watch([topic_prefix + "order"])
        async with running_relay(settings):
            write_events(conn, [event])
            await col.wait_for(1)
    assert col.ids() == [str(event.id)]


@contextmanager
def replication_only_user(stack: Stack, password: str) -> Iterator[str]:
    """A user with the replication grants and no privilege on any database."""
    user = unique("relay_")
    with stack.mysql_connect() as conn, conn.cursor() as cur:
        cur.execute(f"CREATE USER '{user}'@'%%' IDENTIFIED BY %s", (password,))
        cur.execute(f"GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* TO '{user}'@'%'")
    try:
        yield user
    finally:
        with stack.mysql_connect() as conn, conn.cursor() as cur:
            cur.execute(f"DROP USER IF EXISTS '{user}'@'%'")


async def test_no_select_on_the_outbox_table_names_the_grant(
    stack: Stack,
    settings_kw: dict[str, Any],
    database: str,
    conn: pymysql.Connection,
    tmp_path: Path,
) -> None:
    password = "pw-" + uuid.uuid4().hex
    with replication_only_user(stack, password) as user:
        url = settings_kw["mysql_url"].set(username=user, password=password)
        env = relay_env({**settings_kw, "mysql_url": url}, tmp_path)
        line = config_error_line(run_relay(env))
        grant = f"GRANT SELECT ON `{database}`.`outbox` TO '{user}'@'%';"
        assert grant in line, line
        assert password not in line

        # The advice works as written: with that GRANT the relay starts and publishes.
        with stack.mysql_connect() as admin, admin.cursor() as cur:
            cur.execute(grant)
        settings = relay_settings(**{**settings_kw, "mysql_url": url})
        await publishes_one_event(stack, settings, conn, settings_kw["topic_prefix"])


def test_select_on_another_table_only_names_the_grant_of_the_outbox(
    stack: Stack, settings_kw: dict[str, Any], database: str, tmp_path: Path
) -> None:
    password = "pw-" + uuid.uuid4().hex
    with replication_only_user(stack, password) as user:
        with stack.mysql_connect(database) as conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE orders (id INT PRIMARY KEY)")
            cur.execute(f"GRANT SELECT ON `{database}`.`orders` TO '{user}'@'%'")
        url = settings_kw["mysql_url"].set(username=user, password=password)
        line = config_error_line(run_relay(relay_env({**settings_kw, "mysql_url": url}, tmp_path)))
        assert f"GRANT SELECT ON `{database}`.`outbox` TO '{user}'@'%';" in line, line


def test_the_advised_flag_exists() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "transactional_outbox.relay", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--no-enable-idempotence" in out.stdout
