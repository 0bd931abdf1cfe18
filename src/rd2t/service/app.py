"""The station's ASGI app: the JSON API (rd2t.service.api), the review page (rd2t.service.page) when
present, health, Prometheus metrics, the upload size guard; and `serve` under uvicorn. OpenAPI at /docs.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from rd2t.errors import RD2TError
from rd2t.service.api import api, http_error
from rd2t.service.api import station_of as station_of  # re-exported for callers of rd2t.service.app
from rd2t.service.settings import StationSettings
from rd2t.service.station import Station, reload_on_sighup

log = logging.getLogger("rd2t.service")
STATIC = Path(__file__).parent / "static"


class Guard:
    """ASGI middleware: the upload size limit (also for chunked bodies) and the request counter."""

    def __init__(self, app, station: Station):
        self.app, self.station = app, station

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.station.settings.max_upload_bytes
        status = 500
        declared = dict(scope["headers"]).get(b"content-length")
        try:
            if declared and int(declared) > limit:
                status = 413
                return await JSONResponse({"detail": f"upload over the limit of {limit} bytes"}, 413)(
                    scope, receive, send
                )
            received = 0

            async def limited_receive():
                nonlocal received
                msg = await receive()
                received += len(msg.get("body", b""))
                if received > limit:
                    raise HTTPException(413, f"upload over the limit of {limit} bytes")
                return msg

            async def counting_send(msg):
                nonlocal status
                if msg["type"] == "http.response.start":
                    status = msg["status"]
                await send(msg)

            await self.app(scope, limited_receive, counting_send)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.station.metrics.requests.labels(scope["method"], route, str(status)).inc()


def create_app(settings: StationSettings | None = None, station: Station | None = None) -> FastAPI:
    """The station's ASGI app. Give `settings` (the model is loaded here) or a ready `station`."""
    station = station or Station(settings)
    pool = ThreadPoolExecutor(station.settings.workers, thread_name_prefix="rd2t-inspect")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loop = asyncio.get_running_loop()

        def broadcast(record: dict) -> None:  # from a worker thread to every SSE subscriber
            def put():
                for q in list(app.state.subscribers):
                    if not q.full():
                        q.put_nowait(record)

            loop.call_soon_threadsafe(put)

        station.listeners.append(broadcast)
        station.start_retention()
        yield
        station.listeners.remove(broadcast)
        pool.shutdown(wait=True)  # requests already admitted finish and commit
        station.close()

    app = FastAPI(
        title="rd2t inspection station",
        version=station.predictor.info.rd2t_version or "0.1",
        description="Inspect images with an rd2t model; every verdict is a row in the results database.",
        lifespan=lifespan,
    )
    app.state.station = station
    app.state.pool = pool
    app.state.subscribers = set()
    app.add_middleware(Guard, station=station)
    app.include_router(api)

    @app.exception_handler(RD2TError)
    async def rd2t_error(_request: Request, e: RD2TError):
        err = http_error(e)
        return JSONResponse({"detail": err.detail}, err.status_code, headers=err.headers)

    @app.get("/healthz", tags=["health"])
    def healthz():
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    def readyz():
        state = station.ready()
        ready = all(state[k] for k in ("model", "database", "images"))  # not MQTT: inspections go on
        return JSONResponse(state, 200 if ready else 503)

    @app.get("/metrics", tags=["health"])
    def metrics():
        return Response(generate_latest(station.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    try:  # the review page, when its module is there (rd2t.service.page)
        from rd2t.service import page
    except ImportError as e:
        if e.name != "rd2t.service.page":
            raise
        page = None
    if page is not None:
        app.include_router(page.router)
    if STATIC.is_dir():
        from fastapi.staticfiles import StaticFiles

        app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def serve(settings: StationSettings) -> None:
    """`rd2t serve`: the app under uvicorn, one process (the model is loaded once)."""
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    app = create_app(settings)
    reload_on_sighup(app.state.station)  # uvicorn handles SIGINT and SIGTERM only
    log.info(
        "serving %s on http://%s:%s (database %s, images %s)",
        settings.model,
        settings.host,
        settings.port,
        settings.db_url.split("@")[-1],
        settings.images,
    )
    # An open page keeps an SSE stream: shutdown waits at most 10 s for open connections.
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level="info",
        access_log=False,
        timeout_graceful_shutdown=10,
    )
