"""Create the outbox table (DESIGN §1).

Revision ID: outbox_0001
Revises:
Create Date: 2025-01-01

Table name and schema come from the app's Alembic setup, first found wins:
``config.attributes["outbox_table"]`` / ``["outbox_schema"]`` (set in env.py),
``alembic -x outbox_table=... -x outbox_schema=...``, then the same keys in the
``[alembic]`` section of alembic.ini. Defaults: ``outbox``, the connection's schema.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

from alembic import op
from transactional_outbox.migrations.settings import setting

revision: str = "outbox_0001"
down_revision: str | None = None
branch_labels: tuple[str, ...] | None = ("transactional_outbox",)
depends_on: str | None = None

_MYSQL = ("mysql", "mariadb")


def _name() -> tuple[str, str | None]:
    return setting("outbox_table") or "outbox", setting("outbox_schema")


def upgrade() -> None:
    """Create the outbox table."""
    name, schema = _name()
    # Types are spelled out rather than imported from transactional_outbox.table:
    # a revision must keep creating what it created when it was written.
    op.create_table(
        name,
        sa.Column(
            "id", sa.LargeBinary(16).with_variant(mysql.BINARY(16), *_MYSQL), primary_key=True
        ),
        sa.Column("aggregatetype", sa.String(255), nullable=False),
        sa.Column("aggregateid", sa.String(255), nullable=False),
        sa.Column("type", sa.String(255), nullable=False),
        sa.Column(
            "payload", sa.LargeBinary().with_variant(mysql.LONGBLOB(), *_MYSQL), nullable=False
        ),
        sa.Column("headers", sa.Text(), nullable=True),
        sa.Column(
            "timestamp",
            sa.DateTime().with_variant(mysql.DATETIME(fsp=6), *_MYSQL),
            nullable=False,
        ),
        schema=schema,
        mysql_engine="InnoDB",
        mysql_charset="utf8mb4",
    )


def downgrade() -> None:
    """Drop the outbox table."""
    name, schema = _name()
    op.drop_table(name, schema=schema)
