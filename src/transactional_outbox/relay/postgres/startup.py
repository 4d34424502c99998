"""Starting a PostgreSQL relay's term: check the server, the role, the tables, the
publication and the slot, and resolve the start LSN.

**Which wins, the checkpoint or the slot.** The source starts at the greater
of the checkpoint's LSN and the slot's ``confirmed_flush_lsn``: both are
acknowledged positions (the checkpointer saves only the watermark, and the
slot is confirmed only after that save succeeded), so either skips only
published events, and the newer one repeats fewer. A slot that is gone while
a checkpoint exists is :class:`.checks.SlotLostError` (exit 3), never a new
slot at the current LSN; a checkpoint of another cluster (its system
identifier differs) or beyond the server's WAL is a ``CheckpointError``.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass

from ...exceptions import CheckpointError, ConfigurationError, ServerConfigurationError
from ..position import Position
from .checks import (
    SlotState,
    check_role,
    check_server,
    check_start_lsn,
    check_tables,
    ensure_slot,
)
from .pattern import ensure_all_tables_publication, matching_tables
from .position import LsnPosition
from .publication import ensure_publication, publication_gone, publication_state
from .wire import PgConnectParams, PgServerError, PgWire, format_lsn, parse_lsn, quote_literal

__all__ = ["TRANSIENT", "PgStart", "advance_slot", "login_error", "resolve_start"]

RELEASE_WAIT = 5.0  # seconds a stopped source's WAL sender may take to let the slot go

log = logging.getLogger("transactional_outbox.relay")

# Server answers a retry may fix: starting up or shutting down, too many connections.
TRANSIENT = frozenset({"57P01", "57P02", "57P03", "53300", "08006", "08003"})


@dataclass(frozen=True, slots=True)
class PgStart:
    """Where a PostgreSQL term starts, and why."""

    position: LsnPosition
    why: str
    slot: SlotState
    version: str
    matched: tuple[tuple[str, str], ...] = ()  # tables outbox_table_pattern matched
    publication: int = 0  # the publication's oid (the watch notices another one)


def login_error(exc: PgServerError) -> ConfigurationError | None:
    """The misconfiguration a server error at login means, if it means one."""
    if exc.code.startswith("28") or exc.code == "3D000":  # login refused, no such database
        return ConfigurationError("database_url", f"the server refused: {exc.message}")
    return None


def identify(params: PgConnectParams) -> tuple[str, int]:
    """The cluster's system identifier and timeline (``IDENTIFY_SYSTEM``)."""
    wire = PgWire(params, replication=True)
    try:
        row = wire.query("IDENTIFY_SYSTEM")[0]
    finally:
        wire.close()
    return str(row[0]), int(row[1] or 0)


def resolve_start(
    params: PgConnectParams,
    *,
    tables: list[tuple[str, str]],
    table_setting: str,
    publication: str,
    slot_name: str,
    create: bool,
    checkpoint: Position | None,
    ran_before: bool = False,
    pattern: str | None = None,
    stop_on_bad: bool = True,
) -> PgStart:
    """Run the startup checks, create what is missing (``create``), pick the start LSN.

    ``ran_before``: a store shows this relay saved before, even with no checkpoint
    left; then a missing slot is :class:`.checks.SlotLostError`, never a new one.
    ``pattern`` (``outbox_table_pattern``): the publication must publish every table
    (:mod:`.pattern`); a matching table that cannot hold events stops the relay
    (``stop_on_bad``) or is named in a WARNING (its rows will be rejected).

    Blocking. Raises :class:`ConfigurationError` (exit 2) naming the setting to
    change, :class:`CheckpointError` (exit 3) for a checkpoint or slot that
    cannot be used.
    """
    if checkpoint is not None and not isinstance(checkpoint, LsnPosition):
        raise CheckpointError(
            f"the checkpoint ({checkpoint}) is a MySQL/MariaDB binlog position, and this relay "
            "reads PostgreSQL: give this relay its own relay_name (relays of two databases "
            "must not share one), or start it once with --ignore-checkpoint"
        )
    system, timeline = identify(params)
    if checkpoint is not None and checkpoint.system not in (None, system):
        raise CheckpointError(
            f"the checkpoint at {checkpoint} was saved against another PostgreSQL cluster "
            f"(system identifier {checkpoint.system}, this one is {system}): its LSN means "
            "nothing here. If this cluster replaced that one on purpose, start once with "
            "--ignore-checkpoint (events the old cluster committed after the checkpoint are "
            "not read)"
        )
    conn = PgWire(params)
    try:
        rows = conn.query("SHOW server_version")
        version = f"PostgreSQL {rows[0][0]}" if rows else "PostgreSQL"
        check_server(conn)
        check_role(conn)
        check_tables(conn, tables, setting=table_setting)
        if checkpoint is not None:
            check_start_lsn(conn, checkpoint.lsn)
        matched: list[tuple[str, str]] = []
        if pattern:
            created = ensure_all_tables_publication(conn, publication, create=create)
            matched, bad = matching_tables(conn, re.compile(pattern), listed=tuple(tables))
            for problem in bad:
                if stop_on_bad:
                    raise ServerConfigurationError(
                        "outbox_table_pattern",
                        f"{problem}; it matches {pattern!r} and on_rejected=stop (narrow the "
                        "pattern, fix the table, or use on_rejected=dead-letter)",
                    )
                log.warning(
                    "%s; it matches outbox_table_pattern: its rows will be rejected", problem
                )
        else:
            created = ensure_publication(conn, publication, tables, create=create)
        ran = ran_before or checkpoint is not None
        slot = ensure_slot(conn, slot_name, ran_before=ran, create=create)
        if created and not slot.created:
            # The slot's WAL up to now cannot be decoded through a publication made now.
            raise publication_gone(publication, slot_name, None)
        pub_oid = publication_state(conn, publication).oid
    finally:
        conn.close()
    at = checkpoint.lsn if checkpoint is not None else 0
    if slot.created:
        why = f"new slot {slot_name}"
    elif checkpoint is None:
        why = f"slot {slot_name}'s confirmed position (no checkpoint)"
    elif slot.confirmed_flush_lsn > at:
        why = f"slot {slot_name}, ahead of the checkpoint at {checkpoint}"
    else:
        why = "checkpoint"
    lsn = max(at, slot.confirmed_flush_lsn)
    if slot.active:
        log.info(
            "slot %s is still active (an earlier leader's connection?): the source retries "
            "until PostgreSQL lets it go (wal_sender_timeout)",
            slot_name,
        )
    position = LsnPosition(lsn=lsn, system=system, timeline=timeline)
    return PgStart(position, why, slot, version, tuple(matched), pub_oid)


def advance_slot(params: PgConnectParams, slot: str, lsn: int) -> None:
    """Move ``slot``'s confirmed position to ``lsn`` (acknowledged and checkpointed) with
    ``pg_replication_slot_advance``, once no connection streams from it. Blocking; logs
    and returns on any failure: the slot then stays where it was (a restart repeats from
    there, losing nothing)."""
    query = (
        "SELECT active, confirmed_flush_lsn FROM pg_replication_slots "
        f"WHERE slot_name = {quote_literal(slot)}"
    )
    deadline = time.monotonic() + RELEASE_WAIT
    try:
        conn = PgWire(params)
    except (OSError, PgServerError) as exc:
        log.warning("slot %s not advanced to %s (%s)", slot, format_lsn(lsn), exc)
        return
    try:
        while True:
            rows = conn.query(query)
            if not rows or parse_lsn(str(rows[0][1])) >= lsn:
                return  # gone (reported at the next start), or already there
            if rows[0][0] != "t":
                try:
                    conn.query(
                        f"SELECT pg_replication_slot_advance({quote_literal(slot)}, "
                        f"{quote_literal(format_lsn(lsn))})"
                    )
                    return
                except PgServerError as exc:
                    if exc.code != "55006":  # object_in_use: taken again meanwhile
                        raise
            if time.monotonic() > deadline:
                log.info("slot %s still in use: left at its last confirmed position", slot)
                return
            time.sleep(0.05)  # the stopped source's WAL sender is exiting
    except (OSError, PgServerError) as exc:
        log.warning("slot %s not advanced to %s (%s)", slot, format_lsn(lsn), exc)
    finally:
        conn.close()
