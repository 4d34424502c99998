"""Bad input reaching the relay: each has a defined outcome, none is skipped silently."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator

import pymysql
import pytest
import redis

from transactional_outbox import CheckpointError, PublishError
from transactional_outbox.relay import Relay

from . import _binlog
from .conftest import Stack
from .relay_harness import (
    OUTBOX_DDL,
    Collector,
    make_event,
    relay_settings,
    running_relay,
    wait_until,
    write_events,
)

# A foreign writer's table: same columns, but NULLs allowed everywhere.
LOOSE_DDL = OUTBOX_DDL.replace(" NOT NULL PRIMARY KEY", " PRIMARY KEY").replace(
    " NOT NULL", " NULL"
)


@pytest.fixture
def conn(stack: Stack, database: str) -> Iterator[pymysql.Connection]:
    c = stack.mysql_connect(database)
    with c.cursor() as cur:
        cur.execute(LOOSE_DDL.format(table="outbox"))
    yield c
    c.close()


@pytest.fixture
def settings_kw(settings_kw: dict, topic_prefix: str) -> dict:
    return {**settings_kw, "dead_letter_topic": topic_prefix + "dlq"}


def foreign_insert(conn: pymysql.Connection, **values: object) -> uuid.UUID:
    """A row as some other program might write it, bypassing the SDK's checks."""
    event_id = uuid.uuid4()
    row = {
        "id": event_id.bytes,
        "aggregatetype": "order",
        "aggregateid": "f-1",
        "type": "Foreign",
        "payload": b"{}",
        "headers": "{}",
        "timestamp": "2026-11-27 10:00:00.000001",
    }
    row.update(values)
    cols = ", ".join(f"`{c}`" for c in row)
    with conn.cursor() as cur:
        cur.execute(
            f"INSERT INTO outbox ({cols}) VALUES ({', '.join(['%s'] * len(row))})",
            list(row.values()),
        )
        cur.execute("DELETE FROM outbox WHERE id = %s", (event_id.bytes,))
    return event_id


BAD_ROWS = [
    ({"headers": "{not json"}, "headers"),
    ({"headers": '{"n": 1}'}, "headers"),
    ({"aggregatetype": None}, "aggregatetype"),
    ({"type": None}, "type"),
    ({"payload": None}, "payload"),
    ({"timestamp": None}, "timestamp"),
]


@pytest.mark.parametrize(("values", "field"), BAD_ROWS)
async def test_stop_policy_names_the_row_and_keeps_the_checkpoint_before_it(
    conn, settings_kw, topic_prefix, stack: Stack, values: dict, field: str
) -> None:
    before = make_event(aggregate_id="b")
    write_events(conn, [before])
    mid = _binlog.position(stack)
    bad_id = foreign_insert(conn, **values)
    write_events(conn, [make_event(aggregate_id="a")])
    relay = Relay(relay_settings(**settings_kw))
    async with Collector(stack.kafka_bootstrap) as col:
        await col.watch([topic_prefix + "order"])
        with pytest.raises(PublishError) as info:
            await relay.run()
        await col.wait_for(1)
    assert str(bad_id) in str(info.value)
    assert field in str(info.value) and "invalid outbox row" in str(info.value)
    assert col.ids() == [str(before.id)]
    assert relay.stats.checkpoint is not None
    assert (relay.stats.checkpoint.file, relay.stats.checkpoint.pos) <= mid


async def test_dead_letter_policy_sends_bad_rows_aside_and_goes_on(
    conn, settings_kw, topic_prefix, stack: Stack
) -> None:
    good = [make_event(aggregate_id=str(i)) for i in range(3)]
    write_events(conn, [good[0]])
    bad_ids = [foreign_insert(conn, **values) for values, _ in BAD_ROWS]
    write_events(conn, good[1:])
    dlq = topic_prefix + "dlq"
    async with Collector(stack.kafka_bootstrap) as col:
        await col.watch([topic_prefix + "order", dlq])
        async with running_relay(relay_settings(**settings_kw, on_rejected="dead-letter")) as r:
            await col.wait_for(3 + len(BAD_ROWS))
            await wait_until(lambda: r.stats.dead_lettered == len(BAD_ROWS), what="dead letters")
    main = sorted(dict(x.headers)["id"].decode() for x in col.records if x.topic != dlq)
    assert main == sorted(str(e.id) for e in good)
    letters = [json.loads(x.value) for x in col.records if x.topic == dlq]
    assert sorted(b["id"] for b in letters) == sorted(str(i) for i in bad_ids)
    by_id = {b["id"]: b["reason"] for b in letters}
    for bad_id, (_, field) in zip(bad_ids, BAD_ROWS, strict=True):
        assert field in by_id[str(bad_id)]


@pytest.mark.parametrize(
    ("alter", "column", "insert"),
    [
        (
            "DROP COLUMN type",
            "type",
            "INSERT INTO outbox (id, aggregatetype, aggregateid, payload, headers, `timestamp`)"
            " VALUES (%s, 'order', '2', 'x', '{}', NOW(6))",
        ),
        (
            "MODIFY aggregateid INT NOT NULL",
            "aggregateid",
            "INSERT INTO outbox VALUES (%s, 'order', 2, 'Placed', 'x', '{}', NOW(6))",
        ),
    ],
    ids=["dropped", "retyped"],
)
async def test_altering_the_table_while_running_stops_with_the_column_named(
    stack: Stack, database: str, settings_kw, topic_prefix, alter: str, column: str, insert: str
) -> None:
    conn = stack.mysql_connect(database)
    with conn.cursor() as cur:
        cur.execute("DROP TABLE outbox")
        cur.execute(OUTBOX_DDL.format(table="outbox"))
    settings = relay_settings(**settings_kw)
    async with Collector(stack.kafka_bootstrap) as col:
        await col.watch([topic_prefix + "order"])
        relay = Relay(settings)
        task = asyncio.create_task(relay.run())
        first = make_event(aggregate_id="1")
        write_events(conn, [first])
        await col.wait_for(1)
        bad_id = uuid.uuid4()
        with conn.cursor() as cur:
            cur.execute(f"ALTER TABLE outbox {alter}")
            cur.execute(insert, (bad_id.bytes,))
        with pytest.raises(PublishError) as info:
            await asyncio.wait_for(task, 30)
    conn.close()
    assert column in str(info.value) and str(bad_id) in str(info.value)
    assert col.ids() == [str(first.id)]


async def test_foreign_checkpoint_value_is_refused(settings_kw, stack: Stack) -> None:
    settings = relay_settings(**settings_kw)
    client = redis.Redis.from_url(stack.redis_url)
    for value in (b'{"file": "x", "pos": 4}', b'{"v": 1, "file": "", "pos": -1}', b"[1, 2]"):
        client.set(settings.checkpoint_key, value)
        with pytest.raises(CheckpointError):
            await Relay(settings).run()
    client.close()
