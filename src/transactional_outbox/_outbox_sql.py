"""The statements an outbox session sends to write and delete its rows (DESIGN §7).

One flush of ``n`` events, outside ``keep_rows``:

- MariaDB, with a driver that binds parameters client-side (PyMySQL, asyncmy,
  mysqlclient, aiomysql): ONE round trip, an anonymous compound statement
  ``BEGIN NOT ATOMIC INSERT ... VALUES (...), ...; DELETE ...; END`` (one
  statement to the client protocol, so no ``CLIENT_MULTI_STATEMENTS``; its rows
  reach the binlog exactly as the separate statements' do), while the SQL stays
  under :data:`ONE_STATEMENT_MAX_BYTES` and ``n`` under :data:`DELETE_CHUNK`;
- other MySQL/MariaDB cases: the executemany ``INSERT`` (multi-row INSERTs of
  ~1 MB each) and one ``DELETE`` per :data:`DELETE_CHUNK` ids;
- PostgreSQL: the executemany ``INSERT`` and one ``DELETE ... WHERE id = ANY(:ids)``;
- SQLite and others: the executemany ``INSERT`` and ``DELETE ... IN`` per chunk.

The MySQL DELETE of several ids joins a derived table of the ids to the
outbox table through its primary key (``eq_ref``), so InnoDB locks only the
transaction's own rows. ``id IN (a, b, ...)`` is planned as a full scan of the
near-empty table on MariaDB 10.11 (and ``... ORDER BY id LIMIT n`` as a full
index scan): a locking scan waits on every other writer's uncommitted rows,
which deadlocked concurrent bulk writers.
"""

from __future__ import annotations

import dataclasses
import functools
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from .exceptions import ConfigurationError
from .record_format import COLUMNS

__all__ = [
    "DELETE_CHUNK",
    "ONE_STATEMENT_MAX_BYTES",
    "TablePlan",
    "compound_statements",
    "delete_sql",
    "table_plan",
    "write_rows",
]

DELETE_CHUNK = 1000
"""Most ids one ``DELETE`` names (and most events in one MariaDB compound statement).

The derived table of ids costs the server ~3 µs an id up to 1,000 and more per id
beyond (4 µs at 5,000, measured with PyMySQL on the stack's MariaDB)."""

ONE_STATEMENT_MAX_BYTES = 1_000_000
"""Largest compound statement (estimated SQL bytes); bigger flushes use executemany,
which PyMySQL/asyncmy split into INSERTs of ~1 MB (far below ``max_allowed_packet``)."""

# Drivers that put the parameters into the SQL text themselves: the server sees one
# COM_QUERY, so a compound statement works (a prepared one cannot hold it).
_CLIENT_SIDE_BINDING = frozenset({"pymysql", "asyncmy", "mysqldb", "aiomysql"})
_MYSQL = frozenset({"mysql", "mariadb"})
_ROW_OVERHEAD = 200  # per row: the fixed columns, quotes, separators, _binary prefixes

Row = tuple[Any, ...]


@dataclasses.dataclass(frozen=True, slots=True, eq=False)  # hashed by identity
class TablePlan:
    """The statements for one outbox table, built once per table (a session per
    transaction would otherwise rebuild and re-key them every time)."""

    table: sa.Table
    keys: tuple[str, ...]  # the table's column keys, in COLUMNS order
    insert: sa.Insert
    delete_in: sa.Delete  # SQLite and other dialects
    delete_any: sa.Delete  # PostgreSQL: one array parameter for any number of ids


_plans: weakref.WeakKeyDictionary[sa.Table, TablePlan] = weakref.WeakKeyDictionary()


def table_plan(table: sa.Table) -> TablePlan:
    """The (cached) plan of ``table``; :class:`ConfigurationError` if a column is missing."""
    plan = _plans.get(table)
    if plan is None:  # a race builds it twice, harmlessly
        keys = _column_keys(table)
        id_column = table.c[keys[0]]
        ids = sa.bindparam("ids", type_=postgresql.ARRAY(id_column.type))
        plan = TablePlan(
            table=table,
            keys=keys,
            insert=sa.insert(table),
            delete_in=sa.delete(table).where(id_column.in_(sa.bindparam("ids", expanding=True))),
            delete_any=sa.delete(table).where(id_column == sa.any_(ids)),
        )
        _plans[table] = plan
    return plan


def _column_keys(table: sa.Table) -> tuple[str, ...]:
    # Insert parameters are keyed by Column.key: snake_case in outbox_table(),
    # the column names in a declarative OutboxMixin class. Look them up by name.
    by_name = {c.name: c.key for c in table.columns}
    missing = [n for n in COLUMNS if n not in by_name]
    if missing:
        raise ConfigurationError(
            "outbox_table", f"table {table.fullname!r} has no column(s) {', '.join(missing)}"
        )
    return tuple(by_name[n] for n in COLUMNS)


def write_rows(conn: sa.Connection, plan: TablePlan, rows: list[Row], *, delete: bool) -> None:
    """Insert ``rows`` (values in COLUMNS order) on ``conn``, in order, then delete
    them again unless ``delete`` is false."""
    dialect = conn.dialect
    if dialect.name in _MYSQL:
        _write_mysql(conn, plan, rows, delete)
        return
    conn.execute(plan.insert, [dict(zip(plan.keys, row, strict=True)) for row in rows])
    if not delete:
        return
    ids = [row[0] for row in rows]
    if dialect.name == "postgresql":
        conn.execute(plan.delete_any, {"ids": ids})
    else:
        for start in range(0, len(ids), DELETE_CHUNK):
            conn.execute(plan.delete_in, {"ids": ids[start : start + DELETE_CHUNK]})


def _write_mysql(conn: sa.Connection, plan: TablePlan, rows: list[Row], delete: bool) -> None:
    dialect = conn.dialect
    if delete and len(rows) <= DELETE_CHUNK and compound_statements(dialect):
        size = sum(_statement_bytes(r) for r in rows)
        if size <= ONE_STATEMENT_MAX_BYTES:
            sql = _MysqlNames.of(conn, plan).compound(len(rows))
            conn.exec_driver_sql(sql, _compound_params(plan, dialect, rows))
            return
    conn.execute(plan.insert, [dict(zip(plan.keys, row, strict=True)) for row in rows])
    if delete:
        names = _MysqlNames.of(conn, plan)
        process = _processors(plan, dialect)[0]
        ids = [process(row[0]) if process else row[0] for row in rows]
        driver_sql = dialect.paramstyle in ("format", "pyformat")
        for start in range(0, len(ids), DELETE_CHUNK):
            chunk = ids[start : start + DELETE_CHUNK]
            if driver_sql:
                conn.exec_driver_sql(_delete_sql(names, len(chunk)), tuple(chunk))
            else:
                conn.execute(
                    _delete_text(names, len(chunk)), {f"i{k}": i for k, i in enumerate(chunk)}
                )


def _statement_bytes(row: Row) -> int:
    # An upper estimate of a row in the SQL text: escaping at most doubles the payload's
    # bytes; text is at most 4 bytes a character in UTF-8.
    text = len(row[1]) + len(row[2]) + len(row[3]) + len(row[5] or "")
    return _ROW_OVERHEAD + 2 * len(row[4]) + 4 * text


def compound_statements(dialect: sa.Dialect) -> bool:
    """Whether a flush can be one compound statement: MariaDB (10.1+; MySQL 8 has no
    anonymous compound statements) with a driver that binds client-side."""
    return bool(getattr(dialect, "is_mariadb", False)) and dialect.driver in _CLIENT_SIDE_BINDING


def _compound_params(plan: TablePlan, dialect: sa.Dialect, rows: list[Row]) -> tuple[Any, ...]:
    """The rows' values, then their ids, through the columns' own bind processing (as
    the Core insert applies it: the same values reach the server, so the same rows
    reach the binlog)."""
    process = _processors(plan, dialect)
    if not any(process):
        return (*(v for row in rows for v in row), *(row[0] for row in rows))
    values = [p(v) if p else v for row in rows for p, v in zip(process, row, strict=True)]
    return (*values, *values[0 :: len(process)])


@functools.lru_cache(maxsize=64)
def _processors(plan: TablePlan, dialect: sa.Dialect) -> tuple[Callable[[Any], Any] | None, ...]:
    columns = [plan.table.c[k] for k in plan.keys]
    return tuple(c.type.dialect_impl(dialect).bind_processor(dialect) for c in columns)


@dataclasses.dataclass(frozen=True, slots=True)
class _MysqlNames:
    """The table and column names of a plan, quoted for MySQL (one per schema)."""

    table: str  # `schema`.`name`
    columns: str  # (`id`, `aggregatetype`, ...)
    id: str  # `id`

    @staticmethod
    def of(conn: sa.Connection, plan: TablePlan) -> _MysqlNames:
        schema = plan.table.schema
        translate = conn.get_execution_options().get("schema_translate_map")
        if translate and schema in translate:
            schema = translate[schema]
        return _mysql_names(plan, schema, conn.dialect.identifier_preparer)

    def compound(self, n: int) -> str:
        """INSERT of ``n`` rows and DELETE of their ids, one statement, ``%s`` placeholders."""
        return _compound_sql(self, n)


@functools.lru_cache(maxsize=256)
def _mysql_names(plan: TablePlan, schema: str | None, preparer: Any) -> _MysqlNames:
    name = preparer.quote(plan.table.name)
    table = f"{preparer.quote_schema(schema)}.{name}" if schema else name
    cols = [preparer.quote(plan.table.c[k].name) for k in plan.keys]
    return _MysqlNames(table=table, columns=f"({', '.join(cols)})", id=cols[0])


def delete_sql(table: str, id_column: str, placeholders: Sequence[str]) -> str:
    """The MySQL DELETE of the ids bound at ``placeholders``, through the primary key.

    One id: ``WHERE id = ?`` (a unique lookup). Several: the ids as a derived
    table joined first (STRAIGHT_JOIN) to the outbox table by primary key (FORCE
    INDEX, so no cost estimate on the near-empty table can choose a scan).
    """
    if len(placeholders) == 1:
        return f"DELETE FROM {table} WHERE {id_column} = {placeholders[0]}"
    ids = " UNION ALL ".join(f"SELECT {p} AS id" for p in placeholders)
    return (
        f"DELETE o FROM ({ids}) AS t STRAIGHT_JOIN {table} AS o FORCE INDEX (PRIMARY)"
        f" ON o.{id_column} = t.id"
    )


# The names come from the dialect's identifier preparer, which already doubles "%"
# for the drivers whose paramstyle formats with "%" (exec_driver_sql's text goes to
# that formatting as it is); the others get text(), which reads ":name" as a parameter.


@functools.lru_cache(maxsize=256)
def _compound_sql(names: _MysqlNames, n: int) -> str:
    values = ", ".join(["(%s, %s, %s, %s, %s, %s, %s)"] * n)
    delete = delete_sql(names.table, names.id, ["%s"] * n)
    return (
        f"BEGIN NOT ATOMIC INSERT INTO {names.table} {names.columns} VALUES {values}; {delete}; END"
    )


@functools.lru_cache(maxsize=256)
def _delete_sql(names: _MysqlNames, n: int) -> str:
    return delete_sql(names.table, names.id, ["%s"] * n)


@functools.lru_cache(maxsize=256)
def _delete_text(names: _MysqlNames, n: int) -> sa.TextClause:
    table, id_ = (s.replace(":", "\\:") for s in (names.table, names.id))
    return sa.text(delete_sql(table, id_, [f":i{k}" for k in range(n)]))
