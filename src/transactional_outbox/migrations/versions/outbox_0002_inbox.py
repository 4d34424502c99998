"""Create the consumer inbox table (``SqlStore`` / ``AsyncSqlStore`` deduplication).

Revision ID: outbox_0002
Revises: outbox_0001
Create Date: 2025-01-01

Table name and schema come from the app's Alembic setup, first found wins:
``config.attributes["outbox_inbox_table"]`` / ``["outbox_schema"]`` (set in
env.py), ``alembic -x outbox_inbox_table=... -x outbox_schema=...``, then the
same keys in the ``[alembic]`` section of alembic.ini. Defaults:
``outbox_inbox``, the connection's schema. Pass the same name to
``inbox_table(metadata, name=...)``.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

from alembic import op
from transactional_outbox.migrations.settings import setting

revision: str = "outbox_0002"
down_revision: str | None = "outbox_0001"
branch_labels: tuple[str, ...] | None = None
depends_on: str | None = None

_MYSQL = ("mysql", "mariadb")


def _name() -> tuple[str, str | None]:
    return setting("outbox_inbox_table") or "outbox_inbox", setting("outbox_schema")


def upgrade() -> None:
    """Create the inbox table."""
    name, schema = _name()
    # Types are spelled out rather than imported from the consumer package: a
    # revision must keep creating what it created when it was written.
    op.create_table(
        name,
        sa.Column("consumer", sa.String(255), nullable=False),
        sa.Column(
            "event_id",
            sa.LargeBinary(16).with_variant(mysql.BINARY(16), *_MYSQL),
            nullable=False,
        ),
        sa.Column(
            "processed_at",
            sa.DateTime().with_variant(mysql.DATETIME(fsp=6), *_MYSQL),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("consumer", "event_id", name=f"pk_{name}"),
        schema=schema,
        mysql_engine="InnoDB",
        mysql_charset="utf8mb4",
    )


def downgrade() -> None:
    """Drop the inbox table."""
    name, schema = _name()
    op.drop_table(name, schema=schema)
