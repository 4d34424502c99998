"""Where a checkpoint resumes on the server behind the address now, which may not be
the one that wrote it (a failover). Pure, but for :func:`explain_refusal`.

A checkpoint's ``FILE:POS`` names a place in one server's binlog; every fresh
server starts at ``mysql-bin.000001``, so the same name on another server is
another place, or the middle of an event. Its GTID state names the same place
on every server of a replication topology. So (the decision table,
DESIGN §3):

==================  ===================  ======================================
server has GTIDs    resume_by_gtid       resumes
==================  ===================  ======================================
yes                 auto, on             by GTID, if the server has every GTID of
                                         the checkpoint (else exit 3: promoted
                                         while behind, or diverged, with advice)
yes                 off                  by FILE:POS, same server only, and only
                                         where ``BINLOG_GTID_POS`` (MariaDB)
                                         says the checkpoint's GTID state is
no                  auto, off            by FILE:POS, same server only (else
                                         exit 3: the server changed)
no                  on                   exit 2: resume_by_gtid=on needs GTIDs
==================  ===================  ======================================

A checkpoint without a GTID state (a MySQL server without GTIDs wrote it)
takes the FILE:POS rows; one without a server (version 1) skips the
identity check but not the others.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pymysql

from ...exceptions import BinlogPurgedError, CheckpointError, ConfigurationError
from ..position import BinlogPosition, MariaDBGtidState, MySQLGtidSet, server_identity

if TYPE_CHECKING:
    from .checks import ServerInfo

__all__ = [
    "check_same_place",
    "explain_refusal",
    "gtid_mode",
    "gtid_mode_option",
    "missing_gtids",
    "read_identity",
    "resume_checkpoint",
    "same_place",
    "shared_state",
    "uses_gtid",
]

_START_ONCE = "(used for this start because the checkpoint is unusable)"


_MODES = {
    "auto": "auto",
    "on": "on",
    "off": "off",
    # resume_by_gtid was a true/false setting before it had auto: those values still work.
    "true": "on",
    "false": "off",
    "1": "on",
    "0": "off",
    "yes": "on",
    "no": "off",
}


def gtid_mode(value: object) -> str:
    """resume_by_gtid as auto/on/off (a bool or true/false text as on/off)."""
    if isinstance(value, bool):
        return "on" if value else "off"
    mode = _MODES.get(str(value).strip().lower())
    if mode is None:
        raise ConfigurationError(
            "resume_by_gtid", f"{value!r} is not a choice: choose one of auto, on, off"
        )
    return mode


def gtid_mode_option() -> Any:
    """The ``resume_by_gtid`` settings field: auto, on or off, with the flag's old
    boolean forms (``--resume-by-gtid`` alone, ``--no-resume-by-gtid``)."""
    return dataclasses.field(
        default="auto",
        metadata={
            "help": "how every (re)connection finds its place: auto (by GTID when the server "
            "has GTIDs, else by FILE:POS on the server that wrote it), on (by GTID) or off (by "
            "FILE:POS); true/false mean on/off",
            "choices": (),
            "bare": "on",  # --resume-by-gtid alone, as when this was a true/false flag
            "negated": "off",  # --no-resume-by-gtid
        },
    )


def uses_gtid(mode: str, *, gtid_enabled: bool) -> bool:
    """Whether connections resume by GTID under ``resume_by_gtid=mode``."""
    return mode == "on" or (mode == "auto" and gtid_enabled)


def _mariadb_last(state: str) -> dict[tuple[int, int], int]:
    """``@@gtid_binlog_state``-like text as {(domain, server): last seq}."""
    out: dict[tuple[int, int], int] = {}
    for gtid in filter(None, (p.strip() for p in state.split(","))):
        d, s, n = (int(x) for x in gtid.split("-"))
        out[(d, s)] = max(n, out.get((d, s), 0))
    return out


def missing_gtids(checkpoint_gtid: str, server_state: str, *, is_mariadb: bool) -> list[str]:
    """The GTIDs of the checkpoint's state the server's binlog never had.

    MariaDB: ``server_state`` is ``@@gtid_binlog_state`` (the last GTID per
    domain and server); a GTID ``d-s-n`` is there when the server logged
    ``d-s-m`` with ``m >= n``. A domain the server has no GTID of at all is not
    missing: the server streams that domain from its start (nothing of it is
    in its binlog to skip). MySQL: the checkpoint's set minus ``@@gtid_executed``.
    """
    if is_mariadb:
        last = _mariadb_last(server_state)
        domains = {d for d, _ in last}
        missing = []
        for gtid in MariaDBGtidState.parse(checkpoint_gtid).domains.values():
            d, s, n = (int(x) for x in gtid.split("-"))
            if d in domains and last.get((d, s), -1) < n:
                missing.append(gtid)
        return missing
    have = MySQLGtidSet.parse(server_state).intervals
    out = []
    for source, ranges in MySQLGtidSet.parse(checkpoint_gtid).intervals.items():
        for lo, hi in ranges:
            for n in (lo, hi):  # the set is contiguous from 1 in practice: check the ends
                if not any(a <= n <= b for a, b in have.get(source, [])):
                    out.append(f"{source}:{n}")
                    break
    return out


def shared_state(checkpoint_gtid: str, server_state: str) -> str | None:
    """MariaDB: the newest GTID state both the checkpoint and the server's binlog passed
    through, or ``None`` if a domain cannot be told.

    With ``gtid_strict_mode`` each domain's history is one sequence: the server
    holds the checkpoint's server's GTIDs up to ``d-s-m`` and resuming after
    ``d-s-m`` reads everything it logged after that.
    """
    last = _mariadb_last(server_state)
    domains = {d for d, _ in last}
    parts = []
    for gtid in MariaDBGtidState.parse(checkpoint_gtid).domains.values():
        d, s, n = (int(x) for x in gtid.split("-"))
        if (d, s) in last:
            parts.append(f"{d}-{s}-{min(n, last[(d, s)])}")
        elif d in domains:
            return None
        else:
            parts.append(gtid)
    return ",".join(parts)


def same_place(a: str | None, b: str | None) -> bool:
    """Whether two MariaDB GTID states are the same state (order and spacing aside)."""
    return str(MariaDBGtidState.parse(a)) == str(MariaDBGtidState.parse(b))


def _not_on_server(gtid: str, missing: list[str], info: ServerInfo) -> CheckpointError:
    state = info.gtid_state or ""
    shared = shared_state(gtid, state) if info.is_mariadb else None
    if shared:
        fix = f"restart once with --start-position gtid:{shared} {_START_ONCE}"
    else:
        fix = (
            "restart once with --ignore-checkpoint --start-position earliest to resend "
            "everything the server's binlog still has (duplicates, nothing lost)"
        )
    return CheckpointError(
        f"the server does not have GTID {', '.join(missing)} of the checkpoint (GTID state "
        f"{gtid}; the server's binlog state is {state or 'empty'}): it was promoted while "
        "behind the old primary, or diverged from it. Transactions the old primary committed "
        "and never replicated are gone from this database; the relay may have published their "
        "events already (their ids let consumers tell). If another replica has that GTID, "
        f"promote it instead; else, to publish everything this server has after what both "
        f"share, {fix}"
    )


def _purged_by_gtid(gtid: str, info: ServerInfo, gtid_at: Callable[[str, int], Any]) -> bool:
    if not info.is_mariadb:
        purged = MySQLGtidSet.parse(info.gtid_purged or "").intervals
        have = MySQLGtidSet.parse(gtid).intervals
        return any(
            not any(a <= lo and hi <= b for a, b in have.get(src, []))
            for src, ranges in purged.items()
            for lo, hi in ranges
        )
    if not info.binlogs:
        return False
    oldest = MariaDBGtidState.parse(gtid_at(info.binlogs[0], 4) or "").domains
    ours = MariaDBGtidState.parse(gtid).domains
    return any(
        d in ours and int(ours[d].rsplit("-", 1)[1]) < int(g.rsplit("-", 1)[1])
        for d, g in oldest.items()
    )


def resume_checkpoint(
    checkpoint: BinlogPosition,
    info: ServerInfo,
    *,
    mode: str,
    gtid_at: Callable[[str, int], str | None],
) -> tuple[BinlogPosition, str]:
    """Where ``checkpoint`` resumes on the server ``info`` describes, and why; see the
    module's table. ``gtid_at(file, pos)`` is the server's ``BINLOG_GTID_POS``.

    Raises :class:`CheckpointError` (exit 3) when it cannot resume there,
    :class:`ConfigurationError` for ``resume_by_gtid=on`` without GTIDs.
    """
    if mode == "on" and not info.gtid_enabled:
        raise ConfigurationError(
            "resume_by_gtid",
            "is on, but the server has no GTIDs (gtid_mode is OFF): set gtid_mode=ON "
            "on the server, or resume_by_gtid=auto",
        )
    gtid = checkpoint.gtid
    if gtid is not None and uses_gtid(mode, gtid_enabled=info.gtid_enabled):
        missing = missing_gtids(gtid, info.gtid_state or "", is_mariadb=info.is_mariadb)
        if missing:
            raise _not_on_server(gtid, missing, info)
        if _purged_by_gtid(gtid, info, gtid_at):
            raise BinlogPurgedError(
                f"the server purged binlogs with transactions after the checkpoint {checkpoint} "
                f"(oldest binlog: {info.binlogs[0] if info.binlogs else 'none'}); "
                "events in them may be lost. Restart once with --start-position FILE:POS or "
                f"a GTID set {_START_ONCE} to accept that and start there."
            )
        return checkpoint, f"checkpoint, by GTID {gtid}"
    if checkpoint.server is not None and checkpoint.server != info.identity:
        raise _server_changed(checkpoint, info.identity, gtids=info.gtid_enabled and bool(gtid))
    if checkpoint.file not in info.binlogs:
        oldest = info.binlogs[0] if info.binlogs else "none"
        raise BinlogPurgedError(
            f"the checkpoint {checkpoint} names a binlog the server no longer has (oldest: "
            f"{oldest}); events between them may be lost. Restart once with --start-position "
            f"FILE:POS or a GTID set {_START_ONCE} to accept that and start there."
        )
    if info.is_mariadb and gtid is not None:
        here = gtid_at(checkpoint.file, checkpoint.pos)
        if not same_place(here, gtid):
            raise _not_here(checkpoint, here)
    return checkpoint, "checkpoint"


def _server_changed(checkpoint: BinlogPosition, identity: str, *, gtids: bool) -> CheckpointError:
    if gtids:
        fix = "set resume_by_gtid=auto: this server has GTIDs and will find the place"
    else:
        fix = (
            "find the first transaction not yet published in this server's binlog and "
            f"restart once with --start-position FILE:POS {_START_ONCE}, or with "
            "--ignore-checkpoint --start-position earliest to resend everything it has"
        )
    return CheckpointError(
        f"the server changed: the checkpoint {checkpoint} is a place in the binlog of "
        f"{checkpoint.server}, this server is {identity} (a failover, or another server "
        f"behind the address) and that FILE:POS means nothing here: {fix}"
    )


def _not_here(checkpoint: BinlogPosition, here: str | None) -> CheckpointError:
    return CheckpointError(
        f"the checkpoint {checkpoint} is not a place in this server's binlog: "
        f"{checkpoint.file}:{checkpoint.pos} here is at GTID state {here or 'none'} "
        "(another server's file of the same name, or a failover). Set "
        "resume_by_gtid=auto to resume by the checkpoint's GTID state"
    )


def check_same_place(
    cur: Any, position: BinlogPosition, identity: str, *, is_mariadb: bool
) -> None:
    """Before a FILE:POS dump: raise :class:`CheckpointError` unless ``position`` is a
    place in the binlog of the server ``cur`` reached (``identity``) and, on MariaDB,
    ``BINLOG_GTID_POS`` there is the position's GTID state."""
    if position.server is not None and position.server != identity:
        raise _server_changed(position, identity, gtids=is_mariadb and bool(position.gtid))
    if is_mariadb and position.gtid is not None:
        cur.execute("SELECT BINLOG_GTID_POS(%s, %s)", (position.file, position.pos))
        row = cur.fetchone()
        here = None if row is None or row[0] is None else str(row[0])
        # None: no such file (purged, or never here); the dump's refusal says which.
        if here is not None and not same_place(here, position.gtid):
            raise _not_here(position, here)


def read_identity(cur: Any, *, is_mariadb: bool) -> str:
    """The identity (:func:`server_identity`) of the server ``cur`` is connected to."""
    if is_mariadb:
        cur.execute("SELECT @@server_id")
        return server_identity(is_mariadb=True, server_id=int(cur.fetchone()[0]), server_uuid=None)
    cur.execute("SELECT @@server_id, @@server_uuid")
    row = cur.fetchone()
    return server_identity(is_mariadb=False, server_id=int(row[0]), server_uuid=str(row[1]))


def explain_refusal(
    connect_args: dict[str, Any],
    position: BinlogPosition,
    text: str,
    *,
    by_gtid: bool,
    is_mariadb: bool,
) -> CheckpointError:
    """The error for a dump the server refused with 1236 (``text``), checked with an
    ordinary connection: "purged" only when the binlog really is gone."""
    try:
        conn = pymysql.connect(**{**connect_args, "connect_timeout": 10})
    except pymysql.err.MySQLError as exc:
        return CheckpointError(
            f"the server refused to stream from {position}: {text} (and could not be asked "
            f"why: {exc}); restart the relay to check again"
        )
    try:
        from .checks import describe_server

        info = describe_server(conn, is_mariadb=is_mariadb)
        with conn.cursor() as cur:

            def gtid_at(file: str, pos: int) -> str | None:
                cur.execute("SELECT BINLOG_GTID_POS(%s, %s)", (file, pos))
                row = cur.fetchone()
                return None if row is None or row[0] is None else str(row[0])

            mode = "on" if by_gtid else "off"
            try:
                resume_checkpoint(position, info, mode=mode, gtid_at=gtid_at)
            except (CheckpointError, ConfigurationError) as exc:
                if isinstance(exc, CheckpointError):
                    return exc
        return CheckpointError(
            f"the server refused to stream from {position}: {text}; it still has "
            f"{position.file or 'the GTIDs'}, so nothing was purged. Restart the relay "
            "(resume_by_gtid=auto resumes by GTID)"
        )
    finally:
        conn.close()
