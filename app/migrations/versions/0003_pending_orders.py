"""pending orders: an order's ticket, later status and changes on its job

Revision ID: 0003_pending_orders
Revises: 0002_api_keys
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_pending_orders"
down_revision = "0002_api_keys"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("ticket", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("order_status", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("order_changes", sa.JSON(none_as_null=True), nullable=True))
        batch.create_index("ix_jobs_agent_ticket", ["agent_id", "ticket"])


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_agent_ticket")
        batch.drop_column("order_changes")
        batch.drop_column("order_status")
        batch.drop_column("ticket")
