"""The checkpoint's second copy in Kafka: a relay whose Redis forgot resumes, not skips."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer

from outbox_dev.scratch import ScratchRedis
from transactional_outbox.relay import RelaySettings
from transactional_outbox.relay.checkpoint import RedisCheckpointStore
from transactional_outbox.relay.checkpoint_choice import KafkaCopies
from transactional_outbox.relay.checkpoint_topic import KafkaCheckpointTopic
from transactional_outbox.relay.checkpointer import Checkpointer
from transactional_outbox.relay.checkpoints import CheckpointStores
from transactional_outbox.relay.leadership import Lease, LeaseKeys
from transactional_outbox.relay.position import BinlogPosition, decode_checkpoint, encode_checkpoint
from transactional_outbox.relay.stats import RelayStats
from transactional_outbox.relay.term import LeaderTerm

from .conftest import Stack
from .relay_harness import (
    Collector,
    RelayProcess,
    make_event,
    relay_settings,
    running_relay,
    wait_until,
    write_events,
)

LOG = "transactional_outbox.relay"


def checkpoint_topic(settings: RelaySettings) -> KafkaCheckpointTopic:
    return KafkaCheckpointTopic(
        settings.producer_args(),
        topic=settings.checkpoint_topic,
        key=f"{settings.key_prefix}{settings.relay_name}",
        create=True,
        replication_factor=-1,
        timeout_ms=20_000,
    )


async def kafka_copies(settings: RelaySettings) -> KafkaCopies:
    topic = checkpoint_topic(settings)
    try:
        return await topic.read()
    finally:
        await topic.close()


def binlog_end(conn: Any) -> tuple[str, int]:
    with conn.cursor() as cur:
        cur.execute("SHOW MASTER STATUS")
        file, pos = cur.fetchone()[:2]
    return str(file), int(pos)


def saved_past(relay: Any, end: tuple[str, int]) -> bool:
    cp = relay.stats.checkpoint
    return cp is not None and (cp.file, cp.pos) >= end


@pytest.mark.parametrize("loss", ["checkpoint key deleted", "Redis restarted empty"])
async def test_a_checkpoint_lost_in_redis_while_down_resumes_from_kafka(
    conn: Any,
    settings_kw: dict[str, Any],
    topic_prefix: str,
    stack: Stack,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    loss: str,
) -> None:
    scratch = None
    if loss == "Redis restarted empty":
        scratch = ScratchRedis(tmp_path / "redis")
        scratch.start()
        settings_kw = {**settings_kw, "redis_url": scratch.url}
    try:
        settings = relay_settings(**settings_kw)
        first = [make_event(aggregate_id=str(i)) for i in range(5)]
        second = [make_event(aggregate_id=str(i % 5)) for i in range(50)]
        async with Collector(stack.kafka_bootstrap) as col:
            await col.watch([topic_prefix + "order"])
            write_events(conn, first)
            async with running_relay(settings):
                await col.wait_for(5)
            assert (await kafka_copies(settings)).latest is not None
            if scratch is not None:
                scratch.stop()
                scratch.forget()
                scratch.start()
            else:
                redis.Redis.from_url(stack.redis_url).delete(settings.checkpoint_key)
            for k in range(0, 50, 10):
                write_events(conn, second[k : k + 10])
            caplog.set_level(logging.INFO, LOG)
            # latest: what a relay whose Redis forgot used to do (0 of 50 published).
            again = dataclasses.replace(settings, start_position="latest")
            async with running_relay(again):
                await col.wait_for(55)
        assert Counter(col.ids()) == Counter(str(e.id) for e in first + second)
        warnings = [
            r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == LOG
        ]
        line = next(w for w in warnings if w.startswith("no checkpoint in Redis"))
        assert settings.checkpoint_key in line and settings.checkpoint_topic in line
    finally:
        if scratch is not None:
            scratch.stop()


async def test_a_redis_copy_older_than_kafkas_resumes_from_the_newer(
    conn: Any,
    settings_kw: dict[str, Any],
    topic_prefix: str,
    stack: Stack,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = relay_settings(**settings_kw)
    client = redis.Redis.from_url(stack.redis_url)
    keys = [settings.checkpoint_key, settings.checkpoint_key + ":token"]
    batches = [[make_event(aggregate_id=str(i)) for i in range(5)] for _ in range(3)]
    async with Collector(stack.kafka_bootstrap) as col:
        await col.watch([topic_prefix + "order"])
        write_events(conn, batches[0])
        async with running_relay(settings):
            await col.wait_for(5)
        older = client.mget(keys)
        write_events(conn, batches[1])
        async with running_relay(settings):
            await col.wait_for(10)
        # Redis missed the last saves (it was down while Kafka took them): its copy is older.
        client.mset(dict(zip(keys, older, strict=True)))
        write_events(conn, batches[2])
        end = binlog_end(conn)
        caplog.set_level(logging.INFO, LOG)
        async with running_relay(settings) as relay:
            await wait_until(lambda: saved_past(relay, end), what="the checkpoint past the writes")
            assert relay.stats.published == 5  # not the second batch again
        await col.wait_for(15)
    assert Counter(col.ids()) == Counter(str(e.id) for batch in batches for e in batch)
    assert any("is newer than Redis's" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("evidence", ["Redis", "Kafka", "both"])
async def test_a_relay_that_ran_before_without_a_checkpoint_exits_2(
    conn: Any,
    settings_kw: dict[str, Any],
    topic_prefix: str,
    stack: Stack,
    tmp_path: Path,
    evidence: str,
) -> None:
    settings = relay_settings(**settings_kw)
    async with Collector(stack.kafka_bootstrap) as col:
        await col.watch([topic_prefix + "order"])
        write_events(conn, [make_event()])
        async with running_relay(settings):
            await col.wait_for(1)
        client = redis.Redis.from_url(stack.redis_url)
        if evidence == "Kafka":  # Redis forgot everything of the relay
            client.delete(*client.scan_iter(match=settings.key_prefix + "*"))
        else:
            client.delete(settings.checkpoint_key)  # its token key stays
        if evidence == "Redis":  # as if the checkpoint topic was deleted
            settings = dataclasses.replace(settings, checkpoint_topic=topic_prefix + "other")
        else:  # the Kafka copy deleted with a tombstone
            producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap)
            await producer.start()
            key = f"{settings.key_prefix}{settings.relay_name}".encode()
            await producer.send_and_wait(settings.checkpoint_topic, key=key, value=None)
            await producer.stop()
        here = binlog_end(conn)
        later = [make_event() for _ in range(3)]
        write_events(conn, later)
        child = RelayProcess(
            dataclasses.replace(settings, start_position="latest"), tmp_path / "a.log"
        )
        child.start()
        assert child.proc is not None
        assert child.proc.wait(60) == 2
        lines = [x for x in child.log().splitlines() if x.strip()]
        assert "Traceback" not in child.log()
        assert "configuration error: start_position: relay 'test' ran before" in lines[-1]
        assert "--start-position FILE:POS" in lines[-1]
        # The advice, as written: an explicit position starts there.
        advised = dataclasses.replace(settings, start_position=f"{here[0]}:{here[1]}")
        child = RelayProcess(advised, tmp_path / "b.log")
        child.start()
        try:
            await col.wait_for(4)
        finally:
            assert child.kill(signal.SIGTERM) == 0
        # The other way out: --ignore-checkpoint starts at latest.
        client.delete(settings.checkpoint_key)
        ignoring = dataclasses.replace(settings, start_position="latest", ignore_checkpoint=True)
        async with running_relay(ignoring) as relay:
            await wait_until(lambda: relay.stats.checkpoint is not None, what="a started relay")
    assert Counter(col.ids())[str(later[0].id)] == 1
    assert {str(e.id) for e in later} <= set(col.ids())


async def test_a_brand_new_relay_name_starts_at_latest(
    conn: Any, settings_kw: dict[str, Any], topic_prefix: str, stack: Stack
) -> None:
    settings = relay_settings(**{**settings_kw, "start_position": "latest"})
    before = [make_event() for _ in range(3)]
    after = [make_event() for _ in range(3)]
    async with Collector(stack.kafka_bootstrap) as col:
        await col.watch([topic_prefix + "order"])
        write_events(conn, before)
        async with running_relay(settings) as relay:
            await wait_until(lambda: relay.stats.checkpoint is not None, what="the start saved")
            write_events(conn, after)
            await col.wait_for(3)
            end = binlog_end(conn)
            await wait_until(lambda: saved_past(relay, end), what="the checkpoint past the writes")
    assert sorted(col.ids()) == sorted(str(e.id) for e in after)


def position(pos: int) -> BinlogPosition:
    return BinlogPosition(file="mysql-bin.000001", pos=pos)


async def test_a_stale_leaders_kafka_write_does_not_win(settings_kw: dict[str, Any]) -> None:
    settings = relay_settings(**settings_kw)
    rds = aioredis.Redis.from_url(settings.redis_url)
    keys = LeaseKeys.for_relay(settings.key_prefix, settings.relay_name)
    topic = checkpoint_topic(settings)
    try:
        old = Lease(rds, keys, ttl_ms=5000)
        assert await old.try_acquire() and old.token is not None
        await topic.write(token=old.token, seq=1, value=encode_checkpoint(position(100)))
        await rds.delete(keys.lease)  # the old leader paused past its lease
        new = Lease(rds, keys, ttl_ms=5000)
        assert await new.try_acquire() and new.token is not None and new.token > old.token
        await topic.write(token=new.token, seq=1, value=encode_checkpoint(position(200)))
        # The old leader resumes and writes last, with a further position and save number.
        await topic.write(token=old.token, seq=99, value=encode_checkpoint(position(300)))
        copies = await topic.read()
        assert copies.latest is not None and copies.latest.token == new.token
        stores = CheckpointStores(
            RedisCheckpointStore(rds, key=keys.checkpoint), topic, new, relay_name="test"
        )
        assert await stores.load_start(settings, RelayStats()) == position(200)
    finally:
        await topic.close()
        await rds.aclose()


async def test_tokens_keep_growing_after_redis_lost_its_counter(
    settings_kw: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    settings = relay_settings(**settings_kw)
    rds = aioredis.Redis.from_url(settings.redis_url)
    keys = LeaseKeys.for_relay(settings.key_prefix, settings.relay_name)
    topic = checkpoint_topic(settings)
    try:
        await topic.write(token=41, seq=7, value=encode_checkpoint(position(100)))
        lease = Lease(rds, keys, ttl_ms=5000)
        assert await lease.try_acquire() and lease.token == 1  # a counter that restarted
        stores = CheckpointStores(
            RedisCheckpointStore(rds, key=keys.checkpoint), topic, lease, relay_name="test"
        )
        caplog.set_level(logging.WARNING, LOG)
        assert await stores.load_start(settings, RelayStats()) == position(100)
        assert lease.token == 42 and int(await rds.get(keys.fence)) == 42
        assert await lease.renew()  # the lease holds the new token
        assert await stores.redis.save_value(encode_checkpoint(position(150)), fence=lease, seq=1)
        await topic.write(token=42, seq=1, value=encode_checkpoint(position(150)))
        assert await stores.load_start(settings, RelayStats()) == position(150)
        assert "Redis lost its counter" in caplog.text
    finally:
        await topic.close()
        await rds.aclose()


@pytest.mark.parametrize("config", ["allowed", "refused"])
async def test_an_allkeys_eviction_policy_is_a_warning_unless_config_is_refused(
    settings_kw: dict[str, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture, config: str
) -> None:
    scratch = ScratchRedis(tmp_path / "redis")
    scratch.start()
    admin = aioredis.Redis.from_url(scratch.url)
    try:
        await admin.config_set("maxmemory-policy", "allkeys-lru")
        url = scratch.url
        if config == "refused":  # as on managed Redis: CONFIG is not for the relay
            await admin.execute_command("ACL", "SETUSER", "relay", "on", ">pw", "~*", "+@all")
            await admin.execute_command("ACL", "SETUSER", "relay", "-config")
            url = url.replace("redis://", "redis://relay:pw@")
        settings = relay_settings(**{**settings_kw, "redis_url": url})
        rds = aioredis.Redis.from_url(url)
        keys = LeaseKeys.for_relay(settings.key_prefix, settings.relay_name)
        lease = Lease(rds, keys, ttl_ms=5000)
        assert await lease.try_acquire()
        stores = CheckpointStores(
            RedisCheckpointStore(rds, key=keys.checkpoint), None, lease, relay_name="test"
        )
        caplog.set_level(logging.INFO, LOG)
        assert await stores.load_start(settings, RelayStats()) is None
        await stores.load_start(settings, RelayStats())  # once per process
        warned = [r.getMessage() for r in caplog.records if "maxmemory-policy" in r.getMessage()]
        assert len(warned) == (1 if config == "allowed" else 0)
        if warned:
            assert "allkeys-lru" in warned[0] and warned[0].count("\n") == 0
        await rds.aclose()
    finally:
        await admin.aclose()
        await asyncio.to_thread(scratch.stop)


async def latest_kafka_copy(topic: KafkaCheckpointTopic, within: float = 20.0) -> Any:
    deadline = asyncio.get_running_loop().time() + within
    while (copies := await topic.read()).latest is None:
        assert asyncio.get_running_loop().time() < deadline, "no copy reached Kafka"
        await asyncio.sleep(0.1)
    return copies.latest


async def test_the_kafka_copy_is_written_while_redis_is_down_but_not_by_a_stale_leader(
    settings_kw: dict[str, Any], tmp_path: Path
) -> None:
    scratch = ScratchRedis(tmp_path / "redis")
    scratch.start()
    settings = relay_settings(**{**settings_kw, "redis_url": scratch.url})
    rds = aioredis.Redis.from_url(scratch.url, socket_timeout=1)
    keys = LeaseKeys.for_relay(settings.key_prefix, settings.relay_name)
    topic = checkpoint_topic(settings)
    stats = RelayStats()
    stores = CheckpointStores(
        RedisCheckpointStore(rds, key=keys.checkpoint),
        topic,
        Lease(rds, keys, ttl_ms=30_000),
        relay_name="test",
    )
    current = position(100)
    try:
        # A stale leader: its Redis write is refused, so it writes no Kafka copy either.
        assert await stores.lease.try_acquire()
        await rds.delete(keys.lease)
        newer = Lease(rds, keys, ttl_ms=30_000)
        assert await newer.try_acquire()
        stale = Checkpointer(
            stores, LeaderTerm(stores.lease, renew_ms=1000, stats=stats), stats, lambda: current
        )
        await stale.save()
        await stale.final_save()
        assert (await topic.read()).records == 0
        # The leader, with Redis down: Redis fails, the Kafka copy is written all the same.
        stores.lease = newer
        term = LeaderTerm(newer, renew_ms=1000, stats=stats)
        leader = Checkpointer(stores, term, stats, lambda: current)
        scratch.stop()
        with pytest.raises((redis.RedisError, OSError)):
            await leader.save()
        copy = await latest_kafka_copy(topic)
        assert copy.token == newer.token and decode_checkpoint(copy.value) == current
    finally:
        await topic.close()
        await rds.aclose()
        scratch.stop()
