"""Validation of :class:`.RelaySettings`: every choice checked when the settings are built,
whatever their source (keywords, the environment, flags). Kept apart from the settings'
fields so each file stays short; ``RelaySettings.__post_init__`` calls :func:`validate`.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from typing import TYPE_CHECKING

from sqlalchemy.engine import make_url

from .._fields import mask_url
from ..exceptions import ConfigurationError
from ..kafka import KafkaConnection
from .mysql.resume import gtid_mode
from .options import env_var, flag
from .position import StartPolicy
from .postgres.settings import check_postgres_settings
from .routing import invalid_topic_reason
from .tracing import publish_tracer

if TYPE_CHECKING:
    from .config import RelaySettings

__all__ = ["REQUIRED", "database_kind", "default_pg_name", "validate"]

log = logging.getLogger("transactional_outbox.relay")

REQUIRED = ("database_url", "kafka_bootstrap_servers", "redis_url")
"""The connection settings without a default: a relay never connects somewhere by accident."""

_KINDS = {
    "mysql": "mysql",
    "mariadb": "mysql",
    "postgresql": "postgresql",
    "postgres": "postgresql",
}


def database_kind(url: str) -> str:
    """``mysql`` or ``postgresql`` by the URL's scheme (``mysql+pymysql``, ``postgresql``...)."""
    scheme = url.partition("://")[0].partition("+")[0].lower()
    kind = _KINDS.get(scheme)
    if kind is None:
        raise ConfigurationError(
            "database_url",
            f"{mask_url(url)!r} is neither a MySQL/MariaDB URL (mysql+pymysql://...) nor a "
            "PostgreSQL URL (postgresql://...)",
        )
    return kind


def default_pg_name(relay_name: str) -> str:
    """The default slot and publication name of relay ``relay_name``."""
    return ("outbox_relay_" + re.sub(r"[^a-z0-9_]", "_", relay_name.lower()))[:63]


def _deprecated_url(s: RelaySettings) -> None:
    # OUTBOX_MYSQL_URL also names the app's database in many shells (this repo's stack
    # exports both): beside database_url it is ignored, with a WARNING if it differs.
    if not s.mysql_url:
        return
    if not s.database_url:
        log.warning(
            "%s/%s is deprecated: use %s/%s (same value)",
            env_var("mysql_url"),
            flag("mysql_url"),
            env_var("database_url"),
            flag("database_url"),
        )
        object.__setattr__(s, "database_url", s.mysql_url)
    elif s.database_url != s.mysql_url:
        log.warning(
            "%s (deprecated) is ignored: %s is set and wins",
            env_var("mysql_url"),
            env_var("database_url"),
        )
    object.__setattr__(s, "mysql_url", "")


def validate(s: RelaySettings) -> None:
    """Check every setting of ``s``; raise :class:`ConfigurationError` naming the first wrong
    one. Normalises a few values in place (``kafka_acks`` as text, ``outbox_tables`` as a
    tuple, ``resume_by_gtid`` as its mode, ``mysql_url`` moved to ``database_url``)."""
    _deprecated_url(s)
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
    if s.trace_publish:
        publish_tracer()  # OpenTelemetry missing: one line naming trace_publish
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
    _check_tables(s)
    if database_kind(s.database_url) == "postgresql":
        check_postgres_settings(s)
    else:
        try:
            url = make_url(s.database_url)
        except Exception:
            raise ConfigurationError("database_url", "is not a valid URL") from None
        if not url.host:
            raise ConfigurationError("database_url", f"{mask_url(s.database_url)} has no host")
        if not (s.multi_table or s.outbox_schema or url.database):
            raise ConfigurationError("outbox_schema", "not set and database_url names no database")
        pg_only = ("pg_message_prefixes", "pg_other_message_prefixes", "pg_slot", "pg_publication")
        if given := [name for name in pg_only if getattr(s, name)]:
            raise ConfigurationError(
                given[0], "is for PostgreSQL relays; database_url is a MySQL/MariaDB URL"
            )
        if not s.tables and not s.outbox_table_pattern:
            raise ConfigurationError("outbox_table", "is empty: name the outbox table")
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
    for field in ("outbox_tables", "pg_message_prefixes", "pg_other_message_prefixes"):
        items = getattr(s, field)
        if isinstance(items, str):  # a keyword given as text, like from_env would
            items = tuple(filter(None, (i.strip() for i in items.split(","))))
        object.__setattr__(s, field, tuple(items))
    if both := sorted(set(s.pg_message_prefixes) & set(s.pg_other_message_prefixes)):
        raise ConfigurationError(
            "pg_other_message_prefixes",
            f"lists {', '.join(both)}, which pg_message_prefixes lists too: a prefix is this "
            "relay's or another's",
        )
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
