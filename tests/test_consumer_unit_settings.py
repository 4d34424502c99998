"""RunnerSettings: validation, the shared KafkaConnection, aiokafka arguments (no servers)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from transactional_outbox import ConfigurationError
from transactional_outbox.consumer import KafkaConnection, RunnerSettings

KAFKA = KafkaConnection(bootstrap_servers="k:9092")


def settings(**kw: Any) -> RunnerSettings:
    values: dict[str, Any] = {"kafka": KAFKA, "group_id": "g", "topics": ["a"]}
    return RunnerSettings(**{**values, **kw})


def test_defaults_are_milliseconds() -> None:
    s = settings()
    assert (s.backoff_initial_ms, s.backoff_max_ms) == (500, 30_000)
    assert (s.session_timeout_ms, s.heartbeat_interval_ms) == (10_000, 3_000)
    durations = [f.name for f in dataclasses.fields(RunnerSettings) if "backoff" in f.name]
    assert durations == ["backoff_initial_ms", "backoff_max_ms"]


def test_the_connection_from_the_relays_variables() -> None:
    kafka = KafkaConnection.from_env(
        {
            "OUTBOX_KAFKA_BOOTSTRAP_SERVERS": "k1:9093,k2:9093",
            "OUTBOX_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "OUTBOX_KAFKA_SASL_MECHANISM": "SCRAM-SHA-256",
            "OUTBOX_KAFKA_SASL_USERNAME": "svc",
            "OUTBOX_KAFKA_SASL_PASSWORD": "hunter2",
        }
    )
    s = settings(kafka=kafka, client_id="billing-1")
    assert "hunter2" not in repr(s)
    for kwargs in (s.consumer_kwargs(), s.producer_kwargs()):
        assert kwargs["bootstrap_servers"] == ["k1:9093", "k2:9093"]
        assert kwargs["security_protocol"] == "SASL_SSL"
        assert kwargs["sasl_mechanism"] == "SCRAM-SHA-256"
        assert (kwargs["sasl_plain_username"], kwargs["sasl_plain_password"]) == ("svc", "hunter2")
        assert kwargs["ssl_context"] is not None
        assert kwargs["client_id"] == "billing-1"


def test_consumer_and_producer_arguments() -> None:
    s = settings(
        consumer_options={"enable_auto_commit": True, "fetch_max_wait_ms": 5},
        producer_options={"linger_ms": 2},
    )
    consumer = s.consumer_kwargs()
    assert consumer["enable_auto_commit"] is False  # committing before handling loses events
    assert consumer["fetch_max_wait_ms"] == 5
    assert consumer["group_id"] == "g"
    assert consumer["bootstrap_servers"] == ["k:9092"]
    assert consumer["security_protocol"] == "PLAINTEXT"
    assert not any(k.startswith("sasl") for k in consumer)
    producer = s.producer_kwargs()
    assert (producer["acks"], producer["linger_ms"]) == ("all", 2)
    assert "group_id" not in producer


def test_topics_and_dead_letters() -> None:
    s = settings(topics="outbox.event.order", dead_letter_topic="{topic}.dlq")
    assert s.topics == ("outbox.event.order",)
    assert s.dead_letter_topic_for("outbox.event.order") == "outbox.event.order.dlq"


@pytest.mark.parametrize(
    ("kw", "setting"),
    [
        ({"kafka": "k:9092"}, "kafka"),
        ({"topics": ()}, "topics"),
        ({"topic_pattern": "a.*"}, "topics"),
        ({"group_id": ""}, "group_id"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_concurrency": 0}, "max_concurrency"),
        ({"backoff_initial_ms": -1}, "backoff_initial_ms"),
        ({"backoff_initial_ms": 2000, "backoff_max_ms": 1000}, "backoff_initial_ms"),
        ({"dead_letter_topic": "a"}, "dead_letter_topic"),
        ({"dead_letter_topic": "{nope}.dlq"}, "dead_letter_topic"),
        (
            {"topics": (), "topic_pattern": r"a\..*", "dead_letter_topic": "a.dlq"},
            "dead_letter_topic",
        ),
    ],
)
def test_invalid_values_name_the_setting(kw: dict[str, Any], setting: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        settings(**kw)
    assert info.value.setting == setting


@pytest.mark.parametrize(
    "old", ["bootstrap_servers", "backoff_initial", "backoff_max", "sasl_plain_username"]
)
def test_old_keywords_are_refused(old: str) -> None:
    with pytest.raises(TypeError, match=old):
        settings(**{old: "x"})
