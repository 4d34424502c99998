"""Redis as production runs it: the relay and the dedup stores on a Sentinel setup (with a
failover) and on a 3-primary Redis Cluster, started from the Debian binaries for this module
only (dev/outbox_dev/redis_ha.py)."""

from __future__ import annotations

import asyncio
import random
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.crc import key_slot

from outbox_dev.redis_ha import SERVICE, ScratchCluster, ScratchSentinel, ScratchTlsRedis
from transactional_outbox._redis_client import parse_redis_url, sync_client
from transactional_outbox.consumer import (
    AsyncRedisStore,
    ClaimStatus,
    ReceivedEvent,
    RedisStore,
    idempotent_consumer,
)
from transactional_outbox.consumer.store import Claim
from transactional_outbox.exceptions import ConfigurationError
from transactional_outbox.relay import Relay
from transactional_outbox.relay.leadership import LeaseKeys
from transactional_outbox.relay.position import decode_checkpoint

from . import _binlog
from .conftest import Stack
from .polling import wait_until
from .relay_harness import Collector, make_event, relay_settings, running_relay, write_events
from .test_consumer_storm import (  # the storm of test_consumer_storm.py, on HA Redis
    CountingRedisStore,
    Effects,
    Topic,
    open_gate_when_both_joined,
    publish_by_key,
    settle,
    storm_events,
)
from .test_consumer_storm import topic as topic


@pytest.fixture(scope="module")
def sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScratchSentinel]:
    setup = ScratchSentinel(tmp_path_factory.mktemp("sentinel"))
    try:
        setup.start()
        yield setup
    finally:
        setup.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScratchCluster]:
    setup = ScratchCluster(tmp_path_factory.mktemp("cluster"), replicas=True)
    try:
        setup.start()
        yield setup
    finally:
        setup.stop()


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScratchTlsRedis]:
    server = ScratchTlsRedis(tmp_path_factory.mktemp("tls"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


async def settle_group(topic: Topic, group: str, published: int) -> None:
    async def committed_all() -> bool:
        return await topic.committed(group) == published

    await wait_until(committed_all, within=60, what=f"group {group} committed every record")


async def with_a_replica(sentinel: ScratchSentinel) -> None:
    """Start the node an earlier failover killed again, as the replica to promote next."""
    for node in (sentinel.primary, sentinel.replica):
        if not node.running():
            await asyncio.to_thread(sentinel.rejoin, node)


def client_for(url: str) -> redis.Redis | redis.cluster.RedisCluster:
    return sync_client(parse_redis_url(url, setting="redis_url"))


def checkpoint_of(url: str, key: str) -> tuple[str, int] | None:
    client = client_for(url)
    try:
        raw = client.get(key)
    finally:
        client.close()
    cp = None if raw is None else decode_checkpoint(raw)
    return None if cp is None else (cp.file, cp.pos)


async def wait_for_ids(col: Collector, events: list[Any], within: float = 30.0) -> None:
    """Wait until every event of ``events`` was read. A copy resent from an older checkpoint
    comes before them in its key's partition, so it is read by then too."""
    wanted = {str(e.id) for e in events}
    await wait_until(
        lambda: wanted <= set(col.ids()),
        within=within,
        what=lambda: f"{len(wanted - set(col.ids()))} of {len(wanted)} events",
    )


def write_in_txns(conn: Any, events: list[Any], per_txn: int = 3) -> None:
    for k in range(0, len(events), per_txn):
        write_events(conn, events[k : k + per_txn])


# -- startup checks on real servers ------------------------------------------------------


async def write_while(conn: Any, fault: asyncio.Future[Any], during: list[Any]) -> None:
    """Write one event at a time into ``during`` until ``fault`` is done: writes spread
    over the fault."""
    while not fault.done():
        during.append(make_event(aggregate_id=str(len(during) % 3)))
        write_events(conn, during[-1:])
        await asyncio.sleep(0.05)


async def checkpoint_past(url: str, key: str, end: Any, *, what: str, within: float = 20) -> None:
    """Wait until the relay's checkpoint under ``key`` in the Redis at ``url`` is past ``end``."""
    await wait_until(lambda: (checkpoint_of(url, key) or ("", 0)) >= end, within=within, what=what)


async def test_startup_names_redis_url_for_a_server_of_another_kind(
    sentinel: ScratchSentinel, cluster: ScratchCluster, settings_kw: dict[str, Any]
) -> None:
    node = cluster.live().port
    cases = [
        (f"redis+sentinel://127.0.0.1:{sentinel.sentinel.port}/nosuch/0", "named 'nosuch'"),
        (f"redis+cluster://127.0.0.1:{sentinel.master_port()}/", "not in cluster mode"),
        (f"redis://127.0.0.1:{node}/0", "use redis+cluster://"),
    ]
    for url, says in cases:
        settings = relay_settings(**{**settings_kw, "redis_url": url})
        with pytest.raises(ConfigurationError) as caught:
            await asyncio.wait_for(Relay(settings).run(), 30)
        assert caught.value.setting == "redis_url", url
        assert says in str(caught.value), str(caught.value)
        if "nosuch" in url:  # the sentinel's answer lists what it does monitor
            assert f"they monitor: {SERVICE}" in str(caught.value)


async def test_an_unverifiable_tls_certificate_names_redis_url(
    tls: ScratchTlsRedis, settings_kw: dict[str, Any]
) -> None:
    without_ca = tls.url.replace(f"ssl_ca_certs={tls.certs['ca']}&", "")
    settings = relay_settings(**{**settings_kw, "redis_url": without_ca})
    with pytest.raises(ConfigurationError) as caught:
        await asyncio.wait_for(Relay(settings).run(), 30)
    assert caught.value.setting == "redis_url"
    assert "ssl_ca_certs" in str(caught.value) and "does not verify" in str(caught.value)


# -- the relay -------------------------------------------------------------------------


async def test_relay_on_a_cluster_resumes_from_its_checkpoint(
    cluster: ScratchCluster, stack: Stack, conn: Any, settings_kw: dict[str, Any], topic_prefix: str
) -> None:
    settings = relay_settings(**{**settings_kw, "redis_url": cluster.url})
    keys = LeaseKeys.for_settings(settings)
    assert "{test}" in keys.checkpoint  # the relay's name is the hash tag
    assert len({key_slot(k.encode()) for k in (keys.lease, keys.fence, keys.checkpoint)}) == 1
    first = [make_event(aggregate_id=str(i % 3)) for i in range(12)]
    second = [make_event(aggregate_id=str(i % 3)) for i in range(12)]
    async with Collector(stack.kafka_bootstrap) as col:
        await col.watch([topic_prefix + "order"])
        async with running_relay(settings):
            write_in_txns(conn, first)
            end = _binlog.position(stack)
            await wait_for_ids(col, first)
            await wait_until(
                lambda: (checkpoint_of(cluster.url, keys.checkpoint) or ("", 0)) >= end,
                what="the checkpoint in the cluster past the first events",
            )
        async with running_relay(settings):
            write_in_txns(conn, second)
            await wait_for_ids(col, second)
        counts = Counter(col.ids())
    # Resumed from the cluster's checkpoint: nothing lost, nothing of `first` sent again.
    assert {str(e.id) for e in first + second} == set(counts)
    assert all(counts[str(e.id)] == 1 for e in first)


async def test_relay_over_tls_with_a_client_certificate(
    tls: ScratchTlsRedis, stack: Stack, conn: Any, settings_kw: dict[str, Any], topic_prefix: str
) -> None:
    settings = relay_settings(**{**settings_kw, "redis_url": tls.url})
    events = [make_event(aggregate_id=str(i % 3)) for i in range(6)]
    async with Collector(stack.kafka_bootstrap) as col:
        await col.watch([topic_prefix + "order"])
        async with running_relay(settings):
            write_in_txns(conn, events)
            end = _binlog.position(stack)
            await wait_for_ids(col, events)
            await wait_until(
                lambda: (checkpoint_of(tls.url, settings.checkpoint_key) or ("", 0)) >= end,
                what="the checkpoint saved over TLS",
            )
    assert sorted(col.ids()) == sorted(str(e.id) for e in events)


async def test_relay_through_a_sentinel_failover_loses_nothing(
    sentinel: ScratchSentinel,
    stack: Stack,
    conn: Any,
    settings_kw: dict[str, Any],
    topic_prefix: str,
) -> None:
    await with_a_replica(sentinel)
    settings = relay_settings(**{**settings_kw, "redis_url": sentinel.url})
    key = settings.checkpoint_key
    before, after, last = (
        [make_event(aggregate_id=str(i % 3)) for i in range(n)] for n in (12, 12, 6)
    )
    during: list[Any] = []
    async with Collector(stack.kafka_bootstrap) as col:
        await col.watch([topic_prefix + "order"])
        async with running_relay(settings) as relay:
            write_in_txns(conn, before)
            end = _binlog.position(stack)
            await wait_for_ids(col, before)
            await checkpoint_past(
                sentinel.url, key, end, what="the checkpoint past the first events"
            )
            # Replicated before the crash (asynchronous replication could lose it otherwise;
            # this test is about the failover, not about a lost write).
            primary = client_for(f"redis://127.0.0.1:{sentinel.master_port()}/0")
            assert primary.wait(1, 5000) == 1
            failover = asyncio.ensure_future(asyncio.to_thread(sentinel.kill_primary_and_promote))
            await write_while(
                conn, failover, during
            )  # writes spread over the failover: the relay goes on
            await failover
            write_in_txns(conn, after)
            end = _binlog.position(stack)
            await wait_for_ids(col, during + after, within=60)
            # The relay saves to the promoted replica: its term survived or was retaken.
            await checkpoint_past(
                sentinel.url,
                key,
                end,
                within=60,
                what="the checkpoint on the promoted replica past every event",
            )
            assert relay.stats.redis == "ok"
            assert relay.stats.redis_errors > 0  # it did see the primary gone
        saved = checkpoint_of(sentinel.url, key)
        assert saved is not None and saved <= _binlog.position(stack)
        async with running_relay(settings):  # a restart reads the promoted replica's copy
            write_in_txns(conn, last)
            await wait_for_ids(col, last, within=60)
        counts = Counter(col.ids())
    assert len(during) >= 3  # events were written while Redis failed over
    # Nothing lost (a checkpoint past what was published would skip events here) ...
    assert {str(e.id) for e in before + during + after + last} == set(counts)
    # ... and the checkpoint survived the failover: the events saved before it and the
    # ones after the restart came once (duplicates, if any, only around the failover).
    assert all(counts[str(e.id)] == 1 for e in before + last)


async def test_relay_through_a_cluster_primary_failover_loses_nothing(
    cluster: ScratchCluster, stack: Stack, conn: Any, settings_kw: dict[str, Any], topic_prefix: str
) -> None:
    settings = relay_settings(**{**settings_kw, "redis_url": cluster.url, "relay_name": "fo"})
    key = settings.checkpoint_key
    before, after = ([make_event(aggregate_id=str(i % 3)) for i in range(n)] for n in (9, 9))
    during: list[Any] = []
    async with Collector(stack.kafka_bootstrap) as col:
        await col.watch([topic_prefix + "order"])
        async with running_relay(settings) as relay:
            write_in_txns(conn, before)
            end = _binlog.position(stack)
            await wait_for_ids(col, before)
            await checkpoint_past(
                cluster.url, key, end, what="the checkpoint past the first events"
            )
            primary = client_for(f"redis://127.0.0.1:{cluster.primary_of(key).port}/0")
            assert primary.wait(1, 5000) == 1  # on its replica before the crash
            failover = asyncio.ensure_future(asyncio.to_thread(cluster.kill_primary_of, key))
            await write_while(conn, failover, during)  # writes spread over the failover
            await failover
            write_in_txns(conn, after)
            end = _binlog.position(stack)
            await wait_for_ids(col, during + after, within=60)
            await checkpoint_past(
                cluster.url,
                key,
                end,
                within=60,
                what="the checkpoint on the promoted replica past every event",
            )
            assert relay.stats.redis_errors > 0  # it did see the primary gone
        counts = Counter(col.ids())
    assert len(during) >= 3
    assert {str(e.id) for e in before + during + after} == set(counts)
    assert all(counts[str(e.id)] == 1 for e in before)  # the checkpoint never went back


async def test_relay_through_a_cluster_slot_migration_loses_nothing(
    cluster: ScratchCluster, stack: Stack, conn: Any, settings_kw: dict[str, Any], topic_prefix: str
) -> None:
    settings = relay_settings(**{**settings_kw, "redis_url": cluster.url, "relay_name": "mig"})
    key = settings.checkpoint_key
    before, after = ([make_event(aggregate_id=str(i % 3)) for i in range(n)] for n in (9, 9))
    during: list[Any] = []
    async with Collector(stack.kafka_bootstrap) as col:
        await col.watch([topic_prefix + "order"])
        async with running_relay(settings):
            write_in_txns(conn, before)
            end = _binlog.position(stack)
            await wait_for_ids(col, before)
            await checkpoint_past(
                cluster.url, key, end, what="the checkpoint past the first events"
            )
            old = cluster.primary_of(key)
            moving = asyncio.ensure_future(asyncio.to_thread(cluster.move_slot_of, key))
            await write_while(conn, moving, during)  # writes spread over the migration
            new = await moving
            write_in_txns(conn, after)
            end = _binlog.position(stack)
            await wait_for_ids(col, during + after, within=60)
            await checkpoint_past(
                cluster.url,
                key,
                end,
                within=60,
                what="the checkpoint on the slot's new node past every event",
            )
        counts = Counter(col.ids())
    assert new is not old and len(during) >= 3
    assert {str(e.id) for e in before + during + after} == set(counts)
    assert all(counts[str(e.id)] == 1 for e in before)


# -- the dedup stores ------------------------------------------------------------------


def storm_sync(store: RedisStore, ids: list[uuid.UUID], workers: int = 4) -> Counter[uuid.UUID]:
    """Workers race over the same ids with claim_many (and one with single claims); the
    first attempt at every fifth id fails and releases its claim. Effects per id."""
    effects: Counter[uuid.UUID] = Counter()
    attempts: Counter[uuid.UUID] = Counter()
    fail_once = set(ids[::5])
    lock = threading.Lock()
    errors: list[BaseException] = []
    # The batch workers all claim before any of them completes: they really race. The
    # single worker starts after that, or on a slow connection it could finish every id
    # before the first claim_many and no worker would meet another's claim.
    raced = threading.Barrier(workers - 1, timeout=30, action=lambda: go.set())
    go = threading.Event()
    busy = 0

    def handle(event_id: uuid.UUID) -> bool:
        with lock:
            attempts[event_id] += 1
            if event_id in fail_once and attempts[event_id] == 1:
                return False
            effects[event_id] += 1
            return True

    def batch_worker() -> None:
        nonlocal busy
        pending = random.sample(ids, len(ids))
        first = True
        while pending:
            results = store.claim_many(pending, "billing")
            if first:
                raced.wait()
                first = False
            done: list[Claim] = []
            failed: list[Claim] = []
            again = []
            for event_id, result in zip(pending, results, strict=True):
                if result.status is ClaimStatus.BUSY:
                    again.append(event_id)
                    with lock:
                        busy += 1
                elif result.claim is not None:
                    (done if handle(event_id) else failed).append(result.claim)
                    if failed and failed[-1] is result.claim:
                        again.append(event_id)
            store.complete_many(done)
            store.release_many(failed)
            pending = again

    def single_worker() -> None:
        go.wait(30)
        for event_id in random.sample(ids, len(ids)):
            while (claim := store.claim(event_id, "billing")) is not None:
                if handle(event_id):
                    store.complete(claim)
                    break
                store.release(claim)

    def guarded(target: Any) -> None:
        try:
            target()
        except BaseException as exc:  # reported below: a thread's error must fail the test
            errors.append(exc)

    threads = [
        threading.Thread(target=guarded, args=(batch_worker if n else single_worker,))
        for n in range(workers)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert not any(t.is_alive() for t in threads)
    assert busy > 0, "no worker met another's claim"
    return effects


@pytest.mark.parametrize("where", ["cluster", "sentinel", "tls"])
def test_sync_store_duplicate_storm_handles_each_event_once(
    where: str, request: pytest.FixtureRequest, redis_prefix: str
) -> None:
    setup = request.getfixturevalue(where)
    store = RedisStore.from_url(setup.url, prefix=redis_prefix, poll_interval_ms=5)
    ids = [uuid.uuid4() for _ in range(200)]
    effects = storm_sync(store, ids)
    assert effects == Counter(dict.fromkeys(ids, 1))
    # Every id is marked done in the store.
    assert [r.status for r in store.claim_many(ids, "billing")] == [ClaimStatus.DONE] * len(ids)
    if where == "cluster":
        assert store.key(ids[0], "billing") == f"{redis_prefix}{{billing}}:{ids[0]}"


@pytest.mark.parametrize("where", ["cluster", "sentinel"])
async def test_runner_duplicate_storm_with_failing_handlers(
    where: str, request: pytest.FixtureRequest, redis_prefix: str, topic: Topic
) -> None:
    setup = request.getfixturevalue(where)
    events, published = storm_events()
    seen = Effects(events)
    store = CountingRedisStore.from_url(setup.url, prefix=redis_prefix, poll_interval_ms=5)

    @idempotent_consumer(store=store, consumer_name="billing")
    async def on_order(event: ReceivedEvent) -> None:
        await seen.run(event)
        seen.effects[event.id] += 1

    topic.start(on_order, "a")
    topic.start(on_order, "b", max_concurrency=3)
    await publish_by_key(topic.bootstrap, topic.name, published)
    await open_gate_when_both_joined(topic, seen)
    await settle(topic, len(published))
    await topic.stop()
    seen.check(events)
    assert store.busy > 0  # the runners raced on the same ids
    assert isinstance(store, AsyncRedisStore)


async def test_runner_through_a_sentinel_failover_handles_every_event(
    sentinel: ScratchSentinel, redis_prefix: str, topic: Topic
) -> None:
    await with_a_replica(sentinel)
    events, published = storm_events()
    store = AsyncRedisStore.from_url(sentinel.url, prefix=redis_prefix, poll_interval_ms=5)
    effects: Counter[uuid.UUID] = Counter()
    gate = asyncio.Event()

    @idempotent_consumer(store=store, consumer_name="billing")
    async def on_order(event: ReceivedEvent) -> None:
        if len(effects) >= 30:
            await gate.wait()  # the rest run once the primary is gone
        effects[event.id] += 1

    # Retries outlast the failover (~2 s here): marking done is retried max_attempts times
    # with backoff, then the runner stops (a Redis outage longer than that stops it).
    topic.start(on_order, "a", max_attempts=8, backoff_initial_ms=500, backoff_max_ms=2000)
    await publish_by_key(topic.bootstrap, topic.name, published)
    await wait_until(lambda: len(effects) >= 30, what="30 events handled")
    failover = asyncio.ensure_future(asyncio.to_thread(sentinel.kill_primary_and_promote))
    await asyncio.sleep(0.3)  # handlers resume while no primary answers
    gate.set()
    await failover
    await settle_group(topic, "a", len(published))
    await topic.stop()  # raises if the runner failed
    assert set(effects) == {e.id for e in events}  # nothing lost; duplicates allowed
