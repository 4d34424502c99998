"""The packaged Alembic revisions and ``examples/migrate.py`` on a real PostgreSQL 15.

``alembic upgrade head`` (the repo's alembic.ini, psycopg) creates the outbox table in
the layout the relay reads (``bytea`` id and payload): an event an ``OutboxSession``
writes into it comes out of the relay's PostgreSQL source byte for byte; ``downgrade
base`` drops it. The examples' migrations (``orders_0001`` and ``stats_0001``, the
demo's ``--database postgresql``) give each database exactly its tables.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from alembic.script import ScriptDirectory
from sqlalchemy.engine import make_url

from alembic import command
from outbox_dev.demo.resources import EXAMPLES, load_module
from outbox_dev.pg import ScratchPostgres
from tests._pg import PgDb, db, expected, pg
from tests.polling import wait_until_sync
from tests.test_alembic import alembic_config
from transactional_outbox import OutboxSession

__all__ = ["db", "pg"]  # fixtures

# The outbox table as outbox_0001 creates it on PostgreSQL (DESIGN §1).
CONTRACT = [
    ("id", "bytea", "NO"),
    ("aggregatetype", "character varying", "NO"),
    ("aggregateid", "character varying", "NO"),
    ("type", "character varying", "NO"),
    ("payload", "bytea", "NO"),
    ("headers", "text", "YES"),
    ("timestamp", "timestamp without time zone", "NO"),
]


def columns(engine: sa.Engine, table: str) -> list[tuple[str, ...]]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT column_name, data_type, is_nullable FROM information_schema.columns"
                " WHERE table_schema = 'public' AND table_name = :t ORDER BY ordinal_position"
            ),
            {"t": table},
        )
        return [tuple(row) for row in rows]


def tables(engine: sa.Engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names())


def test_upgrade_head_makes_the_table_the_relay_reads_and_downgrade_drops_it(db: PgDb) -> None:
    config = alembic_config(db.engine.url)
    command.upgrade(config, "head")
    assert columns(db.engine, "outbox") == CONTRACT
    assert tables(db.engine) == {"alembic_version", "outbox", "outbox_inbox"}
    with db.engine.connect() as conn:
        versions = set(conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars())
    assert versions == {ScriptDirectory.from_config(config).get_current_head()}

    # The migrated table is one the relay reads: an event written by the SDK arrives as
    # the record DESIGN §2 defines (payload bytes, id ending in zero bytes included).
    table = [("public", "outbox")]
    db.prepare(table)
    _, sink = db.source(table)
    with OutboxSession(db.engine) as session, session.begin():
        event = session.add_event(
            aggregate_type="order",
            aggregate_id=7,
            event_type="OrderPlaced",
            payload={"amount": "42.50"},
            id=uuid.UUID(bytes=b"\x01" * 14 + b"\x00\x00"),
        )
    wait_until_sync(lambda: len(sink.records) >= 1, within=10, what="the event from the slot")
    assert sink.records == [expected(event, "public.outbox")]
    with db.engine.connect() as conn:  # table mode: the row is deleted in the same transaction
        assert conn.execute(sa.text("SELECT count(*) FROM outbox")).scalar() == 0
    db.stop_sources()

    command.downgrade(config, "base")
    assert tables(db.engine) == {"alembic_version"}


@pytest.fixture
def read_db(pg: ScratchPostgres) -> Iterator[str]:
    """A second database, owned by ``outbox`` (which may not create databases itself)."""
    name = "t_read_" + uuid.uuid4().hex[:10]
    pg.psql(f"CREATE DATABASE {name} OWNER outbox")
    yield name
    pg.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_examples_migrate_gives_each_database_only_its_own_tables(
    db: PgDb, read_db: str, pg: ScratchPostgres
) -> None:
    migrate = load_module("pg_examples_migrate", EXAMPLES / "migrate.py")
    urls = {
        # Any driver in the URLs: the migrations use psycopg on PostgreSQL.
        "ORDERS_DATABASE_URL": pg.url(db.name, driver="asyncpg"),
        "STATS_DATABASE_URL": pg.url(read_db),
    }
    for _ in range(2):  # and again: nothing to do the second time
        migrate.migrate(urls, quiet=True)
    read = sa.create_engine(make_url(pg.url(read_db, driver="psycopg")))
    try:
        assert tables(db.engine) == {"alembic_version", "orders", "outbox"}
        assert tables(read) == {"alembic_version", "outbox_inbox", "customer_stats"}
        assert columns(db.engine, "outbox") == CONTRACT
        stamps = {name: kind for name, kind, _ in columns(db.engine, "orders")}
        assert stamps["created_at"] == stamps["updated_at"] == "timestamp without time zone"
        assert stamps["id"] == "bigint"
    finally:
        read.dispose()
