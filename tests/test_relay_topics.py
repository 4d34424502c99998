"""Missing topics: created by the relay with its own settings, or waited for quietly."""

from __future__ import annotations

import logging

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from .conftest import Stack
from .relay_harness import (
    Collector,
    make_event,
    relay_settings,
    running_relay,
    wait_until,
    write_events,
)


async def partitions_of(bootstrap: str, topic: str) -> int | None:
    """The topic's partition count, or None if it does not exist (never auto-creates)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return len((await admin.describe_topics([topic]))[0]["partitions"]) or None
    finally:
        await admin.close()


def problems(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_new_topic_is_created_with_the_settings_and_no_error_is_logged(
    stack: Stack, conn, settings_kw, topic_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    topic = topic_prefix + "order"
    events = [make_event(aggregate_id=str(i)) for i in range(6)]
    write_events(conn, events)
    settings = relay_settings(**settings_kw, topic_partitions=3, topic_replication_factor=1)
    async with running_relay(settings) as relay:
        await wait_until(lambda: relay.stats.published == 6, what="6 events published")
    assert f"created topic '{topic}': 3 partition(s), replication factor 1" in caplog.text
    assert problems(caplog) == []
    # Admin metadata requests of this client version may auto-create: read it only now.
    assert await partitions_of(stack.kafka_bootstrap, topic) == 3
    async with Collector(stack.kafka_bootstrap) as col:
        await col.watch([topic])
        await col.wait_for(6)
    assert sorted(col.ids()) == sorted(str(e.id) for e in events)


async def test_the_broker_default_partitions_when_none_are_set(
    stack: Stack, conn, settings_kw, topic_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    write_events(conn, [make_event()])
    async with running_relay(relay_settings(**settings_kw)) as relay:  # -1, -1: the broker's
        await wait_until(lambda: relay.stats.published == 1, what="1 event published")
    assert f"created topic '{topic_prefix}order'" in caplog.text
    assert problems(caplog) == []


async def test_without_creation_the_relay_waits_and_says_so_once(
    stack: Stack, conn, settings_kw, topic_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    topic = topic_prefix + "order"
    events = [make_event(aggregate_id=str(i)) for i in range(3)]
    write_events(conn, events)
    async with running_relay(relay_settings(**settings_kw, create_topics=False)) as relay:
        waiting = f"topic '{topic}' does not exist (create_topics is off); waiting"
        await wait_until(lambda: waiting in caplog.text, what="the INFO line")
        assert relay.stats.published == 0
        admin = AIOKafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(topic, 2, 1)])
        finally:
            await admin.close()
        await wait_until(lambda: relay.stats.published == 3, what="3 events after creation")
    said = [r for r in caplog.records if waiting in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.INFO
    assert problems(caplog) == []
    assert await partitions_of(stack.kafka_bootstrap, topic) == 2


async def test_stopping_while_waiting_for_a_topic_is_clean(
    stack: Stack, conn, settings_kw, topic_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    write_events(conn, [make_event()])
    async with running_relay(relay_settings(**settings_kw, create_topics=False)):
        await wait_until(lambda: "waiting for it to be created" in caplog.text, what="waiting")
    assert problems(caplog) == []
    assert "Kafka error" not in caplog.text
    # The checkpoint topic is missing too (creation off): the stop gives up the Kafka copy
    # with one WARNING rather than wait for the write's whole timeout, and the Redis copy
    # is saved.
    at_stop = [r.getMessage() for r in caplog.records if "at shutdown" in r.getMessage()]
    assert len(at_stop) == 1 and "the Redis copy is saved" in at_stop[0], caplog.text
    assert "checkpoint saved at" in caplog.text
