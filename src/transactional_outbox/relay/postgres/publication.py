"""The relay's publication: what it must be, checked at start and while the relay reads.

pgoutput decodes each transaction with the publication as it was then (the
catalog as of the transaction's place in the WAL). A publication that stops
covering an outbox table therefore makes PostgreSQL leave that table's rows out
of the stream without any error: a table dropped from it, an outbox table
dropped and created again (the new table is in no publication) or renamed away,
a row filter or a column list added, ``publish`` without ``insert``. A restart
from an older position decodes those transactions the same way again, so
nothing brings their events back (checked on PostgreSQL 15 with
``pg_logical_slot_peek_binary_changes``). Hence, in one place:

- at start, an existing publication must publish the INSERTs of exactly the
  outbox tables, unfiltered (:func:`ensure_publication`; a pattern's FOR ALL
  TABLES one: :mod:`.pattern`). The fix it advises keeps the publication
  (``ALTER PUBLICATION ... SET TABLE``): one created after the slot's position
  cannot decode the WAL before it;
- while a term streams, :class:`PublicationWatch` checks it again every
  :data:`WATCH_SECONDS` on a connection of its own, and the first wrong answer
  stops the relay (exit 2) naming the LSN after which rows may have been left
  out: the loss is bounded and said, never silent;
- a publication missing where the relay must read (dropped, dropped and created
  again, or created after the slot's position) is :class:`PublicationGoneError`
  (exit 3), whether the watch, the start or the stream (pgoutput's SQLSTATE
  42704) finds it.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass

from ...exceptions import CheckpointError, ConfigurationError
from .pattern import pattern_problem
from .wire import (
    PgConnectParams,
    PgServerError,
    PgWire,
    format_lsn,
    parse_lsn,
    quote_ident,
    quote_literal,
)

__all__ = [
    "WATCH_SECONDS",
    "PublicationGoneError",
    "PublicationState",
    "PublicationWatch",
    "create_sql",
    "ensure_publication",
    "fix_sql",
    "publication_gone",
    "publication_problem",
    "publication_state",
]

log = logging.getLogger("transactional_outbox.relay")

WATCH_SECONDS = 1.0
"""How often a streaming relay checks its publication again: the longest a change goes
unnoticed. Two catalog queries on an idle connection (well under a millisecond)."""

Tables = tuple[tuple[str, str], ...]

# Through the root: a partitioned outbox table's rows arrive under its own name
# (pg_publication_tables then lists it, not its partitions). No effect on others.
_OPTIONS = "publish = 'insert', publish_via_partition_root = true"


class PublicationGoneError(CheckpointError):
    """The relay's publication did not exist for part of the WAL it must read: PostgreSQL
    cannot decode that WAL through it, and outbox rows committed then were never published."""


def publication_gone(name: str, slot: str, after: int | None) -> PublicationGoneError:
    """The error for publication ``name`` missing where slot ``slot`` must read; ``after``:
    the last LSN known to be read with it."""
    since = f" after LSN {format_lsn(after)}" if after else ""
    return PublicationGoneError(
        f"publication {name} did not exist for part of the WAL the relay must read{since} "
        f"(it was dropped, or created after slot {slot}'s position): PostgreSQL cannot "
        "decode that WAL through it, and outbox rows committed while it was missing were "
        "never published. To accept that and start from now, SELECT "
        f"pg_drop_replication_slot({quote_literal(slot)}), then start the relay once with "
        "--ignore-checkpoint (it creates the publication again if it may, and a new slot)"
    )


@dataclass(frozen=True, slots=True)
class PublicationState:
    """A publication as the catalog shows it (``oid`` 0: there is none)."""

    oid: int
    all_tables: bool = False
    inserts: bool = False
    tables: frozenset[tuple[str, str]] = frozenset()  # as pg_publication_tables lists them
    filtered: tuple[str, ...] = ()  # problem lines: row filters, column lists


def publication_state(conn: PgWire, name: str) -> PublicationState:
    """What publication ``name`` is now."""
    rows = conn.query(
        "SELECT oid, puballtables, pubinsert, current_setting('server_version_num')::int "
        f"FROM pg_publication WHERE pubname = {quote_literal(name)}"
    )
    if not rows:
        return PublicationState(oid=0)
    oid, all_tables, inserts, version = rows[0]
    tables: frozenset[tuple[str, str]] = frozenset()
    if all_tables != "t":  # FOR ALL TABLES lists every table of the database: not read
        listed = conn.query(
            "SELECT schemaname, tablename FROM pg_publication_tables "
            f"WHERE pubname = {quote_literal(name)}"
        )
        tables = frozenset((str(schema), str(table)) for schema, table in listed)
    filtered: list[str] = []
    if int(version or 0) >= 150000:  # row filters and column lists came with 15
        for schema, table, has_filter, has_columns in conn.query(
            "SELECT n.nspname, c.relname, r.prqual IS NOT NULL, r.prattrs IS NOT NULL "
            "FROM pg_publication_rel r JOIN pg_class c ON c.oid = r.prrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            f"WHERE r.prpubid = {int(oid or 0)} ORDER BY 1, 2"
        ):
            if has_filter == "t":
                filtered.append(f"a row filter (WHERE) on {schema}.{table}")
            if has_columns == "t":
                filtered.append(f"a column list on {schema}.{table}")
    return PublicationState(
        oid=int(oid or 0),
        all_tables=all_tables == "t",
        inserts=inserts == "t",
        tables=tables,
        filtered=tuple(filtered),
    )


def publication_problem(state: PublicationState, tables: Tables) -> str | None:
    """Why a publication in ``state`` would not stream every INSERT of ``tables``
    (None: it does). Only for an existing one, listing its tables (not FOR ALL TABLES)."""
    want = set(tables)
    problems: list[str] = []
    if state.all_tables:
        problems.append("publishes all tables")
    elif state.tables != want:
        problems.append(f"publishes {_names(state.tables) or 'no table'}")
    if not state.inserts:
        problems.append("does not publish inserts")
    problems.extend(f"has {f}" for f in state.filtered)
    if not problems:
        return None
    if not want:
        return f"{' and '.join(problems)}, and the relay reads no table (only messages)"
    return (
        f"{' and '.join(problems)}, and the relay needs the inserts of {_names(want)}, unfiltered"
    )


def fix_sql(name: str, tables: Tables, state: PublicationState) -> str:
    """Statements that make publication ``name`` (now ``state``, listing tables) right
    and keep it: it must have existed all along for the WAL before to be decodable."""
    pub = quote_ident(name)
    if tables:
        change = f"ALTER PUBLICATION {pub} SET TABLE {_quoted(tables)}; "
    elif state.tables:
        change = f"ALTER PUBLICATION {pub} DROP TABLE {_quoted(sorted(state.tables))}; "
    else:
        change = ""
    return f"{change}ALTER PUBLICATION {pub} SET ({_OPTIONS})"


def ensure_publication(
    conn: PgWire, name: str, tables: Tables | list[tuple[str, str]], *, create: bool
) -> bool:
    """The publication ``name`` publishes the INSERTs of exactly ``tables``, unfiltered;
    created when missing and ``create``. True if this call created it."""
    tables = tuple(tables)
    state = publication_state(conn, name)
    if state.oid:
        problem = publication_problem(state, tables)
        if problem is None:
            return False
        advice = (
            f"name another publication, or DROP PUBLICATION {quote_ident(name)} if no relay "
            "read through it yet"
            if state.all_tables
            else fix_sql(name, tables, state)
        )
        raise ConfigurationError("pg_publication", f"publication {name} {problem}: {advice}")
    if not create:
        raise ConfigurationError(
            "pg_publication",
            f"publication {name} does not exist and pg_create is off: " + create_sql(name, tables),
        )
    for schema, table in tables:
        owner = conn.query(
            "SELECT pg_has_role(current_user, c.relowner, 'USAGE') FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            f"WHERE n.nspname = {quote_literal(schema)} AND c.relname = {quote_literal(table)}",
        )
        if not owner or owner[0][0] != "t":
            raise ConfigurationError(
                "pg_publication",
                f"the relay's role does not own {schema}.{table}, so it cannot create "
                f"publication {name}: let the table's owner create it (pg_create off)",
            )
    conn.query(create_sql(name, tables))
    return True


def create_sql(name: str, tables: Tables) -> str:
    """The CREATE PUBLICATION of the relay's publication of ``tables``."""
    # No tables (only table-less outboxes): a publication of nothing still lets
    # pgoutput send the messages; "FOR TABLE" with an empty list is a syntax error.
    of = f" FOR TABLE {_quoted(tables)}" if tables else ""
    return f"CREATE PUBLICATION {quote_ident(name)}{of} WITH ({_OPTIONS})"


def _names(tables: Iterable[tuple[str, str]]) -> str:
    return ", ".join(f"{s}.{t}" for s, t in sorted(tables))


def _quoted(tables: Iterable[tuple[str, str]]) -> str:
    return ", ".join(f"{quote_ident(s)}.{quote_ident(t)}" for s, t in tables)


class PublicationWatch:
    """The publication checked again while a term streams, from a worker thread, on a
    connection of its own.

    ``oid``: the publication the term started with; ``after``: an LSN up to which
    the stream read with it right (the term's start, then the WAL end before each
    check that passed). :meth:`poll` returns the error that must stop the relay,
    or None. A connection failure is no answer (the source reports a server that
    is down): the next poll tries again.
    """

    def __init__(
        self,
        params: PgConnectParams,
        *,
        name: str,
        slot: str,
        tables: Tables,
        pattern: str | None,
        oid: int,
        after: int,
    ) -> None:
        self._params = params
        self._conn: PgWire | None = None
        self.name, self.slot, self.tables = name, slot, tables
        self.pattern = re.compile(pattern) if pattern else None
        self.oid = oid
        self.after = after
        self._failing = False

    def poll(self) -> BaseException | None:
        """Check once: the error to stop with, or None."""
        try:
            if self._conn is None:
                self._conn = PgWire(self._params)
            error = self.check(self._conn)
        except (PgServerError, OSError, IndexError, ValueError) as exc:
            # A server that is down is the source's to report; one that answers with an
            # error would switch this check off unseen: say so, once a streak.
            if isinstance(exc, PgServerError) and not self._failing:
                log.warning("cannot check publication %s (retrying): %s", self.name, exc)
            self._failing = True
            self.close()
            return None
        self._failing = False
        return error

    def check(self, conn: PgWire) -> BaseException | None:
        """One round on ``conn``: the error to stop with, or None (``after`` moves on)."""
        rows = conn.query(
            "SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() "
            "ELSE pg_current_wal_lsn() END"  # a standby (PostgreSQL 16+ decodes there)
        )
        now = parse_lsn(str(rows[0][0]))
        state = publication_state(conn, self.name)
        self.oid = self.oid or state.oid
        if not state.oid or state.oid != self.oid:  # dropped, perhaps created again
            return publication_gone(self.name, self.slot, self.after)
        if self.pattern is not None:
            found = pattern_problem(conn, self.name, state.all_tables, state.inserts, self.pattern)
        else:
            problem = publication_problem(state, self.tables)
            found = None if problem is None else (problem, fix_sql(self.name, self.tables, state))
        if found is None:
            self.after = now
            return None
        problem, fix = found
        return ConfigurationError(
            "pg_publication",
            f"publication {self.name} changed while the relay read it: it {problem}. "
            "PostgreSQL decodes each transaction with the publication as it was then, so "
            f"outbox rows committed after LSN {format_lsn(self.after)} until it is fixed are "
            "left out of the stream for good (a restart decodes them the same way): find "
            f"those events in the service's own records. Fix it ({fix}), then start the "
            "relay again",
        )

    def close(self) -> None:
        """Close the connection."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()
