"""Validation of :class:`.RelaySettings`: every choice checked when the settings are built,
whatever their source (keywords, the environment, flags). Kept apart from the settings'
fields so each file stays short; ``RelaySettings.__post_init__`` calls :func:`validate`.
"""

from __future__ import annotations

import dataclasses
import re
from typing import TYPE_CHECKING

from sqlalchemy.engine import make_url

from .._fields import mask_url
from ..exceptions import ConfigurationError
from ..kafka import KafkaConnection
from .options import env_var, flag
from .position import StartPolicy
from .resume import gtid_mode
from .routing import invalid_topic_reason

if TYPE_CHECKING:
    from .config import RelaySettings

__all__ = ["REQUIRED", "validate"]

REQUIRED = ("mysql_url", "kafka_bootstrap_servers", "redis_url")
"""The connection settings without a default: a relay never connects somewhere by accident."""


def validate(s: RelaySettings) -> None:
    """Check every setting of ``s``; raise :class:`ConfigurationError` naming the first wrong
    one. Normalises a few values in place (``kafka_acks`` as text, ``outbox_tables`` as a
    tuple, ``resume_by_gtid`` as its mode)."""
    for name in REQUIRED:
        if not (s.kafka if name == "kafka_bootstrap_servers" else getattr(s, name)):
            raise ConfigurationError(
                name,
                f"not set: set {env_var(name)} or {flag(name)} (no default, "
                "so a relay never connects somewhere by accident)",
            )
    if not isinstance(s.kafka, KafkaConnection):
        raise ConfigurationError("kafka", f"must be a KafkaConnection, not {s.kafka!r}")
    if isinstance(s.kafka_acks, int) and not isinstance(s.kafka_acks, bool):
        object.__setattr__(s, "kafka_acks", str(s.kafka_acks))
    for f in dataclasses.fields(s):
        choices = f.metadata.get("choices")
        value = getattr(s, f.name)
        if choices and value not in choices:
            raise ConfigurationError(
                f.name, f"{value!r} is not a choice: choose one of {', '.join(choices)}"
            )
    for name in ("topic_partitions", "topic_replication_factor"):
        value = getattr(s, name)
        if value != -1 and not 1 <= value <= 32_767:
            raise ConfigurationError(name, f"{value} must be -1 (the broker's default) or 1..32767")
    from .._redis_client import parse_redis_url, tagged_base  # imports redis: not in the reader

    target = parse_redis_url(s.redis_url, setting="redis_url")
    try:
        tagged_base(s.key_prefix, s.relay_name, cluster=target.cluster)
    except ValueError as exc:
        raise ConfigurationError("key_prefix", str(exc)) from None
    try:
        url = make_url(s.mysql_url)
    except Exception:
        raise ConfigurationError("mysql_url", "is not a valid URL") from None
    if not url.host:
        raise ConfigurationError("mysql_url", f"{mask_url(s.mysql_url)} has no host")
    _check_tables(s)
    if not (s.multi_table or s.outbox_schema or url.database):
        raise ConfigurationError("outbox_schema", "not set and mysql_url names no database")
    if s.server_id < 0 or s.server_id > 2**32 - 1:
        raise ConfigurationError("server_id", f"{s.server_id} is not in 0..4294967295")
    StartPolicy.parse(s.start_position)
    object.__setattr__(s, "resume_by_gtid", gtid_mode(s.resume_by_gtid))
    s.router()  # validates the template and overrides
    if s.checkpoint_topic and (why := invalid_topic_reason(s.checkpoint_topic)):
        raise ConfigurationError("checkpoint_topic", why)
    for name in ("checkpoint_interval_ms", "queue_max_events", "max_request_size"):
        if getattr(s, name) <= 0:
            raise ConfigurationError(name, f"must be positive, got {getattr(s, name)}")
    if s.lease_renew_ms <= 0 or s.lease_renew_ms * 2 > s.lease_ttl_ms:
        raise ConfigurationError(
            "lease_renew_ms",
            f"{s.lease_renew_ms} must be positive and at most half of lease_ttl_ms "
            f"({s.lease_ttl_ms}), so one missed renewal does not lose the lease",
        )
    for name in ("heartbeat_ms", "reconnect_max_ms", "ack_stall_ms", "retry_backoff_ms"):
        if getattr(s, name) <= 0:
            raise ConfigurationError(name, f"must be positive, got {getattr(s, name)}")
    if s.progress_interval_ms < 0:
        raise ConfigurationError(
            "progress_interval_ms",
            f"must be 0 (off) or positive, got {s.progress_interval_ms}",
        )


def _check_tables(s: RelaySettings) -> None:
    tables = s.outbox_tables
    if isinstance(tables, str):  # a keyword given as text, like from_env would
        tables = tuple(filter(None, (t.strip() for t in tables.split(","))))
    object.__setattr__(s, "outbox_tables", tuple(tables))
    for name in s.outbox_tables:
        schema, dot, table = name.partition(".")
        if not (dot and schema and table) or "." in table:
            raise ConfigurationError(
                "outbox_tables", f"{name!r} is not schema.table (one dot, both named)"
            )
    if s.outbox_table_pattern:
        try:
            re.compile(s.outbox_table_pattern)
        except re.error as exc:
            raise ConfigurationError(
                "outbox_table_pattern",
                f"{s.outbox_table_pattern!r} is not a valid regular expression ({exc})",
            ) from None
    if s.multi_table and (s.outbox_schema or s.outbox_table != "outbox"):
        raise ConfigurationError(
            "outbox_tables",
            "outbox_tables/outbox_table_pattern name the tables as schema.table: leave "
            "outbox_schema and outbox_table unset with them",
        )
