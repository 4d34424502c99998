"""The canary on the stack: it comes back, is never published, lets the checkpoint pass,
and a canary that cannot be written raises the alarm. (Rows that stop reaching the
binlog: tests/test_relay_reach.py, on scratch servers.)"""

from __future__ import annotations

import logging
from typing import Any

import pymysql
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from transactional_outbox.relay.routing import CANARY_AGGREGATE_TYPE

from . import _binlog
from .conftest import Stack, unique
from .relay_harness import (
    Collector,
    make_event,
    relay_settings,
    running_relay,
    wait_until,
    write_events,
)


async def test_canaries_come_back_unpublished_and_the_checkpoint_passes_them(
    stack: Stack, conn: pymysql.Connection, settings_kw: dict[str, Any], topic_prefix: str
) -> None:
    settings = relay_settings(**settings_kw, canary_interval_ms=100, canary_timeout_ms=10_000)
    events = [make_event(aggregate_id=str(i)) for i in range(6)]
    async with Collector(stack.kafka_bootstrap) as col:
        await col.watch([topic_prefix + "order"])
        async with running_relay(settings) as relay:
            await wait_until(
                lambda: relay.stats.canaries_seen >= 3, within=60, what="canaries coming back"
            )
            write_events(conn, events[:3])
            await wait_until(
                lambda: relay.stats.canaries_seen >= 6, within=60, what="more canaries"
            )
            write_events(conn, events[3:])
            end = _binlog.position(stack)
            await col.wait_for(6)
            await wait_until(
                lambda: (
                    relay.stats.checkpoint is not None
                    and (relay.stats.checkpoint.file, relay.stats.checkpoint.pos) >= end
                ),
                within=30,
                what="the checkpoint past the canaries and the events",
            )
            stats = relay.stats
            assert stats.canary == "ok" and stats.health()["ready"]
            assert stats.health()["canary"] == "ok" and stats.canary_alarms == 0
            assert stats.published == 6  # the canaries are not counted as published
            assert "canary ok" in stats.progress_line(0)
    assert sorted(col.ids()) == sorted(str(e.id) for e in events)
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap)
    await admin.start()
    try:
        topics = await admin.list_topics()
    finally:
        await admin.close()
    assert not [t for t in topics if "canary" in t or CANARY_AGGREGATE_TYPE in t]


async def test_a_canary_that_cannot_be_written_raises_the_alarm_naming_the_grant(
    stack: Stack,
    conn: pymysql.Connection,
    database: str,
    settings_kw: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    user = unique("canary_")
    with stack.mysql_connect() as admin, admin.cursor() as cur:
        cur.execute(f"CREATE USER '{user}'@'%' IDENTIFIED BY 'canary-pw'")
        cur.execute(f"GRANT SELECT ON `{database}`.`outbox` TO '{user}'@'%'")
    url = stack.mysql_url.set(database=database, username=user, password="canary-pw")
    settings = relay_settings(
        **settings_kw,
        canary_interval_ms=100,
        canary_mysql_url=url.render_as_string(hide_password=False),
    )
    try:
        with caplog.at_level(logging.INFO, logger="transactional_outbox.relay"):
            async with running_relay(settings) as relay:
                await wait_until(
                    lambda: relay.stats.canary == "failing", within=60, what="the canary alarm"
                )
                assert relay.stats.health()["ready"] is False
                with stack.mysql_connect() as admin, admin.cursor() as cur:
                    cur.execute(f"GRANT INSERT, DELETE ON `{database}`.`outbox` TO '{user}'@'%'")
                await wait_until(
                    lambda: relay.stats.canary == "ok" and relay.stats.canaries_seen >= 1,
                    within=60,
                    what="the canary written and back",
                )
    finally:
        with stack.mysql_connect() as admin, admin.cursor() as cur:
            cur.execute(f"DROP USER IF EXISTS '{user}'@'%'")
    lines = [r for r in caplog.records if "canary" in r.getMessage()]
    errors = [r.getMessage() for r in lines if r.levelno == logging.ERROR]
    assert len(errors) == 1, errors
    assert f"GRANT INSERT, DELETE ON `{database}`.`outbox` TO '{user}'@'%';" in errors[0]
    assert "canary-pw" not in caplog.text
    assert (
        len([r for r in lines if r.levelno == logging.INFO and "recovered" in r.getMessage()]) == 1
    )
