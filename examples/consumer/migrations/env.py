"""Alembic environment of the consumer example (see ../alembic.ini).

The URL is ``sqlalchemy.url`` if set on the Config, else ``$STATS_DATABASE_URL``
(default: the local stack's ``outbox_read`` database). Migrations run with PyMySQL
(MySQL/MariaDB) or psycopg (PostgreSQL) whatever driver the URL names (the consumer itself
uses asyncmy or psycopg's async mode).
"""

from __future__ import annotations

import os
from logging.config import fileConfig

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from alembic import context

DEFAULT_URL = "mysql+pymysql://outbox:outbox@127.0.0.1:13306/outbox_read"

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _url() -> sa.URL:
    raw = config.get_main_option("sqlalchemy.url") or os.environ.get(
        "STATS_DATABASE_URL", DEFAULT_URL
    )
    url = make_url(raw)
    driver = "postgresql+psycopg" if url.get_backend_name() == "postgresql" else "mysql+pymysql"
    return url.set(drivername=driver)


def run_offline() -> None:
    context.configure(url=_url(), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    engine = sa.create_engine(_url(), poolclass=NullPool)
    try:
        with engine.connect() as connection:
            context.configure(connection=connection)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
