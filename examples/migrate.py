"""Create the example databases (if missing) and bring both up to date with alembic.

    python examples/migrate.py

Settings (environment), MySQL/MariaDB or PostgreSQL URLs with any driver:
  ORDERS_DATABASE_URL  the api-server's database: orders + outbox
                       (default: the local stack's MariaDB ``outbox``)
  STATS_DATABASE_URL   the consumer's database: outbox_inbox + customer_stats
                       (default: the local stack's MariaDB ``outbox_read``)

Equivalent to ``CREATE DATABASE`` for each that is missing (on PostgreSQL the user
needs CREATEDB for that, or create them beforehand), then
``alembic -c examples/api-server/alembic.ini upgrade orders@head`` and
``alembic -c examples/consumer/alembic.ini upgrade customer_stats@head``. The docker compose
``migrate`` service and ``./dev/demo`` run it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import sqlalchemy as sa
from alembic.config import Config
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from alembic import command

HERE = Path(__file__).resolve().parent
DEFAULTS = {
    "ORDERS_DATABASE_URL": "mysql+pymysql://outbox:outbox@127.0.0.1:13306/outbox",
    "STATS_DATABASE_URL": "mysql+pymysql://outbox:outbox@127.0.0.1:13306/outbox_read",
}
# (alembic config, target). "orders@head": the package also ships outbox_0002 (the
# consumer inbox), a second head the api-server does not need; the orders branch
# brings only outbox_0001 along (orders_0001 depends on it). The consumer's revision
# creates its inbox itself: no outbox table in the read database.
CONFIGS = {
    "ORDERS_DATABASE_URL": (HERE / "api-server" / "alembic.ini", "orders@head"),
    "STATS_DATABASE_URL": (HERE / "consumer" / "alembic.ini", "customer_stats@head"),
}


def sync_url(raw: str) -> sa.URL:
    """``raw`` with the driver the migrations use: PyMySQL or psycopg (PostgreSQL)."""
    url = make_url(raw)
    driver = "postgresql+psycopg" if url.get_backend_name() == "postgresql" else "mysql+pymysql"
    return url.set(drivername=driver)


def create_database(url: sa.URL) -> None:
    """Create the URL's database if it is missing, connected to the server only."""
    if url.get_backend_name() == "postgresql":
        # "postgres": the database every server has; CREATE DATABASE runs outside a
        # transaction, and PostgreSQL has no IF NOT EXISTS for it.
        server = sa.create_engine(
            url.set(database="postgres"), poolclass=NullPool, isolation_level="AUTOCOMMIT"
        )
        try:
            with server.connect() as conn:
                found = conn.execute(
                    sa.text("SELECT 1 FROM pg_database WHERE datname = :name"),
                    {"name": url.database},
                ).first()
                if found is None:
                    quoted = conn.dialect.identifier_preparer.quote(str(url.database))
                    conn.execute(sa.text(f"CREATE DATABASE {quoted}"))
        finally:
            server.dispose()
        return
    # information_schema: a database every user can connect to.
    server = sa.create_engine(url.set(database="information_schema"), poolclass=NullPool)
    try:
        with server.connect() as conn:
            conn.execute(sa.text(f"CREATE DATABASE IF NOT EXISTS `{url.database}`"))
    finally:
        server.dispose()


def upgrade(ini: Path, target: str, url: sa.URL, *, quiet: bool = False) -> None:
    config = Config(str(ini))
    config.set_main_option(
        "sqlalchemy.url", url.render_as_string(hide_password=False).replace("%", "%%")
    )
    if quiet:
        config.attributes["configure_logger"] = False  # keep alembic's INFO lines out
    command.upgrade(config, target)


def migrate(urls: dict[str, str] | None = None, *, quiet: bool = False) -> None:
    for var, (ini, target) in CONFIGS.items():
        raw = (urls or {}).get(var) or os.environ.get(var, DEFAULTS[var])
        url = sync_url(raw)
        create_database(url)
        upgrade(ini, target, url, quiet=quiet)


if __name__ == "__main__":
    migrate()
    print("migrations done", file=sys.stderr)
