"""Several relays of one name: one leads, a standby takes over, a stale leader is fenced."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from transactional_outbox.relay.leadership import Lease, LeaseKeys
from transactional_outbox.relay.position import decode_checkpoint

from . import _binlog
from .conftest import Stack
from .relay_harness import (
    Collector,
    RelayProcess,
    free_port,
    make_event,
    relay_settings,
    running_relay,
    wait_until,
    write_events,
)


def get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def role(port: int) -> str | None:
    code, body = get(port, "/readyz")
    return json.loads(body)["role"] if code in (200, 503) and body else None


@pytest.fixture
def settings_kw(settings_kw: dict) -> dict:
    return {
        **settings_kw,
        "lease_ttl_ms": 1500,
        "lease_renew_ms": 300,
        "reconnect_max_ms": 500,
    }


def two_relays(settings_kw: dict, tmp_path: Path) -> list[tuple[RelayProcess, int]]:
    out = []
    for n in range(2):
        port = free_port()
        proc = RelayProcess(
            relay_settings(**settings_kw, metrics_port=port), tmp_path / f"relay{n}.log"
        )
        proc.start()
        out.append((proc, port))
    return out


async def leader_and_standby(
    relays: list[tuple[RelayProcess, int]],
) -> tuple[tuple[RelayProcess, int], tuple[RelayProcess, int]]:
    await wait_until(
        lambda: sorted(str(role(p)) for _, p in relays) == ["leader", "standby"],
        within=30,
        what="one leader and one standby",
    )
    a, b = relays
    return (a, b) if role(a[1]) == "leader" else (b, a)


def published(port: int) -> float | None:
    """The relay's ``outbox_relay_events_published_total`` (None until it answers)."""
    for line in get(port, "/metrics")[1].decode().splitlines():
        if line.startswith("outbox_relay_events_published_total "):
            return float(line.split()[1])
    return None


async def test_one_publishes_and_a_standby_takes_over_after_kill_9(
    stack: Stack, conn, settings_kw, topic_prefix, tmp_path: Path
) -> None:
    settings = relay_settings(**settings_kw)
    client = aioredis.from_url(stack.redis_url)
    (leader, lport), (standby, sport) = relays = [
        (RelayProcess(relay_settings(**settings_kw, metrics_port=p), tmp_path / f"{n}.log"), p)
        for n, p in (("leader", free_port()), ("standby", free_port()))
    ]
    try:
        async with Collector(stack.kafka_bootstrap) as col:
            await col.watch([topic_prefix + "order"])
            # Started one after the other: the first leads, the second is the standby.
            leader.start()
            await wait_until(lambda: role(lport) == "leader", within=30, what="a leader")
            standby.start()
            await wait_until(lambda: published(sport) is not None, within=30, what="standby up")
            first = [make_event(aggregate_id=str(i % 3)) for i in range(30)]
            for k in range(0, 30, 3):
                write_events(conn, first[k : k + 3])
            end = _binlog.position(stack)
            await col.wait_for(30)
            # Metrics are refreshed every half second: wait for them, don't race.
            await wait_until(lambda: published(lport) == 30, what="leader's published counter")
            assert published(sport) == 0, "the standby published"
            assert role(sport) == "standby"
            assert b"outbox_relay_leader 1.0" in get(lport, "/metrics")[1]
            assert b"outbox_relay_leader 0.0" in get(sport, "/metrics")[1]
            assert get(lport, "/healthz")[0] == 200
            # The leader's checkpoint covers every event of `first`: a takeover resumes
            # after them, so none of them may come twice.
            await wait_until(
                lambda: checkpoint_at_least(client, settings.checkpoint_key, end),
                what="the leader's checkpoint past the first events",
            )
            assert published(sport) == 0, "the standby published"

            leader.kill(signal.SIGKILL)
            second = [make_event(aggregate_id=str(i % 3)) for i in range(30)]
            for k in range(0, 30, 3):
                write_events(conn, second[k : k + 3])
            await wait_until(lambda: role(sport) == "leader", within=30, what="takeover")
            await wait_until(
                lambda: {str(e.id) for e in first + second} <= set(col.ids()),
                within=30,
                what="every event after the takeover",
            )
            await wait_until(lambda: (published(sport) or 0) >= 30, what="new leader's counter")
            taken_over = published(sport)
    finally:
        for proc, _ in relays:
            if proc.proc and proc.proc.poll() is None:
                proc.kill(signal.SIGTERM)
        await client.aclose()
    counts = Counter(col.ids())
    assert set(counts) == {str(e.id) for e in first + second}
    # Duplicates are allowed only for events after the last saved checkpoint: none here.
    assert {i: n for i, n in counts.items() if n > 1} == {}
    assert taken_over == 30  # the new leader sent the second events only


async def checkpoint_at_least(client: aioredis.Redis, key: str, end: tuple[str, int]) -> bool:
    raw = await client.get(key)
    cp = None if raw is None else decode_checkpoint(raw)
    return cp is not None and (cp.file, cp.pos) >= end


async def test_paused_leader_is_fenced_after_resuming(
    stack: Stack, conn, settings_kw, topic_prefix, tmp_path: Path
) -> None:
    relays = two_relays(settings_kw, tmp_path)
    client = aioredis.from_url(stack.redis_url)
    try:
        async with Collector(stack.kafka_bootstrap) as col:
            await col.watch([topic_prefix + "order"])
            (old, oport), (_new, nport) = await leader_and_standby(relays)
            write_events(conn, [make_event(aggregate_id="before")])
            await col.wait_for(1)
            assert old.proc is not None
            old.proc.send_signal(signal.SIGSTOP)
            try:
                await wait_until(lambda: role(nport) == "leader", within=10, what="takeover")
                after = [make_event(aggregate_id=str(i % 4)) for i in range(20)]
                write_events(conn, after)
                await wait_until(
                    lambda: {str(e.id) for e in after} <= set(col.ids()),
                    what="new leader publishes",
                )
            finally:
                old.proc.send_signal(signal.SIGCONT)
            await wait_until(
                lambda: role(oport) == "standby", within=10, what="old leader steps down"
            )
            later = [make_event(aggregate_id=str(i % 4)) for i in range(20)]
            write_events(conn, later)
            end = _binlog.position(stack)
            await wait_until(
                lambda: {str(e.id) for e in later} <= set(col.ids()), what="later events"
            )
            settings = relay_settings(**settings_kw)
            # The new leader's checkpoint moves past everything; the resumed old leader,
            # whose position is from before the pause, cannot pull it back.
            await wait_until(
                lambda: checkpoint_at_least(client, settings.checkpoint_key, end),
                what="the new leader's checkpoint past the later events",
            )
            assert role(oport) == "standby"
            assert await checkpoint_at_least(client, settings.checkpoint_key, end)
    finally:
        for proc, _ in relays:
            if proc.proc and proc.proc.poll() is None:
                proc.kill(signal.SIGTERM)
        await client.aclose()
    assert "lost leadership" in old.log()
    counts = Counter(col.ids())
    # Nothing of what came after the takeover was sent twice: the old leader sent none.
    assert all(counts[str(e.id)] == 1 for e in after + later)


async def test_stale_token_cannot_move_the_checkpoint(stack: Stack, redis_prefix: str) -> None:
    client = aioredis.from_url(stack.redis_url)
    keys = LeaseKeys.for_relay(redis_prefix, "fence")
    old = Lease(client, keys, ttl_ms=200)
    new = Lease(client, keys, ttl_ms=5000)
    try:
        assert await old.try_acquire()
        assert await old.fenced_set(keys.checkpoint, "old-1")
        assert not await new.try_acquire()  # held
        await wait_until(lambda: not old.held(), what="old lease expiry")
        await client.delete(keys.lease)  # as Redis expires it
        assert await new.try_acquire()
        assert new.token == (old.token or 0) + 1
        assert await new.fenced_set(keys.checkpoint, "new-1")
        # The old leader still believes it has token 1: refused, value unchanged.
        assert not await old.fenced_set(keys.checkpoint, "old-2")
        assert await client.get(keys.checkpoint) == b"new-1"
        assert not await old.renew()
    finally:
        await client.aclose()


@pytest.mark.parametrize("policy", ["stop", "dead-letter"])
async def test_oversized_event_follows_the_policy(
    stack: Stack, conn, settings_kw, topic_prefix, policy: str
) -> None:
    from transactional_outbox import PublishError

    dlq = topic_prefix + "dlq"
    settings = relay_settings(
        **settings_kw, max_request_size=4000, on_rejected=policy, dead_letter_topic=dlq
    )
    before = make_event(aggregate_id="1")
    big = make_event(aggregate_id="2", payload=b"x" * 10_000)
    bad_topic = make_event("bad/type", aggregate_id="3")
    after = make_event(aggregate_id="4")
    write_events(conn, [before])
    mid = _binlog.position(stack)
    write_events(conn, [big])
    write_events(conn, [bad_topic])
    write_events(conn, [after])
    async with Collector(stack.kafka_bootstrap) as col:
        await col.watch([topic_prefix + "order", dlq])
        if policy == "stop":
            from transactional_outbox.relay import Relay

            relay = Relay(settings)
            with pytest.raises(PublishError) as info:
                await relay.run()
            assert str(big.id) in str(info.value) and "MessageSizeTooLarge" in str(info.value)
            await col.wait_for(1)
            assert col.ids() == [str(before.id)]
            assert relay.stats.checkpoint is not None
            assert (relay.stats.checkpoint.file, relay.stats.checkpoint.pos) <= mid
        else:
            async with running_relay(settings) as relay:
                await col.wait_for(4)
                await wait_until(lambda: relay.stats.dead_lettered == 2, what="2 dead letters")
            main = [r for r in col.records if r.topic == topic_prefix + "order"]
            dead = [r for r in col.records if r.topic == dlq]
            assert sorted(dict(r.headers)["id"].decode() for r in main) == sorted(
                [str(before.id), str(after.id)]
            )
            bodies = {json.loads(r.value)["id"]: json.loads(r.value) for r in dead}
            assert set(bodies) == {str(big.id), str(bad_topic.id)}
            assert "MessageSizeTooLarge" in bodies[str(big.id)]["reason"]
            assert "not legal" in bodies[str(bad_topic.id)]["reason"]
            assert bodies[str(big.id)]["payload_bytes"] == 10_000
            assert all(dict(r.headers)["dlq.reason"] for r in dead)


async def test_pausing_the_leader_again_and_again_under_writes_kills_no_relay(
    stack: Stack, conn, settings_kw, topic_prefix, tmp_path: Path
) -> None:
    """Two relays of one name with the default server_id (0): each start picks its own
    replica id, so a standby taking over from a paused leader (its binlog connection
    still open on the server) is not refused by MariaDB (error 4052)."""
    kw = {**settings_kw, "lease_ttl_ms": 1000, "lease_renew_ms": 250}
    relays: list[tuple[RelayProcess, int]] = []
    for n in range(2):
        port = free_port()
        proc = RelayProcess(
            relay_settings(**kw, metrics_port=port, server_id=0), tmp_path / f"relay{n}.log"
        )
        proc.start(own_group=True)
        relays.append((proc, port))
    written: list[tuple[str, int, str]] = []  # (key, sequence, id) in commit order
    stop_writing = threading.Event()

    filler = b"x" * 8000

    def writer() -> None:
        seq = 0
        while not stop_writing.is_set():
            batch = [
                # Large rows fill the paused leader's socket buffers, so its dump
                # thread on the server is stuck and cannot be replaced at once.
                make_event(aggregate_id=str(k), payload=b"%d " % (seq + k) + filler)
                for k in range(4)
            ]
            write_events(conn, batch)
            written.extend((e.aggregate_id, seq + k, str(e.id)) for k, e in enumerate(batch))
            seq += 4
            time.sleep(0.02)

    thread = threading.Thread(target=writer, daemon=True)
    try:
        async with Collector(stack.kafka_bootstrap) as col:
            await col.watch([topic_prefix + "order"])
            thread.start()
            for _ in range(5):  # each relay paused twice at least (7 cost 6 s more)
                (leader, _lport), (_standby, sport) = await leader_and_standby(relays)
                assert leader.proc is not None
                os.killpg(leader.proc.pid, signal.SIGSTOP)
                paused_at = time.monotonic()
                try:
                    await wait_until(
                        lambda port=sport: role(port) == "leader", within=15, what="takeover"
                    )
                    # The new leader publishes what is written while the old one is paused.
                    target = len(written)
                    await wait_until(
                        lambda n=target: {i for _, _, i in written[:n]} <= set(col.ids()),
                        within=20,
                        what="the new leader catches up",
                    )
                    # Paused well past the TTL, as a long GC or a VM freeze would.
                    await asyncio.sleep(max(0.0, paused_at + 3.0 - time.monotonic()))
                finally:
                    os.killpg(leader.proc.pid, signal.SIGCONT)
                for proc, _ in relays:
                    assert proc.proc is not None and proc.proc.poll() is None, proc.log()[-3000:]
            stop_writing.set()
            thread.join(10)
            await wait_until(
                lambda: {i for _, _, i in written} <= set(col.ids()),
                within=30,
                what="every event",
            )
            exited = [proc.proc.poll() for proc, _ in relays if proc.proc is not None]
            records = list(col.records)
    finally:
        stop_writing.set()
        for proc, _ in relays:
            if proc.proc and proc.proc.poll() is None:
                os.killpg(proc.proc.pid, signal.SIGCONT)
                proc.kill(signal.SIGTERM)
    assert exited == [None, None], [proc.log()[-3000:] for proc, _ in relays]
    assert len(written) > 100
    # Per key, the first delivery of each event comes in commit order (resends after a
    # takeover may repeat events, never reorder them).
    seen: set[str] = set()
    firsts: dict[str, list[int]] = {}
    for r in records:
        rid = dict(r.headers)["id"].decode()
        if rid not in seen:
            seen.add(rid)
            firsts.setdefault(r.key.decode(), []).append(int(r.value.split()[0]))
    for key, seqs in firsts.items():
        assert seqs == sorted(seqs), key
    for relay, _ in relays:
        assert "(4052," not in relay.log() and "same server_uuid" not in relay.log()
        assert "Traceback" not in relay.log()
        assert "binlog replica server_id" in relay.log()
