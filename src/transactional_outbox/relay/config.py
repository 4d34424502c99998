"""Relay settings: one typed, keyword-only object, from ``OUTBOX_*`` variables and flags.

Every field documents itself (``help``); the CLI and the environment loader
are generated from the fields, so ``--help`` always lists every option, its
environment variable and its default.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import make_url

from .._fields import mask_url
from ..exceptions import ConfigurationError
from ..kafka import KafkaConnection
from .canary import CanarySettings
from .mysql.resume import gtid_mode_option
from .options import (
    SECRET,
    env_var,
    nest_values,
    nested,
    option,
    options_parser,
    overlay,
    values_from_cli,
    values_from_env,
)
from .position import StartPolicy
from .routing import DEFAULT_TOPIC_TEMPLATE, TopicRouter
from .settings_checks import REQUIRED, database_kind, default_pg_name, validate

__all__ = [
    "DEPRECATED",
    "RENAMED",
    "RelaySettings",
    "build_parser",
    "env_var",
]


@dataclass(frozen=True, kw_only=True)
class RelaySettings:
    """Everything the relay can be told.

    Build it with keywords, :meth:`from_env` or :meth:`from_cli`.
    """

    database_url: str = option(
        "",
        "required: the database to read. MySQL/MariaDB (mysql+pymysql://): a user with "
        "REPLICATION SLAVE, REPLICATION CLIENT (MariaDB: BINLOG MONITOR) and SELECT on the outbox "
        "table; its database is the outbox schema unless --outbox-schema says otherwise. "
        "PostgreSQL (postgresql://, ?sslmode=...): a role with REPLICATION that owns the outbox "
        "tables (to create the publication); the outbox schema defaults to public",
    )
    mysql_url: str = option("", "deprecated: the old name of --database-url (one WARNING)")
    server_id: int = option(
        0,
        "replica server_id for the binlog connection; must be unique among the server's "
        "replicas (0 = a new one for each start, from the relay name, host and process id, "
        "so two relays of one name never share one)",
    )
    outbox_schema: str = option("", "schema (database) of the outbox table; default: the URL's")
    outbox_table: str = option("outbox", "name of the outbox table")
    outbox_tables: tuple[str, ...] = option(
        (),
        "several outbox tables read by one relay, comma-separated schema.table "
        "('shop.outbox,billing.outbox'); instead of --outbox-schema/--outbox-table",
    )
    outbox_table_pattern: str = option(
        "",
        "a Python regex full-matched against schema.table: every matching table is an outbox "
        "table, also one created while the relay runs ('[a-z_]+\\.outbox'); may be combined "
        "with --outbox-tables",
    )
    pg_slot: str = option(
        "", "PostgreSQL: the relay's logical replication slot (default outbox_relay_<name>)"
    )
    pg_publication: str = option(
        "", "PostgreSQL: the publication of the outbox tables (default outbox_relay_<name>)"
    )
    pg_create: bool = option(True, "PostgreSQL: create the publication and the slot when missing")
    pg_message_prefixes: tuple[str, ...] = option(
        (),
        "PostgreSQL: prefixes of table-less outboxes (add_event with outbox_mode='message'), "
        "comma-separated; with --outbox-table '' only these are read",
    )
    pg_other_message_prefixes: tuple[str, ...] = option(
        (),
        "PostgreSQL: prefixes of other relays' table-less outboxes in the same database, "
        "comma-separated; an outbox event in a message of a prefix in neither list stops "
        "the relay (exit 2)",
    )
    kafka: KafkaConnection = nested(
        KafkaConnection,
        prefix="kafka_",
        help="Kafka brokers and login, set as the kafka_* settings (a KafkaConnection)",
    )
    canary: CanarySettings | None = nested(
        CanarySettings, prefix="canary_", help="the canary event (canary_*; unset: none)"
    )
    kafka_acks: str = option("all", "producer acks", choices=("all", "1", "0"))
    enable_idempotence: bool = option(
        True,
        "idempotent producer (Kafka keeps order and drops retried duplicates); turn off "
        "only for brokers without it",
    )
    trace_publish: bool = option(
        False,
        "a PRODUCER span per published event that has a traceparent (OpenTelemetry; "
        "the otel extra, an exporter set up by the process)",
    )
    compression_type: str = option(
        "none", "producer compression", choices=("none", "gzip", "snappy", "lz4", "zstd")
    )
    linger_ms: int = option(5, "producer linger: how long a batch waits to fill (ms)")
    max_batch_size: int = option(262_144, "producer batch size per partition (bytes)")
    max_request_size: int = option(
        1_048_576, "largest record the producer sends (bytes); match the topic's max.message.bytes"
    )
    request_timeout_ms: int = option(40_000, "Kafka request timeout (ms)")
    ack_stall_ms: int = option(5_000, "sent events unacknowledged this long: Kafka down (ms)")
    retry_backoff_ms: int = option(500, "producer's wait before a retry or reconnect (ms)")
    redis_url: str = option("", "required: Redis URL for the checkpoint and the lease")
    relay_name: str = option("default", "relay name: namespaces the checkpoint key")
    key_prefix: str = option("outbox:relay:", "prefix of the relay's Redis keys")
    topic_template: str = option(
        DEFAULT_TOPIC_TEMPLATE,
        "topic of an event; {aggregatetype}, {schema} and {table} (the outbox table the "
        "row was read from) are replaced",
    )
    topic_overrides: Mapping[str, str] = option(
        None,
        "per-aggregate-type topics, 'order=orders,customer=crm.customers'",
    )
    create_topics: bool = option(
        True,
        "create a missing topic with --topic-partitions and --topic-replication-factor "
        "(CreateTopics); off: wait for it to be created (an INFO line says so once)",
    )
    topic_partitions: int = option(
        -1, "partitions of a topic the relay creates (-1 = the broker's num.partitions)"
    )
    topic_replication_factor: int = option(
        -1,
        "replication factor of a topic the relay creates (-1 = the broker's "
        "default.replication.factor)",
    )
    start_position: str = option(
        "latest",
        "where to start without a checkpoint: latest, earliest, FILE:POS or a GTID set "
        "(gtid:SET or a MariaDB D-S-N list); FILE:POS or a GTID set also overrides an unusable "
        "checkpoint",
    )
    ignore_checkpoint: bool = option(False, "start at --start-position even if a checkpoint exists")
    resume_by_gtid: str | bool = gtid_mode_option()
    checkpoint_interval_ms: int = option(1000, "save the checkpoint at most this often (ms)")
    checkpoint_topic: str = option(
        "outbox.relay.checkpoints",
        "compacted topic with a second copy of the checkpoint, keyed by key prefix + relay "
        "name; created if missing (cleanup.policy=compact); empty: Redis only",
    )
    queue_max_events: int = option(20_000, "events read ahead of Kafka acks before reading pauses")
    heartbeat_ms: int = option(
        2_000, "replication heartbeat (ms); a stream silent for 3x this is reconnected"
    )
    reconnect_max_ms: int = option(30_000, "longest wait between reconnect attempts (ms)")
    reader: str = option(
        "process",
        "where the binlog is read and decoded: process (a child process, so decoding does "
        "not share the interpreter lock with publishing; ~1.3x the throughput on 2 cores) "
        "or thread (one process)",
        choices=("process", "thread"),
    )
    progress_interval_ms: int = option(10_000, "time between progress lines (ms, 0 = off)")
    lease_ttl_ms: int = option(
        10_000, "leader lease TTL (ms): a standby takes over this long after the leader dies"
    )
    lease_renew_ms: int = option(3_000, "how often the leader renews its lease (ms)")
    on_rejected: str = option(
        "stop",
        "what to do with an event Kafka refuses for good (too large, illegal topic): stop "
        "(exit 4 naming the event, checkpoint before it) or dead-letter (publish a small "
        "record to --dead-letter-topic and go on)",
        choices=("stop", "dead-letter"),
    )
    dead_letter_topic: str = option("outbox.deadletter", "topic for rejected events' dead letters")
    metrics_port: int = option(
        0, "port for /metrics (Prometheus), /healthz and /readyz over HTTP (0 = off)"
    )
    metrics_host: str = option("127.0.0.1", "address the metrics/health server binds")
    log_level: str = option("INFO", "log level", choices=("DEBUG", "INFO", "WARNING", "ERROR"))

    def __post_init__(self) -> None:
        if self.topic_overrides is None:
            object.__setattr__(self, "topic_overrides", {})
        validate(self)  # every choice checked here, whatever the source (settings_checks.py)

    # -- derived values --------------------------------------------------------

    @property
    def multi_table(self) -> bool:
        """True when :attr:`outbox_tables` or :attr:`outbox_table_pattern` is set."""
        return bool(self.outbox_tables or self.outbox_table_pattern)

    @property
    def tables(self) -> tuple[tuple[str, str], ...]:
        """The listed outbox tables as ``(schema, table)``: :attr:`outbox_tables`, or
        the one table of :attr:`schema` and :attr:`outbox_table`; none with a pattern alone."""
        if self.multi_table:
            return tuple(
                (name.partition(".")[0], name.partition(".")[2]) for name in self.outbox_tables
            )
        return ((self.schema, self.outbox_table),) if self.outbox_table else ()

    @property
    def table_pattern(self) -> re.Pattern[str] | None:
        """:attr:`outbox_table_pattern` compiled, if set."""
        return re.compile(self.outbox_table_pattern) if self.outbox_table_pattern else None

    @property
    def schema(self) -> str:
        """The outbox table's schema (PostgreSQL: ``public`` unless set)."""
        if self.database_kind == "postgresql":
            return self.outbox_schema or "public"
        return self.outbox_schema or str(make_url(self.database_url).database)

    @property
    def database_kind(self) -> str:
        """``mysql`` (MySQL or MariaDB) or ``postgresql``, from :attr:`database_url`."""
        return database_kind(self.database_url)

    @property
    def slot_name(self) -> str:
        """PostgreSQL: :attr:`pg_slot`, or one derived from the relay name."""
        return self.pg_slot or default_pg_name(self.relay_name)

    @property
    def publication_name(self) -> str:
        """PostgreSQL: :attr:`pg_publication`, or one derived from the relay name."""
        return self.pg_publication or default_pg_name(self.relay_name)

    @property
    def checkpoint_key(self) -> str:
        """The Redis key of this relay's checkpoint (its name a hash tag on a cluster)."""
        from .leadership import LeaseKeys  # imports redis: not in the reader process

        return LeaseKeys.for_settings(self).checkpoint

    def start_policy(self) -> StartPolicy:
        """:attr:`start_position` parsed."""
        return StartPolicy.parse(self.start_position)

    def router(self) -> TopicRouter:
        """The topic router these settings describe."""
        return TopicRouter(template=self.topic_template, overrides=self.topic_overrides)

    def mysql_connection_args(self, other_url: str = "") -> dict[str, Any]:
        """PyMySQL connection arguments from :attr:`database_url` (or ``other_url``)."""
        url = make_url(other_url or self.database_url)
        args: dict[str, Any] = {
            "host": url.host,
            "port": url.port or 3306,
            "user": url.username or "",
            "password": url.password or "",
        }
        return args

    def producer_args(self) -> dict[str, Any]:
        """Keyword arguments for ``aiokafka.AIOKafkaProducer``."""
        try:
            connection = self.kafka.client_args()
        except ConfigurationError as exc:
            raise ConfigurationError("kafka_" + exc.setting, exc.message) from None
        return {
            **connection,
            "client_id": f"outbox-relay-{self.relay_name}",
            "acks": "all" if self.kafka_acks == "all" else int(self.kafka_acks),
            "enable_idempotence": self.enable_idempotence,
            "compression_type": None if self.compression_type == "none" else self.compression_type,
            "linger_ms": self.linger_ms,
            # A record that fits no batch is sent alone, where max_request_size is
            # enforced; so batches must not be larger than a request may be.
            "max_batch_size": min(self.max_batch_size, self.max_request_size),
            "max_request_size": self.max_request_size,
            "request_timeout_ms": self.request_timeout_ms,
            "retry_backoff_ms": self.retry_backoff_ms,
        }

    def __repr__(self) -> str:
        shown = []
        for f in dataclasses.fields(self):
            if f.metadata.get(SECRET):
                value = getattr(self, f.name)
                shown.append(f"{f.name}={'***' if value else ''!r}")
            elif f.name in ("database_url", "mysql_url", "redis_url"):
                shown.append(f"{f.name}={mask_url(getattr(self, f.name))!r}")
            else:
                shown.append(f"{f.name}={getattr(self, f.name)!r}")
        return f"RelaySettings({', '.join(shown)})"

    # -- loading -----------------------------------------------------------------

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> RelaySettings:
        """Settings from ``OUTBOX_<FIELD>`` variables (``OUTBOX_DATABASE_URL``…), then overrides.

        ``overrides`` are field values (``kafka=KafkaConnection(...)``) or flat
        settings (``kafka_bootstrap_servers=...``). A variable of a renamed setting
        (``OUTBOX_HEARTBEAT_SECONDS``) is an error naming the new one.
        """
        below = values_from_env(cls, environ, renamed=RENAMED)
        for old, new in DEPRECATED.items():
            # A higher source (flags, keywords) wins whichever of the two names it uses.
            if old in overrides and new not in overrides:
                below.pop(new, None)
            if new in overrides:
                below.pop(old, None)
        return cls(**nest_values(cls, overlay(cls, below, overrides)))

    @classmethod
    def from_cli(
        cls, argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
    ) -> RelaySettings:
        """Settings from the environment with command-line flags on top."""
        return cls.from_env(environ, **values_from_cli(cls, build_parser(), argv))


RENAMED = {
    "heartbeat_seconds": "heartbeat_ms",
    "reconnect_max_seconds": "reconnect_max_ms",
    "progress_interval_seconds": "progress_interval_ms",
}
"""Settings renamed in 0.2 (durations are milliseconds): old name → new name."""


DEPRECATED = {"mysql_url": "database_url"}
"""Settings with a new name whose old one still works (one WARNING): old name → new name.
Given in the same place (both variables, or both flags), the new name wins."""


def build_parser() -> argparse.ArgumentParser:
    """The relay's argument parser; every setting is a flag."""
    return options_parser(
        RelaySettings,
        required=REQUIRED,
        renamed=RENAMED,
        prog=(
            "outbox-relay"
            if os.path.basename(sys.argv[0]) == "outbox-relay"
            else "python -m transactional_outbox.relay"
        ),
        description=(
            "Tail the MySQL/MariaDB binlog or PostgreSQL's logical replication and publish "
            "committed outbox events to Kafka, checkpointing the position in Redis. Every "
            "flag can also be set with the environment variable shown; flags win."
        ),
        epilog=(
            "exit codes: 0 stopped cleanly (SIGTERM/SIGINT); 1 unexpected error; "
            "2 invalid setting or server misconfigured; 3 checkpoint unusable (e.g. binlog "
            "purged, replication slot gone); 4 an event was rejected by Kafka for good"
        ),
    )
