"""``outbox_table_pattern`` on PostgreSQL: a publication of every table, and the tables
the pattern matches at startup.

A publication sends only the tables it names, so one that lists the matching tables
would miss a matching table created while the relay runs, and every event written to it
until a restart: the silent loss a pattern must not have. Only ``FOR ALL TABLES``
publishes tables created later wherever they are (``FOR TABLES IN SCHEMA`` covers only
its schemas, and which schemas a regular expression can match is not known), so that is
what the relay asks for; creating it takes a superuser. The relay then skips the other
tables' inserts (PostgreSQL still decodes and sends them: a cost, measured in
BENCHMARKS "The relay on PostgreSQL" as noise).

A FOR ALL TABLES publication leaves out UNLOGGED tables (their rows never reach the
WAL): a matching one stops the relay, at start and (:mod:`.publication`'s watch) when
one appears later. Temporary tables are no outbox tables: not matched.
"""

from __future__ import annotations

import re

from ...exceptions import ConfigurationError
from .checks import check_tables
from .wire import PgServerError, PgWire, quote_ident, quote_literal

__all__ = [
    "ensure_all_tables_publication",
    "matching_tables",
    "pattern_create_sql",
    "pattern_fix",
    "pattern_problem",
    "unlogged_matches",
]


def pattern_create_sql(name: str) -> str:
    """The CREATE PUBLICATION a pattern needs."""
    return f"CREATE PUBLICATION {quote_ident(name)} FOR ALL TABLES WITH (publish = 'insert')"


def ensure_all_tables_publication(conn: PgWire, name: str, *, create: bool) -> bool:
    """The publication ``name`` publishes INSERTs of every table, also future ones;
    created when missing and ``create``. True if this call created it."""
    rows = conn.query(
        f"SELECT puballtables, pubinsert FROM pg_publication WHERE pubname = {quote_literal(name)}"
    )
    advice = f"{pattern_create_sql(name)} (as a superuser), or list the tables in outbox_tables"
    if rows:
        all_tables, inserts = rows[0]
        if all_tables == "t" and inserts == "t":
            return False
        raise ConfigurationError(
            "pg_publication",
            f"publication {name} exists but does not publish inserts of every table, which "
            "outbox_table_pattern needs (a matching table created later must be published "
            f"too): {pattern_fix(name, all_tables == 't')}",
        )
    if not create:
        raise ConfigurationError(
            "pg_publication", f"publication {name} does not exist and pg_create is off: {advice}"
        )
    try:
        conn.query(pattern_create_sql(name))
    except PgServerError as exc:
        if exc.code == "42501":  # insufficient_privilege: FOR ALL TABLES takes a superuser
            raise ConfigurationError(
                "pg_publication",
                f"outbox_table_pattern needs publication {name} FOR ALL TABLES, which only a "
                f"superuser may create ({exc.message}): have one run {advice}",
            ) from None
        if exc.code != "42710":  # duplicate_object: another relay created it meanwhile
            raise
    return True


def matching_tables(
    conn: PgWire, pattern: re.Pattern[str], *, listed: tuple[tuple[str, str], ...]
) -> tuple[list[tuple[str, str]], list[str]]:
    """The tables ``pattern`` full-matches now (beyond ``listed``): those that can hold
    outbox events, and a problem line for each that cannot."""
    good: list[tuple[str, str]] = []
    bad: list[str] = []
    unlogged = unlogged_matches(conn, pattern)
    if unlogged:
        raise ConfigurationError(
            "outbox_table_pattern",
            f"{', '.join(unlogged)} match(es) {pattern.pattern!r} but UNLOGGED tables never "
            "reach the WAL, so their events could not be read: ALTER TABLE ... SET LOGGED, "
            "or narrow the pattern",
        )
    for schema, table in _tables(conn, "p"):
        if (schema, table) in listed or not pattern.fullmatch(f"{schema}.{table}"):
            continue
        try:
            check_tables(conn, [(schema, table)], setting="outbox_table_pattern")
        except ConfigurationError as exc:
            bad.append(exc.message)
            continue
        good.append((schema, table))
    return good, bad


def _tables(conn: PgWire, persistence: str = "pu") -> list[tuple[str, str]]:
    # Ordinary and partitioned tables outside the system schemas, of the given
    # persistence (p: permanent, u: unlogged; temporary ones are no outbox tables).
    kinds = ", ".join(f"'{k}'" for k in persistence)
    rows = conn.query(
        "SELECT n.nspname, c.relname FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        f"WHERE c.relkind IN ('r', 'p') AND c.relpersistence IN ({kinds}) AND n.nspname "
        "NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%' "
        "ORDER BY n.nspname, c.relname"
    )
    return [(str(s), str(t)) for s, t in rows]


def unlogged_matches(conn: PgWire, pattern: re.Pattern[str]) -> list[str]:
    """The UNLOGGED tables ``pattern`` full-matches (``schema.table``)."""
    return [f"{s}.{t}" for s, t in _tables(conn, "u") if pattern.fullmatch(f"{s}.{t}")]


def pattern_fix(name: str, all_tables: bool) -> str:
    """What makes publication ``name`` publish the inserts of every table. One FOR ALL
    TABLES keeps its identity (``publish`` only: a publication created again cannot
    decode the WAL before it); another kind cannot be altered into one."""
    if all_tables:
        return f"ALTER PUBLICATION {quote_ident(name)} SET (publish = 'insert')"
    return (
        f"DROP PUBLICATION {quote_ident(name)}; {pattern_create_sql(name)} (as a superuser), "
        "or list the tables in outbox_tables"
    )


def pattern_problem(
    conn: PgWire, name: str, all_tables: bool, inserts: bool, pattern: re.Pattern[str]
) -> tuple[str, str] | None:
    """Why the pattern's publication ``name`` (FOR ALL TABLES? publishing inserts?) would
    miss a matching table's inserts, and the fix; None: it would not."""
    if not (all_tables and inserts):
        return (
            "no longer publishes the inserts of every table (outbox_table_pattern needs that)",
            pattern_fix(name, all_tables),
        )
    unlogged = unlogged_matches(conn, pattern)
    if unlogged:
        tables = ", ".join(unlogged)
        return (
            f"cannot publish {tables}: UNLOGGED tables never reach the WAL",
            f"ALTER TABLE ... SET LOGGED for {tables}, or narrow outbox_table_pattern",
        )
    return None
