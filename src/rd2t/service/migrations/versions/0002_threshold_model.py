"""Threshold changes belong to the scores they were chosen on: another model's scores are on another scale.

Both tables get `scale_id` (Calibration.scale_id: one for a checkpoint and its ONNX export), threshold
changes also `model_id`. Existing rows cannot know their scale_id. Existing changes get the model that was
serving when each was made: the model of the last inspection at or before it, else (a change before the
first inspection) the model of the first inspection. Without any inspection the model cannot be known and
stays NULL, which no model applies.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    with op.batch_alter_table("inspections") as batch:
        batch.add_column(sa.Column("scale_id", sa.String(64)))
    with op.batch_alter_table("threshold_changes") as batch:
        batch.add_column(sa.Column("model_id", sa.String(64)))
        batch.add_column(sa.Column("scale_id", sa.String(64)))
    op.execute(
        """
        UPDATE threshold_changes SET model_id = COALESCE(
            (SELECT i.model_id FROM inspections i WHERE i.time <= threshold_changes.at
             ORDER BY i.time DESC, i.id DESC LIMIT 1),
            (SELECT i.model_id FROM inspections i ORDER BY i.time, i.id LIMIT 1))
        """
    )


def downgrade() -> None:
    with op.batch_alter_table("threshold_changes") as batch:
        batch.drop_column("scale_id")
        batch.drop_column("model_id")
    with op.batch_alter_table("inspections") as batch:
        batch.drop_column("scale_id")
