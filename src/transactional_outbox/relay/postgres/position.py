"""The PostgreSQL relay's position and its checkpoint form (DESIGN §3). Pure.

A position is the end LSN of a committed transaction: ``START_REPLICATION ...
LOGICAL <lsn>`` resumes after it. ``system`` (``IDENTIFY_SYSTEM``'s system
identifier) and ``timeline`` say whose WAL the LSN belongs to: an LSN means
nothing on another cluster, so a checkpoint of another one is never used in
silence.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ...exceptions import CheckpointError
from .wire import format_lsn, parse_lsn

__all__ = ["LsnPosition", "decode_lsn_checkpoint"]

KIND = "postgresql"


@dataclass(frozen=True, slots=True, kw_only=True)
class LsnPosition:
    """A resumable place in PostgreSQL's WAL: the end LSN of a committed transaction."""

    lsn: int
    system: str | None = None
    timeline: int | None = None

    def __str__(self) -> str:
        return format_lsn(self.lsn)

    @property
    def resumable(self) -> bool:
        """True once the position names a place in the WAL (0 names none)."""
        return self.lsn > 0

    def encode(self, *, saved_at: datetime | None = None) -> str:
        """The checkpoint value stored in Redis and Kafka."""
        return json.dumps(
            {
                "v": 2,
                "db": KIND,
                "lsn": format_lsn(self.lsn),
                "system": self.system,
                "timeline": self.timeline,
                "saved_at": (saved_at or datetime.now(UTC)).isoformat(timespec="milliseconds"),
            },
            separators=(",", ":"),
        )


def decode_lsn_checkpoint(data: dict[str, Any], raw: str | bytes) -> LsnPosition:
    """The position of a decoded checkpoint whose ``db`` is ``postgresql``."""
    try:
        lsn = parse_lsn(str(data.get("lsn")))
    except ValueError:
        raise CheckpointError(f"stored checkpoint has an invalid lsn: {str(raw)[:100]!r}") from None
    system, timeline = data.get("system"), data.get("timeline")
    if system is not None and not isinstance(system, str):
        raise CheckpointError(f"stored checkpoint has an invalid system: {str(raw)[:100]!r}")
    if timeline is not None and (not isinstance(timeline, int) or timeline < 1):
        raise CheckpointError(f"stored checkpoint has an invalid timeline: {str(raw)[:100]!r}")
    return LsnPosition(lsn=lsn, system=system, timeline=timeline)
