"""Checks of the relay settings that only a PostgreSQL relay has, or does not support yet.

Called from :func:`..settings_checks.validate` when ``database_url`` is a
PostgreSQL URL; each raises :class:`ConfigurationError` naming the setting.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from ...exceptions import ConfigurationError
from .wire import PgConnectParams

if TYPE_CHECKING:
    from ..config import RelaySettings

__all__ = ["check_postgres_settings"]

_NAME = re.compile(r"[a-z0-9_]{1,63}")


def check_postgres_settings(s: RelaySettings) -> None:
    """Raise :class:`ConfigurationError` for a setting a PostgreSQL relay cannot use."""
    PgConnectParams.from_url(s.database_url, setting="database_url")
    if s.start_position not in ("latest", "earliest"):
        raise ConfigurationError(
            "start_position",
            f"{s.start_position!r} is a binlog position; a PostgreSQL relay starts at its "
            "replication slot (latest or earliest: both mean the slot's position)",
        )
    if s.canary is not None and s.canary.interval_ms > 0:
        raise ConfigurationError(
            "canary_interval_ms", "the canary is for MySQL/MariaDB relays so far: set it to 0"
        )
    for name, value in (("pg_slot", s.slot_name), ("pg_publication", s.publication_name)):
        if not _NAME.fullmatch(value):
            raise ConfigurationError(
                name, f"{value!r} is no valid name (1-63 of lower-case letters, digits, _)"
            )
    if not (s.tables or s.pg_message_prefixes or s.outbox_table_pattern):
        raise ConfigurationError(
            "outbox_table", "is empty and pg_message_prefixes is not set: nothing to read"
        )
