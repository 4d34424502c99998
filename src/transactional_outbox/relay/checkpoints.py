"""The checkpoint's two copies, Redis and Kafka, as one store: what a term starts from.

:meth:`CheckpointStores.load_start` reads both copies, keeps the fencing
tokens growing past the Kafka copy's (Redis may have lost its counter), and
picks the copy to start from by the rule in relay/checkpoint_choice.py.
:class:`~.checkpointer.Checkpointer` writes both.
"""

from __future__ import annotations

import logging

from ..exceptions import LeadershipLostError
from .checkpoint import RedisCheckpointStore
from .checkpoint_choice import CheckpointCopy, KafkaCopies, choose_copy
from .checkpoint_topic import KafkaCheckpointTopic
from .config import RelaySettings
from .faults import check_kafka_login
from .leadership import Lease
from .position import Position, decode_checkpoint
from .stats import RelayStats

__all__ = ["CheckpointStores"]

log = logging.getLogger("transactional_outbox.relay")


class CheckpointStores:
    """The Redis copy (fenced by ``lease``) and, unless ``kafka`` is None, the Kafka copy."""

    def __init__(
        self,
        redis: RedisCheckpointStore,
        kafka: KafkaCheckpointTopic | None,
        lease: Lease,
        *,
        relay_name: str,
    ) -> None:
        self.redis = redis
        self.kafka = kafka
        self.lease = lease
        self.relay_name = relay_name
        self.ran_before = False  # set by load_start: a store shows an earlier save
        self._eviction_checked = False

    def __repr__(self) -> str:
        return f"CheckpointStores({self.redis!r}, {self.kafka!r})"

    @property
    def where(self) -> str:
        """Both stores, for messages."""
        redis = f"Redis (key {self.redis.key!r})"
        return redis if self.kafka is None else f"{redis} or {self.kafka.where}"

    async def load_start(
        self, settings: RelaySettings, stats: RelayStats, *, server_keeps_place: bool = False
    ) -> Position | None:
        """The checkpoint to start from, or ``None`` to start at ``start_position``.

        ``server_keeps_place``: the server holds the relay's place itself (a PostgreSQL
        slot), so a relay that ran before and lost both copies may start there; the
        caller must then refuse a server that lost it too (:attr:`ran_before`).

        Raises :class:`~transactional_outbox.ConfigurationError` (exit 2) when a
        store shows the relay ran before but no copy survives and the start is
        not explicit; :class:`~transactional_outbox.CheckpointError` for a copy
        that cannot be read; :class:`.checkpoint_topic.CheckpointTopicUnreadable`
        (retried) when the topic cannot be read in time.
        """
        await self._warn_eviction()
        redis_copy, saved_before = await self.redis.load_copy()
        stats.redis = "ok"
        kafka = KafkaCopies()
        if self.kafka is not None:
            # A refused login fails every retry: exit 2 now, not "unreadable" forever.
            await check_kafka_login(settings, settings.producer_args())
            kafka = await self.kafka.read(strict=not settings.ignore_checkpoint)
        self.ran_before = saved_before or kafka.seen or redis_copy is not None
        acquired = self.lease.token or 0
        await self._keep_tokens_growing(kafka, acquired)
        if settings.ignore_checkpoint:
            # Still read: tokens must outgrow the copies, so this start's saves win next time.
            if kafka.unreadable and self.kafka is not None:
                log.warning(
                    "%d record(s) in %s are not checkpoint copies; ignored (--ignore-checkpoint)",
                    kafka.unreadable,
                    self.kafka.where,
                )
            return None
        chosen = choose_copy(
            redis_copy,
            kafka,
            ran_before_in_redis=saved_before,
            explicit_start=settings.start_policy().explicit or server_keeps_place,
            ignore_checkpoint=settings.ignore_checkpoint,
            relay=settings.relay_name,
            where=self.where,
        )
        if chosen is None:
            return None
        position = decode_checkpoint(chosen.value)
        self._explain(chosen, redis_copy, position)
        return position

    async def _keep_tokens_growing(self, kafka: KafkaCopies, acquired: int) -> None:
        if kafka.max_token < acquired:
            return
        # Redis lost the fence counter (restarted empty, failed over): its tokens
        # restarted below the Kafka copy's, whose record would outrank ours. (Equal:
        # also this process retaking its own lease, which a new token does no harm.)
        if not await self.lease.raise_token_above(kafka.max_token):
            raise LeadershipLostError("another relay holds the lease")
        log.log(
            logging.WARNING if kafka.max_token > acquired else logging.INFO,
            "fencing token %d from Redis is not above %d, the highest in %s%s; now leading "
            "with token %d",
            acquired,
            kafka.max_token,
            self.kafka.where if self.kafka is not None else "Kafka",
            ": Redis lost its counter" if kafka.max_token > acquired else "",
            self.lease.token,
        )

    def _explain(
        self, chosen: CheckpointCopy, redis_copy: CheckpointCopy | None, position: Position
    ) -> None:
        if chosen.store != "Kafka" or self.kafka is None:
            return
        if redis_copy is None:
            log.warning(
                "no checkpoint in Redis (key %r) but one in %s: starting from the Kafka copy at "
                "%s. Redis lost it (restarted without persistence, evicted, or failed over to a "
                "replica that missed the write)",
                self.redis.key,
                self.kafka.where,
                position,
            )
        else:
            log.info(
                "the checkpoint in %s (token %s, save %d) is newer than Redis's (token %s, "
                "save %d): starting from it at %s",
                self.kafka.where,
                chosen.token,
                chosen.seq,
                redis_copy.token,
                redis_copy.seq,
                position,
            )

    async def _warn_eviction(self) -> None:
        if self._eviction_checked:
            return
        self._eviction_checked = True
        policy = await self.redis.eviction_policy()
        if policy is not None and policy.startswith("allkeys-"):
            log.warning(
                "Redis maxmemory-policy is %s: under memory pressure Redis may evict the "
                "checkpoint and the lease; use noeviction or volatile-* for the relay's Redis%s",
                policy,
                "" if self.kafka is None else f" (the copy in {self.kafka.where} survives it)",
            )
