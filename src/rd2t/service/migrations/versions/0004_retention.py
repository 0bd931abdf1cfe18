"""Image retention: an inspection whose image files the retention policy removed keeps its row (verdict,
score, times) and records when (`pruned_at`; NULL: its files are kept).

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    with op.batch_alter_table("inspections") as batch:
        batch.add_column(sa.Column("pruned_at", sa.DateTime))


def downgrade() -> None:
    with op.batch_alter_table("inspections") as batch:
        batch.drop_column("pruned_at")
