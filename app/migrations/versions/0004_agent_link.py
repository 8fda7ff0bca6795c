"""agent link: the agent's open link (its id) and when its last link closed

Revision ID: 0004_agent_link
Revises: 0003_pending_orders
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_agent_link"
down_revision = "0003_pending_orders"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("mt5_agents") as batch:
        batch.add_column(sa.Column("link_id", sa.Uuid(), nullable=True))
        batch.add_column(sa.Column("link_closed_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("mt5_agents") as batch:
        batch.drop_column("link_closed_at")
        batch.drop_column("link_id")
