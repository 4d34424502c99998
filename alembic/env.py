"""Alembic environment of this repository (see alembic.ini).

The URL is, first found: ``sqlalchemy.url`` set on the Config (tests do),
``$OUTBOX_MYSQL_URL``, the local stack's default.
"""

from __future__ import annotations

import os
from logging.config import fileConfig

import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from alembic import context
from transactional_outbox import outbox_table

STACK_URL = "mysql+pymysql://outbox:outbox@127.0.0.1:13306/outbox"

config = context.config
# Callers that own logging (tests, apps calling alembic.command) set this to False.
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = sa.MetaData()
outbox_table(
    target_metadata,
    name=config.attributes.get("outbox_table") or config.get_main_option("outbox_table", "outbox"),
    schema=config.attributes.get("outbox_schema") or config.get_main_option("outbox_schema"),
)


def _url() -> str:
    return config.get_main_option("sqlalchemy.url") or os.environ.get("OUTBOX_MYSQL_URL", STACK_URL)


def run_offline() -> None:
    """Emit the SQL instead of running it (``alembic upgrade head --sql``)."""
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    """Run the migrations on a connection of their own."""
    engine = sa.create_engine(_url(), poolclass=NullPool)
    try:
        with engine.connect() as connection:
            context.configure(connection=connection, target_metadata=target_metadata)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
