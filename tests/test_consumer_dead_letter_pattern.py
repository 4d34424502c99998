"""The runner with the README's ``topic_pattern`` and ``"{topic}.dlq"``, on the real
broker: a poison record is dead-lettered once, and the dead-letter topic is not read
back (issue 24, row 6: it used to end in ``... .dlq.dlq``)."""

from __future__ import annotations

import asyncio
import re
from collections import Counter

from aiokafka.admin import AIOKafkaAdminClient

from transactional_outbox.consumer import (
    ConsumerRunner,
    KafkaConnection,
    ReceivedEvent,
    RunnerSettings,
)

from ._consumer_helpers import order_event, publish
from .polling import wait_until


async def topics(bootstrap: str) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


async def test_a_pattern_runner_does_not_consume_its_dead_letters(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    order_topic = topic_prefix + "outbox.event.order"
    late_topic = topic_prefix + "outbox.event.late"
    poison, good, late = order_event(1), order_event(2), order_event(3)
    calls: Counter[str] = Counter()
    handled: set[str] = set()

    async def handler(event: ReceivedEvent) -> None:
        calls[str(event.id)] += 1
        if event.id == poison.id:
            raise ValueError("poison")
        handled.add(str(event.id))

    await publish(kafka_bootstrap, order_topic, [poison, good])
    settings = RunnerSettings(
        kafka=KafkaConnection(bootstrap_servers=kafka_bootstrap),
        group_id=topic_prefix + "group",
        topic_pattern=re.escape(topic_prefix) + r"outbox\.event\..*",
        dead_letter_topic="{topic}.dlq",
        max_attempts=2,
        backoff_initial_ms=10,
        backoff_max_ms=20,
        session_timeout_ms=1000,
        heartbeat_interval_ms=300,
        # Find new topics (the dead-letter one) within half a second.
        consumer_options={"metadata_max_age_ms": 500},
    )
    runner = ConsumerRunner(handler, settings)
    task = asyncio.ensure_future(runner.run(install_signal_handlers=False))
    try:
        await wait_until(lambda: str(good.id) in handled, within=30, what="the good record")
        await wait_until(
            lambda: calls[str(poison.id)] == 2, within=30, what="the poison record's attempts"
        )
        assert order_topic + ".dlq" in await topics(kafka_bootstrap)
        # A topic created after the dead-letter topic: once it is handled, the
        # subscription has been matched against metadata that lists both.
        await publish(kafka_bootstrap, late_topic, [late])
        await wait_until(lambda: str(late.id) in handled, within=30, what="the late topic")
        await asyncio.sleep(0)
    finally:
        runner.stop()
        await asyncio.wait_for(task, 30)
    assert calls[str(poison.id)] == 2, calls  # not read back from the dead-letter topic
    assert order_topic + ".dlq.dlq" not in await topics(kafka_bootstrap)
