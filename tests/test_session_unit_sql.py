"""The outbox session's statements, compiled without a server (_outbox_sql)."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite

from transactional_outbox import outbox_table
from transactional_outbox._outbox_sql import compound_statements, delete_sql, table_plan


def mariadb(driver: type[sa.engine.Dialect]) -> sa.engine.Dialect:
    dialect = driver()
    dialect.is_mariadb = True  # set from the server version at connect time
    return dialect


def test_one_id_is_deleted_by_a_unique_lookup() -> None:
    assert delete_sql("`o`", "`id`", ["%s"]) == "DELETE FROM `o` WHERE `id` = %s"


def test_several_ids_are_joined_to_the_table_by_primary_key() -> None:
    sql = delete_sql("`s`.`o`", "`id`", ["%s", "%s", "%s"])
    assert sql == (
        "DELETE o FROM (SELECT %s AS id UNION ALL SELECT %s AS id UNION ALL SELECT %s AS id)"
        " AS t STRAIGHT_JOIN `s`.`o` AS o FORCE INDEX (PRIMARY) ON o.`id` = t.id"
    )
    assert " IN " not in sql  # IN (...) is planned as a locking full scan


def test_compound_statements_only_on_mariadb_with_client_side_binding() -> None:
    assert compound_statements(mariadb(mysql.pymysql.dialect))
    assert compound_statements(mariadb(mysql.asyncmy.dialect))
    assert compound_statements(mariadb(mysql.mysqldb.dialect))
    assert not compound_statements(mysql.pymysql.dialect())  # MySQL: none
    assert not compound_statements(mariadb(mysql.mariadbconnector.dialect))  # prepares
    assert not compound_statements(sqlite.dialect())
    assert not compound_statements(postgresql.psycopg.dialect())


def test_postgresql_deletes_any_number_of_ids_with_one_array_parameter() -> None:
    plan = table_plan(outbox_table(sa.MetaData(), schema="shop"))
    sql = str(plan.delete_any.compile(dialect=postgresql.psycopg.dialect()))
    assert sql == "DELETE FROM shop.outbox WHERE shop.outbox.id = ANY (%(ids)s::BYTEA[])"
