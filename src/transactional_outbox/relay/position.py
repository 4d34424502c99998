"""Binlog positions, GTID state and the checkpoint's stored form. Pure.

A checkpoint is always the position *after* a transaction's commit, so
resuming from it starts at the next transaction's first event.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from ..exceptions import CheckpointError, ConfigurationError

__all__ = [
    "BinlogPosition",
    "GtidTracker",
    "MariaDBGtidState",
    "MySQLGtidSet",
    "Position",
    "StartPolicy",
    "decode_checkpoint",
    "encode_checkpoint",
    "server_identity",
    "uuid_text",
]

# v2 adds "server": which server's binlog FILE:POS names (v1 checkpoints, without it,
# are still read).
CHECKPOINT_VERSION = 2
_READABLE_VERSIONS = (1, 2)


@dataclass(frozen=True, slots=True, kw_only=True)
class BinlogPosition:
    """A resumable place in the binlog: file and offset, plus the GTID state there.

    ``gtid`` is the GTID set executed up to this point (MySQL ``uuid:1-5``
    form, or MariaDB ``domain-server-seq`` list), or ``None`` if not known.
    ``server`` names the server whose binlog ``file``/``pos`` belong to
    (:func:`server_identity`), or ``None`` if not known: file names and
    offsets mean nothing on another server (every fresh one starts at
    ``mysql-bin.000001``).
    """

    file: str
    pos: int
    gtid: str | None = None
    server: str | None = None

    def __str__(self) -> str:
        base = f"{self.file}:{self.pos}"
        return f"{base} (gtid {self.gtid})" if self.gtid else base

    @property
    def resumable(self) -> bool:
        """True once the position names a binlog file (a GTID-only start names none)."""
        return bool(self.file)

    def encode(self, *, saved_at: datetime | None = None) -> str:
        """The checkpoint value stored in Redis and Kafka (:func:`encode_checkpoint`)."""
        return encode_checkpoint(self, saved_at=saved_at)


class Position(Protocol):
    """What the relay's core needs of a database's position (a binlog position, an LSN):
    equality, text for messages, whether it can be resumed from, its checkpoint form."""

    @property
    def resumable(self) -> bool:
        """True if a source can resume from it."""

    def encode(self, *, saved_at: datetime | None = None) -> str:
        """The checkpoint value."""


_MARIADB_GTID = re.compile(r"^\d+-\d+-\d+$")


@dataclass(slots=True)
class MariaDBGtidState:
    """MariaDB GTID position: the last GTID seen per replication domain."""

    domains: dict[int, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str | None) -> MariaDBGtidState:
        """Parse ``@@gtid_binlog_pos`` text, e.g. ``0-1-42,1-2-7``."""
        state = cls()
        for part in (text or "").split(","):
            part = part.strip()
            if not part:
                continue
            if not _MARIADB_GTID.match(part):
                raise ValueError(f"not a MariaDB GTID: {part!r}")
            state.domains[int(part.split("-", 1)[0])] = part
        return state

    def update(self, gtid: str) -> None:
        """Record that the transaction ``gtid`` (``domain-server-seq``) committed."""
        self.domains[int(gtid.split("-", 1)[0])] = gtid

    def __str__(self) -> str:
        return ",".join(self.domains[d] for d in sorted(self.domains))


_UUID = r"[0-9a-fA-F]{8}-?(?:[0-9a-fA-F]{4}-?){3}[0-9a-fA-F]{12}"
_TAG = r"[A-Za-z_][A-Za-z0-9_]{0,31}"
_INTERVAL = r"\d+(?:-\d+)?"
# One member of a MySQL GTID set as the server prints it (8.3+ may add tags, several
# per uuid: ``uuid:1-4:tag_a:1-3:tag_b:7``).
_MYSQL_GTID_MEMBER = re.compile(
    rf"{_UUID}(?::{_TAG})?(?::{_INTERVAL})+(?::{_TAG}(?::{_INTERVAL})+)*"
)


def _is_gtid_set(value: str) -> bool:
    members = [p.strip() for p in value.split(",")]
    return all(_MARIADB_GTID.match(p) for p in members) or all(
        _MYSQL_GTID_MEMBER.fullmatch(p) for p in members
    )


@dataclass(slots=True)
class MySQLGtidSet:
    """MySQL GTID set, ``uuid:1-5:7,uuid2:1-3``, as intervals per source uuid.

    Tagged GTIDs (MySQL 8.3+, ``uuid:tag:n``) are kept with the tag as part of
    the source key.
    """

    intervals: dict[str, list[tuple[int, int]]] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str | None) -> MySQLGtidSet:
        """Parse ``@@gtid_executed`` text."""
        out = cls()
        for member in (text or "").replace("\n", "").split(","):
            member = member.strip()
            if not member:
                continue
            uuid, *rest = member.split(":")
            source = uuid.lower()
            for item in rest:
                if not item[:1].isdigit():  # a tag: applies to the intervals after it
                    source = f"{uuid.lower()}:{item.lower()}"  # MySQL tags are case-blind
                    continue
                lo, _, hi = item.partition("-")
                out.add_range(source, int(lo), int(hi or lo))
        return out

    def add_range(self, source: str, lo: int, hi: int) -> None:
        """Record that transactions ``lo`` to ``hi`` (inclusive) of ``source`` committed.

        ``source`` is a lower-case uuid, or ``uuid:tag``; the range merges with
        those already held.
        """
        ranges = sorted([*self.intervals.get(source, []), (lo, hi)])
        merged: list[tuple[int, int]] = []
        for a, b in ranges:
            if merged and a <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(merged[-1][1], b))
            else:
                merged.append((a, b))
        self.intervals[source] = merged

    def update(self, gtid: str) -> None:
        """Record that ``gtid`` (``uuid:n`` or ``uuid:tag:n``) committed."""
        source, _, gno = gtid.rpartition(":")
        self.add_range(source.lower(), int(gno), int(gno))

    def __str__(self) -> str:
        return ",".join(
            source + "".join(f":{a}" if a == b else f":{a}-{b}" for a, b in self.intervals[source])
            for source in sorted(self.intervals)
        )


def server_identity(*, is_mariadb: bool, server_id: int, server_uuid: str | None) -> str:
    """Which server a binlog position belongs to, as the checkpoint records it.

    MariaDB has no server uuid: ``server_id=N`` (with the GTID state beside it,
    checked with ``BINLOG_GTID_POS``); MySQL: ``server_uuid=...``.
    """
    if is_mariadb or not server_uuid:
        return f"server_id={server_id}"
    return f"server_uuid={server_uuid.lower()}"


def uuid_text(sid: bytes) -> str:
    """A MySQL source uuid's canonical text, from its 16 bytes."""
    h = sid.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class GtidTracker:
    """The GTID state after the commits a binlog parser read.

    Each commit's GTID waits in :attr:`pending` as the parser read it (MariaDB
    ``(domain, server_id, seq)``, MySQL ``(sid bytes, gno)``);
    :meth:`fold` merges them into the state once per hand-over, not per commit.
    Tracks nothing (``text`` stays ``start``) unless ``track``.
    """

    __slots__ = ("_mariadb", "_mysql", "pending", "text")

    def __init__(self, start: str | None, *, is_mariadb: bool, track: bool) -> None:
        self._mariadb = MariaDBGtidState.parse(start) if is_mariadb and track else None
        self._mysql = MySQLGtidSet.parse(start) if not is_mariadb and track else None
        self.pending: list[Any] = []  # GTIDs of commits not yet folded in
        self.text = start  # the state's text after the last fold

    def fold(self) -> str | None:
        """Merge :attr:`pending` into the state; return the state's text."""
        if not self.pending:
            return self.text
        gtids, self.pending = self.pending, []
        if self._mariadb is not None:
            domains = self._mariadb.domains
            for domain, server, seq in gtids:
                domains[domain] = f"{domain}-{server}-{seq}"
            self.text = str(self._mariadb)
        elif self._mysql is not None:
            # Coalesce runs of consecutive numbers first: the set merges each
            # run once, not each transaction.
            run_sid, lo, hi = None, 0, -1
            for sid, gno in gtids:
                if sid == run_sid and gno == hi + 1:
                    hi = gno
                    continue
                if run_sid is not None:
                    self._mysql.add_range(uuid_text(run_sid), lo, hi)
                run_sid, lo, hi = sid, gno, gno
            if run_sid is not None:
                self._mysql.add_range(uuid_text(run_sid), lo, hi)
            self.text = str(self._mysql)
        return self.text


def encode_checkpoint(position: BinlogPosition, *, saved_at: datetime | None = None) -> str:
    """The checkpoint value stored in Redis: a small, versioned JSON object."""
    return json.dumps(
        {
            "v": CHECKPOINT_VERSION,
            "file": position.file,
            "pos": position.pos,
            "gtid": position.gtid,
            "server": position.server,
            "saved_at": (saved_at or datetime.now(UTC)).isoformat(timespec="milliseconds"),
        },
        separators=(",", ":"),
    )


def decode_checkpoint(raw: str | bytes) -> Position:
    """Parse a stored checkpoint: a binlog position (version 2, or 1: without ``server``),
    or, with ``"db": "postgresql"``, an LSN (:mod:`.postgres.position`).

    Raises :class:`CheckpointError` for anything foreign.
    """
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise CheckpointError(
            f"stored checkpoint is not valid JSON: {raw[:100]!r}; delete the key or give "
            "an explicit start position"
        ) from None
    if not isinstance(data, dict) or data.get("v") not in _READABLE_VERSIONS:
        raise CheckpointError(
            f"stored checkpoint has an unknown format: {str(raw)[:100]!r}; delete the key or "
            "give an explicit start position"
        )
    if data.get("db", "mysql") != "mysql":
        if data.get("db") == "postgresql":
            from .postgres.position import decode_lsn_checkpoint

            return decode_lsn_checkpoint(data, raw)
        raise CheckpointError(
            f"stored checkpoint is of an unknown database: {str(raw)[:100]!r}; delete the key "
            "or give an explicit start position"
        )
    file, pos, gtid = data.get("file"), data.get("pos"), data.get("gtid")
    if not isinstance(file, str) or not file or not isinstance(pos, int) or pos < 4:
        raise CheckpointError(f"stored checkpoint has an invalid file/pos: {str(raw)[:100]!r}")
    if gtid is not None and not isinstance(gtid, str):
        raise CheckpointError(f"stored checkpoint has an invalid gtid: {str(raw)[:100]!r}")
    server = data.get("server") if data["v"] >= 2 else None
    if server is not None and (not isinstance(server, str) or not server):
        raise CheckpointError(f"stored checkpoint has an invalid server: {str(raw)[:100]!r}")
    return BinlogPosition(file=file, pos=pos, gtid=gtid or None, server=server)


@dataclass(frozen=True, slots=True)
class StartPolicy:
    """Where to start when there is no checkpoint, or when told to ignore it.

    ``kind`` is ``latest`` (the server's current end: only new events),
    ``earliest`` (the oldest binlog still on the server), ``position``
    (``file:pos``) or ``gtid`` (a GTID set).
    """

    kind: str
    file: str | None = None
    pos: int | None = None
    gtid: str | None = None

    @property
    def explicit(self) -> bool:
        """True for a start the user named exactly (file:pos or a GTID set)."""
        return self.kind in ("position", "gtid")

    @classmethod
    def parse(cls, text: str) -> StartPolicy:
        """Parse ``latest``, ``earliest``, ``mysql-bin.000003:1234`` or a GTID set."""
        value = text.strip()
        if value in ("latest", "earliest"):
            return cls(value)
        if value.startswith("gtid:"):
            gtid = value[5:].strip()
            if not _is_gtid_set(gtid):
                raise ConfigurationError("start_position", f"{text!r} is not a GTID set")
            return cls("gtid", gtid=gtid)
        # Before FILE:POS: a one-GTID MySQL set, ``uuid:23``, has the same shape.
        if _is_gtid_set(value):
            return cls("gtid", gtid=value)
        m = re.fullmatch(r"([^:\s]+):(\d+)", value)
        if m:
            if int(m.group(2)) < 4:
                raise ConfigurationError("start_position", f"binlog offset must be >= 4: {text!r}")
            return cls("position", file=m.group(1), pos=int(m.group(2)))
        raise ConfigurationError(
            "start_position",
            f"{text!r} is not 'latest', 'earliest', 'FILE:POS' or a GTID set",
        )
