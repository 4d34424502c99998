"""Settings of :class:`ConsumerRunner`: one keyword-only, validated, immutable object."""

from __future__ import annotations

import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ..exceptions import ConfigurationError
from ..kafka import KafkaConnection

__all__ = ["RunnerSettings"]


@dataclass(frozen=True, kw_only=True)
class RunnerSettings:
    """How a :class:`ConsumerRunner` consumes, retries and dead-letters.

    Subscription: exactly one of ``topics`` (names) or ``topic_pattern`` (a
    regular expression, e.g. ``r"outbox\\.event\\..*"``).

    ``kafka``: the brokers and login, a :class:`~transactional_outbox.KafkaConnection`
    (``KafkaConnection.from_env()`` reads the relay's ``OUTBOX_KAFKA_*`` variables).

    Retries: a failing record is retried up to ``max_attempts`` times in all,
    waiting ``backoff_initial_ms`` milliseconds, doubling up to ``backoff_max_ms`` (with
    jitter: each wait is 50-100 % of that). Attempts are counted in memory: a
    restart starts the count again.

    ``dead_letter_topic``: where a record goes after its last failed attempt,
    or at once when it has no valid ``id`` header; ``{topic}`` in it is
    replaced by the record's topic (e.g. ``"{topic}.dlq"``). Without one, such
    a record stops the runner with an error instead of being skipped. A runner
    never consumes its own dead letters: a plain dead-letter topic that is one of
    ``topics`` or matches ``topic_pattern`` is refused, and with ``{topic}`` the
    subscription leaves out the dead-letter topic of every topic the pattern
    matches (``r"outbox\\.event\\..*"`` with ``"{topic}.dlq"`` reads
    ``outbox.event.order``, not ``outbox.event.order.dlq``): see
    :meth:`subscription_pattern`.

    ``max_concurrency``: how many records of different keys may be handled at
    once (records of one key always run in order, one at a time); 1 handles a
    fetched batch one record at a time.

    ``session_timeout_ms`` / ``heartbeat_interval_ms``: group membership; small
    values make group joins fast (e.g. 1000/300 in tests). ``consumer_options``
    and ``producer_options`` are passed to aiokafka as extra keyword arguments
    (they are left out of ``repr``, and so is the SASL password).
    """

    kafka: KafkaConnection
    group_id: str
    topics: Sequence[str] = ()
    topic_pattern: str | None = None
    max_attempts: int = 5
    max_concurrency: int = 100
    backoff_initial_ms: int = 500
    backoff_max_ms: int = 30_000
    dead_letter_topic: str | None = None
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 3_000
    max_poll_records: int | None = 500
    client_id: str | None = None
    consumer_options: Mapping[str, Any] = field(default_factory=dict, repr=False)
    producer_options: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.kafka, KafkaConnection):
            raise ConfigurationError(
                "kafka", f"must be a KafkaConnection, not {type(self.kafka).__name__}"
            )
        if isinstance(self.topics, str):
            # A bare string would be read as a list of one-letter topics.
            object.__setattr__(self, "topics", (self.topics,))
        if bool(self.topics) == (self.topic_pattern is not None):
            raise ConfigurationError("topics", "give exactly one of topics or topic_pattern")
        if not self.group_id:
            raise ConfigurationError("group_id", "must not be empty")
        if self.max_attempts < 1:
            raise ConfigurationError("max_attempts", "must be at least 1")
        if self.max_concurrency < 1:
            raise ConfigurationError(
                "max_concurrency", f"must be at least 1, got {self.max_concurrency}"
            )
        if self.backoff_initial_ms < 0 or self.backoff_max_ms < self.backoff_initial_ms:
            raise ConfigurationError(
                "backoff_initial_ms",
                f"{self.backoff_initial_ms} must be >= 0 and not more than backoff_max_ms "
                f"({self.backoff_max_ms})",
            )
        if self.dead_letter_topic is not None:
            self._check_dead_letter_topic(self.dead_letter_topic)

    def _check_dead_letter_topic(self, template: str) -> None:
        try:
            sample = template.format(topic="t")
        except (KeyError, IndexError, ValueError):
            raise ConfigurationError(
                "dead_letter_topic", "the only placeholder allowed is {topic}"
            ) from None
        if not sample:
            raise ConfigurationError("dead_letter_topic", "must not be empty")
        # Consuming our own dead letters would retry them forever.
        plain = "{topic}" not in template
        if plain and (
            template in self.topics
            or (self.topic_pattern is not None and re.fullmatch(self.topic_pattern, template))
        ):
            raise ConfigurationError("dead_letter_topic", "must not be a consumed topic")

    def subscription_pattern(self) -> str | None:
        """The regex the runner subscribes with: ``topic_pattern`` minus its dead letters.

        aiokafka subscribes to the topics ``pattern.match`` (anchored at the
        start only) accepts. With a ``{topic}`` dead-letter template, a topic T
        is left out when it is the dead-letter topic of a topic the pattern
        accepts, i.e. T = template.format(topic=X) with ``pattern.match(X)``: a
        negative lookahead with each ``{topic}`` replaced by ``(?:pattern).*``.
        Otherwise the runner would read ``x.dlq``, fail on it again and write
        ``x.dlq.dlq``, and so on.
        """
        pattern, template = self.topic_pattern, self.dead_letter_topic
        if pattern is None or template is None or "{topic}" not in template:
            return pattern
        parts = []
        for literal, field_name, _, _ in string.Formatter().parse(template):
            parts.append(re.escape(literal))
            if field_name is not None:
                parts.append(f"(?:{pattern}).*")
        return f"(?!{''.join(parts)}\\Z)(?:{pattern})"

    def dead_letter_topic_for(self, topic: str) -> str | None:
        """The dead-letter topic of records read from ``topic`` (``None``: none set)."""
        if self.dead_letter_topic is None:
            return None
        return self.dead_letter_topic.format(topic=topic)

    def consumer_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for the runner's ``aiokafka.AIOKafkaConsumer``."""
        kwargs: dict[str, Any] = {
            **self.kafka.client_args(),
            "group_id": self.group_id,
            "enable_auto_commit": False,
            "auto_offset_reset": self.auto_offset_reset,
            "session_timeout_ms": self.session_timeout_ms,
            "heartbeat_interval_ms": self.heartbeat_interval_ms,
            "max_poll_records": self.max_poll_records,
        }
        if self.client_id is not None:
            kwargs["client_id"] = self.client_id
        kwargs.update(self.consumer_options)
        # Committing before handling would lose events on a crash.
        kwargs["enable_auto_commit"] = False
        return kwargs

    def producer_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for the runner's dead-letter ``aiokafka.AIOKafkaProducer``."""
        kwargs: dict[str, Any] = {**self.kafka.client_args(), "acks": "all"}
        if self.client_id is not None:
            kwargs["client_id"] = self.client_id
        kwargs.update(self.producer_options)
        return kwargs
