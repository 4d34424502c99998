"""``examples/migrate.py`` (the demo's and docker compose's migrations) on the stack:
each database gets exactly its tables (issue 24, row 9: the read database used to get
an outbox table too, brought along by the package's outbox_0002 -> outbox_0001)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from .conftest import ROOT, Stack, unique


@pytest.fixture
def two_databases(stack: Stack) -> Iterator[tuple[str, str]]:
    names = (unique("t_orders_"), unique("t_read_"))
    yield names
    with stack.mysql_connect() as conn, conn.cursor() as cur:
        for name in names:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")


def tables(stack: Stack, database: str) -> set[str]:
    engine = sa.create_engine(stack.mysql_url.set(database=database))
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_migrate_gives_each_database_only_its_own_tables(
    stack: Stack, two_databases: tuple[str, str]
) -> None:
    orders_db, read_db = two_databases
    url = stack.mysql_url.render_as_string(hide_password=False)
    env = {
        **os.environ,
        "ORDERS_DATABASE_URL": url.rsplit("/", 1)[0] + "/" + orders_db,
        "STATS_DATABASE_URL": url.rsplit("/", 1)[0] + "/" + read_db,
    }
    for _ in range(2):  # and again: nothing to do the second time
        out = subprocess.run(
            [sys.executable, str(ROOT / "examples" / "migrate.py")],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
    assert tables(stack, orders_db) == {"alembic_version", "orders", "outbox"}
    assert tables(stack, read_db) == {"alembic_version", "outbox_inbox", "customer_stats"}
