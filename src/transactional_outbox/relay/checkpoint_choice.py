"""Which stored copy of the checkpoint a start uses. Pure.

The checkpoint lives in two stores: Redis (the primary copy, fenced by the
lease) and a compacted Kafka topic (the copy that outlives Redis). Each copy
carries the fencing token of the leader that wrote it and that process's save
number (``seq``, growing with every save), next to the encoded checkpoint,
which this module never reads.

The rule, for copies that name only acknowledged positions:

1. In the Kafka topic, a tombstone (null value) for the key deletes every
   record before it in its partition.
2. Of the copies left (the Redis one and the Kafka records), the highest
   ``(token, seq)`` wins; a tie goes to Redis (the same save, written there
   first). A Redis copy without a token (written by hand or by an older relay)
   outranks every Kafka record.

Tokens only grow (a new leader's is higher than any before it, also after
Redis lost its counter: the relay raises the counter above the highest token
in Kafka before it writes), so a stale leader's late Kafka write carries a
lower token than the newer leader's copies and cannot win over them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from ..exceptions import CheckpointError, ConfigurationError

__all__ = [
    "COPY_VERSION",
    "CheckpointCopy",
    "KafkaCopies",
    "choose_copy",
    "decode_copy",
    "encode_copy",
    "fold_records",
]

COPY_VERSION = 1


@dataclass(frozen=True, slots=True)
class CheckpointCopy:
    """One stored copy: where, the writer's fencing token and save number, the value.

    ``token`` is ``None`` for a Redis copy written without one (by hand, or by
    an older relay): it outranks every Kafka record.
    """

    store: str  # "Redis" or "Kafka"
    token: int | None
    seq: int
    value: str  # the encoded checkpoint (relay/position.py), opaque here

    @property
    def rank(self) -> tuple[float, int, int]:
        """Sort key: higher wins (token, then save number, then Redis on a tie)."""
        token = float("inf") if self.token is None else float(self.token)
        return (token, self.seq, 1 if self.store == "Redis" else 0)


@dataclass(frozen=True, slots=True)
class KafkaCopies:
    """What the checkpoint topic holds for one key, folded."""

    latest: CheckpointCopy | None = None  # the winning record after the last tombstone
    seen: bool = False  # any record or tombstone for the key: the relay ran before
    max_token: int = 0  # the highest token of any record, tombstoned or not
    records: int = 0
    unreadable: int = 0  # records that are not copies (read with strict=False)


def encode_copy(*, token: int, seq: int, value: str) -> bytes:
    """A Kafka record value: the writer's token and save number, and the checkpoint."""
    body = {"v": COPY_VERSION, "token": token, "seq": seq, "checkpoint": value}
    return json.dumps(body, separators=(",", ":")).encode()


def decode_copy(raw: bytes, *, where: str) -> CheckpointCopy:
    """Parse a record value written by :func:`encode_copy`.

    Raises :class:`CheckpointError` naming ``where`` for anything else: a copy
    the relay cannot read is never skipped in silence.
    """
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        data = None
    ok = (
        isinstance(data, dict)
        and data.get("v") == COPY_VERSION
        and isinstance(data.get("token"), int)
        and isinstance(data.get("seq"), int)
        and isinstance(data.get("checkpoint"), str)
    )
    if not ok:
        raise CheckpointError(
            f"{where} holds a record this relay cannot read: {bytes(raw[:100])!r}; "
            "write a tombstone (null value) for the key, or start with --ignore-checkpoint "
            "and an explicit --start-position"
        )
    assert isinstance(data, dict)
    return CheckpointCopy("Kafka", int(data["token"]), int(data["seq"]), str(data["checkpoint"]))


def fold_records(
    records: Iterable[tuple[int, bytes | None]], *, where: str, strict: bool = True
) -> KafkaCopies:
    """Fold the key's records, ``(partition, value)`` in each partition's log order.

    A record that is not a copy raises :class:`CheckpointError`, or, unless
    ``strict`` (``--ignore-checkpoint``), is counted in ``unreadable``.
    """
    live: dict[int, list[CheckpointCopy]] = {}
    seen, max_token, count, unreadable = False, 0, 0, 0
    for partition, value in records:
        seen = True
        count += 1
        if value is None:
            live[partition] = []  # a tombstone deletes what came before it
            continue
        try:
            copy = decode_copy(value, where=where)
        except CheckpointError:
            if strict:
                raise
            unreadable += 1
            continue
        max_token = max(max_token, copy.token or 0)
        live.setdefault(partition, []).append(copy)
    candidates = [c for copies in live.values() for c in copies]
    latest = max(candidates, key=lambda c: c.rank) if candidates else None
    return KafkaCopies(
        latest=latest, seen=seen, max_token=max_token, records=count, unreadable=unreadable
    )


def choose_copy(
    redis: CheckpointCopy | None,
    kafka: KafkaCopies,
    *,
    ran_before_in_redis: bool,
    explicit_start: bool,
    ignore_checkpoint: bool,
    relay: str,
    where: str,
) -> CheckpointCopy | None:
    """The copy to start from (``None``: start at ``start_position``).

    Raises :class:`ConfigurationError` (``start_position``) when a store shows
    the relay ran before but no copy survives and the start position is not
    explicit: ``latest``/``earliest`` are for a relay never seen, else events
    committed while it was down would be skipped. ``where`` names the two
    stores in that message.
    """
    candidates = [c for c in (redis, kafka.latest) if c is not None]
    if candidates:
        return max(candidates, key=lambda c: c.rank)
    if ignore_checkpoint or explicit_start or not (ran_before_in_redis or kafka.seen):
        return None
    evidence = " and ".join(
        what
        for what, shown in (
            ("Redis has the token key of its last save", ran_before_in_redis),
            ("Kafka has records for it", kafka.seen),
        )
        if shown
    )
    raise ConfigurationError(
        "start_position",
        f"relay {relay!r} ran before ({evidence}) but no checkpoint survives in {where}: "
        "starting at latest/earliest could skip events committed while it was down. "
        "Restart with --start-position FILE:POS or a GTID set where it should resume, or "
        "add --ignore-checkpoint to start at --start-position anyway",
    )
