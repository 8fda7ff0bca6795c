"""jobs.output_data compressed with lz4 on PostgreSQL (where the server has it)

A history answer is ~300 KB of JSON, stored once per read. PostgreSQL compresses such a
value before it is written (TOAST); its default, pglz, took 4.0-4.8 ms for a 1,000-deal
answer here, lz4 2.5 ms (25 KB stored instead of 18). Values written before stay as they
are; each is read with the method it was written with. SQLite has no such setting.

Revision ID: 0005_job_output_lz4
Revises: 0004_agent_link
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_job_output_lz4"
down_revision = "0004_agent_link"
branch_labels = None
depends_on = None

# The methods this server was built with (lz4 is a build option, PostgreSQL 14 and newer).
TOAST_METHODS = sa.text("SELECT enumvals FROM pg_settings WHERE name = 'default_toast_compression'")


def lz4_available() -> bool:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return False
    methods = bind.execute(TOAST_METHODS).scalar()
    return methods is not None and "lz4" in methods


def upgrade() -> None:
    if lz4_available():
        op.execute("ALTER TABLE jobs ALTER COLUMN output_data SET COMPRESSION lz4")


def downgrade() -> None:
    if lz4_available():
        op.execute("ALTER TABLE jobs ALTER COLUMN output_data SET COMPRESSION DEFAULT")
