"""Reviewed inspections scored again by a later model (table `rescores`).

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    op.create_table(
        "rescores",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("inspection_id", sa.Integer, nullable=False),
        sa.Column("scale_id", sa.String(64), nullable=False),
        sa.Column("score", sa.Float),
        sa.Column("at", sa.DateTime, nullable=False),
        sa.UniqueConstraint("inspection_id", "scale_id", name="uq_rescores_inspection_scale"),
    )


def downgrade() -> None:
    op.drop_table("rescores")
