"""Create the orders table of the api-server example.

Revision ID: orders_0001
Revises:
Depends on: outbox_0001 (the outbox table, from transactional_outbox:migrations/versions)
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

from alembic import op

revision: str = "orders_0001"
down_revision: str | None = None
branch_labels: tuple[str, ...] | None = ("orders",)
# The app writes orders and outbox rows in one transaction: it needs both tables.
# With this line one `alembic upgrade head` creates the outbox table first.
depends_on: str | None = "outbox_0001"


# Microseconds on MySQL/MariaDB; PostgreSQL's TIMESTAMP keeps them already.
_TIMESTAMP = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def upgrade() -> None:
    op.create_table(
        "orders",
        sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=True),
        sa.Column("customer_id", sa.String(64), nullable=False),
        sa.Column("amount", sa.Numeric(12, 2), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", _TIMESTAMP, nullable=False),  # UTC
        sa.Column("updated_at", _TIMESTAMP, nullable=False),
        mysql_engine="InnoDB",
        mysql_charset="utf8mb4",
    )
    op.create_index("ix_orders_customer_id", "orders", ["customer_id"])


def downgrade() -> None:
    op.drop_table("orders")
