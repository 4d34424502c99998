"""The packaged Alembic revision, run through the repo's alembic.ini against real MariaDB."""

from __future__ import annotations

import argparse
import uuid
from pathlib import Path

import sqlalchemy as sa
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy.engine import URL

from alembic import command
from transactional_outbox import outbox_table

from .conftest import ROOT, Stack

CONTRACT = [
    ("id", "binary(16)", "NO", "PRI"),
    ("aggregatetype", "varchar(255)", "NO", ""),
    ("aggregateid", "varchar(255)", "NO", ""),
    ("type", "varchar(255)", "NO", ""),
    ("payload", "longblob", "NO", ""),
    ("headers", "text", "YES", ""),
    ("timestamp", "datetime(6)", "NO", ""),
]


def alembic_config(url: URL, *, x: list[str] | None = None, **attributes: str) -> Config:
    config = Config(str(ROOT / "alembic.ini"), cmd_opts=argparse.Namespace(x=x or []))
    config.attributes["configure_logger"] = False  # leave pytest's logging alone
    config.attributes.update(attributes)
    config.set_main_option(
        "sqlalchemy.url", url.render_as_string(hide_password=False).replace("%", "%%")
    )
    return config


def columns(stack: Stack, database: str, table: str) -> list[tuple[str, ...]]:
    with stack.mysql_connect(database) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT column_name, column_type, is_nullable, column_key FROM"
            " information_schema.columns WHERE table_schema = %s AND table_name = %s"
            " ORDER BY ordinal_position",
            (database, table),
        )
        return [tuple(row) for row in cur.fetchall()]


def tables(stack: Stack, database: str) -> set[str]:
    with stack.mysql_connect(database) as conn, conn.cursor() as cur:
        cur.execute("SHOW TABLES")
        return {row[0] for row in cur.fetchall()}


def test_upgrade_head_creates_the_table_and_downgrade_base_drops_it(
    stack: Stack, database: str, mysql_url: URL
) -> None:
    config = alembic_config(mysql_url)
    command.upgrade(config, "head")
    assert columns(stack, database, "outbox") == CONTRACT
    with stack.mysql_connect(database) as conn, conn.cursor() as cur:
        cur.execute("SELECT version_num FROM alembic_version")
        versions = {row[0] for row in cur.fetchall()}
    head = ScriptDirectory.from_config(config).get_current_head()
    assert versions == {head}
    command.downgrade(config, "base")
    assert tables(stack, database) == {"alembic_version"}


def test_revision_matches_outbox_table(stack: Stack, database: str, mysql_url: URL) -> None:
    command.upgrade(alembic_config(mysql_url), "outbox_0001")
    engine = sa.create_engine(mysql_url)
    try:
        outbox_table(sa.MetaData(), name="from_metadata").create(engine)
    finally:
        engine.dispose()
    assert columns(stack, database, "outbox") == columns(stack, database, "from_metadata")


def test_table_name_and_schema_from_attributes_or_x_arguments(
    stack: Stack, database: str, mysql_url: URL
) -> None:
    by_attributes = alembic_config(mysql_url, outbox_table="app_outbox", outbox_schema=database)
    command.upgrade(by_attributes, "outbox_0001")
    assert columns(stack, database, "app_outbox") == CONTRACT
    command.downgrade(by_attributes, "base")
    by_x = alembic_config(mysql_url, x=["outbox_table=x_outbox"])
    command.upgrade(by_x, "outbox_0001")
    assert tables(stack, database) == {"alembic_version", "x_outbox"}
    command.downgrade(by_x, "base")
    assert tables(stack, database) == {"alembic_version"}


def test_offline_sql(mysql_url: URL, capsys: object) -> None:
    config = alembic_config(mysql_url)
    command.upgrade(config, "outbox_0001", sql=True)
    out = capsys.readouterr().out  # type: ignore[attr-defined]
    assert "CREATE TABLE outbox" in out
    assert "payload LONGBLOB NOT NULL" in out


def test_apps_add_the_package_location_beside_their_own(tmp_path: Path) -> None:
    # What the README tells apps to write in their alembic.ini.
    app_versions = tmp_path / "versions"
    app_versions.mkdir()
    (app_versions / "app_0001.py").write_text(
        'revision = "app_0001"\ndown_revision = None\nbranch_labels = None\n'
        "depends_on = None\n\ndef upgrade():\n    pass\n\ndef downgrade():\n    pass\n"
    )
    config = Config()
    config.set_main_option("script_location", str(ROOT / "alembic"))
    config.set_main_option("path_separator", "space")
    config.set_main_option(
        "version_locations", f"{app_versions} transactional_outbox:migrations/versions"
    )
    script = ScriptDirectory.from_config(config)
    outbox = script.get_revision("outbox_0001")
    assert outbox is not None
    assert outbox.down_revision is None
    assert outbox.branch_labels == {"transactional_outbox"}
    assert set(script.get_bases()) == {"app_0001", "outbox_0001"}


def test_one_outbox_per_schema_by_migration_and_by_metadata(stack: Stack, mysql_url: URL) -> None:
    """Many services on one server (issue 19): each service's migration, run against its
    own schema, makes its own outbox (and alembic_version); outbox_table(schema=...)
    defines the same table for several schemas in one MetaData."""
    prefix = f"mt19_alembic_{uuid.uuid4().hex[:6]}_"
    names = [prefix + x for x in "abc"]
    with stack.mysql_connect() as conn, conn.cursor() as cur:
        for name in names:
            cur.execute(f"CREATE DATABASE `{name}`")
    try:
        for name in names[:2]:
            command.upgrade(alembic_config(mysql_url.set(database=name)), "head")
        metadata = sa.MetaData()
        defined = [outbox_table(metadata, schema=name) for name in names]
        engine = sa.create_engine(mysql_url)
        try:
            metadata.create_all(engine)  # the first two exist already: only the third is made
            with engine.begin() as conn:
                for table in defined:
                    conn.execute(
                        table.insert().values(
                            id=uuid.uuid4().bytes,
                            aggregate_type="order",
                            aggregate_id="1",
                            event_type="T",
                            payload=b"{}",
                            timestamp=sa.func.now(6),
                        )
                    )
                counts = [
                    conn.execute(sa.select(sa.func.count()).select_from(t)).scalar()
                    for t in defined
                ]
        finally:
            engine.dispose()
        assert counts == [1, 1, 1]
        for name in names:
            assert columns(stack, name, "outbox") == CONTRACT
        assert tables(stack, names[0]) == {"outbox", "outbox_inbox", "alembic_version"}
        assert "alembic_version" not in tables(stack, names[2])
    finally:
        with stack.mysql_connect() as conn, conn.cursor() as cur:
            for name in names:
                cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
