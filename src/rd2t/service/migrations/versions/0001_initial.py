"""The first schema: inspections and threshold changes.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "inspections",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("time", sa.DateTime, nullable=False),
        sa.Column("score", sa.Float, nullable=False),
        sa.Column("decision", sa.String(8), nullable=False),
        sa.Column("threshold", sa.Float, nullable=False),
        sa.Column("model_id", sa.String(64), nullable=False),
        sa.Column("model_name", sa.String(255), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("decode_ms", sa.Float, nullable=False),
        sa.Column("model_ms", sa.Float, nullable=False),
        sa.Column("total_ms", sa.Float, nullable=False),
        sa.Column("part_id", sa.String(255)),
        sa.Column("line", sa.String(255)),
        sa.Column("station", sa.String(255)),
        sa.Column("image_sha256", sa.String(64), nullable=False),
        sa.Column("image_type", sa.String(32), nullable=False),
        sa.Column("image_path", sa.String(512), nullable=False),
        sa.Column("overlay_path", sa.String(512), nullable=False),
        sa.Column("thumb_path", sa.String(512), nullable=False),
        sa.Column("width", sa.Integer, nullable=False),
        sa.Column("height", sa.Integer, nullable=False),
        sa.Column("review_state", sa.String(32), nullable=False, server_default="unreviewed"),
        sa.Column("review_note", sa.Text),
        sa.Column("review_by", sa.String(255)),
        sa.Column("review_at", sa.DateTime),
        sa.Column("source", sa.String(1024)),
        sa.UniqueConstraint("source", name="uq_inspections_source"),
    )
    for col in ("time", "decision", "line", "station", "review_state"):
        op.create_index(f"ix_inspections_{col}", "inspections", [col])
    op.create_table(
        "threshold_changes",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("value", sa.Float, nullable=False),
        sa.Column("previous", sa.Float),
        sa.Column("by", sa.String(255)),
        sa.Column("note", sa.Text),
        sa.Column("at", sa.DateTime, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("threshold_changes")
    op.drop_table("inspections")
