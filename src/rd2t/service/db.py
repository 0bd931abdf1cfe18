"""The results database: one row per inspection (kept when the retention policy removes its image files),
one row per threshold change (for one model), and the scores later models gave to reviewed inspections.

SQLAlchemy Core over SQLite (default, WAL mode, a file next to the images) or PostgreSQL; the schema is
made and upgraded by the Alembic migrations in `migrations/`, run at start-up. Times are stored as naive
UTC (the same in both databases) and given out with their +00:00.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

metadata = sa.MetaData()

REVIEW_STATES = ("unreviewed", "false_alarm", "confirmed_defect", "confirmed_good", "missed_defect")
REVIEWED_GOOD = ("false_alarm", "confirmed_good")
REVIEWED_DEFECT = ("confirmed_defect", "missed_defect")

inspections = sa.Table(
    "inspections",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("time", sa.DateTime, nullable=False, index=True),
    sa.Column("score", sa.Float, nullable=False),
    sa.Column("decision", sa.String(8), nullable=False, index=True),
    sa.Column("threshold", sa.Float, nullable=False),
    sa.Column("model_id", sa.String(64), nullable=False),
    # Calibration.scale_id of the model that scored it (NULL: recorded before migration 0002); one for a
    # checkpoint and its ONNX export, so their scores are shown together on the threshold page.
    sa.Column("scale_id", sa.String(64)),
    sa.Column("model_name", sa.String(255), nullable=False),
    sa.Column("model_version", sa.String(64), nullable=False),
    sa.Column("decode_ms", sa.Float, nullable=False),
    sa.Column("model_ms", sa.Float, nullable=False),
    sa.Column("total_ms", sa.Float, nullable=False),
    sa.Column("part_id", sa.String(255)),
    sa.Column("line", sa.String(255), index=True),
    sa.Column("station", sa.String(255), index=True),
    sa.Column("image_sha256", sa.String(64), nullable=False, index=True),  # retention: who shares a file
    sa.Column("image_type", sa.String(32), nullable=False),
    sa.Column("image_path", sa.String(512), nullable=False),  # relative to the images folder
    sa.Column("overlay_path", sa.String(512), nullable=False),
    sa.Column("thumb_path", sa.String(512), nullable=False),
    sa.Column("width", sa.Integer, nullable=False),
    sa.Column("height", sa.Integer, nullable=False),
    sa.Column("review_state", sa.String(32), nullable=False, server_default="unreviewed", index=True),
    sa.Column("review_note", sa.Text),
    sa.Column("review_by", sa.String(255)),
    sa.Column("review_at", sa.DateTime),
    # `rd2t watch`: the file's identity (path, size, mtime). Unique: two watchers cannot both record it.
    sa.Column("source", sa.String(1024), unique=True),
    # The images folder holding its files (Storage.id; NULL: recorded before migration 0004, never pruned):
    # stations sharing a database each have their own folder, and prune only their own rows.
    sa.Column("folder_id", sa.String(32)),
    # When the retention policy (--keep-images-days, --min-free-gb) removed its image files; the row stays.
    sa.Column("pruned_at", sa.DateTime),
    # The policy's next batch: the oldest rows of this folder not pruned, without reading the pruned ones.
    sa.Index("ix_inspections_folder_pruned_time", "folder_id", "pruned_at", "time"),
)

threshold_changes = sa.Table(
    "threshold_changes",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("value", sa.Float, nullable=False),
    sa.Column("previous", sa.Float),
    sa.Column("by", sa.String(255)),
    sa.Column("note", sa.Text),
    sa.Column("at", sa.DateTime, nullable=False),
    # The scores the value was chosen on: a change applies to the models of its scale_id (a checkpoint and its
    # ONNX export), never to another model, whose scores are on another scale. Changes made before migration
    # 0002 have only the model_id of the model serving then (NULL without any inspection) and apply to it.
    sa.Column("model_id", sa.String(64)),
    sa.Column("scale_id", sa.String(64)),
)


# Reviewed inspections scored again by a later model (the threshold page's "score them with this model"),
# so its threshold can be chosen on its own scale with the reviews already made. NULL score: the stored
# original could not be read.
rescores = sa.Table(
    "rescores",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("inspection_id", sa.Integer, nullable=False),
    sa.Column("scale_id", sa.String(64), nullable=False),
    sa.Column("score", sa.Float),
    sa.Column("at", sa.DateTime, nullable=False),
    sa.UniqueConstraint("inspection_id", "scale_id", name="uq_rescores_inspection_scale"),
)


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def iso(t: datetime | None) -> str | None:
    return None if t is None else t.replace(tzinfo=timezone.utc).isoformat()


def to_utc_naive(t: datetime) -> datetime:
    return t if t.tzinfo is None else t.astimezone(timezone.utc).replace(tzinfo=None)


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")  # readers never block the writer; survives kill -9
    cur.execute("PRAGMA synchronous=FULL")  # a commit is on disk before the 200 goes out
    cur.execute("PRAGMA busy_timeout=15000")  # several processes (serve + watch) share one file
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def open_engine(url: str) -> sa.Engine:
    """An engine with the schema at the newest migration."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 15})
        sa.event.listen(engine, "connect", _sqlite_pragmas)
    else:
        engine = sa.create_engine(url, pool_pre_ping=True, pool_size=8, max_overflow=8)
    migrate(engine)
    return engine


def migrate(engine: sa.Engine, attempts: int = 5) -> None:
    """Alembic `upgrade head`, programmatically. Several processes may start together on one database:
    PostgreSQL serialises them with an advisory lock; SQLite's loser retries and finds the work done."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    for attempt in range(attempts):
        try:
            with engine.begin() as conn:
                if conn.dialect.name == "postgresql":
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(7242017)"))
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
            return
        except (OperationalError, ProgrammingError, IntegrityError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))
