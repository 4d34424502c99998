"""Missing topics: created by the relay (CreateTopics), or waited for quietly.

Left to the producer, the first record to a new topic makes the broker
auto-create it (when ``auto.create.topics.enable`` allows) and makes aiokafka log
``ERROR Topic ... not found in cluster metadata`` first, which reads as a
failure on a normal start. So before the producer first looks a topic up, the
relay asks for its metadata *without* auto-creation (Metadata v4+
``allow_auto_topic_creation=false``) and, if it does not exist, creates it with
``topic_partitions`` and ``topic_replication_factor`` (like Debezium's
``topic.creation.*``), or, with ``create_topics`` off or creation refused by the
broker's ACLs or policy, waits for it and says so once at INFO.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaError
from aiokafka.protocol.admin import CreateTopicsRequest, DescribeConfigsRequest
from aiokafka.protocol.metadata import MetadataRequest

from ..exceptions import ConfigurationError

__all__ = ["TopicWaitAborted", "Topics"]

log = logging.getLogger("transactional_outbox.relay")

# Kafka protocol error codes (org.apache.kafka.common.protocol.Errors).
NONE = 0
UNKNOWN_TOPIC_OR_PARTITION = 3
LEADER_NOT_AVAILABLE = 5
TOPIC_ALREADY_EXISTS = 36
INVALID_PARTITIONS = 37
INVALID_REPLICATION_FACTOR = 38
# Creation refused for this principal or by policy: wait for an operator to create it.
_REFUSED = {
    29: "TOPIC_AUTHORIZATION_FAILED",
    31: "CLUSTER_AUTHORIZATION_FAILED",
    44: "POLICY_VIOLATION",
    35: "UNSUPPORTED_VERSION",
}
_BROKER_RESOURCE = 4  # DescribeConfigs resource type BROKER
_CLIENT_KEYS = (
    "bootstrap_servers",
    "client_id",
    "request_timeout_ms",
    "security_protocol",
    "ssl_context",
    "sasl_mechanism",
    "sasl_plain_username",
    "sasl_plain_password",
)


class TopicWaitAborted(KafkaError):  # type: ignore[misc]
    """The relay stopped while waiting for a topic to exist."""


class Topics:
    """Makes sure a topic exists before the producer first publishes to it."""

    def __init__(
        self,
        producer_args: dict[str, Any],
        *,
        create: bool,
        partitions: int,
        replication_factor: int,
        configs: dict[str, str] | None = None,
    ) -> None:
        self._args = {k: v for k, v in producer_args.items() if k in _CLIENT_KEYS}
        self._create = create
        self._partitions = partitions
        self._replication_factor = replication_factor
        self._configs = list((configs or {}).items())  # topic configs at creation
        self._client: AIOKafkaClient | None = None
        self._ready: set[str] = set()
        self._announced: set[str] = set()
        self._aborted = asyncio.Event()
        self._timeout_ms = int(self._args.get("request_timeout_ms", 40_000))

    def abort(self) -> None:
        """Stop waiting (the relay is stopping or lost its lease)."""
        self._aborted.set()

    async def close(self) -> None:
        """Close the metadata connection, if one was opened."""
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    async def ensure(self, topic: str) -> None:
        """Return once ``topic`` exists with a leader for every partition.

        Raises :class:`ConfigurationError` if the broker refuses the partition
        count or replication factor, :class:`TopicWaitAborted` after
        :meth:`abort`. Other metadata errors (authorization, invalid name) are
        left for the producer to report as it does.
        """
        if topic in self._ready:
            return
        delay = 0.05
        created = False
        while True:
            if self._aborted.is_set():
                raise TopicWaitAborted(f"stopped while waiting for topic {topic!r}")
            error, partitions = await self._describe(topic)
            if error == NONE and partitions and all(leader >= 0 for leader in partitions):
                self._ready.add(topic)
                if topic in self._announced:
                    log.info("topic %r exists now", topic)
                return
            if error not in (NONE, UNKNOWN_TOPIC_OR_PARTITION, LEADER_NOT_AVAILABLE):
                self._ready.add(topic)  # the producer reports it (e.g. not authorized)
                return
            if error == UNKNOWN_TOPIC_OR_PARTITION and not created:
                created = await self._try_create(topic)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._aborted.wait(), delay)
            delay = min(delay * 2, 2.0)

    async def _connect(self) -> AIOKafkaClient:
        if self._client is None:
            client = AIOKafkaClient(**self._args)
            try:
                await client.bootstrap()
            except BaseException:
                await client.close()
                raise
            self._client = client
        return self._client

    async def _describe(self, topic: str) -> tuple[int, list[int]]:
        """The topic's error code and the leader of each partition, auto-creation off."""
        client = await self._connect()
        node = client.get_random_node()
        response = await client.send(
            node, MetadataRequest([topic], allow_auto_topic_creation=False)
        )
        for entry in response.topics:
            error, name = entry[0], entry[1]
            if name == topic:
                parts = entry[-1]  # (error, partition, leader, ...) per partition
                return int(error), [int(p[2]) for p in parts]
        return UNKNOWN_TOPIC_OR_PARTITION, []

    async def _try_create(self, topic: str) -> bool:
        """Create ``topic``; True if it was created (or exists), False to wait instead."""
        if not self._create:
            self._announce(topic, "create_topics is off")
            return False
        client = await self._connect()
        partitions, replication = await self._sizes(client)
        controller = client.cluster.controller
        node = controller.nodeId if controller is not None else client.get_random_node()
        request = CreateTopicsRequest(
            create_topic_requests=[(topic, partitions, replication, [], self._configs)],
            timeout=self._timeout_ms,
            validate_only=False,
        )
        response = await client.send(node, request)
        result = response.topic_errors[0]
        code = int(result[1])
        message = result[2] if len(result) > 2 else None
        if code in (NONE, TOPIC_ALREADY_EXISTS):
            if code == NONE:
                log.info(
                    "created topic %r: %d partition(s), replication factor %d",
                    topic,
                    partitions,
                    replication,
                )
            return True
        if code in (INVALID_PARTITIONS, INVALID_REPLICATION_FACTOR):
            setting = (
                "topic_partitions" if code == INVALID_PARTITIONS else "topic_replication_factor"
            )
            raise ConfigurationError(
                setting,
                f"the broker refused to create topic {topic!r} with {partitions} partition(s), "
                f"replication factor {replication}: {message or code}",
            )
        why = _REFUSED.get(code, f"error {code}")
        self._announce(topic, f"the broker refused to create it: {why} {message or ''}".strip())
        return False

    def _announce(self, topic: str, why: str) -> None:
        if topic not in self._announced:
            self._announced.add(topic)
            log.info("topic %r does not exist (%s); waiting for it to be created", topic, why)

    async def _sizes(self, client: AIOKafkaClient) -> tuple[int, int]:
        """Partitions and replication factor to create with; -1 means the broker's default,
        read with DescribeConfigs (CreateTopics before v4, all aiokafka speaks, has no -1)."""
        partitions, replication = self._partitions, self._replication_factor
        if partitions == -1 or replication == -1:
            defaults = await self._broker_defaults(client)
            brokers = max(len(client.cluster.brokers()), 1)
            if partitions == -1:
                partitions = int(defaults.get("num.partitions", 1))
            if replication == -1:
                replication = int(defaults.get("default.replication.factor", min(3, brokers)))
        return partitions, replication

    async def _broker_defaults(self, client: AIOKafkaClient) -> dict[str, str]:
        controller = client.cluster.controller
        node = controller.nodeId if controller is not None else client.get_random_node()
        names = ["num.partitions", "default.replication.factor"]
        try:
            response = await client.send(
                node, DescribeConfigsRequest([(_BROKER_RESOURCE, str(node), names)])
            )
        except KafkaError as exc:
            log.debug("broker defaults not readable (%s)", exc)
            return {}
        out: dict[str, str] = {}
        for resource in response.resources:
            if int(resource[0]) != NONE:
                continue
            for entry in resource[4]:
                if entry[1] is not None:
                    out[str(entry[0])] = str(entry[1])
        return out
