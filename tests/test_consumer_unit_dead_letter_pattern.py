"""A ``topic_pattern`` never reads the runner's own dead letters (issue 24, row 6).

The README's ``topic_pattern=r"outbox\\.event\\..*"`` with
``dead_letter_topic="{topic}.dlq"`` used to consume ``outbox.event.order.dlq``
and dead-letter it again to ``outbox.event.order.dlq.dlq``. The runner
subscribes with :meth:`RunnerSettings.subscription_pattern`, matched as aiokafka
matches a subscription pattern (``re.compile(p).match(topic)``).
"""

from __future__ import annotations

import re

import pytest

from transactional_outbox import ConfigurationError
from transactional_outbox.consumer import KafkaConnection, RunnerSettings

KAFKA = KafkaConnection(bootstrap_servers="127.0.0.1:9092")


def subscribed(pattern: str, dead_letter_topic: str | None, topics: list[str]) -> list[str]:
    s = RunnerSettings(
        kafka=KAFKA, group_id="g", topic_pattern=pattern, dead_letter_topic=dead_letter_topic
    )
    regex = s.subscription_pattern()
    assert regex is not None
    compiled = re.compile(regex)  # as aiokafka's subscribe(pattern=...) does
    return [t for t in topics if compiled.match(t)]


TOPICS = [
    "outbox.event.order",
    "outbox.event.invoice",
    "outbox.event.order.dlq",
    "outbox.event.order.dlq.dlq",
    "dlq.outbox.event.order",
    "outbox.eventual",
    "other",
]


def test_the_readme_pattern_leaves_out_its_dead_letter_topics() -> None:
    got = subscribed(r"outbox\.event\..*", "{topic}.dlq", TOPICS)
    assert got == ["outbox.event.order", "outbox.event.invoice"]


def test_a_prefix_template_is_left_out_too() -> None:
    got = subscribed(r"outbox\.event\..*", "dlq.{topic}", TOPICS)
    assert got == [
        "outbox.event.order",
        "outbox.event.invoice",
        "outbox.event.order.dlq",
        "outbox.event.order.dlq.dlq",
    ]


def test_a_topic_that_only_looks_like_a_dead_letter_topic_is_kept() -> None:
    # "outbox.event.dlq" would be the dead-letter topic of "outbox.event", which the
    # pattern does not read: it is an ordinary topic here.
    assert subscribed(r"outbox\.event\..*", "{topic}.dlq", ["outbox.event.dlq"]) == [
        "outbox.event.dlq"
    ]


def test_without_a_template_the_pattern_is_unchanged() -> None:
    s = RunnerSettings(kafka=KAFKA, group_id="g", topic_pattern=r"a\..*", dead_letter_topic=None)
    assert s.subscription_pattern() == r"a\..*"
    s = RunnerSettings(kafka=KAFKA, group_id="g", topic_pattern=r"a\..*", dead_letter_topic="dlq")
    assert s.subscription_pattern() == r"a\..*"


def test_a_plain_dead_letter_topic_the_pattern_matches_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="dead_letter_topic"):
        RunnerSettings(kafka=KAFKA, group_id="g", topic_pattern=r"a\..*", dead_letter_topic="a.dlq")
