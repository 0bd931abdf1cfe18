"""The JSON API of a Station (`/v1/...`): routes, the token check, and the bounded worker pool.

Async endpoints only read the request and wait; decoding, the model, file writes and the database
commit run in a pool of `workers` threads (torch and ONNX Runtime release the GIL), so the event loop
keeps answering /healthz, listings and the page while images are scored. The review page
(rd2t.service.page) uses the same helpers: station_of, token_of, threshold_state, threshold_analysis.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import secrets
import tempfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import FileResponse, StreamingResponse
from pydantic import BaseModel
from starlette.datastructures import UploadFile

from rd2t.calibration import youden
from rd2t.errors import ConfigError, InputError, RD2TError
from rd2t.service import db, drift
from rd2t.service.station import EXPORT_COLUMNS, QueueFull, Station, TooLarge

RETRY_AFTER_S = 1
IMAGE_BODY = {  # OpenAPI: the two ways to send an image
    "requestBody": {
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "part_id": {"type": "string"},
                        "line": {"type": "string"},
                        "station": {"type": "string"},
                    },
                    "required": ["file"],
                }
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        }
    }
}
BATCH_BODY = {
    "requestBody": {
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "files": {"type": "array", "items": {"type": "string", "format": "binary"}}
                    },
                }
            }
        }
    }
}


class ReviewIn(BaseModel):
    state: Literal[db.REVIEW_STATES]  # type: ignore[valid-type]
    note: str | None = None
    by: str | None = None


class ThresholdIn(BaseModel):
    value: float
    by: str | None = None
    note: str | None = None


def station_of(request: Request) -> Station:
    return request.app.state.station


def token_of(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.cookies.get("rd2t_token")


def require_token(request: Request) -> None:
    """With a token configured, every /v1 call (and every page route) needs it: header or cookie."""
    expected = station_of(request).settings.token
    if expected and not secrets.compare_digest((token_of(request) or "").encode(), expected.encode()):
        raise HTTPException(
            401, "missing or wrong token (Authorization: Bearer <token> or cookie rd2t_token)"
        )


def http_error(e: RD2TError) -> HTTPException:
    if isinstance(e, TooLarge):
        return HTTPException(413, str(e))
    if isinstance(e, QueueFull):
        return HTTPException(503, str(e), headers={"Retry-After": str(RETRY_AFTER_S)})
    if isinstance(e, (InputError, ConfigError)):
        return HTTPException(400, str(e))
    return HTTPException(500, str(e))


async def run_inspection(st: Station, pool: ThreadPoolExecutor, data: bytes, name: str, **fields) -> dict:
    """Admit (or 503), then score in the worker pool; the answer comes after the row is committed."""
    try:
        st.admit()
    except QueueFull as e:
        raise http_error(e) from None
    try:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(pool, lambda: st.inspect(data, name, **fields))
    except RD2TError as e:
        raise http_error(e) from None
    finally:
        st.release()


def clean(value: str | None) -> str | None:
    value = (value or "").strip()
    return value or None


api = APIRouter(prefix="/v1", dependencies=[Depends(require_token)])


@api.post("/inspect", openapi_extra=IMAGE_BODY, summary="Inspect one image")
async def inspect(
    request: Request,
    heatmap: Literal["png"] | None = None,
    part_id: str | None = None,
    line: str | None = None,
    station: str | None = None,
):
    st = station_of(request)
    ctype = request.headers.get("content-type", "")
    fields = {"part_id": part_id, "line": line, "station": station}
    if ctype.startswith("multipart/form-data"):
        form = await request.form()
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise HTTPException(400, "multipart upload without a `file` field")
        data, name = await upload.read(), upload.filename or "upload"
        for key in fields:
            fields[key] = fields[key] or (form.get(key) if isinstance(form.get(key), str) else None)
    elif ctype.startswith(("image/", "application/octet-stream")):
        data, name = await request.body(), "upload"
    else:
        raise HTTPException(415, f"content type {ctype or 'none'}: send multipart/form-data or image/*")
    record = await run_inspection(
        st,
        request.app.state.pool,
        data,
        name,
        with_overlay=heatmap == "png",
        **{k: clean(v) for k, v in fields.items()},
    )
    if heatmap == "png":
        path = st.storage.path(st.row(record["id"])["overlay_path"])
        headers = {
            "X-Inspection-Id": str(record["id"]),
            "X-Score": repr(record["score"]),
            "X-Decision": record["decision"],
        }
        return FileResponse(path, media_type="image/png", headers=headers)
    return record


@api.post("/inspect/batch", openapi_extra=BATCH_BODY, summary="Inspect several images")
async def inspect_batch(request: Request):
    st = station_of(request)
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise HTTPException(415, "send the images as multipart/form-data fields named `files`")
    form = await request.form()
    uploads = [u for key in ("files", "file") for u in form.getlist(key) if isinstance(u, UploadFile)]
    if not uploads:
        raise HTTPException(400, "multipart upload without `files` fields")
    fields = {
        k: clean(form.get(k)) if isinstance(form.get(k), str) else None
        for k in ("part_id", "line", "station")
    }

    async def one(upload: UploadFile):
        name = upload.filename or "upload"
        try:
            return await run_inspection(st, request.app.state.pool, await upload.read(), name, **fields)
        except HTTPException as e:
            if e.status_code == 503:
                raise
            return {"file": name, "error": e.detail}

    outcomes = [await one(u) for u in uploads]  # one at a time: a batch takes one place in the queue
    return {
        "results": [o for o in outcomes if "error" not in o],
        "errors": [o for o in outcomes if "error" in o],
    }


def inspection_filters(
    decision: Literal["pass", "defect"] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    line: str | None = None,
    station: str | None = None,
    reviewed: bool | None = None,
    images_removed: bool | None = None,
) -> dict:
    """The query parameters that choose inspections, shared by the listing and the CSV export."""
    return {
        "decision": decision,
        "since": since,
        "until": until,
        "line": line,
        "station": station,
        "reviewed": reviewed,
        "images_removed": images_removed,
    }


@api.get("/inspections", summary="List inspections (newest first; oldest first after `after_id`)")
def list_inspections(
    request: Request,
    filters: dict = Depends(inspection_filters),
    after_id: int | None = None,
    limit: int = Query(50, ge=1, le=500),
    offset: int = Query(0, ge=0),
):
    return station_of(request).list(**filters, after_id=after_id, limit=limit, offset=offset)


@api.get(
    "/inspections.csv",
    summary="Every inspection the filters match, oldest first, as CSV (a spreadsheet's shift or month)",
)
def export_inspections_csv(
    request: Request, filters: dict = Depends(inspection_filters)
) -> StreamingResponse:
    rows = station_of(request).export_rows(**filters)
    header = ["images_removed_at" if c == "pruned_at" else c for c in EXPORT_COLUMNS]

    def lines():  # a sync generator: Starlette iterates it in a thread, a chunk of rows at a time
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(header)
        for n, row in enumerate(rows, 1):
            writer.writerow([_csv_cell(row[c]) for c in EXPORT_COLUMNS])
            if n % 1000 == 0:
                yield out.getvalue()
                out.seek(0)
                out.truncate()
        yield out.getvalue()

    name = f"inspections-{datetime.now(timezone.utc):%Y%m%d-%H%M}.csv"
    headers = {"Content-Disposition": f'attachment; filename="{name}"'}
    return StreamingResponse(lines(), media_type="text/csv; charset=utf-8", headers=headers)


@api.get("/stats", summary="Inspections, verdicts and reviews per hour or day (yield, false alarms, misses)")
def stats(
    request: Request,
    filters: dict = Depends(inspection_filters),
    bucket: Literal["hour", "day"] = "hour",
    offset_minutes: int = Query(0, ge=-14 * 60, le=14 * 60, description="The plant's clock ahead of UTC"),
):
    return station_of(request).stats(bucket, offset_minutes, **filters)


def _csv_cell(value):
    """Times as ISO UTC; text a spreadsheet would run as a formula (=, +, -, @ first: typed notes, part ids
    from a scanner) prefixed with ', as OWASP advises against CSV injection."""
    if isinstance(value, datetime):
        return db.iso(value)
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def _row_or_404(request: Request, inspection_id: int) -> dict:
    row = station_of(request).row(inspection_id)
    if row is None:
        raise HTTPException(404, f"no inspection {inspection_id}")
    return row


def _row_with_images(request: Request, inspection_id: int) -> dict:
    """The row, or 410 Gone once the retention policy removed its image files (its verdict stays)."""
    row = _row_or_404(request, inspection_id)
    if row.get("pruned_at") is not None:
        when = row["pruned_at"].strftime("%Y-%m-%d %H:%M UTC")
        raise HTTPException(
            410, f"inspection {inspection_id}: its images were removed by the retention policy on {when}"
        )
    return row


@api.get("/inspections/{inspection_id}")
def get_inspection(request: Request, inspection_id: int):
    return Station.record(_row_or_404(request, inspection_id))


def _file(request: Request, inspection_id: int, column: str, media_type: str | None = None) -> FileResponse:
    """A stored file, found by the row's id only: the path comes from the database, never the request."""
    row = _row_with_images(request, inspection_id)
    path = station_of(request).storage.path(row[column])
    if not path.is_file():
        raise HTTPException(404, f"inspection {inspection_id}: its file is missing from the images folder")
    return FileResponse(
        path, media_type=media_type or row["image_type"], headers={"Cache-Control": "max-age=86400"}
    )


@api.get("/inspections/{inspection_id}/image")
def get_image(request: Request, inspection_id: int):
    return _file(request, inspection_id, "image_path")


@api.get("/inspections/{inspection_id}/overlay.png")
def get_overlay(request: Request, inspection_id: int):
    row = _row_with_images(request, inspection_id)
    try:
        path = station_of(request).overlay_file(row)  # a sync route: drawing runs in a thread
    except InputError as e:
        raise HTTPException(404, str(e)) from None
    return FileResponse(path, media_type="image/png", headers={"Cache-Control": "max-age=86400"})


def _view(request: Request, inspection_id: int, which: str) -> FileResponse:
    row = _row_with_images(request, inspection_id)
    try:
        path = station_of(request).view_file(row, which)  # a sync route: drawing runs in a thread
    except InputError as e:
        raise HTTPException(404, str(e)) from None
    return FileResponse(path, media_type="image/jpeg", headers={"Cache-Control": "max-age=86400"})


@api.get(
    "/inspections/{inspection_id}/image-view.jpg", summary="The image as the review page shows a large part"
)
def get_image_view(request: Request, inspection_id: int):
    return _view(request, inspection_id, "image")


@api.get("/inspections/{inspection_id}/overlay-view.jpg", summary="Its heat map as the review page shows it")
def get_overlay_view(request: Request, inspection_id: int):
    return _view(request, inspection_id, "overlay")


@api.get("/inspections/{inspection_id}/thumb.jpg")
def get_thumb(request: Request, inspection_id: int):
    return _file(request, inspection_id, "thumb_path", "image/jpeg")


@api.post("/inspections/{inspection_id}/review")
def review(request: Request, inspection_id: int, body: ReviewIn):
    record = station_of(request).review(inspection_id, body.state, body.note, body.by)
    if record is None:
        raise HTTPException(404, f"no inspection {inspection_id}")
    return record


def threshold_state(st: Station) -> dict:
    cal = st.predictor.calibration
    history = st.threshold_history()
    return {
        "value": st.threshold,
        "calibrated": st.calibrated_threshold,
        "rule": cal.rule if cal else "",
        "source": cal.source if cal else "",
        "model_id": st.model_id,
        # a change applies to the scores it was made on (a checkpoint and its ONNX export share them):
        # history[].this_model, and the newest change when it was made for another model
        "scale_id": st.scale_id,
        "change_for_other_model": st.change_for_other_model(history),
        "history": history,
    }


@api.get("/threshold")
def get_threshold(request: Request):
    return threshold_state(station_of(request))


@api.post("/threshold")
def set_threshold(request: Request, body: ThresholdIn):
    st = station_of(request)
    try:
        st.set_threshold(body.value, body.by, body.note)
    except ConfigError as e:
        raise HTTPException(400, str(e)) from None
    return threshold_state(st)


@api.get("/threshold/analysis")
def threshold_analysis(request: Request):
    st = station_of(request)
    cal = st.predictor.calibration
    a = {
        "current": st.threshold,
        "validation_good": list(cal.scores) if cal else [],
        "reviewed_good": st.reviewed_scores(db.REVIEWED_GOOD),
        "reviewed_defect": st.reviewed_scores(db.REVIEWED_DEFECT),
        "labelled_defect": list(cal.defect_scores) if cal else [],  # given at training (--val-defects)
        "reviewed_other_models": st.reviewed_by_other_models(),  # not shown: another scale
        "rescore_pending": st.reviewed_by_other_models(pending=True),  # of those, not yet scored again
    }
    # A starting point for the person, never applied by itself: the value that best splits every good score
    # shown from every defect's (Youden's J, as `--threshold-rule youden` at training).
    good, defects = a["validation_good"] + a["reviewed_good"], a["reviewed_defect"] + a["labelled_defect"]
    a["suggested"] = youden(good, defects) if good and defects else None
    return a


@api.post(
    "/threshold/rescore",
    summary="Score again, with this model, the reviewed inspections other models scored (in the background)",
)
def start_rescore(request: Request):
    return station_of(request).start_rescoring()


@api.post(
    "/threshold/rescore/stop", summary="Stop the rescoring after its current image; what it scored stays"
)
def stop_rescore(request: Request):
    return station_of(request).stop_rescoring()


@api.get(
    "/threshold/rescore",
    summary="Progress of the rescoring: running, scored, unreadable, total (and stopped, or error: one line)",
)
def rescore_progress(request: Request):
    return station_of(request).rescoring()


@api.get("/model")
def get_model(request: Request):
    return station_of(request).model_description()


@api.post("/model/reload", summary="Load the file at --model again (a retrained model put in its place)")
def reload_model(request: Request):
    st = station_of(request)
    try:
        return st.reload_model()
    except RD2TError as e:  # the file at --model cannot be used: the station's state, not the request's
        raise HTTPException(409, f"model not reloaded, {st.model_id} stays: {e}") from None


@api.get(
    "/storage",
    summary="Images folder: free space, retention policy, its last round, inspections without images",
)
def get_storage(request: Request):
    return station_of(request).retention()


@api.get(
    "/drift",
    summary="Score level of the last parts against the model's good images: has the line moved?",
)
def get_drift(
    request: Request,
    last: int = Query(drift.WINDOW, ge=drift.MIN_PARTS, le=10_000, description="How many recent parts"),
    line: str | None = None,
    station: str | None = None,
):
    return station_of(request).score_drift(last, line=line, station=station)


def _originals_zip(st: Station, states: tuple[str, ...], name: str, folder: str = "") -> StreamingResponse:
    """The stored originals of the inspections reviewed as one of `states`, as `name` (under `folder`/)."""
    spool = tempfile.SpooledTemporaryFile(max_size=32 << 20)  # noqa: SIM115 (closed by the response)
    with zipfile.ZipFile(spool, "w", zipfile.ZIP_STORED) as zf:  # images are compressed already
        for row in st.reviewed_rows(states):
            path = st.storage.path(row["image_path"])
            if path.is_file():
                zf.write(path, f"{folder}{row['id']:08d}_{row['image_sha256'][:12]}{path.suffix}")
    spool.seek(0)

    def chunks():
        with spool:
            while block := spool.read(1 << 20):
                yield block

    headers = {"Content-Disposition": f'attachment; filename="{name}"'}
    return StreamingResponse(chunks(), media_type="application/zip", headers=headers)


@api.get("/export/reviewed-good.zip", summary="Originals reviewed as good: new training images")
def export_reviewed_good(request: Request):
    return _originals_zip(station_of(request), db.REVIEWED_GOOD, "reviewed-good.zip")


@api.get(
    "/export/reviewed-defects.zip",
    summary="Originals reviewed as defects, in defect/: a folder for `rd2t train --val-defects`",
)
def export_reviewed_defects(request: Request):
    # Image labels only (the station has no masks): training chooses on them with >= 10 held-out good images
    # (a tiled model only scores them).
    return _originals_zip(station_of(request), db.REVIEWED_DEFECT, "reviewed-defects.zip", "defect/")


@api.get("/events", summary="Server-Sent Events: one `inspection` event per new inspection")
async def events(request: Request):
    queue: asyncio.Queue = asyncio.Queue(maxsize=256)
    subscribers: set = request.app.state.subscribers
    subscribers.add(queue)

    async def stream():
        try:
            yield ": connected\n\n"
            while True:
                try:
                    record = await asyncio.wait_for(queue.get(), timeout=15)
                except asyncio.TimeoutError:
                    yield ": keep-alive\n\n"  # lets proxies and the browser see a live connection
                    if await request.is_disconnected():
                        return
                    continue
                yield f"event: inspection\ndata: {json.dumps(record)}\n\n"
        finally:
            subscribers.discard(queue)

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
