"""Create the inbox table and the customer_stats read model of the consumer example.

Revision ID: stats_0001
Revises:

The inbox (``outbox_inbox``, ``AsyncSqlStore`` deduplication) is created here from
``transactional_outbox.consumer.inbox_table`` rather than through the package's
``outbox_0002`` revision: that one builds on ``outbox_0001``, which would also create an
outbox table this database never uses (it only consumes).
"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op
from transactional_outbox.consumer import inbox_table

revision: str = "stats_0001"
down_revision: str | None = None
branch_labels: tuple[str, ...] | None = ("customer_stats",)
depends_on: str | None = None


def upgrade() -> None:
    # The handler writes the inbox row (AsyncSqlStore) and the read model in one
    # transaction: it needs both tables.
    inbox_table(sa.MetaData()).create(op.get_bind())
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
    inbox_table(sa.MetaData()).drop(op.get_bind())
