"""Create the customer_stats read model of the consumer example.

Revision ID: stats_0001
Revises:
Depends on: outbox_0002 (the consumer inbox, from transactional_outbox:migrations/versions)
"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op

revision: str = "stats_0001"
down_revision: str | None = None
branch_labels: tuple[str, ...] | None = ("customer_stats",)
# The handler writes the inbox row (AsyncSqlStore) and the read model in one
# transaction: it needs both tables. outbox_0002 itself builds on outbox_0001,
# so this database also gets an (unused) outbox table.
depends_on: str | None = "outbox_0002"


def upgrade() -> None:
    op.create_table(
        "customer_stats",
        sa.Column("customer_id", sa.String(64), primary_key=True),
        sa.Column("orders", sa.Integer(), nullable=False),
        sa.Column("total_amount", sa.Numeric(14, 2), nullable=False),
        sa.Column("cancelled", sa.Integer(), nullable=False),
        mysql_engine="InnoDB",
        mysql_charset="utf8mb4",
    )


def downgrade() -> None:
    op.drop_table("customer_stats")
