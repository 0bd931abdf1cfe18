"""Image retention: an inspection whose image files the retention policy removed keeps its row (verdict,
score, times) and records when (`pruned_at`; NULL: its files are kept). `folder_id`: the images folder of
its files (stations sharing a database prune only their own); rows from before have none and are kept.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    with op.batch_alter_table("inspections") as batch:
        batch.add_column(sa.Column("folder_id", sa.String(32)))
        batch.add_column(sa.Column("pruned_at", sa.DateTime))
    # the policy's next batch: the oldest rows of a folder not pruned, without reading the pruned ones
    op.create_index("ix_inspections_folder_pruned_time", "inspections", ["folder_id", "pruned_at", "time"])
    # the policy finds the other rows of an image (they may share its files) by its hash
    op.create_index("ix_inspections_image_sha256", "inspections", ["image_sha256"])


def downgrade() -> None:
    op.drop_index("ix_inspections_image_sha256", "inspections")
    op.drop_index("ix_inspections_folder_pruned_time", "inspections")
    with op.batch_alter_table("inspections") as batch:
        batch.drop_column("pruned_at")
        batch.drop_column("folder_id")
