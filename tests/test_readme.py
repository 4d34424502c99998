"""The code blocks of README.md and the guides under docs/ (tests/_readme.py PAGES) run, so an
example that stops working fails CI (issue 24).

The marker convention is in tests/_readme.py's docstring: a python/bash block without
a marker runs as it is; ``skip (reason)`` blocks are not run; ``setup=NAME`` blocks
run after the setup ``NAME`` below (all blocks of one setup, in order, in one test);
``file=`` + ``pytest`` blocks make a small pytest project that must pass;
``alembic-ini`` is applied by the ``alembic_app`` setup; ``wheel-install`` lines are
installed by tests/test_wheel_install.py. tests/test_readme_unit_markers.py fails on a
block that has neither a marker nor a runnable language.

Python runs in a fresh interpreter (``sys.executable``) in a temp directory; bash runs
with ``bash -eu`` in a temp directory (or the repository for ``repo_alembic``), with
this interpreter's ``bin`` first on ``PATH`` (``alembic`` as installed). The README's
example database, ``mysql+pymysql://app:secret@db/shop``, is replaced by a test database
of the local stack (or a SQLite file).
"""

from __future__ import annotations

import configparser
import os
import re
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pymysql
import pytest
import sqlalchemy as sa

import transactional_outbox
from outbox_dev import stack as local_stack

from . import _readme
from .conftest import ROOT, Stack, unique

EXAMPLE_URL = "mysql+pymysql://app:secret@db/shop"
BIN = Path(sys.executable).parent
PACKAGE_VERSIONS = Path(transactional_outbox.__file__).parent / "migrations" / "versions"


def run_python(code: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, f"{out.stdout}\n{out.stderr}\n--- code:\n{code}"
    return out.stdout


def shell_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(local_stack.shell_env())
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def run_bash(line: str, cwd: Path, env: dict[str, str]) -> str:
    out = subprocess.run(
        ["bash", "-euc", line], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, f"$ {line}\n{out.stdout}\n{out.stderr}"
    return out.stdout + out.stderr


def commands(block: _readme.Block) -> list[str]:
    """A bash block's commands, one per line (continuation lines joined)."""
    return [c for c in block.code.replace("\\\n", " ").splitlines() if c.strip()]


def tables_of(url: sa.URL | str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


# --- blocks that run as they are -------------------------------------------------------

AS_IS = [b for b in _readme.blocks() if b.kind is None]


@pytest.mark.parametrize("block", AS_IS, ids=[b.where for b in AS_IS])
def test_an_unmarked_block_runs_as_it_is(
    block: _readme.Block, stack: Stack, tmp_path: Path
) -> None:
    if block.lang == "python":
        run_python(block.code, tmp_path)
    else:
        for line in commands(block):
            run_bash(line, tmp_path, shell_env())


# --- setups ----------------------------------------------------------------------------

SHOP_PRELUDE = """
import sqlalchemy as _sa
from sqlalchemy.orm import DeclarativeBase as _Base, Mapped as _Mapped, mapped_column as _col
from transactional_outbox import outbox_table as _outbox_table
from transactional_outbox.testing import capture_events as _capture_events

class _Model(_Base):
    pass

class Order(_Model):  # an app's model: autoincrement id, assigned at flush
    __tablename__ = "orders"
    id: _Mapped[int] = _col(primary_key=True, autoincrement=True)
    total = _sa.Column(_sa.Numeric(10, 2), nullable=False)

_engine = _sa.create_engine({url!r})
_Model.metadata.create_all(_engine)
_outbox_table(_sa.MetaData()).create(_engine, checkfirst=True)
_engine.dispose()
_capture = _capture_events()  # kept open until the process ends
_captured = _capture.__enter__()
"""

SHOP_CHECK = """
[_event] = _captured  # committed, with the id the database gave the order
print("event for order", _event.aggregate_id)
"""


def setup_shop(blocks: list[_readme.Block], ctx: dict[str, Any]) -> None:
    """ "Writing events": an ``Order`` model, on a test database of the stack's MariaDB."""
    url = ctx["mysql_url"].render_as_string(hide_password=False)
    for block in blocks:
        code = block.code.replace(EXAMPLE_URL, url)
        out = run_python(SHOP_PRELUDE.format(url=url) + code + SHOP_CHECK, ctx["tmp_path"])
        assert "event for order 1" in out


SQL_STORE_PRELUDE = """
import asyncio
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from transactional_outbox import OutboxEvent
from transactional_outbox.consumer import (
    AsyncSqlStore, ReceivedEvent, idempotent_consumer, inbox_table,
)
from transactional_outbox.testing import to_received

class Base(DeclarativeBase):
    pass

class Invoice(Base):
    __tablename__ = "invoices"
    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[str]

engine = create_async_engine("sqlite+aiosqlite:///store.db")
inbox_table(Base.metadata)

async def _create() -> None:
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)

asyncio.run(_create())
"""

SQL_STORE_CHECK = """
async def _check() -> None:
    event = to_received(
        OutboxEvent.create(aggregate_type="order", aggregate_id=7, event_type="X", payload={})
    )
    assert await on_order(event) is True
    assert await on_order(event) is False  # a redelivery: skipped
    async with engine.connect() as conn:
        rows = (await conn.execute(sa.select(Invoice.order_id))).scalars().all()
    assert rows == ["7"], rows
    await engine.dispose()

asyncio.run(_check())
print("invoiced once")
"""


def setup_sql_store(blocks: list[_readme.Block], ctx: dict[str, Any]) -> None:
    """The ``AsyncSqlStore`` handler: an ``engine`` (aiosqlite) and an ``Invoice`` model."""
    for block in blocks:
        out = run_python(SQL_STORE_PRELUDE + block.code + SQL_STORE_CHECK, ctx["tmp_path"])
        assert "invoiced once" in out


def setup_repo_alembic(blocks: list[_readme.Block], ctx: dict[str, Any]) -> None:
    """This repository's alembic.ini, on a test database (``OUTBOX_MYSQL_URL``)."""
    url = ctx["mysql_url"]
    env = shell_env(OUTBOX_MYSQL_URL=url.render_as_string(hide_password=False))
    [block] = blocks
    upgrade, downgrade = commands(block)
    assert "creates the outbox table and the inbox table outbox_inbox" in upgrade
    run_bash(upgrade, ROOT, env)
    assert tables_of(url) == {"alembic_version", "outbox", "outbox_inbox"}
    run_bash(downgrade, ROOT, env)
    assert tables_of(url) == {"alembic_version"}


def apply_ini(ini: Path, settings: str, url: str) -> None:
    """Set the README's ``key = value`` lines in ``[alembic]``: a key alembic init already
    wrote is changed in place (no duplicate), a new one goes after the last changed one."""
    lines = ini.read_text().splitlines()
    section = lines.index("[alembic]")
    end = next((i for i in range(section + 1, len(lines)) if lines[i].startswith("[")), len(lines))
    insert_at = end
    for setting in settings.replace(EXAMPLE_URL, url).splitlines():
        key = setting.split("=", 1)[0].strip()
        found = [i for i in range(section + 1, end) if re.match(rf"{re.escape(key)}\s*=", lines[i])]
        if found:
            lines[found[0]] = setting
            insert_at = found[0] + 1
        else:
            lines.insert(insert_at, setting)
            insert_at += 1
            end += 1
    ini.write_text("\n".join(lines) + "\n")


def setup_alembic_app(blocks: list[_readme.Block], ctx: dict[str, Any]) -> None:
    """ "Migrations": an app with no alembic setup yet, in an empty directory, on the
    database ``ctx["app_url"]``. Never writes into the package's own versions folder."""
    app: Path = ctx["tmp_path"] / "app"
    app.mkdir()
    env = shell_env()
    package_files = sorted(p.name for p in PACKAGE_VERSIONS.glob("*.py"))
    init, steps = blocks
    for line in commands(init):
        run_bash(line, app, env)
    [ini_block] = _readme.of_kind("alembic-ini")
    apply_ini(app / "alembic.ini", ini_block.code, ctx["app_url"])
    parser = configparser.ConfigParser()
    parser.read(app / "alembic.ini")  # a duplicate option would raise here
    for line in commands(steps):
        run_bash(line, app, env)
    ours = sorted(p.name for p in (app / "alembic" / "versions").glob("*.py"))
    assert [n.split("_", 1)[1] for n in ours] in (
        ["add_a_column.py", "create_orders.py"],
        ["create_orders.py", "add_a_column.py"],
    ), ours
    assert sorted(p.name for p in PACKAGE_VERSIONS.glob("*.py")) == package_files
    heads = run_bash("alembic heads", app, env)
    assert "(app) (head)" in heads and "outbox_0002 (transactional_outbox) (head)" in heads
    assert tables_of(ctx["app_url"]) == {"alembic_version", "outbox", "outbox_inbox"}


def setup_grants(blocks: list[_readme.Block], ctx: dict[str, Any]) -> None:
    """The MariaDB least-privilege statements, on the stack: ``shop`` is a test database
    with an outbox table, the user a unique one (dropped after)."""
    stack: Stack = ctx["stack"]
    database: str = ctx["database"]
    with stack.mysql_connect(database) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS outbox (id BINARY(16) PRIMARY KEY)")
    user, password = unique("relay_"), uuid.uuid4().hex
    [block] = blocks
    sql = (
        block.code.replace("'outbox_relay'", f"'{user}'")
        .replace("<password>", password)
        .replace("`shop`", f"`{database}`")
    )
    try:
        with stack.mysql_connect() as conn, conn.cursor() as cur:
            for statement in filter(str.strip, sql.split(";")):
                cur.execute(statement)
            cur.execute(f"SHOW GRANTS FOR '{user}'@'%'")
            grants = sorted(str(r[0]).split(" TO ")[0] for r in cur.fetchall())
        assert grants == [
            "GRANT REPLICATION SLAVE, BINLOG MONITOR, SLAVE MONITOR ON *.*",
            f"GRANT SELECT ON `{database}`.`outbox`",
        ]
        pymysql.connect(
            host=stack.mysql_url.host,
            port=stack.mysql_url.port,
            user=user,
            password=password,
            database=database,
        ).close()
    finally:
        with stack.mysql_connect() as conn, conn.cursor() as cur:
            cur.execute(f"DROP USER IF EXISTS '{user}'@'%'")


SETUPS: dict[str, Callable[[list[_readme.Block], dict[str, Any]], None]] = {
    "shop": setup_shop,
    "sql_store": setup_sql_store,
    "repo_alembic": setup_repo_alembic,
    "alembic_app": setup_alembic_app,
    "grants": setup_grants,
}


@pytest.mark.parametrize("name", sorted(set(SETUPS) - {"alembic_app"}))
def test_the_blocks_of_a_setup_run(
    name: str, stack: Stack, database: str, mysql_url: sa.URL, tmp_path: Path
) -> None:
    blocks = _readme.of_kind("setup", name)
    assert blocks, f"no README block uses setup={name}"
    ctx = {"stack": stack, "database": database, "mysql_url": mysql_url, "tmp_path": tmp_path}
    SETUPS[name](blocks, ctx)


@pytest.mark.parametrize("server", ["sqlite", "mariadb"])
def test_the_alembic_steps_for_a_new_app_work_as_written(
    server: str, stack: Stack, database: str, mysql_url: sa.URL, tmp_path: Path
) -> None:
    url = (
        f"sqlite:///{tmp_path / 'app.db'}"
        if server == "sqlite"
        else mysql_url.render_as_string(hide_password=False)
    )
    ctx = {"app_url": url, "tmp_path": tmp_path}
    setup_alembic_app(_readme.of_kind("setup", "alembic_app"), ctx)


# --- the pytest project of "Testing your code" -----------------------------------------


def pytest_project(tmp_path: Path, *, leave_out: str = "") -> subprocess.CompletedProcess[str]:
    for block in _readme.of_kind("file"):
        assert block.arg is not None
        if block.arg != leave_out:
            (tmp_path / block.arg).write_text(block.code)
    [module] = _readme.of_kind("pytest")
    (tmp_path / "test_readme_example.py").write_text(module.code)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_testing_section_is_a_pytest_project_that_passes(tmp_path: Path) -> None:
    out = pytest_project(tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.search(r"\b2 passed\b", out.stdout), out.stdout
    assert "skipped" not in out.stdout


def test_the_async_test_needs_the_asyncio_mode_the_readme_sets(tmp_path: Path) -> None:
    out = pytest_project(tmp_path, leave_out="pyproject.toml")
    assert "1 passed" in out.stdout and "2 passed" not in out.stdout, textwrap.shorten(
        out.stdout, 2000
    )
