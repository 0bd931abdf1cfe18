"""The review page: live view, one inspection, threshold, model, and the login for stations with a token.

Server-rendered Jinja2 (autoescaped: part ids and notes are never HTML) from the same records the JSON
API gives out; a little plain JavaScript in static/ polls for new inspections, sends reviews and draws
the threshold histogram. No build step, nothing fetched from the internet: the station runs offline.
"""

from __future__ import annotations

import hmac
import json
import math
from pathlib import Path
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader

from rd2t.service.api import station_of, threshold_analysis, threshold_state, token_of
from rd2t.service.station import VIEW_PX

HERE = Path(__file__).parent
STATIC = HERE / "static"
COOKIE = "rd2t_token"
LIVE_LIMIT = 60  # thumbnails on the live view

REVIEW_LABELS = {
    "unreviewed": "not reviewed",
    "false_alarm": "false alarm",
    "confirmed_defect": "confirmed defect",
    "confirmed_good": "confirmed good",
    "missed_defect": "missed defect",
}
# What a reviewer can say about each verdict: (state, button label, key, tone).
REVIEW_BUTTONS = {
    "defect": [
        ("false_alarm", "False alarm", "f", "good"),
        ("confirmed_defect", "Confirmed defect", "d", "bad"),
    ],
    "pass": [
        ("missed_defect", "Missed defect", "m", "bad"),
        ("confirmed_good", "Confirmed good", "g", "good"),
    ],
}
# Live-view filters: key -> (label, arguments of Station.list, the same as the query of /v1/inspections).
FILTERS = {
    "all": ("All", {}),
    "defect": ("Defective", {"decision": "defect"}),
    "pass": ("Passed", {"decision": "pass"}),
    "unreviewed": ("Unreviewed", {"reviewed": False}),
}


def score(value) -> str:
    """Scores with four significant digits (the same as fmtScore in common.js)."""
    if value is None or not math.isfinite(value):
        return "—"
    return f"{value:.4g}"


def value(v) -> str:
    """A config / metrics value as short text."""
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(v)
    return "—" if v is None else str(v)


def count(n: int) -> str:
    """Counts grouped by thousands with a narrow space, SI style (the same as fmtCount in common.js):
    a station's totals reach millions, and the narrow space reads the same in every locale."""
    return f"{n:,}".replace(",", "\u202f")


def static_url(name: str) -> str:
    """/static/NAME?v=<mtime>, so a browser never keeps an old script after an update."""
    return f"/static/{name}?v={int((STATIC / name).stat().st_mtime)}"


env = Environment(
    loader=FileSystemLoader(HERE / "templates"), autoescape=True, trim_blocks=True, lstrip_blocks=True
)
env.filters.update(score=score, value=value, count=count)
env.globals.update(static=static_url, review_labels=REVIEW_LABELS)
templates = Jinja2Templates(env=env)
router = APIRouter(include_in_schema=False)


def signed_in(request: Request) -> bool:
    """True when the station has no token, or the request carries it (cookie or Bearer header)."""
    expected = station_of(request).settings.token
    return not expected or hmac.compare_digest((token_of(request) or "").encode(), expected.encode())


def need_login(request: Request) -> None:
    """Page routes without the station's token go to /login (and come back after it)."""
    if not signed_in(request):
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise HTTPException(303, "sign in first", headers={"Location": f"/login?next={quote(target)}"})


def render(request: Request, name: str, page: str, **context) -> Response:
    st = station_of(request)
    header = {"model_name": st.model.path.name, "threshold": st.threshold}
    return templates.TemplateResponse(request, name, {"page": page, "station": header, **context})


def query_string(arguments: dict) -> str:
    """Station.list arguments as the /v1/inspections query (booleans as true/false)."""
    return urlencode({k: str(v).lower() if isinstance(v, bool) else v for k, v in arguments.items()})


PAGE = [Depends(need_login)]


def scope_of(line: str | None, station: str | None) -> dict:
    """The line and station a page is narrowed to (live view, and an inspection opened from it)."""
    return {k: v for k, v in (("line", line), ("station", station)) if v}


@router.get("/", response_class=HTMLResponse, dependencies=PAGE)
def live_view(request: Request, show: str = "all", line: str | None = None, station: str | None = None):
    """The latest inspections; `line` / `station` narrow everything on the page (the cards, the counts,
    today's line, the CSV) to one line or station of a database that several share."""
    st = station_of(request)
    show = show if show in FILTERS else "all"
    scope = scope_of(line, station)

    def href(key: str) -> str:
        query = urlencode({**({"show": key} if key != "all" else {}), **scope})
        return f"/?{query}" if query else "/"

    filters = [
        {
            "key": key,
            "label": label,
            "href": href(key),
            "query": query_string({**arguments, **scope}),
            "count": st.list(**arguments, **scope, limit=1)["total"],
        }
        for key, (label, arguments) in FILTERS.items()
    ]
    arguments = {**FILTERS[show][1], **scope}
    items = st.list(**arguments, limit=LIVE_LIMIT)["items"]
    return render(
        request,
        "live.html",
        "live",
        items=items,
        filters=filters,
        active_filter=show,
        scope=scope,
        scope_query=query_string(scope),
        query=query_string(arguments),
        last_id=max((r["id"] for r in items), default=0),
        limit=LIVE_LIMIT,
    )


@router.get("/inspections/{inspection_id}", response_class=HTMLResponse, dependencies=PAGE)
def inspection_view(
    request: Request, inspection_id: int, line: str | None = None, station: str | None = None
):
    """One inspection; opened from the live view of one line (or station), "Next unreviewed" and the way
    back keep to it."""
    st = station_of(request)
    scope = scope_of(line, station)
    record = st.get(inspection_id)
    if record is None:
        text = f"There is no inspection {inspection_id} in this station's database."
        response = render(request, "message.html", "inspection", heading="Not found", text=text)
        response.status_code = 404
        return response
    # The newest other inspection nobody has reviewed yet and whose images are still there: where a
    # reviewer goes next.
    unreviewed = st.list(reviewed=False, images_removed=False, **scope, limit=2)["items"]
    next_unreviewed = next((r["id"] for r in unreviewed if r["id"] != inspection_id), None)
    buttons = [
        {"state": state, "label": label, "key": key, "tone": tone}
        for state, label, key, tone in REVIEW_BUTTONS[record["decision"]]
    ]
    return render(
        request,
        "inspection.html",
        "inspection",
        r=record,
        review_buttons=buttons,
        next_unreviewed=next_unreviewed,
        view_px=VIEW_PX,
        scope=scope,
        scope_query=query_string(scope),
    )


@router.get("/threshold", response_class=HTMLResponse, dependencies=PAGE)
def threshold_view(request: Request):
    st = station_of(request)
    return render(
        request, "threshold.html", "threshold", t=threshold_state(st), a=threshold_analysis(request)
    )


@router.get("/model", response_class=HTMLResponse, dependencies=PAGE)
def model_view(request: Request):
    st = station_of(request)
    return render(
        request,
        "model.html",
        "model",
        m=st.model_description(),
        storage=st.retention(),
        mqtt=st.line_controller(),
        drift=st.score_drift(),
    )


def safe_next(target: str | None) -> str:
    """Only a path on this station (never //elsewhere or a full URL): no open redirect after login."""
    target = target or "/"
    return target if target.startswith("/") and not target.startswith("//") and "\\" not in target else "/"


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next: str = "/"):
    if not station_of(request).settings.token:
        return RedirectResponse(safe_next(next), status_code=303)
    return templates.TemplateResponse(request, "login.html", {"page": "login", "next": safe_next(next)})


@router.post("/login", response_class=HTMLResponse)
def login(request: Request, token: str = Form(""), next: str = Form("/")):
    expected = station_of(request).settings.token
    if expected and not hmac.compare_digest(token.encode(), expected.encode()):
        context = {"page": "login", "next": safe_next(next), "error": "Wrong token."}
        return templates.TemplateResponse(request, "login.html", context, status_code=401)
    response = RedirectResponse(safe_next(next), status_code=303)
    if expected:
        response.set_cookie("rd2t_token", token, httponly=True, samesite="strict", path="/")
    return response
