"""The Station: a model loaded once, the database, the image store and MQTT — and `inspect`, the one
code path from image bytes to a committed row used by the HTTP service and by `rd2t watch` alike."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import sqlalchemy as sa
from PIL import Image, UnidentifiedImageError
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

import rd2t
from rd2t.data.images import _one_line, to_rgb
from rd2t.errors import ConfigError, InputError, RD2TError
from rd2t.files import check_writable, file_sha256
from rd2t.inference.predictor import Predictor, check_threshold
from rd2t.report.heatmap import overlay
from rd2t.service import db, drift
from rd2t.service.settings import StationSettings
from rd2t.service.storage import FORMATS, Storage

log = logging.getLogger("rd2t.service")
# The columns of the CSV export (GET /v1/inspections.csv), in order.
EXPORT_COLUMNS = (
    "id", "time", "part_id", "line", "station", "decision", "score", "threshold", "model_id", "model_name",
    "width", "height", "total_ms", "review_state", "review_by", "review_at", "review_note", "pruned_at",
    "image_sha256",
)  # fmt: skip
THUMB_PX = 256
# The review page shows a part larger than this (longest side, pixels) as JPEG views of this size: a
# 20-megapixel part's overlay is 38 MB of PNG and took 2.0 s to draw and encode here, its view 1.4 MB and
# 0.36 s (benchmarks/overlay_size.py); the full-resolution files stay one click away.
VIEW_PX = 2560


class TooLarge(RD2TError):
    """An upload over the byte or pixel limit (HTTP 413)."""


class QueueFull(RD2TError):
    """Every worker busy and the waiting room full (HTTP 503 + Retry-After)."""


def _shrunk(image: Image.Image) -> Image.Image:
    """The image at most VIEW_PX on its longest side (in place; returned for chaining)."""
    image.thumbnail((VIEW_PX, VIEW_PX), Image.Resampling.LANCZOS, reducing_gap=3.0)
    return image


def open_image(data: bytes, name: str, max_pixels: int) -> tuple[Image.Image, str]:
    """Decoded RGB image and its Pillow format. The pixel count is checked from the header, before any
    pixel is decoded, so a decompression bomb costs nothing. Errors are one line naming `name`."""
    try:
        im = Image.open(io.BytesIO(data))  # reads the header only
    except Image.DecompressionBombError as e:
        raise TooLarge(f"{name}: too many pixels ({_one_line(e)})") from None
    except UnidentifiedImageError:
        raise InputError(f"{name}: cannot read image (not an image format Pillow recognises)") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise InputError(f"{name}: cannot read image ({_one_line(e)})") from None
    if im.format not in FORMATS:
        raise InputError(f"{name}: unsupported image format {im.format}; send PNG, JPEG, BMP, TIFF or WebP")
    w, h = im.size
    if w * h > max_pixels:
        raise TooLarge(f"{name}: {w}x{h} = {w * h} pixels, over this station's limit of {max_pixels}")
    fmt = im.format
    try:
        im.load()
        return to_rgb(im, name), fmt
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise InputError(f"{name}: cannot read image ({_one_line(e)})") from None


def _with_offset(start, offset_minutes: int) -> str:
    """A bucket's start (datetime from PostgreSQL, text from SQLite), on the clock `offset_minutes` ahead of
    UTC, as ISO 8601 with that offset."""
    if isinstance(start, str):
        start = datetime.fromisoformat(start)
    return start.replace(tzinfo=timezone(timedelta(minutes=offset_minutes))).isoformat()


class Metrics:
    """Prometheus metrics in a registry of their own (several stations can live in one process)."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "rd2t_requests", "HTTP requests", ["method", "route", "status"], registry=self.registry
        )
        self.seconds = Histogram(
            "rd2t_inspection_seconds",
            "Time of one inspection: decode, model, files, database",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.decisions = Counter("rd2t_decisions", "Verdicts", ["decision"], registry=self.registry)
        self.queue_depth = Gauge("rd2t_queue_depth", "Inspections running or waiting", registry=self.registry)
        self.mqtt_connected = Gauge(
            "rd2t_mqtt_connected",
            "1 while the MQTT broker is connected (with --mqtt)",
            registry=self.registry,
        )
        self.model = Gauge("rd2t_model", "The model in use: 1 for its id and file name", ["id", "name"],
                           registry=self.registry)  # fmt: skip
        self.images_free = Gauge(
            "rd2t_images_free_bytes", "Free space on the images folder's disk", registry=self.registry
        )
        self.score_level = Gauge(
            "rd2t_score_level_percentile",
            "Where the median score of the last parts falls among the model's held-out good images' "
            "(50: as when trained; NaN: too few to say)",
            registry=self.registry,
        )
        self.images_removed = Counter(
            "rd2t_images_removed",
            "Inspections whose image files the retention policy removed",
            registry=self.registry,
        )


@dataclass(frozen=True)
class LoadedModel:
    """The model a station scores with, and what names its scores: replaced whole by Station.reload_model,
    so one inspection never mixes two models."""

    path: Path  # the file as loaded (--model resolved: a symlink's target)
    predictor: Predictor
    sha256: str
    scale_id: str  # the score scale: a threshold chosen on one model's scores holds for that scale only
    colour_range: tuple[float, float]
    loaded_at: datetime

    @property
    def id(self) -> str:
        return self.sha256[:12]

    @classmethod
    def open(
        cls,
        settings: StationSettings,
        warm_up: bool = False,
        path: Path | None = None,
        sha256: str | None = None,
    ) -> LoadedModel:
        """The model at --model, or at `path` (--model resolved) whose `sha256` the caller has read."""
        path = path or settings.model.resolve()
        sha256 = sha256 or file_sha256(path)
        predictor = Predictor.open(path, backend=settings.backend, threads=settings.threads)
        if warm_up:  # the first call of a backend is slow: pay it here, not on the line's next part
            size = predictor.config.image_size
            predictor.predict_one(Image.new("RGB", (size, size), (128, 128, 128)), threshold=0.0)
        # One scale id for a checkpoint and its ONNX export, another for a retrained model. Without held-out
        # scores, the file stands for them.
        cal = predictor.calibration
        scale_id = (cal.scale_id() if cal else None) or sha256[:12]
        loaded_at = datetime.now(timezone.utc)
        return cls(path, predictor, sha256, scale_id, predictor.colour_range(), loaded_at)


class Station:
    def __init__(self, settings: StationSettings):
        self.settings = settings
        self.model = LoadedModel.open(settings)
        # Colour scales of the models this process has loaded: a lazy overlay is drawn on its own model's.
        self._colour_ranges: dict[str, tuple[float, float]] = {}
        self.storage = Storage(settings.images)
        self.storage.sweep_temp_files()
        self._record_model(self.model)
        self.engine = db.open_engine(settings.db_url)
        self._threshold = self._threshold_in_force()
        if other := self.change_for_other_model():
            log.warning(
                "threshold %.4g in force for model %s; the last change (to %.4g, %s) was for model %s, "
                "whose scores are on another scale, and does not apply to this one",
                self._threshold,
                self.model_id,
                other["value"],
                other["at"],
                other["model_id"] or "unknown",
            )
        self.metrics = Metrics()
        self.metrics.images_free.set_function(lambda: shutil.disk_usage(self.storage.root).free)
        self.metrics.model.labels(self.model.id, self.model.path.name).set(1)
        self.metrics.score_level.set_function(self._score_level_percentile)
        self.listeners: list[Callable[[dict], None]] = []  # called with each committed record
        self.publisher = None
        if settings.mqtt:
            from rd2t.service.mqtt import Publisher

            self.publisher = Publisher(settings.mqtt, online=self._status)
            self.metrics.mqtt_connected.set_function(lambda: float(self.publisher.connected))
        self._lock = threading.Lock()
        # Held to read or replace the model and its threshold together (inspect, set_threshold, reload_model).
        self._model_lock = threading.Lock()
        self._reload_lock = threading.Lock()  # one reload at a time
        self._in_flight = 0
        self._closed = threading.Event()  # set by close(): background work (retention) ends
        self._stop_rescoring = threading.Event()  # set by stop_rescoring() and close()
        self._rescorer: threading.Thread | None = None
        self._retention: threading.Thread | None = None
        # The last round of the policy: when, what it removed, whether the disk stayed short (warned once).
        self.last_retention: dict = {
            "at": None,
            "inspections": 0,
            "files": 0,
            "bytes": 0,
            "disk_short": False,
        }
        self.rescore_progress: dict = {"scored": 0, "unreadable": 0, "total": 0}

    # ---- the model in use (replaced whole by reload_model) -----------------------------------------
    @property
    def predictor(self) -> Predictor:
        return self.model.predictor

    @property
    def model_id(self) -> str:
        return self.model.id

    @property
    def scale_id(self) -> str:
        return self.model.scale_id

    @property
    def colour_range(self) -> tuple[float, float]:
        return self.model.colour_range

    # ---- threshold: a row per change, the last one in force -------------------------------------
    @property
    def calibrated_threshold(self) -> float | None:
        cal = self.predictor.calibration
        return cal.threshold if cal else None

    def on_this_scale(self, table: sa.Table, model: LoadedModel | None = None) -> sa.ColumnElement[bool]:
        """Rows (inspections, threshold changes) of the model's score scale (default: the one in use); rows
        from before migration 0002 have no scale_id, and those of this very file count."""
        m = model or self.model
        c = table.c  # never NULL (SQL's NULL = x is NULL), so its negation counts the other rows
        return (c.scale_id.is_not(None) & (c.scale_id == m.scale_id)) | (
            c.scale_id.is_(None) & c.model_id.is_not(None) & (c.model_id == m.id)
        )

    def _threshold_in_force(self, model: LoadedModel | None = None) -> float:
        """The last change made on the model's scores, else its calibrated value: a value chosen on another
        model's scores means nothing on this one's (a retrained model's scores are on another scale)."""
        m = model or self.model
        t = db.threshold_changes
        with self.engine.connect() as conn:
            last = conn.execute(
                sa.select(t.c.value).where(self.on_this_scale(t, m)).order_by(t.c.id.desc()).limit(1)
            ).scalar()
        cal = m.predictor.calibration
        value = last if last is not None else (cal.threshold if cal else None)
        if value is None:
            raise ConfigError(f"{m.path}: the model has no calibrated threshold; retrain it")
        return float(value)

    @property
    def threshold(self) -> float:
        return self._threshold

    def refresh_threshold(self) -> float:
        """Re-read the threshold in force (another process on the same database may have changed it)."""
        with self._model_lock:
            before, self._threshold = self._threshold, self._threshold_in_force()
        if self._threshold != before and self.publisher:  # changed by another process: say so too
            self.publisher.announce()
        return self._threshold

    def set_threshold(self, value, by: str | None = None, note: str | None = None) -> float:
        value = check_threshold(value)
        if value is None:
            raise ConfigError("threshold: a number is needed")
        # Under the model lock: a reload cannot slip between the row (this model's) and the value in force.
        with self._model_lock, self.engine.begin() as conn:
            conn.execute(
                db.threshold_changes.insert().values(
                    value=value,
                    previous=self._threshold,
                    by=by,
                    note=note,
                    at=db.utcnow(),
                    model_id=self.model_id,
                    scale_id=self.scale_id,
                )
            )
            self._threshold = value  # after the commit: what is in force is what is recorded
        if self.publisher:  # the line controller sees the new threshold in the retained status
            self.publisher.announce()
        return value

    def threshold_history(self) -> list[dict]:
        """Every change, newest first; `this_model`: made on this model's scores (so it may be in force)."""
        t = db.threshold_changes
        mine = self.on_this_scale(t).label("this_model")
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(t, mine).order_by(t.c.id.desc())).mappings().all()
        return [
            {
                "value": r["value"],
                "previous": r["previous"],
                "by": r["by"],
                "note": r["note"],
                "at": db.iso(r["at"]),
                "model_id": r["model_id"],
                "this_model": bool(r["this_model"]),
            }
            for r in rows
        ]

    def change_for_other_model(self, history: list[dict] | None = None) -> dict | None:
        """The newest threshold change, when it was made for another model than this one (and so is not in
        force here): what the operator of a station restarted on a retrained model needs to be told.
        `history`: threshold_history() when the caller has read it already."""
        history = self.threshold_history() if history is None else history
        return history[0] if history and not history[0]["this_model"] else None

    # ---- the bounded queue ----------------------------------------------------------------------
    def admit(self) -> None:
        """Take a place for one request, or raise QueueFull: never an unbounded backlog."""
        with self._lock:
            if self._in_flight >= self.settings.workers + self.settings.queue:
                raise QueueFull("every worker is busy and the queue is full; retry shortly")
            self._in_flight += 1
            self.metrics.queue_depth.set(self._in_flight)

    def release(self) -> None:
        with self._lock:
            self._in_flight -= 1
            self.metrics.queue_depth.set(self._in_flight)

    # ---- inspection ---------------------------------------------------------------------------------
    def inspect(
        self,
        data: bytes,
        name: str = "upload",
        *,
        part_id: str | None = None,
        line: str | None = None,
        station: str | None = None,
        source: str | None = None,
        with_overlay: bool = False,
    ) -> dict:
        """Score one image and record it: files first, then the row; returns the committed record.

        InputError for an unreadable image, TooLarge over the limits; sqlalchemy IntegrityError when
        `source` was recorded already (another watcher won). `with_overlay` draws the overlay now also
        with `--overlay lazy`."""
        t0 = time.perf_counter()
        if len(data) > self.settings.max_upload_bytes:
            raise TooLarge(f"{name}: {len(data)} bytes, over the limit of {self.settings.max_upload_bytes}")
        image, fmt = open_image(data, name, self.settings.max_pixels)
        decode_ms = (time.perf_counter() - t0) * 1000
        with self._model_lock:  # one model and its threshold for the whole inspection, even across a reload
            m, threshold = self.model, self._threshold
        pred = m.predictor.predict_one(image, threshold=threshold)
        decode_ms += pred.timings.get("decode", 0.0)
        sha = hashlib.sha256(data).hexdigest()
        original, overlay_name, thumb = self.storage.names(sha, fmt, m.id)
        heat = (
            overlay(image, pred.model_map, *m.colour_range)
            if self.settings.overlay == "eager" or with_overlay
            else None
        )
        small = image.copy()
        small.thumbnail((THUMB_PX, THUMB_PX))
        # Files, then the row, under the shared lock (only the writing: the retention policy waits for it, and
        # removes no file this row counts on).
        with self.storage.writing():
            self.storage.put(original, data)
            if heat is not None:
                self.storage.put(overlay_name, lambda f: heat.save(f, "PNG", compress_level=1))
            else:  # the map (a few KB at the model's size): the overlay is drawn from it when first asked for
                self.storage.put(self.storage.map_name(overlay_name), lambda f: np.save(f, pred.model_map))
            self.storage.put(thumb, lambda f: small.save(f, "JPEG", quality=85))
            decision = "defect" if pred.score > threshold else "pass"
            row = {
                "time": db.utcnow(),
                "score": pred.score,
                "decision": decision,
                "threshold": threshold,
                "model_id": m.id,
                "scale_id": m.scale_id,
                "model_name": m.path.name,
                "model_version": f"rd2t {rd2t.__version__}",
                "decode_ms": round(decode_ms, 3),
                "model_ms": round(pred.timings.get("model", 0.0), 3),
                "part_id": part_id,
                "line": line,
                "station": station,
                "image_sha256": sha,
                "image_type": FORMATS[fmt][0],
                "image_path": original,
                "folder_id": self.storage.id,
                "overlay_path": overlay_name,
                "thumb_path": thumb,
                "width": image.size[0],
                "height": image.size[1],
                "source": source,
            }
            row["total_ms"] = round((time.perf_counter() - t0) * 1000, 3)
            with self.engine.begin() as conn:
                row_id = conn.execute(
                    db.inspections.insert().values(**row).returning(db.inspections.c.id)
                ).scalar()
        record = self.record({**row, "id": row_id, "review_state": "unreviewed"})
        self.metrics.seconds.observe(time.perf_counter() - t0)
        self.metrics.decisions.labels(decision).inc()
        if self.publisher:
            self.publisher.publish(record)
        for listener in list(self.listeners):
            try:
                listener(record)
            except Exception as e:  # a listener (the live page) must not fail an inspection
                log.warning("listener failed: %s", e)
        return record

    # ---- reading back ------------------------------------------------------------------------------
    @staticmethod
    def record(row) -> dict:
        """The JSON record of a row (see docs/serving.md)."""
        i = row["id"]
        return {
            "id": i,
            "time": db.iso(row["time"]),
            "score": row["score"],
            "decision": row["decision"],
            "threshold": row["threshold"],
            "model": {"id": row["model_id"], "name": row["model_name"], "version": row["model_version"]},
            "timings": {
                "decode_ms": row["decode_ms"],
                "model_ms": row["model_ms"],
                "total_ms": row["total_ms"],
            },
            "part_id": row["part_id"],
            "line": row["line"],
            "station": row["station"],
            "image_sha256": row["image_sha256"],
            "width": row["width"],
            "height": row["height"],
            "links": {
                "image": f"/v1/inspections/{i}/image",
                "overlay": f"/v1/inspections/{i}/overlay.png",
                "thumb": f"/v1/inspections/{i}/thumb.jpg",
                "image_view": f"/v1/inspections/{i}/image-view.jpg",
                "overlay_view": f"/v1/inspections/{i}/overlay-view.jpg",
                "self": f"/v1/inspections/{i}",
            },
            # when the retention policy removed its image files (the links then answer 410); null: kept
            "images_removed_at": db.iso(row.get("pruned_at")),
            "review": {
                "state": row.get("review_state") or "unreviewed",
                "note": row.get("review_note"),
                "by": row.get("review_by"),
                "at": db.iso(row.get("review_at")),
            },
        }

    def row(self, inspection_id: int) -> dict | None:
        with self.engine.connect() as conn:
            r = (
                conn.execute(sa.select(db.inspections).where(db.inspections.c.id == inspection_id))
                .mappings()
                .first()
            )
        return dict(r) if r else None

    def _stored_map(self, row: dict) -> tuple[np.ndarray, tuple[float, float]] | None:
        """The anomaly map `--overlay lazy` stored for a row and its own model's colour scale, if both are
        there (eager rows have no map; maps of a model never recorded in models/ have no scale)."""
        map_file = self.storage.path(self.storage.map_name(row["overlay_path"]))
        colours = self._colour_range_of(row["model_id"])
        return (np.load(map_file), colours) if map_file.is_file() and colours is not None else None

    def _original(self, row: dict) -> Image.Image:
        return open_image(self.storage.path(row["image_path"]).read_bytes(), row["image_path"], 2**62)[0]

    def overlay_file(self, row: dict):
        """The overlay PNG of a row; with `--overlay lazy` drawn from the stored map on first use."""
        path = self.storage.path(row["overlay_path"])
        if path.is_file():
            return path
        with self.storage.writing():  # not while the retention policy removes this row's files
            stored = self._stored_map(row)
            if stored is None:
                raise InputError(f"inspection {row['id']}: no overlay, and none can be drawn by this model")
            heat = overlay(self._original(row), stored[0], *stored[1])
            self.storage.put(row["overlay_path"], lambda f: heat.save(f, "PNG", compress_level=1))
        return path

    def view_file(self, row: dict, which: str):
        """The review page's rendition of a part ("image" or "overlay"): JPEG, at most VIEW_PX on its longest
        side, drawn on first request from the original (and the stored map, or the full overlay) and kept."""
        image_name, heat_name = self.storage.view_names(row["image_path"], row["overlay_path"])
        name = image_name if which == "image" else heat_name
        path = self.storage.path(name)
        if path.is_file():
            return path
        with self.storage.writing():  # not while the retention policy removes this row's files
            stored = self._stored_map(row) if which == "overlay" else None
            if which == "overlay" and stored is None:  # eager: the full-resolution overlay, shrunk
                with Image.open(self.overlay_file(row)) as full:
                    view = _shrunk(full.convert("RGB"))
            else:
                view = _shrunk(self._original(row))
                if stored is not None:  # drawn at the view's size: no full-size step
                    view = overlay(view, stored[0], *stored[1])
            self.storage.put(name, lambda f: view.save(f, "JPEG", quality=90))
        return path

    def _record_model(self, m: LoadedModel) -> None:
        """IMAGES/models/<id>.json: what a lazy overlay needs of the model that made its map (its colour
        scale), kept beside the maps, so the overlay can be drawn after the station moved to another model."""
        self._colour_ranges[m.id] = m.colour_range
        record = {"id": m.id, "name": m.path.name, "sha256": m.sha256, "colour_range": list(m.colour_range)}
        self.storage.put(f"models/{m.id}.json", json.dumps(record).encode())

    def _colour_range_of(self, model_id: str | None) -> tuple[float, float] | None:
        if model_id in self._colour_ranges:
            return self._colour_ranges[model_id]
        try:  # a model another process or an earlier run loaded
            lo, hi = json.loads(self.storage.path(f"models/{model_id}.json").read_text())["colour_range"]
        except (OSError, ValueError, KeyError, TypeError, InputError):
            return None  # maps stored before models/ existed, by a model not loaded since
        self._colour_ranges[model_id] = (float(lo), float(hi))
        return self._colour_ranges[model_id]

    def get(self, inspection_id: int) -> dict | None:
        r = self.row(inspection_id)
        return self.record(r) if r else None

    def list(
        self,
        *,
        decision: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        line: str | None = None,
        station: str | None = None,
        reviewed: bool | None = None,
        images_removed: bool | None = None,
        after_id: int | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> dict:
        t = db.inspections
        where = self._filters(decision, since, until, line, station, reviewed, images_removed)
        if after_id is not None:
            where.append(t.c.id > after_id)
        order = t.c.id.asc() if after_id is not None else t.c.id.desc()
        with self.engine.connect() as conn:
            total = conn.execute(sa.select(sa.func.count()).select_from(t).where(*where)).scalar()
            rows = conn.execute(
                sa.select(t).where(*where).order_by(order).limit(limit).offset(offset)
            ).mappings()
            items = [self.record(dict(r)) for r in rows]
        return {"items": items, "total": total, "limit": limit, "offset": offset}

    @staticmethod
    def _filters(
        decision=None, since=None, until=None, line=None, station=None, reviewed=None, images_removed=None
    ) -> list:
        """The listing's filters (list, export_rows) as SQL conditions on `inspections`."""
        t = db.inspections
        where = []
        if decision:
            where.append(t.c.decision == decision)
        if since:
            where.append(t.c.time >= db.to_utc_naive(since))
        if until:
            where.append(t.c.time <= db.to_utc_naive(until))
        if line:
            where.append(t.c.line == line)
        if station:
            where.append(t.c.station == station)
        if reviewed is not None:
            where.append(
                (t.c.review_state != "unreviewed") if reviewed else (t.c.review_state == "unreviewed")
            )
        if images_removed is not None:
            where.append(t.c.pruned_at.is_not(None) if images_removed else t.c.pruned_at.is_(None))
        return where

    def export_rows(self, **filters) -> Iterator[dict]:
        """Every inspection the filters (those of `list`) match, oldest first, read in chunks (a year of a
        line is millions of rows: memory stays flat). The columns a spreadsheet needs; no file paths."""
        t = db.inspections
        columns = [t.c[name] for name in EXPORT_COLUMNS]
        query = sa.select(*columns).where(*self._filters(**filters))
        with self.engine.connect() as conn:
            result = conn.execution_options(yield_per=1000).execute(query.order_by(t.c.id))
            for r in result.mappings():
                yield dict(r)

    def stats(self, bucket: str = "hour", offset_minutes: int = 0, **filters) -> dict:
        """Counts per hour or day (of the clock `offset_minutes` ahead of UTC: a plant's local day) of the
        inspections the filters (those of `list`) match: inspected, each verdict, each review state. One
        grouped query; the oldest bucket first. {"bucket", "offset_minutes", "rows", "total"}."""
        if bucket not in ("hour", "day"):
            raise InputError(f"bucket {bucket!r}: expected hour or day")
        t = db.inspections
        with self.engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                shifted = t.c.time + sa.text(f"interval '{int(offset_minutes)} minutes'")
                start = sa.func.date_trunc(bucket, shifted)
            else:  # SQLite: text; the same truncation by format
                fmt = "%Y-%m-%dT%H:00:00" if bucket == "hour" else "%Y-%m-%dT00:00:00"
                start = sa.func.strftime(fmt, t.c.time, f"{int(offset_minutes):+d} minutes")
            counts = {
                "inspected": sa.func.count(),
                **{d: sa.func.sum(sa.case((t.c.decision == d, 1), else_=0)) for d in ("pass", "defect")},
                **{
                    state: sa.func.sum(sa.case((t.c.review_state == state, 1), else_=0))
                    for state in db.REVIEW_STATES
                    if state != "unreviewed"
                },
            }
            query = (
                sa.select(start.label("start"), *(c.label(k) for k, c in counts.items()))
                .where(*self._filters(**filters))
                .group_by(start)
                .order_by(start)
            )
            rows = [dict(r) for r in conn.execute(query).mappings()]
        for r in rows:  # the bucket's start on that clock, as ISO text with its offset
            r["start"] = _with_offset(r["start"], offset_minutes)
            for k in counts:
                r[k] = int(r[k] or 0)
        total = {k: sum(r[k] for r in rows) for k in counts}
        return {"bucket": bucket, "offset_minutes": offset_minutes, "rows": rows, "total": total}

    def review(self, inspection_id: int, state: str, note: str | None, by: str | None) -> dict | None:
        if state not in db.REVIEW_STATES:
            raise InputError(f"review state {state!r}: expected one of {', '.join(db.REVIEW_STATES)}")
        t = db.inspections
        with self.engine.begin() as conn:
            n = conn.execute(
                t.update()
                .where(t.c.id == inspection_id)
                .values(review_state=state, review_note=note, review_by=by, review_at=db.utcnow())
            ).rowcount
        return self.get(inspection_id) if n else None

    def reviewed_scores(self, states) -> list[float]:
        """Scores on this model's scale of the inspections reviewed as one of `states`: those it scored, and
        those another model scored that it has scored again (rescore_reviewed); another model's own scores
        are on another scale and left out."""
        t, r = db.inspections, db.rescores
        mine = sa.select(t.c.score).where(t.c.review_state.in_(states), self.on_this_scale(t))
        again = (
            sa.select(r.c.score)
            .join(t, r.c.inspection_id == t.c.id)
            .where(t.c.review_state.in_(states), ~self.on_this_scale(t))
            .where(r.c.scale_id == self.scale_id, r.c.score.is_not(None))
        )
        with self.engine.connect() as conn:
            return [s for (s,) in conn.execute(sa.union_all(mine, again))]

    def _reviewed_elsewhere(
        self, *, counting_unreadable: bool, model: LoadedModel | None = None
    ) -> sa.Select:
        """Reviewed inspections another model scored and this one (default: the one in use) has not (yet)
        scored again; with `counting_unreadable`, those whose original it could not read count as not
        scored."""
        m = model or self.model
        t, r = db.inspections, db.rescores
        done = sa.select(r.c.id).where(r.c.inspection_id == t.c.id, r.c.scale_id == m.scale_id)
        if counting_unreadable:
            done = done.where(r.c.score.is_not(None))
        states = db.REVIEWED_GOOD + db.REVIEWED_DEFECT
        return sa.select(t).where(t.c.review_state.in_(states), ~self.on_this_scale(t, m), ~done.exists())

    def reviewed_by_other_models(self, *, pending: bool = False) -> int:
        """How many reviewed inspections are left out of reviewed_scores, scored by other models only; with
        `pending`, only those rescore_reviewed has not tried (the rest: their original could not be read)."""
        left = self._reviewed_elsewhere(counting_unreadable=not pending).subquery()
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(left)).scalar() or 0)

    def rescore_reviewed(self, stop: threading.Event | None = None) -> dict:
        """Score again, with this model, the stored original of every reviewed inspection another model
        scored (newest first), so its threshold page shows the reviews made before it on its own scale.
        Live inspections go first: it waits while any is in flight. An original that cannot be read is
        recorded as such and counted, the rest go on. Returns the counts {"scored", "unreadable", "total"}."""
        t = db.inspections
        m = self.model  # the scores are this model's, even if a reload replaces it meanwhile
        pending = (
            self._reviewed_elsewhere(counting_unreadable=False, model=m)
            .with_only_columns(t.c.id, t.c.image_path)  # a long review history: two columns a row
            .order_by(t.c.id.desc())
        )
        with self.engine.connect() as conn:
            rows = [dict(r) for r in conn.execute(pending).mappings()]
        done = {"scored": 0, "unreadable": 0, "total": len(rows)}
        self.rescore_progress = done
        for row in rows:
            while self._in_flight and not (stop and stop.is_set()):
                time.sleep(0.02)
            if stop and stop.is_set():
                break
            try:
                path = self.storage.path(row["image_path"])
                image, _ = open_image(path.read_bytes(), str(path), self.settings.max_pixels)
                score = m.predictor.predict_one(image, threshold=0.0).score
            except (RD2TError, OSError) as e:
                log.warning("rescoring inspection %s: %s", row["id"], e)
                score = None
            try:
                with self.engine.begin() as conn:
                    conn.execute(
                        db.rescores.insert().values(
                            inspection_id=row["id"], scale_id=m.scale_id, score=score, at=db.utcnow()
                        )
                    )
            except sa.exc.IntegrityError:  # another process on the same database scored it first
                pass
            done["scored" if score is not None else "unreadable"] += 1
        return done

    def start_rescoring(self) -> dict:
        """rescore_reviewed in a background thread (one at a time); returns the progress so far."""
        with self._lock:
            if self._rescorer is None or not self._rescorer.is_alive():
                self._stop_rescoring.clear()
                self.rescore_progress = {"scored": 0, "unreadable": 0, "total": None}
                self._rescorer = threading.Thread(
                    target=self._rescore_in_background, name="rescore", daemon=True
                )
                self._rescorer.start()
        return self.rescoring()

    def _rescore_in_background(self) -> None:
        try:
            done = self.rescore_reviewed(self._stop_rescoring)
            if self._stop_rescoring.is_set() and done["scored"] + done["unreadable"] < done["total"]:
                self.rescore_progress = {**done, "stopped": True}
        except Exception as e:  # the database went away, say: the page shows why, nothing half-recorded
            log.exception("rescoring stopped")
            reason = " ".join(str(e).split())[:300]  # one line; SQLAlchemy appends SQL and a link
            self.rescore_progress = {**self.rescore_progress, "error": f"{type(e).__name__}: {reason}"}

    def stop_rescoring(self) -> dict:
        """Ask a running rescoring to stop after the image it is on; returns the progress once it has."""
        self._stop_rescoring.set()
        if self._rescorer is not None:
            self._rescorer.join(timeout=30)
        return self.rescoring()

    def rescoring(self) -> dict:
        """{"running", "scored", "unreadable", "total"} of the last start_rescoring, with "stopped": true if
        stop_rescoring ended it early, or "error": one line if it failed."""
        running = self._rescorer is not None and self._rescorer.is_alive()
        return {"running": running, **self.rescore_progress}

    def reviewed_rows(self, states: tuple[str, ...]) -> list[dict]:
        """Inspections reviewed as one of `states` (db.REVIEWED_GOOD or REVIEWED_DEFECT), oldest first."""
        t = db.inspections
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(t).where(t.c.review_state.in_(states)).order_by(t.c.id))
            return [dict(r) for r in rows.mappings()]

    def has_source(self, source: str) -> bool:
        t = db.inspections
        with self.engine.connect() as conn:
            return conn.execute(sa.select(t.c.id).where(t.c.source == source)).first() is not None

    def model_description(self) -> dict:
        m = self.model
        metrics_file = m.path.parent / "metrics.json"
        try:
            metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else None
        except (OSError, ValueError):
            metrics = None
        cal = m.predictor.calibration
        return {
            "id": m.id,
            "name": m.path.name,
            "path": str(m.path),
            "configured_path": str(self.settings.model.absolute()),  # a link, when it differs from path
            "sha256": m.sha256,
            "backend": type(m.predictor.backend).__name__.removesuffix("Backend").lower(),
            "config": m.predictor.config.to_dict(),
            "calibration": cal.to_dict() if cal else None,
            "metrics": metrics,
            "loaded_at": m.loaded_at.isoformat(),
        }

    def _status(self) -> dict:
        """What the station's "online" MQTT status says of it: the model in use and the threshold in force."""
        m = self.model
        return {"model_id": m.id, "model_name": m.path.name, "threshold": self._threshold, "pid": os.getpid()}

    def reload_model(self) -> dict:
        """Load the file at --model again (a retrained model copied or linked into its place) and score the
        next inspection with it; inspections already started finish with the model they started with. The
        new model gets its own threshold (the last change made on its scores, else its calibrated one), as
        at a restart; a rescoring under way stops (its scores are the old model's). An unreadable file
        raises a one-line error and the model in use stays. Returns {"changed", "previous", "model"}."""
        with self._reload_lock:
            old = self.model
            path = self.settings.model.resolve()
            try:
                sha256 = file_sha256(path)
            except OSError as e:
                raise ConfigError(
                    f"{self.settings.model}: cannot read the model ({e.strerror or e})"
                ) from None
            if sha256 == old.sha256:
                return {"changed": False, "previous": old.id, "model": self.model_description()}
            # seconds: the old model scores meanwhile
            new = LoadedModel.open(self.settings, warm_up=True, path=path, sha256=sha256)
            threshold = self._threshold_in_force(new)
            self.stop_rescoring()
            self._record_model(new)
            with self._model_lock:
                self.model, self._threshold = new, threshold
            self.metrics.model.clear()
            self.metrics.model.labels(new.id, new.path.name).set(1)
            if self.publisher:  # the line controller learns the new model from the retained status
                self.publisher.announce()
        log.info(
            "model %s (%s) replaced %s (%s); threshold %.4g", new.id, new.path, old.id, old.path, threshold
        )
        if other := self.change_for_other_model():
            log.warning(
                "the last threshold change (to %.4g, %s) was for model %s and does not apply to model %s",
                other["value"],
                other["at"],
                other["model_id"] or "unknown",
                new.id,
            )
        return {"changed": True, "previous": old.id, "model": self.model_description()}

    def line_controller(self) -> dict | None:
        """The MQTT side as the Model page shows it (no credentials); None without --mqtt."""
        p = self.publisher
        if p is None:
            return None
        return {
            "broker": p.broker,
            "topic": p.topic,
            "status_topic": p.status_topic,
            "connected": p.connected,
        }

    def ready(self) -> dict:
        """Model loaded; database answers and takes a write (rolled back); images folder writable."""
        ok_db = ok_files = True
        try:
            with self.engine.connect() as conn:
                tx = conn.begin()
                conn.execute(db.threshold_changes.insert().values(value=0.0, at=db.utcnow()))
                tx.rollback()
        except Exception as e:
            log.warning("not ready: database: %s", e)
            ok_db = False
        try:
            check_writable(self.storage.root)
        except RD2TError as e:
            log.warning("not ready: %s", e)
            ok_files = False
        # MQTT is reported, not required: inspections go on without the broker (messages wait in a queue).
        mqtt = self.publisher.connected if self.publisher else None
        return {"model": self.predictor is not None, "database": ok_db, "images": ok_files, "mqtt": mqtt}

    # ---- retention: image files go, verdicts stay ---------------------------------------------------
    def prune_images(self, now: datetime | None = None) -> dict:
        """The retention policy, once: remove the image files (original, overlay or map, thumbnail) of
        unreviewed inspections older than --keep-images-days, then, while the images folder's disk has less
        than --min-free-gb free, of the oldest unreviewed ones. Reviewed inspections keep theirs (they are
        the new training images, the --val-defects folder and the threshold page's scores). A file another
        kept row shares (the same image inspected twice) stays. Rows stay, with `pruned_at`.
        Returns {"inspections", "files", "bytes"} removed."""
        s, t = self.settings, db.inspections
        now = now or db.utcnow()
        done = {"inspections": 0, "files": 0, "bytes": 0}

        def more(where) -> bool:  # one more batch, unless the station is closing (close() waits for it)
            return not self._closed.is_set() and bool(self._prune_oldest(where, now, done))

        if s.keep_images_days is not None:
            cutoff = now - timedelta(days=s.keep_images_days)
            while more(t.c.time < cutoff):
                pass
        short = False
        if s.min_free_gb is not None:
            while (free := self.free_gb()) < s.min_free_gb and more(sa.true()):
                pass
            short = free < s.min_free_gb and not self._closed.is_set()  # nothing left to remove
            if short and not self.last_retention["disk_short"]:  # once, not every minute
                log.warning(
                    "%.1f GB free under %s, below --min-free-gb %g, and no unreviewed inspection's images "
                    "are left to remove",
                    free,
                    self.storage.root,
                    s.min_free_gb,
                )
            elif self.last_retention["disk_short"] and not short:
                log.info(
                    "%.1f GB free under %s again (--min-free-gb %g)", free, self.storage.root, s.min_free_gb
                )
        if done["inspections"]:
            log.info(
                "retention: removed the images of %d inspections (%d files, %.1f MB)",
                done["inspections"],
                done["files"],
                done["bytes"] / 1e6,
            )
        self.metrics.images_removed.inc(done["inspections"])
        self.last_retention = {"at": now, **done, "disk_short": short}
        return done

    def retention(self) -> dict:
        """The images folder, its free space, the policy, its last round and how many of this folder's
        inspections have lost their files (the Model page and GET /v1/storage)."""
        t, s = db.inspections, self.settings
        mine = t.c.folder_id == self.storage.id
        with self.engine.connect() as conn:
            counts = conn.execute(
                sa.select(sa.func.count(), sa.func.count(t.c.pruned_at)).select_from(t).where(mine)
            ).one()
        last = self.last_retention
        return {
            "images": str(self.storage.root),
            "free_gb": round(self.free_gb(), 2),
            "keep_images_days": s.keep_images_days,
            "min_free_gb": s.min_free_gb,
            "inspections": counts[0],
            "images_removed": counts[1],
            "last_run": {**last, "at": db.iso(last["at"])} if last["at"] else None,
        }

    def _score_level_percentile(self) -> float:
        try:  # a query of the last drift.WINDOW rows per scrape; /metrics answers while the database is away
            p = self.score_drift()["percentile"]
        except sa.exc.SQLAlchemyError:
            p = None
        return float("nan") if p is None else p

    def score_drift(self, last: int = drift.WINDOW, **filters) -> dict:
        """The score level of the last `last` parts this model judged (the filters of `list` apply; those
        reviewed as defects left out) against its held-out good images (drift.score_level), with the
        window's first and last time."""
        with self._model_lock:  # one model: its scores, its reference and its threshold
            m, threshold = self.model, self._threshold
        t = db.inspections
        query = (
            sa.select(t.c.score, t.c.time)
            .where(self.on_this_scale(t, m), t.c.review_state.not_in(db.REVIEWED_DEFECT))
            .where(*self._filters(**filters))
            .order_by(t.c.id.desc())
            .limit(last)
        )
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        cal = m.predictor.calibration
        level = drift.score_level([r.score for r in rows], cal.scores if cal else [], threshold)
        times = [r.time for r in rows]
        return {
            **level,
            "window": last,
            "min_parts": drift.MIN_PARTS,
            "min_reference": drift.MIN_REFERENCE,
            "since": db.iso(min(times)) if times else None,
            "until": db.iso(max(times)) if times else None,
            "model_id": m.id,
        }

    def free_gb(self) -> float:
        return shutil.disk_usage(self.storage.root).free / 1e9

    def _prune_oldest(self, where, now: datetime, done: dict, batch: int = 50) -> int:
        """One batch of prune_images: returns how many inspections lost their files (0: none was left)."""
        t = db.inspections
        files = (t.c.image_path, t.c.overlay_path, t.c.thumb_path)
        with self.storage.removing():
            with self.engine.begin() as conn:
                rows = conn.execute(
                    sa.select(t.c.id, t.c.image_sha256, *files)
                    .where(t.c.folder_id == self.storage.id, t.c.pruned_at.is_(None), where)
                    .where(t.c.review_state == "unreviewed")
                    .order_by(t.c.time, t.c.id)
                    .limit(batch)
                ).all()
                if not rows:
                    return 0
                conn.execute(t.update().where(t.c.id.in_([r.id for r in rows])).values(pruned_at=now))
                # Files are named by the image's SHA-256: only rows of the same image can share them. Found by
                # the hash's index alone (with pruned_at in the query, SQLite reads every unpruned row).
                shared = sa.select(t.c.pruned_at, *files).where(
                    t.c.image_sha256.in_({r.image_sha256 for r in rows})
                )
                kept_rows = [r for r in conn.execute(shared) if r.pruned_at is None]
            names = {n for r in rows for n in (*r[2:], *self._derived(r.image_path, r.overlay_path))}
            kept = {n for r in kept_rows for n in (*r[1:], *self._derived(r.image_path, r.overlay_path))}
            # Removed once the rows are committed as pruned, still under the lock: a crash between leaves
            # files no row counts on (disk space), never a kept row pointing at a removed file.
            for name in names - kept:
                if freed := self.storage.remove(name):
                    done["files"] += 1
                    done["bytes"] += freed
        done["inspections"] += len(rows)
        return len(rows)

    def _derived(self, image_name: str, overlay_name: str) -> tuple[str, ...]:
        """The files drawn from a row's image after it was recorded: the map (lazy), the page's views."""
        return (self.storage.map_name(overlay_name), *self.storage.view_names(image_name, overlay_name))

    def _retention_loop(self, every_s: float) -> None:
        while True:
            try:
                self.prune_images()
            except Exception:  # the database away for a while, say: the next round tries again
                log.exception("retention failed")
            if self._closed.wait(every_s):
                return

    def start_retention(self, every_s: float = 60.0) -> None:
        """Run prune_images now and every `every_s` seconds in a background thread, if a policy is set."""
        if self.settings.keep_images_days is None and self.settings.min_free_gb is None:
            return
        self._retention = threading.Thread(
            target=self._retention_loop, args=(every_s,), name="retention", daemon=True
        )
        self._retention.start()

    def close(self) -> None:
        self._closed.set()
        self._stop_rescoring.set()
        for worker in (self._rescorer, self._retention):  # each ends after its current image or batch
            if worker is not None:
                worker.join(timeout=10)
        if self.publisher:
            self.publisher.close()
        self.engine.dispose()


def reload_on_sighup(station: Station) -> None:
    """`kill -HUP PID` (systemd's ExecReload) makes `rd2t serve` / `rd2t watch` reload --model, in a
    background thread so that inspections go on meanwhile. Call from the main thread; no-op without SIGHUP."""
    if not hasattr(signal, "SIGHUP"):
        return

    def reload() -> None:
        try:
            done = station.reload_model()
        except Exception as e:  # a half-copied file, say: the model in use stays, the log says why
            log.error("model not reloaded (%s stays): %s", station.model_id, e)
            return
        if not done["changed"]:
            log.info("model %s unchanged: nothing to reload", done["previous"])

    signal.signal(
        signal.SIGHUP, lambda *_: threading.Thread(target=reload, name="reload", daemon=True).start()
    )
