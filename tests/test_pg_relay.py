"""The relay on PostgreSQL, end to end: a real PostgreSQL 15, Redis and the Kafka-compatible
broker. Rows and table-less messages become the records of DESIGN §2; the slot is confirmed
only to checkpointed positions; a SIGKILLed leader, a PostgreSQL restart and a lost slot
lose nothing in silence."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from sqlalchemy.orm import sessionmaker

from outbox_dev.tcp_proxy import TcpProxy
from tests._pg import OUTBOX_DDL, PgDb, db, pg
from tests.conftest import Stack
from tests.polling import wait_until
from tests.relay_harness import Collector, RelayProcess, running_relay
from transactional_outbox import (
    CheckpointError,
    ConfigurationError,
    OutboxEvent,
    OutboxSession,
    outbox_table,
)
from transactional_outbox.exceptions import PublishError
from transactional_outbox.relay import Relay, RelaySettings
from transactional_outbox.relay.position import BinlogPosition, decode_checkpoint
from transactional_outbox.relay.postgres import PublicationGoneError, parse_lsn
from transactional_outbox.relay.postgres.position import LsnPosition
from transactional_outbox.relay.routing import KafkaRecord
from transactional_outbox.testing import to_record

__all__ = ["db", "pg"]  # fixtures


def _settings(
    db: PgDb, stack: Stack, topic_prefix: str, redis_prefix: str, **kw: Any
) -> RelaySettings:
    values: dict[str, Any] = {
        "database_url": db.server.url(db.name),
        "redis_url": stack.redis_url,
        "kafka_bootstrap_servers": stack.kafka_bootstrap,
        "topic_template": topic_prefix + "{aggregatetype}",
        "checkpoint_topic": topic_prefix.replace(":", "") + "checkpoints",
        "key_prefix": redis_prefix,
        "relay_name": "pg",
        "pg_slot": db.slot,
        "pg_publication": db.publication,
        "enable_idempotence": False,  # tansu has no idempotent producer (DESIGN §5)
        "checkpoint_interval_ms": 100,
        "progress_interval_ms": 0,
        "linger_ms": 1,
        "lease_ttl_ms": 2000,
        "lease_renew_ms": 500,
        "reconnect_max_ms": 1000,
    }
    values.update(kw)
    return RelaySettings.from_env({}, **values)


def _outbox(db: PgDb, name: str = "outbox") -> None:
    with db.engine.begin() as conn:
        conn.exec_driver_sql(OUTBOX_DDL.format(name=name))
        conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS noise (id serial PRIMARY KEY, v text)")


def _write(db: PgDb, events: list[OutboxEvent], *, mode: str = "table", noise: int = 0) -> None:
    factory = sessionmaker(db.engine, class_=OutboxSession, outbox_mode=mode)
    with factory() as session:
        session.add_events(events)
        for i in range(noise):
            session.execute(sa.text("INSERT INTO noise (v) VALUES (:v)"), {"v": str(i)})
        session.commit()


def _event(agg: str, n: int, size: int = 10) -> OutboxEvent:
    return OutboxEvent.create(
        aggregate_type="order", aggregate_id=agg, event_type="E", payload={"n": n, "x": "y" * size}
    )


def _checkpoint(stack: Stack, settings: RelaySettings) -> Any:
    client = redis.Redis.from_url(stack.redis_url)
    try:
        raw = client.get(settings.checkpoint_key)
    finally:
        client.close()
    return None if raw is None else decode_checkpoint(raw)


def _expected(event: OutboxEvent, table: str, topic_prefix: str) -> KafkaRecord:
    r = to_record(event, outbox_table=table, topic_template=topic_prefix + "{aggregatetype}")
    assert r.key is not None and r.value is not None
    return KafkaRecord(r.topic, r.key, r.value, list(r.headers), r.timestamp)


def _as_record(r: Any) -> KafkaRecord:
    return KafkaRecord(r.topic, r.key, r.value, list(r.headers), r.timestamp)


async def _checkpointed(settings: RelaySettings) -> tuple[Relay, asyncio.Task[None]]:
    """A relay running in a task that has saved a checkpoint."""
    relay = Relay(settings)
    task = asyncio.create_task(relay.run())
    await wait_until(lambda: relay.stats.checkpoints_saved >= 1, what="a checkpoint")
    return relay, task


async def _streaming_past(
    settings: RelaySettings, db: PgDb, col: Collector, event: OutboxEvent
) -> tuple[Relay, asyncio.Task[None]]:
    """A relay running in a task, streaming, that has published ``event``."""
    relay = Relay(settings)
    task = asyncio.create_task(relay.run())
    await wait_until(lambda: relay.stats.database == "ok", what="streaming")
    _write(db, [event])
    await col.wait_for(1)
    return relay, task


def _first_seen(col: Collector) -> dict[str, list[str]]:
    seen: set[str] = set()
    out: dict[str, list[str]] = {}
    for r in col.records:
        eid = dict(r.headers)["id"].decode()
        if eid not in seen:
            seen.add(eid)
            out.setdefault(r.key.decode(), []).append(eid)
    return out


async def test_rows_and_messages_are_published_byte_for_byte_and_the_slot_follows_the_checkpoint(
    db: PgDb, stack: Stack, topic_prefix: str, redis_prefix: str
) -> None:
    _outbox(db)
    settings = _settings(
        db, stack, topic_prefix, redis_prefix, pg_message_prefixes=("outbox",), metrics_port=0
    )
    rows = [_event("a", i) for i in range(5)]
    messages = [_event("b", i) for i in range(5)]
    async with Collector(stack.kafka_bootstrap) as col:
        await col.watch([topic_prefix + "order"])
        async with running_relay(settings) as relay:
            await wait_until(lambda: relay.stats.database == "ok", what="streaming")
            _write(db, rows[:2], noise=3)
            _write(db, messages, mode="message", noise=2)
            with db.engine.begin() as conn:  # other tables only
                conn.exec_driver_sql("INSERT INTO noise (v) VALUES ('x')")
            _write(db, rows[2:])
            await col.wait_for(10)
            current = parse_lsn(str(db.sql("SELECT pg_current_wal_lsn()")[0][0]))

            def caught_up() -> bool:
                saved = _checkpoint(stack, settings)
                return isinstance(saved, LsnPosition) and saved.lsn >= current

            await wait_until(caught_up, what="checkpoint past the last commit")
            saved = _checkpoint(stack, settings)
            await wait_until(lambda: db.confirmed_flush() >= saved.lsn, what="slot confirmed")
            health = relay.stats.health()
            assert health["postgresql"] == "ok" and "mysql" not in health
            text = relay.metrics.render().decode()
            assert 'outbox_relay_server_up{server="postgresql"} 1.0' in text
            assert "outbox_relay_slot_retained_bytes" in text
    table, message_table = "public.outbox", f"{db.name}.outbox"
    want = sorted(
        [_expected(e, table, topic_prefix) for e in rows]
        + [_expected(e, message_table, topic_prefix) for e in messages],
        key=lambda r: r.headers,
    )
    got = sorted((_as_record(r) for r in col.records), key=lambda r: r.headers)
    assert got == want
    assert _first_seen(col) == {
        "a": [str(e.id) for e in rows],
        "b": [str(e.id) for e in messages],
    }
    # The slot never passes the checkpoint: confirmed only after a save.
    assert db.confirmed_flush() <= _checkpoint(stack, settings).lsn


async def test_an_event_kafka_refuses_stops_the_relay_and_the_slot_stays_before_it(
    db: PgDb, stack: Stack, topic_prefix: str, redis_prefix: str
) -> None:
    _outbox(db)
    settings = _settings(db, stack, topic_prefix, redis_prefix, max_request_size=20_000)
    async with Collector(stack.kafka_bootstrap) as col:
        await col.watch([topic_prefix + "order"])
        relay = Relay(settings)
        task = asyncio.create_task(relay.run())
        await wait_until(lambda: relay.stats.database == "ok", what="streaming")
        small = _event("a", 1)
        _write(db, [small])
        await col.wait_for(1)
        before_big = parse_lsn(str(db.sql("SELECT pg_current_wal_lsn()")[0][0]))
        big, after = _event("a", 2, size=50_000), _event("a", 3)
        _write(db, [big])
        _write(db, [after])
        with pytest.raises(PublishError):
            await asyncio.wait_for(task, 30)
        # Neither the checkpoint nor the slot may pass the refused event's transaction.
        assert _checkpoint(stack, settings).lsn <= before_big
        assert db.confirmed_flush() <= before_big
        # Told to send larger records, a restart publishes it, then the next one.
        bigger = _settings(db, stack, topic_prefix, redis_prefix, max_request_size=1_000_000)
        async with running_relay(bigger) as relay:
            await col.wait_for(3)
    assert _first_seen(col) == {"a": [str(small.id), str(big.id), str(after.id)]}


def _writer(
    db: PgDb, count: int, done: threading.Event
) -> tuple[threading.Thread, list[OutboxEvent]]:
    events = [_event(str(i % 7), i) for i in range(count)]

    def run() -> None:
        for start in range(0, count, 5):
            _write(db, events[start : start + 5], mode="message" if start % 10 else "table")
        done.set()

    return threading.Thread(target=run, name="pg-writer", daemon=True), events


async def test_leader_sigkilled_mid_stream_the_standby_resumes_losing_nothing(
    db: PgDb, stack: Stack, topic_prefix: str, redis_prefix: str, tmp_path: Path
) -> None:
    _outbox(db)
    settings = _settings(
        db, stack, topic_prefix, redis_prefix, pg_message_prefixes=("outbox",), reader="thread"
    )
    done = threading.Event()
    writer, events = _writer(db, 2_000, done)
    a, b = RelayProcess(settings, tmp_path / "a.log"), RelayProcess(settings, tmp_path / "b.log")
    try:
        await _kill_the_leader_mid_stream(a, b, stack, topic_prefix, writer, done, events)
    finally:  # a failed wait must not leave relays behind
        for proc in (a.proc, b.proc):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(30)


async def _kill_the_leader_mid_stream(
    a: RelayProcess,
    b: RelayProcess,
    stack: Stack,
    topic_prefix: str,
    writer: threading.Thread,
    done: threading.Event,
    events: list[OutboxEvent],
) -> None:
    async with Collector(stack.kafka_bootstrap) as col:
        await col.watch([topic_prefix + "order"])
        a.start()
        await wait_until(lambda: "leader of relay" in a.log(), what=lambda: f"a leads: {a.log()}")
        b.start()
        await wait_until(lambda: "standby" in b.log(), what=lambda: f"b waits: {b.log()}")
        writer.start()
        await col.wait_for(500, within=60)
        assert a.kill(signal.SIGKILL) == -signal.SIGKILL
        await wait_until(
            lambda: "leader of relay" in b.log(), within=30, what=lambda: f"b leads: {b.log()}"
        )
        await asyncio.to_thread(writer.join, 120)
        assert done.is_set()
        want = {str(e.id) for e in events}
        await wait_until(
            lambda: want <= set(col.ids()),
            within=90,
            what=lambda: f"all events (missing {len(want - set(col.ids()))})",
        )
        assert b.kill(signal.SIGTERM) == 0, b.log()
    expected_order: dict[str, list[str]] = {}
    for e in events:
        expected_order.setdefault(e.aggregate_id, []).append(str(e.id))
    assert _first_seen(col) == expected_order


async def test_postgres_restarted_under_the_relay_loses_nothing(
    db: PgDb, stack: Stack, topic_prefix: str, redis_prefix: str
) -> None:
    _outbox(db)
    settings = _settings(db, stack, topic_prefix, redis_prefix)
    before, during = [_event("r", i) for i in range(20)], [_event("r", 100 + i) for i in range(20)]
    async with Collector(stack.kafka_bootstrap) as col:
        await col.watch([topic_prefix + "order"])
        async with running_relay(settings) as relay:
            await wait_until(lambda: relay.stats.database == "ok", what="streaming")
            _write(db, before)
            await col.wait_for(20)
            await asyncio.to_thread(db.server.restart, kill=True)  # crash recovery
            await wait_until(lambda: relay.stats.database == "ok", within=60, what="reconnected")
            db.engine.dispose()
            _write(db, during)
            await col.wait_for(40, within=60)
    assert _first_seen(col) == {"r": [str(e.id) for e in before + during]}


async def test_a_lost_slot_stops_with_exit_3_and_the_advice_works(
    db: PgDb, stack: Stack, topic_prefix: str, redis_prefix: str, tmp_path: Path
) -> None:
    _outbox(db)
    settings = _settings(db, stack, topic_prefix, redis_prefix)
    relay, task = await _checkpointed(settings)
    relay.stop()
    await asyncio.wait_for(task, 30)
    db.sql(f"SELECT pg_drop_replication_slot('{db.slot}')")
    _write(db, [_event("x", 0)])  # committed while the slot is gone: lost to the relay
    proc = RelayProcess(settings, tmp_path / "lost.log")
    proc.start()
    assert proc.proc is not None
    assert await asyncio.to_thread(proc.proc.wait, 60) == 3
    lines = [line for line in proc.log().splitlines() if "ERROR" in line]
    assert len(lines) == 1 and "--ignore-checkpoint" in lines[0], proc.log()
    assert "Traceback" not in proc.log()
    # Followed as written: the relay starts with a new slot and publishes what comes next.
    await _starts_over_and_publishes(db, stack, topic_prefix, redis_prefix)


async def _starts_over_and_publishes(
    db: PgDb, stack: Stack, topic_prefix: str, redis_prefix: str
) -> None:
    """Started once with --ignore-checkpoint, the relay publishes what comes next, only."""
    after = _event("x", 1)
    settings = _settings(db, stack, topic_prefix, redis_prefix, ignore_checkpoint=True)
    async with Collector(stack.kafka_bootstrap) as col:
        await col.watch([topic_prefix + "order"])
        async with running_relay(settings) as relay:
            await wait_until(lambda: relay.stats.database == "ok", what="streaming")
            _write(db, [after])
            await col.wait_for(1)
    assert col.ids() == [str(after.id)]


async def test_startup_errors_name_the_setting(
    db: PgDb, stack: Stack, topic_prefix: str, redis_prefix: str
) -> None:
    _outbox(db)
    missing = _settings(db, stack, topic_prefix, redis_prefix, outbox_table="nope")
    with pytest.raises(ConfigurationError) as info:
        await asyncio.wait_for(Relay(missing).run(), 30)
    assert info.value.setting == "outbox_table" and "public.nope" in str(info.value)
    # A MySQL relay's checkpoint under the same name is never read as an LSN.
    settings = _settings(db, stack, topic_prefix, redis_prefix)
    client = redis.Redis.from_url(stack.redis_url)
    try:
        client.set(settings.checkpoint_key, BinlogPosition(file="mysql-bin.000001", pos=4).encode())
    finally:
        client.close()
    with pytest.raises(CheckpointError) as error:
        await asyncio.wait_for(Relay(settings).run(), 30)
    assert "relay_name" in str(error.value) and "--ignore-checkpoint" in str(error.value)


async def test_redis_losing_the_checkpoint_resumes_from_the_slot_and_a_lost_slot_too_stops(
    db: PgDb, stack: Stack, topic_prefix: str, redis_prefix: str
) -> None:
    _outbox(db)
    # Redis only: its checkpoint is the one copy (no Kafka topic copy to fall back on).
    settings = _settings(db, stack, topic_prefix, redis_prefix, checkpoint_topic="")
    first, meanwhile = _event("k", 0), _event("k", 1)
    async with Collector(stack.kafka_bootstrap) as col:
        await col.watch([topic_prefix + "order"])
        relay, task = await _streaming_past(settings, db, col, first)
        await wait_until(lambda: db.confirmed_flush() > 0, what="slot confirmed")
        relay.stop()
        await asyncio.wait_for(task, 30)
        client = redis.Redis.from_url(stack.redis_url)
        try:
            client.delete(settings.checkpoint_key)  # the token key of its saves stays
        finally:
            client.close()
        _write(db, [meanwhile])
        async with running_relay(settings) as relay:
            await col.wait_for(2)
    assert _first_seen(col) == {"k": [str(first.id), str(meanwhile.id)]}
    # Checkpoint and slot both gone: the relay ran before (the token key says so), so a
    # new slot would skip what was committed meanwhile: exit 3, never a silent start.
    client = redis.Redis.from_url(stack.redis_url)
    try:
        client.delete(settings.checkpoint_key)
    finally:
        client.close()
    db.sql(f"SELECT pg_drop_replication_slot('{db.slot}')")
    with pytest.raises(CheckpointError) as info:
        await asyncio.wait_for(Relay(settings).run(), 30)
    assert "--ignore-checkpoint" in str(info.value)


async def test_many_outbox_tables_one_publication_and_counts_per_table(
    db: PgDb, stack: Stack, topic_prefix: str, redis_prefix: str
) -> None:
    _outbox(db)
    _outbox(db, "billing_outbox")
    settings = _settings(
        db,
        stack,
        topic_prefix,
        redis_prefix,
        outbox_tables="public.outbox,public.billing_outbox",
        topic_template=topic_prefix + "{table}.{aggregatetype}",
    )
    shop, billing = [_event("s", i) for i in range(3)], [_event("b", i) for i in range(2)]
    async with Collector(stack.kafka_bootstrap) as col:
        await col.watch([topic_prefix + "outbox.order", topic_prefix + "billing_outbox.order"])
        async with running_relay(settings) as relay:
            await wait_until(lambda: relay.stats.database == "ok", what="streaming")
            _write(db, shop)
            table = outbox_table(sa.MetaData(), name="billing_outbox")
            factory = sessionmaker(db.engine, class_=OutboxSession, outbox_table=table)
            with factory() as session:
                session.add_events(billing)
                session.commit()
            await col.wait_for(5)
            await wait_until(
                lambda: relay.stats.by_table == {"public.outbox": 3, "public.billing_outbox": 2},
                what=lambda: f"counts per table {relay.stats.by_table}",
            )
    by_topic = {r.topic: [] for r in col.records}
    for r in col.records:
        by_topic[r.topic].append(dict(r.headers)["id"].decode())
    assert by_topic == {
        topic_prefix + "outbox.order": [str(e.id) for e in shop],
        topic_prefix + "billing_outbox.order": [str(e.id) for e in billing],
    }


async def test_dead_letter_policy_sends_the_refused_event_aside_and_goes_on(
    db: PgDb, stack: Stack, topic_prefix: str, redis_prefix: str
) -> None:
    _outbox(db)
    dlq = topic_prefix + "dlq"
    settings = _settings(
        db,
        stack,
        topic_prefix,
        redis_prefix,
        max_request_size=20_000,
        on_rejected="dead-letter",
        dead_letter_topic=dlq,
    )
    small, big, after = _event("d", 1), _event("d", 2, size=50_000), _event("d", 3)
    async with Collector(stack.kafka_bootstrap) as col:
        await col.watch([topic_prefix + "order", dlq])
        async with running_relay(settings) as relay:
            await wait_until(lambda: relay.stats.database == "ok", what="streaming")
            for e in (small, big, after):
                _write(db, [e])
            await col.wait_for(3)
            await wait_until(lambda: relay.stats.dead_lettered == 1, what="one dead letter")
    published = [dict(r.headers)["id"].decode() for r in col.records if r.topic != dlq]
    letters = [json.loads(r.value) for r in col.records if r.topic == dlq]
    assert published == [str(small.id), str(after.id)]
    assert [letter["id"] for letter in letters] == [str(big.id)]


async def test_a_clean_stop_leaves_the_slot_at_the_final_checkpoint(
    db: PgDb, stack: Stack, topic_prefix: str, redis_prefix: str
) -> None:
    """The source stops before the final save, so its status updates cannot report it;
    the slot still ends there, and PostgreSQL keeps no WAL of published events."""
    _outbox(db)
    # Only the save at the start and the final one: no periodic save confirms the events.
    settings = _settings(db, stack, topic_prefix, redis_prefix, checkpoint_interval_ms=600_000)
    events = [_event("f", i) for i in range(3)]
    async with Collector(stack.kafka_bootstrap) as col:
        await col.watch([topic_prefix + "order"])
        async with running_relay(settings) as relay:
            await wait_until(lambda: relay.stats.database == "ok", what="streaming")
            _write(db, events)
            await col.wait_for(3)
            current = parse_lsn(str(db.sql("SELECT pg_current_wal_lsn()")[0][0]))
            await wait_until(
                lambda: (relay.checkpoint_position or LsnPosition(lsn=0)).lsn >= current,
                what="the watermark past the events",
            )
    saved = _checkpoint(stack, settings)
    assert saved.lsn >= current
    assert db.confirmed_flush() == saved.lsn


async def test_an_unreachable_postgresql_is_waited_for_then_used(
    db: PgDb, stack: Stack, topic_prefix: str, redis_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    _outbox(db)
    event = _event("u", 0)
    with TcpProxy(db.params.port) as proxy:
        proxy.cut()
        url = db.server.url(db.name).replace(f":{db.params.port}/", f":{proxy.port}/")
        settings = _settings(db, stack, topic_prefix, redis_prefix, database_url=url)
        async with Collector(stack.kafka_bootstrap) as col:
            await col.watch([topic_prefix + "order"])
            async with running_relay(settings) as relay:
                await wait_until(
                    lambda: any(
                        "cannot reach a server yet" in r.getMessage() for r in caplog.records
                    ),
                    what="a retry",
                )
                assert relay.stats.database != "ok"  # still waiting (an exit fails the block)
                proxy.restore()
                await wait_until(lambda: relay.stats.database == "ok", within=30, what="streaming")
                _write(db, [event])
                await col.wait_for(1)
    assert col.ids() == [str(event.id)]


BAD_OUTBOX_DDL = "CREATE TABLE bad_outbox (id integer PRIMARY KEY, payload bytea)"


async def test_a_pattern_reads_matching_tables_also_created_later_and_skips_the_rest(
    db: PgDb, stack: Stack, topic_prefix: str, redis_prefix: str
) -> None:
    _outbox(db)
    pattern = r"public\..*outbox"
    # Not a superuser: the relay cannot create the FOR ALL TABLES publication a pattern
    # needs, and says who can (exit 2 naming pg_publication).
    refused = _settings(
        db, stack, topic_prefix, redis_prefix, outbox_table_pattern=pattern, pg_publication="own"
    )
    with pytest.raises(ConfigurationError) as info:
        await asyncio.wait_for(Relay(refused).run(), 30)
    assert info.value.setting == "pg_publication" and "FOR ALL TABLES" in str(info.value)
    # Created by a superuser, as the message says.
    db.server.psql(
        f"CREATE PUBLICATION {db.publication} FOR ALL TABLES WITH (publish = 'insert')",
        database=db.name,
    )
    dlq = topic_prefix + "dlq"
    settings = _settings(
        db,
        stack,
        topic_prefix,
        redis_prefix,
        outbox_table_pattern=pattern,
        topic_template=topic_prefix + "{table}.{aggregatetype}",
        on_rejected="dead-letter",
        dead_letter_topic=dlq,
    )
    first, later = [_event("p", i) for i in range(2)], [_event("q", i) for i in range(2)]
    topics = [topic_prefix + "outbox.order", topic_prefix + "billing_outbox.order", dlq]
    async with Collector(stack.kafka_bootstrap) as col:
        await col.watch(topics)
        async with running_relay(settings) as relay:
            await wait_until(lambda: relay.stats.database == "ok", what="streaming")
            _write(db, first, noise=2)
            _outbox(db, "billing_outbox")  # created while the relay runs
            with db.engine.begin() as conn:
                conn.exec_driver_sql(BAD_OUTBOX_DDL)
                conn.exec_driver_sql("INSERT INTO bad_outbox VALUES (1, 'x')")
            table = outbox_table(sa.MetaData(), name="billing_outbox")
            factory = sessionmaker(db.engine, class_=OutboxSession, outbox_table=table)
            with factory() as session:
                session.add_events(later)
                session.commit()
            await col.wait_for(5)
    by_topic: dict[str, list[str]] = {}
    for r in col.records:
        by_topic.setdefault(r.topic, []).append(dict(r.headers).get("id", b"").decode())
    assert by_topic[topics[0]] == [str(e.id) for e in first]
    assert by_topic[topics[1]] == [str(e.id) for e in later]
    [letter] = [json.loads(r.value) for r in col.records if r.topic == dlq]
    assert letter["table"] == "public.bad_outbox"


async def test_a_publication_changed_under_the_relay_stops_it_with_exit_2_and_the_fix_works(
    db: PgDb, stack: Stack, topic_prefix: str, redis_prefix: str, tmp_path: Path
) -> None:
    _outbox(db)
    settings = _settings(db, stack, topic_prefix, redis_prefix)
    before, hidden, after = _event("p", 0), _event("p", 1), _event("p", 2)
    proc = RelayProcess(settings, tmp_path / "changed.log")
    async with Collector(stack.kafka_bootstrap) as col:
        await col.watch([topic_prefix + "order"])
        proc.start()
        assert proc.proc is not None
        try:
            streaming = f"SELECT active FROM pg_replication_slots WHERE slot_name = '{db.slot}'"
            await wait_until(lambda: db.sql(streaming) == [("t",)], what=proc.log)
            _write(db, [before])
            await col.wait_for(1)
            # Out of the publication: PostgreSQL leaves the outbox's rows out, no error.
            db.sql(f"ALTER PUBLICATION {db.publication} DROP TABLE outbox")
            _write(db, [hidden])
            assert await asyncio.to_thread(proc.proc.wait, 30) == 2, proc.log()
        finally:
            if proc.proc.poll() is None:
                proc.proc.kill()
        errors = [line for line in proc.log().splitlines() if "ERROR" in line]
        assert len(errors) == 1 and "pg_publication" in errors[0], proc.log()
        assert "Traceback" not in proc.log() and "left out" in errors[0]
        fix = errors[0][errors[0].index("Fix it (") + 8 : errors[0].index("), then ")]
        db.sql(fix)  # as written
        async with running_relay(settings) as relay:
            await wait_until(lambda: relay.stats.database == "ok", what="streaming")
            _write(db, [after])
            await col.wait_for(2)
    # The error said so: the hidden event's transaction is decoded without it, for good.
    assert col.ids() == [str(before.id), str(after.id)]


async def test_a_dropped_publication_stops_with_exit_3_at_once_and_at_start_and_the_advice_works(
    db: PgDb, stack: Stack, topic_prefix: str, redis_prefix: str
) -> None:
    _outbox(db)
    settings = _settings(db, stack, topic_prefix, redis_prefix)
    _, task = await _checkpointed(settings)
    db.sql(f"DROP PUBLICATION {db.publication}")
    with pytest.raises(PublicationGoneError, match="--ignore-checkpoint"):
        await asyncio.wait_for(task, 30)
    # Started again, the relay creates the publication, which cannot decode the slot's
    # WAL from before: the same error at start, not a stream that fails later.
    with pytest.raises(PublicationGoneError) as info:
        await asyncio.wait_for(Relay(settings).run(), 30)
    drop = str(info.value).split("SELECT ")[1].split(", then")[0]
    db.sql(f"SELECT {drop}")  # as written, then --ignore-checkpoint
    await _starts_over_and_publishes(db, stack, topic_prefix, redis_prefix)


async def test_events_written_as_messages_under_an_unlisted_prefix_stop_the_relay_losing_none(
    db: PgDb, stack: Stack, topic_prefix: str, redis_prefix: str
) -> None:
    # The app switched to outbox_mode="message"; the relay was only told of the table.
    _outbox(db)
    settings = _settings(db, stack, topic_prefix, redis_prefix)
    before, as_message = _event("m", 0), _event("m", 1)
    async with Collector(stack.kafka_bootstrap) as col:
        await col.watch([topic_prefix + "order"])
        _, task = await _streaming_past(settings, db, col, before)
        _write(db, [as_message], mode="message")
        with pytest.raises(ConfigurationError) as info:
            await asyncio.wait_for(task, 30)
        assert info.value.setting == "pg_message_prefixes"
        assert f"'outbox' holds an outbox event (id {as_message.id}" in str(info.value)
        # Followed as written: the prefix listed, the relay publishes the event it stopped at.
        listed = _settings(db, stack, topic_prefix, redis_prefix, pg_message_prefixes=("outbox",))
        async with running_relay(listed):
            await col.wait_for(2)
    assert col.ids() == [str(before.id), str(as_message.id)]
