"""The inspection station through real servers on loopback: uvicorn, SQLite and PostgreSQL, Mosquitto.

One server per database per module (the model is loaded once each); tests that need other settings
(a token, an ONNX model) start their own. Servers that cannot be reached make the tests that need
them skip, unless RD2T_REQUIRE_SERVICES=1 (CI), where they fail.
"""

from __future__ import annotations

import datetime
import io
import json
import logging
import os
import shutil
import socket
import struct
import threading
import time
import uuid
import zipfile
import zlib
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the station needs the [station] extra")
httpx = pytest.importorskip("httpx")

from rd2t.data import labelled_defects  # noqa: E402
from rd2t.errors import ConfigError  # noqa: E402
from rd2t.files import file_sha256  # noqa: E402
from rd2t.inference.predictor import Predictor  # noqa: E402
from rd2t.model.checkpoint import Checkpoint  # noqa: E402
from rd2t.service.db import REVIEWED_GOOD  # noqa: E402
from tests.conftest import paint_defect, texture  # noqa: E402

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
MQTT_HOST, MQTT_PORT = "127.0.0.1", 1883


# ---- helpers shared with test_service_faults.py ------------------------------------------------------
def need(ok: bool, what: str) -> None:
    """Skip (on a user's machine) or fail (in CI) when a server the test needs is not there."""
    if ok:
        return
    if os.environ.get("RD2T_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{what} is not reachable and RD2T_REQUIRE_SERVICES=1")
    pytest.skip(f"{what} is not reachable on this machine")


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png_bytes(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, fmt)
    return buf.getvalue()


def images(n: int, seed: int = 1, size: int = 96, defect: bool = False) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        img = texture(rng, size)
        if defect:
            img = paint_defect(img, rng)[0]
        out.append(png_bytes(img))
    return out


@contextmanager
def running_server(settings):
    """A station app under uvicorn in a thread, on a free loopback port; yields an httpx client."""
    import uvicorn

    from rd2t.service.app import create_app

    app = create_app(settings)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        assert time.time() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.02)
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    headers = {"Authorization": f"Bearer {settings.token}"} if settings.token else {}
    with httpx.Client(base_url=base, timeout=60, headers=headers) as client:
        client.app = app
        try:
            yield client
        finally:
            server.should_exit = True
            thread.join(30)
            sock.close()


@contextmanager
def postgres_database():
    """A fresh PostgreSQL database on 127.0.0.1:5432 (trust auth), dropped afterwards; yields its URL."""
    psycopg = pytest.importorskip("psycopg")
    try:
        admin = psycopg.connect(PG_ADMIN.replace("postgresql://", "postgresql://", 1), autocommit=True)
    except psycopg.OperationalError:
        need(False, "PostgreSQL on 127.0.0.1:5432 (user postgres, database test)")
    name = f"rd2t_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


class Subscriber:
    """A real MQTT subscriber (paho) collecting the JSON messages of one topic."""

    def __init__(self, port: int, topic: str):
        import paho.mqtt.client as mqtt

        self.messages: list[dict] = []
        self.subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda c, u, mid, rc, p: self.subscribed.set()
        self.client.on_message = lambda c, u, m: self.messages.append(json.loads(m.payload))
        self.client.reconnect_delay_set(0.2, 1)
        self.client.connect_async(MQTT_HOST, port)
        self.client.loop_start()
        assert self.subscribed.wait(10), "subscriber could not subscribe"

    def wait_for(self, inspection_id: int, timeout: float = 15) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            for m in list(self.messages):
                if m["id"] == inspection_id:
                    return m
            time.sleep(0.05)
        raise AssertionError(f"no MQTT message for inspection {inspection_id}; got {self.messages}")

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


# ---- the shared servers ----------------------------------------------------------------------------
TOPIC = f"rd2t-test/{uuid.uuid4().hex}"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def station(request, trained_cli_model, tmp_path_factory):
    """(client, settings) of a running station on SQLite or PostgreSQL, MQTT to the local broker."""
    from rd2t.service.settings import StationSettings

    mqtt_up = port_open(MQTT_HOST, MQTT_PORT)
    images_dir = tmp_path_factory.mktemp(f"station-{request.param}")

    def settings(db):
        return StationSettings(
            trained_cli_model,
            db=db,
            images=images_dir,
            mqtt=f"mqtt://{MQTT_HOST}:{MQTT_PORT}/{TOPIC}" if mqtt_up else None,
            threads=1,
            workers=2,
            max_upload_mb=2,
            max_pixels=1_000_000,
        )

    if request.param == "sqlite":
        s = settings(None)
        with running_server(s) as client:
            yield client, s
    else:
        with postgres_database() as url:
            s = settings(url)
            with running_server(s) as client:
                yield client, s


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_an_older_database_keeps_each_threshold_change_with_its_model(backend, trained_cli_model, tmp_path):
    """Migration 0002 on a station database from before threshold changes named their model: each change
    goes to the model of the last inspection before it (or the first one, for a change before any), so an
    upgraded station keeps its operator's value for the model it was chosen on. Then the migrated schema is
    the one the code declares."""
    import datetime

    import sqlalchemy as sa
    from alembic import command
    from alembic.autogenerate import compare_metadata
    from alembic.config import Config
    from alembic.migration import MigrationContext

    from rd2t.service import db
    from rd2t.service.settings import StationSettings
    from rd2t.service.station import Station

    serving = file_sha256(trained_cli_model)[:12]  # the model of the later inspections
    sqlite = f"sqlite:///{tmp_path / 'old.sqlite'}"
    with postgres_database() if backend == "postgresql" else nullcontext(sqlite) as url:
        engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
        cfg = Config()
        cfg.set_main_option("script_location", str(Path(db.__file__).parent / "migrations"))
        t0 = datetime.datetime(2026, 1, 1)
        at = [t0 + datetime.timedelta(hours=h) for h in range(5)]
        row = dict(
            score=1.0, decision="pass", threshold=1.0, model_name="m", model_version="1", decode_ms=0.0
        )
        row |= dict(model_ms=0.0, total_ms=0.0, image_sha256="0" * 64, image_type="png", image_path="x")
        row |= dict(overlay_path="x", thumb_path="x", width=1, height=1, review_state="unreviewed")
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0001")  # the schema of a station from before the change
            conn.execute(db.inspections.insert(), [{**row, "time": at[1], "model_id": "aaa"}])
            conn.execute(db.inspections.insert(), [{**row, "time": at[3], "model_id": serving}])
            for value, when in ((1.0, at[0]), (2.0, at[2]), (3.0, at[4])):
                conn.execute(
                    sa.text("INSERT INTO threshold_changes (value, at) VALUES (:v, :at)"),
                    {"v": value, "at": when},
                )
        db.migrate(engine)
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT value, model_id FROM threshold_changes ORDER BY id")).all()
            assert [tuple(r) for r in rows] == [(1.0, "aaa"), (2.0, "aaa"), (3.0, serving)]
            assert compare_metadata(MigrationContext.configure(conn), db.metadata) == []
        engine.dispose()
        station = Station(StationSettings(trained_cli_model, db=url, images=tmp_path / "st", threads=1))
        try:  # the upgraded station keeps the value its operator chose for this model
            assert station.threshold == 3.0 and station.change_for_other_model() is None
            assert [h["this_model"] for h in station.threshold_history()] == [True, False, False]
        finally:
            station.close()


def test_rescoring_skips_an_unreadable_original_and_scores_the_rest(trained_cli_model, tmp_path):
    """One stored original gone bad does not stop the others being scored again; it is counted, tried once,
    and stays out of the threshold page's scores."""
    from rd2t.service.settings import StationSettings
    from rd2t.service.station import Station

    first = Station(StationSettings(trained_cli_model, images=tmp_path / "st", threads=1))
    try:
        recs = [first.inspect(data, f"p{i}.png") for i, data in enumerate(images(3, seed=61))]
        for r in recs:
            first.review(r["id"], "confirmed_good", None, "qa")
    finally:
        first.close()
    (tmp_path / "st" / first.row(recs[1]["id"])["image_path"]).write_bytes(b"not an image any more")
    retrained = Checkpoint.load(trained_cli_model)
    retrained.calibration.scores = [2 * v for v in retrained.calibration.scores]
    later = Station(StationSettings(retrained.save(tmp_path / "b" / "model.pt"), images=tmp_path / "st"))
    try:
        assert later.rescore_reviewed() == {"scored": 2, "unreadable": 1, "total": 3}
        assert len(later.reviewed_scores(REVIEWED_GOOD)) == 2
        assert later.reviewed_by_other_models() == 1 and later.reviewed_by_other_models(pending=True) == 0
        assert later.rescore_reviewed()["total"] == 0  # tried once, recorded as unreadable
    finally:
        later.close()


def rescoring_done(station, timeout: float = 120) -> dict:
    t0 = time.time()
    while (progress := station.rescoring())["running"] and time.time() - t0 < timeout:
        time.sleep(0.05)
    return progress


def test_rescoring_stops_on_request_keeps_what_it_scored_and_reports_a_failure(trained_cli_model, tmp_path):
    """A long review history is scored again in the background: Stop ends it after the current image, what
    was scored stays and the rest is scored by the next start; a failure (here the database losing the
    table) ends it with a one-line reason, not silently."""
    import sqlalchemy as sa

    from rd2t.service.settings import StationSettings
    from rd2t.service.station import Station

    db_url = f"sqlite:///{tmp_path / 'st.db'}"
    first = Station(StationSettings(trained_cli_model, db=db_url, images=tmp_path / "st", threads=1))
    try:
        for i, data in enumerate(images(24, seed=62)):
            first.review(first.inspect(data, f"p{i}.png")["id"], "confirmed_good", None, "qa")
    finally:
        first.close()
    retrained = Checkpoint.load(trained_cli_model)
    retrained.calibration.scores = [2 * v for v in retrained.calibration.scores]
    later_model = retrained.save(tmp_path / "b" / "model.pt")
    later = Station(StationSettings(later_model, db=db_url, images=tmp_path / "st", threads=1))
    try:
        later.start_rescoring()
        stopped = later.stop_rescoring()
        assert not stopped["running"] and stopped["stopped"] and stopped["total"] == 24
        assert stopped["scored"] < 24
        assert later.reviewed_by_other_models(pending=True) == 24 - stopped["scored"]
        assert len(later.reviewed_scores(REVIEWED_GOOD)) == stopped["scored"]  # kept
        later.start_rescoring()
        rest = rescoring_done(later)
        assert rest == {"running": False, "scored": 24 - stopped["scored"], "unreadable": 0, "total": 24}
        assert len(later.reviewed_scores(REVIEWED_GOOD)) == 24
    finally:
        later.close()
    third = Station(StationSettings(trained_cli_model, db=db_url, images=tmp_path / "st", threads=1))
    try:
        with third.engine.begin() as conn:
            conn.execute(sa.text("DROP TABLE rescores"))
        third.start_rescoring()
        failed = rescoring_done(third)
        assert not failed["running"] and "rescores" in failed["error"] and "\n" not in failed["error"]
    finally:
        third.close()


def files_of(station, inspection_id: int) -> list[Path]:
    """What an inspection stored: the original, the overlay (eager) or the map it is drawn from (lazy), the
    thumbnail."""
    row = station.row(inspection_id)
    drawn = row["overlay_path"]
    if station.settings.overlay == "lazy":
        drawn = station.storage.map_name(drawn)
    return [station.storage.path(n) for n in (row["image_path"], drawn, row["thumb_path"])]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_retention_removes_old_unreviewed_images_keeps_every_verdict_and_answers_410(
    backend, trained_cli_model, tmp_path, caplog
):
    """A line inspecting 20 MP parts fills its disk: --keep-images-days removes the image files of unreviewed
    inspections past the age, --min-free-gb the oldest ones while the disk is short. The rows (verdict, score,
    times) stay; reviewed parts keep their images (training and threshold material), and so does a file a
    kept inspection shares. The links of a pruned inspection answer 410 with the reason, its page says so.
    A second station on the same database, with its own images folder, prunes only its own inspections."""
    import sqlalchemy as sa

    from rd2t.service.db import inspections
    from rd2t.service.settings import StationSettings
    from rd2t.service.station import Station

    with pytest.raises(ConfigError, match=r"^--keep-images-days 0: must be positive"):
        StationSettings(trained_cli_model, keep_images_days=0)
    sqlite = f"sqlite:///{tmp_path / 'shared.sqlite'}"
    with postgres_database() if backend == "postgresql" else nullcontext(sqlite) as db_url:
        settings = StationSettings(
            trained_cli_model, db=db_url, images=tmp_path / "st", threads=1, keep_images_days=30, token="t0k"
        )
        station = Station(settings)
        neighbour = Station(
            StationSettings(trained_cli_model, db=db_url, images=tmp_path / "other", keep_images_days=30)
        )
        try:
            a, b, c, d, e = (images(5, seed=63)[i] for i in (0, 1, 2, 2, 4))  # c and d: one image, twice
            old = [station.inspect(x, f"{n}.png")["id"] for x, n in ((a, "a"), (b, "b"), (c, "c"))]
            recent = station.inspect(d, "d.png")["id"]
            theirs = neighbour.inspect(e, "e.png")["id"]
            station.review(old[1], "false_alarm", "kept for retraining", "qa")
            with station.engine.begin() as conn:  # inspected 40 days ago
                for i in (*old, theirs):
                    t = conn.execute(sa.select(inspections.c.time).where(inspections.c.id == i)).scalar()
                    conn.execute(
                        inspections.update()
                        .where(inspections.c.id == i)
                        .values(time=t - datetime.timedelta(days=40))
                    )
            # the review page's views of a and c, drawn when someone looked at them (c's are recent's too)
            views = {
                i: [station.view_file(station.row(i), w) for w in ("image", "overlay")] for i in old[::2]
            }
            before = {i: files_of(station, i) + views.get(i, []) for i in (*old, recent)}
            assert all(f.is_file() for fs in before.values() for f in fs)
            done = station.prune_images()
            assert done["inspections"] == 2 and done["files"] == 5 and done["bytes"] > 0  # a and c; a's files
            assert not any(f.exists() for f in before[old[0]])
            assert all(f.is_file() for i in (old[1], old[2], recent) for f in before[i])  # reviewed; shared
            assert station.prune_images()["inspections"] == 0  # done once
            removed = station.get(old[0])
            assert removed["images_removed_at"] and removed["score"] > 0 and removed["decision"]
            assert station.get(recent)["images_removed_at"] is None
            their_files = files_of(neighbour, theirs)
            assert station.get(theirs)["images_removed_at"] is None and all(f.is_file() for f in their_files)
            assert neighbour.prune_images()["inspections"] == 1  # its own, by its own policy
            assert not any(f.exists() for f in their_files)
            state = station.retention()
            assert (state["keep_images_days"], state["min_free_gb"]) == (30, None) and state["free_gb"] > 0
            assert (state["inspections"], state["images_removed"]) == (4, 2)  # its folder's, not theirs
            assert state["last_run"]["inspections"] == 0 and state["last_run"]["at"]  # the second round
        finally:
            station.close()
            neighbour.close()

        with running_server(settings) as client:  # starts its retention thread: nothing more is due
            for link in ("image", "overlay", "thumb"):
                r = client.get(removed["links"][link])
                assert r.status_code == 410 and "removed by the retention policy" in r.json()["detail"]
            assert client.get(f"/v1/inspections/{recent}/image").content == d
            assert client.get(f"/v1/inspections/{old[0]}").json()["decision"] == removed["decision"]
            page = client.get(f"/inspections/{old[0]}")
            assert page.status_code == 200 and "removed by the retention policy" in page.text
            assert "image removed" in client.get("/").text  # its card in the live view
            removed_ids = [r["id"] for r in client.get("/v1/inspections?images_removed=true").json()["items"]]
            assert removed_ids == [theirs, old[2], old[0]]
            # nothing left to review with its image but `recent` itself: no "next" to a page without one
            assert 'id="next-unreviewed"' not in client.get(f"/inspections/{recent}").text
            storage = client.get("/v1/storage").json()
            assert storage["images_removed"] == 2 and storage["keep_images_days"] == 30
            model_page = client.get("/model").text
            assert "older than 30 days" in model_page and "of which 2 without images" in model_page
            free = [
                line
                for line in client.get("/metrics").text.splitlines()
                if line.startswith("rd2t_images_free")
            ]
            assert len(free) == 1 and float(free[0].split()[1]) > 0

        # --min-free-gb above what the disk has: every unreviewed inspection's images go, oldest first,
        # then it stops (with a warning) instead of spinning; the reviewed one keeps its files.
        free = shutil.disk_usage(tmp_path).free / 1e9
        short = Station(
            StationSettings(trained_cli_model, db=db_url, images=tmp_path / "st", min_free_gb=free + 1e4)
        )
        try:
            with caplog.at_level(logging.WARNING, logger="rd2t.service.station"):
                assert short.prune_images()["inspections"] == 1  # d; the files c shared with it go now
                assert short.prune_images()["inspections"] == 0
            assert not any(f.exists() for i in (old[2], recent) for f in before[i])
            assert all(f.is_file() for f in before[old[1]])
            warned = [r for r in caplog.records if "below --min-free-gb" in r.getMessage()]
            assert len(warned) == 1  # once, not at every round while the disk stays short
            assert short.retention()["last_run"]["disk_short"]
        finally:
            short.close()


def test_retention_never_removes_a_file_a_new_inspection_counts_on(trained_cli_model, tmp_path):
    """The same part photographed again while the policy removes its earlier inspection's files: the new
    inspection writes its files and commits its row only outside a removal (a lock across processes, as
    serve and watch share a folder), so no kept row ever points at a removed file."""
    from rd2t.service.settings import StationSettings
    from rd2t.service.station import Station

    station = Station(StationSettings(trained_cli_model, images=tmp_path / "st", threads=1))
    data = images(1, seed=64)[0]
    first = station.inspect(data, "first.png")["id"]
    try:
        with station.storage.removing():  # the policy is deciding which of the first's files no row needs
            again = threading.Thread(target=station.inspect, args=(data, "again.png"))
            again.start()
            time.sleep(0.5)
            assert again.is_alive() and station.list()["total"] == 1, "committed during a removal"
        again.join(60)
        second = station.list()["items"][0]["id"]
        assert second != first and all(f.is_file() for f in files_of(station, second))
    finally:
        station.close()


def retrained_copy(model: Path, out: Path) -> Path:
    """Another model, as a retraining gives: other student weights (other scores), its own calibration."""
    ckpt = Checkpoint.load(model)
    for name, w in ckpt.weights.items():
        if name.startswith("student") and w.is_floating_point() and w.ndim == 4:
            ckpt.weights[name] = w * 1.5
    ckpt.calibration.scores = [1.5 * v for v in ckpt.calibration.scores]
    ckpt.calibration.threshold *= 1.5
    if ckpt.calibration.map_range is not None:  # its heat maps' colour scale
        ckpt.calibration.map_range = tuple(1.5 * v for v in ckpt.calibration.map_range)
    return ckpt.save(out)


def test_reloading_the_model_swaps_it_between_two_inspections_and_loses_none(trained_cli_model, tmp_path):
    """A retrained model goes live without stopping the line: the operator points --model (here a symlink) at
    it and asks for a reload while parts keep coming. Not one request fails; each inspection is scored,
    judged and drawn by one model, the one its record names; the new model's threshold is its own (a change
    made on the old one's scores does not carry over); a broken file is refused and the model in use stays."""
    from rd2t.service.settings import StationSettings

    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(trained_cli_model, models / "a.pt")
    retrained_copy(trained_cli_model, models / "b.pt")
    (models / "bad.pt").write_bytes(b"half a file")
    live = models / "current.pt"

    def point(target: str) -> None:  # atomically, as `ln -sfn` does
        (models / "next").unlink(missing_ok=True)
        (models / "next").symlink_to(target)
        (models / "next").replace(live)

    point("a.pt")
    bodies = images(3, seed=70)
    expected = {}  # model id -> the score `rd2t predict` gives each body
    for name in ("a.pt", "b.pt"):
        predictor = Predictor.open(models / name)
        scores = [predictor.predict_one(Image.open(io.BytesIO(x)).convert("RGB")).score for x in bodies]
        expected[file_sha256(models / name)[:12]] = scores
    a_id, b_id = expected
    assert expected[a_id][0] != pytest.approx(expected[b_id][0], rel=1e-3)

    settings = StationSettings(live, images=tmp_path / "st", threads=1, workers=2, overlay="lazy")
    answers, stop = [], threading.Event()
    with running_server(settings) as client:

        def line() -> None:  # parts keep coming, bounded
            with httpx.Client(base_url=str(client.base_url), timeout=60) as c:
                for i in range(300):
                    if stop.is_set():
                        return
                    k = i % len(bodies)
                    answers.append((k, inspect(c, bodies[k], f"{k}.png")))

        worker = threading.Thread(target=line)
        worker.start()
        try:
            deadline = time.time() + 60
            while len(answers) < 3 and time.time() < deadline:
                time.sleep(0.02)
            moved = 0.9 * client.get("/v1/threshold").json()["value"]
            assert client.post("/v1/threshold", json={"value": moved, "by": "ana"}).status_code == 200
            first_a = inspect(client, bodies[0]).json()
            point("b.pt")
            r = client.post("/v1/model/reload")
            assert r.status_code == 200, r.text
            assert (r.json()["changed"], r.json()["previous"], r.json()["model"]["id"]) == (True, a_id, b_id)
            after = len(answers)
            while len(answers) < after + 3 and time.time() < deadline:
                time.sleep(0.02)
        finally:
            stop.set()
            worker.join(60)

        assert answers and all(r.status_code == 200 for _, r in answers), "a request failed during the reload"
        by_model = {a_id: 0, b_id: 0}
        for k, r in answers:
            rec = r.json()
            by_model[rec["model"]["id"]] += 1
            assert rec["score"] == pytest.approx(expected[rec["model"]["id"]][k], rel=1e-5)  # never mixed
            assert rec["decision"] == ("defect" if rec["score"] > rec["threshold"] else "pass")
            if rec["model"]["id"] == b_id:
                assert rec["model"]["name"] == "b.pt" and rec["threshold"] != pytest.approx(moved)
        assert by_model[a_id] and by_model[b_id]
        now = inspect(client, bodies[1]).json()
        assert now["model"]["id"] == b_id and now["score"] == pytest.approx(expected[b_id][1], rel=1e-5)
        threshold = client.get("/v1/threshold").json()
        assert threshold["value"] == pytest.approx(threshold["calibrated"]) != pytest.approx(moved)
        assert threshold["change_for_other_model"]["value"] == pytest.approx(moved)
        # the old model's inspection keeps its overlay, drawn on its own model's colour scale
        png = client.get(first_a["links"]["overlay"])
        assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
        assert "b.pt" in client.get("/model").text
        in_use = [x for x in client.get("/metrics").text.splitlines() if x.startswith("rd2t_model{")]
        assert in_use == [f'rd2t_model{{id="{b_id}",name="b.pt"}} 1.0']
        assert client.post("/v1/model/reload").json()["changed"] is False  # the same file again

        point("bad.pt")
        r = client.post("/v1/model/reload")
        assert r.status_code == 409 and "\n" not in r.json()["detail"]
        assert (
            r.json()["detail"].startswith(f"model not reloaded, {b_id} stays:")
            and "bad.pt" in r.json()["detail"]
        )
        assert inspect(client, bodies[2]).json()["model"]["id"] == b_id


def test_a_large_part_is_reviewed_on_views_of_a_few_megapixels_with_the_originals_a_click_away(
    trained_cli_model, tmp_path
):
    """A 3000 x 2000 part: the inspection page shows JPEG views at most VIEW_PX wide (the original and a
    heat map drawn at that size, the same picture as the full overlay shrunk), links to the full-size files,
    and a small part is shown as it is."""
    from rd2t.service.settings import StationSettings
    from rd2t.service.station import VIEW_PX

    rng = np.random.default_rng(81)
    large = png_bytes(np.concatenate([texture(rng, 1000) for _ in range(3)], 1).repeat(2, 0))  # 3000 x 2000
    for overlay in ("lazy", "eager"):
        s = StationSettings(trained_cli_model, images=tmp_path / overlay, threads=1, overlay=overlay)
        with running_server(s) as client:
            rec = inspect(client, large, "large.png").json()
            small = inspect(client, images(1, seed=82)[0], "small.png").json()
            views = [client.get(rec["links"][k]) for k in ("image_view", "overlay_view")]
            assert all(v.status_code == 200 and v.headers["content-type"] == "image/jpeg" for v in views)
            image_view, overlay_view = (Image.open(io.BytesIO(v.content)) for v in views)
            assert image_view.size == overlay_view.size == (VIEW_PX, round(VIEW_PX * 2 / 3))
            full = Image.open(io.BytesIO(client.get(rec["links"]["overlay"]).content)).convert("RGB")
            shrunk = np.asarray(full.resize(overlay_view.size, Image.Resampling.LANCZOS), dtype=float)
            assert np.abs(np.asarray(overlay_view, dtype=float) - shrunk).mean() < 6  # the same heat map
            page = client.get(f"/inspections/{rec['id']}").text
            assert rec["links"]["image_view"] in page and rec["links"]["overlay_view"] in page
            assert f'href="{rec["links"]["image"]}"' in page and 'id="full-heat-map"' in page
            small_page = client.get(f"/inspections/{small['id']}").text
            assert f'src="{small["links"]["image"]}"' in small_page and "image-view.jpg" not in small_page


def inspect(client, data: bytes, name: str = "part.png", **fields):
    r = client.post("/v1/inspect", files={"file": (name, data, "image/png")}, data=fields)
    return r


# ---- the API ---------------------------------------------------------------------------------------
def test_inspect_scores_like_rd2t_predict_and_keeps_the_record(station, trained_cli_model, tmp_path):
    client, settings = station
    good, bad = images(1, seed=11)[0], images(1, seed=12, defect=True)[0]
    predictor = Predictor.open(trained_cli_model)  # what `rd2t predict` runs
    for data, name in ((good, "good.png"), (bad, "bad.png")):
        (tmp_path / name).write_bytes(data)
        expected = predictor.predict_one(tmp_path / name)
        r = inspect(client, data, name, part_id="P-1", line="L1", station="S1")
        assert r.status_code == 200, r.text
        rec = r.json()
        assert rec["score"] == pytest.approx(expected.score, rel=1e-5, abs=1e-6)
        assert rec["decision"] == ("defect" if rec["score"] > rec["threshold"] else "pass")
        assert (rec["part_id"], rec["line"], rec["station"]) == ("P-1", "L1", "S1")
        assert (rec["width"], rec["height"]) == (96, 96)
        assert rec["model"]["name"] == "model.pt" and len(rec["model"]["id"]) == 12
        assert set(rec["timings"]) == {"decode_ms", "model_ms", "total_ms"}
        assert rec["timings"]["total_ms"] >= rec["timings"]["model_ms"] > 0
        assert client.get(rec["links"]["self"]).json() == rec  # what was answered is what was stored
        assert client.get(rec["links"]["image"]).content == data
        overlay = Image.open(io.BytesIO(client.get(rec["links"]["overlay"]).content))
        assert overlay.size == (96, 96) and overlay.format == "PNG"
        thumb = client.get(rec["links"]["thumb"])
        assert thumb.headers["content-type"] == "image/jpeg"
        assert max(Image.open(io.BytesIO(thumb.content)).size) <= 256


def test_raw_body_jpeg_and_heatmap_png(station):
    client, _ = station
    jpeg = png_bytes(texture(np.random.default_rng(5), 120), "JPEG")
    r = client.post(
        "/v1/inspect?heatmap=png&part_id=J1", content=jpeg, headers={"Content-Type": "image/jpeg"}
    )
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(r.content)).size == (120, 120)
    rec = client.get(f"/v1/inspections/{r.headers['X-Inspection-Id']}").json()
    assert rec["part_id"] == "J1" and rec["decision"] == r.headers["X-Decision"]
    assert float(r.headers["X-Score"]) == rec["score"]
    image = client.get(rec["links"]["image"])
    assert image.headers["content-type"] == "image/jpeg" and image.content == jpeg


def test_batch_reports_each_file(station):
    client, _ = station
    a, b = images(2, seed=21)
    files = [("files", ("a.png", a, "image/png")), ("files", ("broken.png", b"\x89PNG\r\n", "image/png"))]
    files.append(("files", ("b.png", b, "image/png")))
    r = client.post("/v1/inspect/batch", files=files, data={"line": "LB"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [x["line"] for x in body["results"]] == ["LB", "LB"]
    assert body["errors"] == [{"file": "broken.png", "error": body["errors"][0]["error"]}]
    assert "broken.png" in body["errors"][0]["error"]


def test_corrupt_upload_is_400_one_line_and_the_server_keeps_serving(station):
    client, _ = station
    good = images(1, seed=31)[0]
    truncated = good[: len(good) // 2]
    for bad in (b"not an image at all", truncated, png_bytes(np.zeros((8, 8, 3), np.uint8), "GIF")):
        r = inspect(client, bad, "bad.png")
        assert r.status_code == 400, r.text
        detail = r.json()["detail"]
        assert detail.startswith("bad.png: ") and "\n" not in detail
    assert inspect(client, good).status_code == 200


def bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels (the data would inflate to gigabytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * (width + 1) * 64, 9)  # first rows only: it never gets decoded
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_size_limits_give_413(station):
    client, settings = station
    for w, h in ((1200, 1000), (60_000, 60_000)):  # over --max-pixels; over Pillow's own bomb limit
        r = inspect(client, bomb_png(w, h), "bomb.png")
        assert r.status_code == 413, r.text
        assert "bomb.png" in r.json()["detail"]
    big = os.urandom(settings.max_upload_bytes + 1000)
    assert inspect(client, big, "big.png").status_code == 413

    def chunked():  # no Content-Length: the limit is counted as the body arrives
        for _ in range(3):
            yield os.urandom(settings.max_upload_bytes // 2)

    r = client.post("/v1/inspect", content=chunked(), headers={"Content-Type": "image/png"})
    assert r.status_code == 413
    assert client.get("/healthz").json() == {"status": "ok"}


def test_listing_filters_and_paging(station):
    client, _ = station
    line = f"L-{uuid.uuid4().hex[:6]}"
    client.post("/v1/threshold", json={"value": 1e9, "by": "test"})  # everything passes
    passes = [inspect(client, d, line=line).json() for d in images(3, seed=41)]
    client.post("/v1/threshold", json={"value": -1e9, "by": "test"})  # everything is flagged
    defects = [inspect(client, d, line=line).json() for d in images(2, seed=42)]
    assert {r["decision"] for r in passes} == {"pass"} and {r["decision"] for r in defects} == {"defect"}
    page = client.get("/v1/inspections", params={"line": line, "limit": 2}).json()
    assert page["total"] == 5 and [r["id"] for r in page["items"]] == [defects[1]["id"], defects[0]["id"]]
    page2 = client.get("/v1/inspections", params={"line": line, "limit": 2, "offset": 2}).json()
    assert [r["id"] for r in page2["items"]] == [passes[2]["id"], passes[1]["id"]]
    only = client.get("/v1/inspections", params={"line": line, "decision": "pass"}).json()
    assert only["total"] == 3
    after = client.get("/v1/inspections", params={"line": line, "after_id": passes[0]["id"]}).json()
    assert [r["id"] for r in after["items"]] == [r["id"] for r in passes[1:] + defects]  # oldest first
    since = client.get("/v1/inspections", params={"line": line, "since": defects[0]["time"]}).json()
    assert since["total"] == 2
    until = client.get("/v1/inspections", params={"line": line, "until": passes[2]["time"]}).json()
    assert until["total"] == 3
    assert client.get("/v1/inspections", params={"line": line, "reviewed": "true"}).json()["total"] == 0
    assert client.get("/v1/inspections", params={"decision": "maybe"}).status_code == 422
    assert client.get("/v1/inspections/999999").status_code == 404


@contextmanager
def rows_like(settings, inspection_id: int, rows: list[dict]):
    """`rows` written straight into the station's database as copies of inspection `inspection_id` with their
    values (a month of a line in a moment), and every row of their line removed afterwards: the module's
    station serves later tests."""
    import sqlalchemy as sa

    from rd2t.service import db

    t = db.inspections
    engine = db.open_engine(settings.db_url)
    try:
        with engine.begin() as conn:
            like = conn.execute(sa.select(t).where(t.c.id == inspection_id)).mappings().one()
            template = {k: v for k, v in like.items() if k not in ("id", "source")}
            conn.execute(t.insert(), [{**template, **r} for r in rows])
        yield
    finally:
        with engine.begin() as conn:
            conn.execute(t.delete().where(t.c.line.in_({r["line"] for r in rows})))
        engine.dispose()


def test_csv_export_has_every_filtered_inspection_oldest_first_and_no_formulas(station):
    """A quality engineer's month in a spreadsheet: GET /v1/inspections.csv with the listing's filters gives
    every matching inspection (past any page size, read in chunks), oldest first, with the values the API
    gives; text a spreadsheet would run as a formula (a typed note, a scanned part id) is quoted."""
    import csv as csv_module

    client, settings = station
    line = f"L-{uuid.uuid4().hex[:6]}"
    recs = [inspect(client, d, line=line, part_id=f"P{i}").json() for i, d in enumerate(images(3, seed=43))]
    recs.append(inspect(client, images(1, seed=44)[0], line=line, part_id='=HYPERLINK("http://x")').json())
    client.post(
        f"/v1/inspections/{recs[1]['id']}/review", json={"state": "false_alarm", "note": "+dust", "by": "Ana"}
    )
    r = client.get("/v1/inspections.csv", params={"line": line})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert r.headers["content-disposition"].startswith('attachment; filename="inspections-')
    rows = list(csv_module.DictReader(io.StringIO(r.text)))
    assert [int(x["id"]) for x in rows] == [x["id"] for x in recs]  # oldest first
    for row, rec in zip(rows, recs, strict=True):
        assert float(row["score"]) == rec["score"] and row["decision"] == rec["decision"]
        assert row["time"] == rec["time"] and row["line"] == line and row["images_removed_at"] == ""
    assert rows[3]["part_id"] == '\'=HYPERLINK("http://x")'
    assert (rows[1]["review_state"], rows[1]["review_note"], rows[1]["review_by"]) == (
        "false_alarm",
        "'+dust",
        "Ana",
    )
    reviewed = list(
        csv_module.DictReader(
            io.StringIO(client.get("/v1/inspections.csv", params={"line": line, "reviewed": "true"}).text)
        )
    )
    assert [int(x["id"]) for x in reviewed] == [recs[1]["id"]]
    assert client.get("/v1/inspections.csv", params={"decision": "maybe"}).status_code == 422

    # 2,500 rows: more than one chunk of the database cursor and of the response
    bulk = f"L-{uuid.uuid4().hex[:6]}"
    with rows_like(settings, recs[0]["id"], [{"line": bulk, "part_id": f"B{i}"} for i in range(2500)]):
        exported = client.get("/v1/inspections.csv", params={"line": bulk}).text
    rows = list(csv_module.DictReader(io.StringIO(exported)))
    assert [x["part_id"] for x in rows] == [f"B{i}" for i in range(2500)]


def test_stats_count_verdicts_and_reviews_per_hour_and_per_local_day(station):
    """A shift's yield and its false alarms: /v1/stats counts inspections, verdicts and review states per hour
    or per day, days on the plant's clock (offset_minutes ahead of UTC), with the listing's filters."""
    client, settings = station
    line = f"L-{uuid.uuid4().hex[:6]}"
    like = inspect(client, images(1, seed=45)[0]).json()["id"]  # copied into the line at set times
    utc = datetime.datetime
    parts = [  # (time in UTC, verdict, review)
        (utc(2026, 3, 1, 22, 30), "defect", "false_alarm"),
        (utc(2026, 3, 1, 22, 50), "pass", "unreviewed"),
        (utc(2026, 3, 1, 23, 10), "defect", "confirmed_defect"),
        (utc(2026, 3, 2, 0, 5), "pass", "missed_defect"),
    ]
    rows = [{"line": line, "time": when, "decision": d, "review_state": r} for when, d, r in parts]
    with rows_like(settings, like, rows):  # removed after: later tests count the reviewed defects
        hours = client.get("/v1/stats", params={"line": line}).json()
        utc_days = client.get("/v1/stats", params={"line": line, "bucket": "day"}).json()["rows"]
        local = {
            offset: client.get("/v1/stats", params={"line": line, "bucket": "day", "offset_minutes": offset})
            for offset in (120, -60)
        }
        flagged = client.get("/v1/stats", params={"line": line, "decision": "defect", "bucket": "day"}).json()
    assert [r["start"] for r in hours["rows"]] == [
        "2026-03-01T22:00:00+00:00", "2026-03-01T23:00:00+00:00", "2026-03-02T00:00:00+00:00"
    ]  # fmt: skip
    assert [(r["inspected"], r["defect"], r["pass"]) for r in hours["rows"]] == [
        (2, 1, 1),
        (1, 1, 0),
        (1, 0, 1),
    ]
    assert hours["total"] == {
        "inspected": 4, "pass": 2, "defect": 2, "false_alarm": 1, "confirmed_defect": 1,
        "confirmed_good": 0, "missed_defect": 1,
    }  # fmt: skip
    assert [(r["start"], r["inspected"]) for r in utc_days] == [
        ("2026-03-01T00:00:00+00:00", 3), ("2026-03-02T00:00:00+00:00", 1)
    ]  # fmt: skip
    for offset, day in ((120, "2026-03-02T00:00:00+02:00"), (-60, "2026-03-01T00:00:00-01:00")):
        assert [(r["start"], r["inspected"]) for r in local[offset].json()["rows"]] == [(day, 4)]
    assert flagged["total"]["inspected"] == 2 and flagged["total"]["false_alarm"] == 1
    assert client.get("/v1/stats", params={"bucket": "week"}).status_code == 422


def test_review_threshold_history_and_analysis(station, trained_cli_model, tmp_path):
    from rd2t.service.settings import StationSettings
    from rd2t.service.station import Station

    client, settings = station
    rec = inspect(client, images(1, seed=51, defect=True)[0]).json()
    reviewed = client.post(
        f"/v1/inspections/{rec['id']}/review", json={"state": "false_alarm", "note": "dust", "by": "qa"}
    )
    assert reviewed.status_code == 200
    assert reviewed.json()["review"]["state"] == "false_alarm" and reviewed.json()["review"]["by"] == "qa"
    assert client.post(f"/v1/inspections/{rec['id']}/review", json={"state": "meh"}).status_code == 422
    assert client.post("/v1/inspections/999999/review", json={"state": "false_alarm"}).status_code == 404
    listed = client.get("/v1/inspections", params={"reviewed": "true"}).json()["items"]
    assert rec["id"] in [r["id"] for r in listed]

    analysis = client.get("/v1/threshold/analysis").json()
    assert rec["score"] in analysis["reviewed_good"]
    assert analysis["validation_good"] == Predictor.open(trained_cli_model).calibration.scores
    assert analysis["labelled_defect"] == []  # trained without --val-defects (test_review_page has some)
    assert analysis["suggested"] is None  # no defect known yet: nothing to split

    new = rec["score"] + 1.0  # above this image's score: the same image now passes
    state = client.post("/v1/threshold", json={"value": new, "by": "qa", "note": "after review"}).json()
    assert state["value"] == new and state["history"][0]["by"] == "qa"
    assert state["history"][0]["note"] == "after review"
    again = inspect(client, client.get(rec["links"]["image"]).content).json()
    assert again["threshold"] == new and again["decision"] == "pass"
    bad = client.post("/v1/threshold", content='{"value": NaN}', headers={"Content-Type": "application/json"})
    assert bad.status_code in (400, 422)
    assert client.get("/v1/threshold").json()["value"] == new

    # A restarted station (same database) applies the last recorded threshold.
    restarted = Station(StationSettings(trained_cli_model, db=settings.db, images=settings.images))
    try:
        assert restarted.threshold == new and restarted.change_for_other_model() is None
        first_scores = restarted.reviewed_scores(REVIEWED_GOOD)
    finally:
        restarted.close()

    # Restarted on another model (as after `rd2t train --resume --val-defects`): the change was chosen on the
    # first model's scores, so the new one starts at its own calibrated value, says why, and shows none of
    # the first model's reviewed scores; its own change then applies to it alone.
    retrained = Checkpoint.load(trained_cli_model)
    assert retrained.calibration is not None
    retrained.calibration.scores = [2 * v for v in retrained.calibration.scores]  # another model, on
    retrained.calibration.threshold *= 2  # another scale
    other_path = retrained.save(tmp_path / "retrained" / "model.pt")
    other = Station(StationSettings(other_path, db=settings.db, images=settings.images))
    try:
        assert other.model_id != restarted.model_id
        assert other.threshold == retrained.calibration.threshold
        note = other.change_for_other_model()
        assert note is not None and note["value"] == new and note["model_id"] == restarted.model_id
        assert other.reviewed_scores(REVIEWED_GOOD) == [] and other.reviewed_by_other_models() >= 1
        # Asked to, it scores the reviewed originals again with its own model (the same weights here, so the
        # same scores), and then shows them; nothing is left to do a second time.
        left = other.reviewed_by_other_models()
        assert other.rescore_reviewed() == {"scored": left, "unreadable": 0, "total": left}
        assert sorted(other.reviewed_scores(REVIEWED_GOOD)) == pytest.approx(sorted(first_scores), rel=1e-5)
        assert other.reviewed_by_other_models() == 0 and other.rescore_reviewed()["total"] == 0
        other.set_threshold(7.5, by="qa", note="retrained model")
        assert (
            other.change_for_other_model() is None
            and other.threshold_history()[0]["model_id"] == other.model_id
        )
    finally:
        other.close()
    first = Station(StationSettings(trained_cli_model, db=settings.db, images=settings.images))
    try:  # the first model keeps its own value, and the newest change (the other model's) is reported
        assert first.threshold == new and first.change_for_other_model()["value"] == 7.5
    finally:
        first.close()
    page = client.get("/threshold")  # the running station's page names the newest change and its model
    assert page.status_code == 200 and f"was made for model {other.model_id}." in page.text
    client.post("/v1/threshold", json={"value": new, "by": "qa"})  # the running station's own change again
    assert client.get("/v1/threshold").json()["change_for_other_model"] is None

    z = zipfile.ZipFile(io.BytesIO(client.get("/v1/export/reviewed-good.zip").content))
    assert any(n.startswith(f"{rec['id']:08d}_") for n in z.namelist())
    assert (
        z.read(next(n for n in z.namelist() if n.startswith(f"{rec['id']:08d}_")))
        == client.get(rec["links"]["image"]).content
    )

    # Images reviewed as defects come out as a folder `rd2t train --val-defects` reads (image labels only).
    hit = inspect(client, images(1, seed=52, defect=True)[0]).json()
    assert (
        client.post(f"/v1/inspections/{hit['id']}/review", json={"state": "confirmed_defect"}).status_code
        == 200
    )
    # With a confirmed defect the station suggests the value that best splits good scores from defects'.
    a = client.get("/v1/threshold/analysis").json()
    good, bad = np.array(a["validation_good"] + a["reviewed_good"]), np.array(a["reviewed_defect"])
    assert list(bad) == [hit["score"]]
    j = [(bad > t).mean() - (good > t).mean() for t in [a["suggested"], *good, *bad, *(good - 1e-6)]]
    assert j[0] == max(j) and a["suggested"] < hit["score"]
    z = zipfile.ZipFile(io.BytesIO(client.get("/v1/export/reviewed-defects.zip").content))
    (name,) = [n for n in z.namelist() if n.startswith(f"defect/{hit['id']:08d}_")]
    assert z.read(name) == client.get(hit["links"]["image"]).content
    assert not any(f"{rec['id']:08d}_" in n for n in z.namelist())  # the false alarm is not a defect
    z.extractall(tmp_path / "val")
    split = labelled_defects(tmp_path / "val")
    assert not split.has_masks and tmp_path / "val" / name in [s.path for s in split.test]


def test_health_metrics_model_and_openapi(station):
    client, _ = station
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json()["database"] is True
    inspect(client, images(1, seed=61)[0])
    text = client.get("/metrics").text
    for name in (
        "rd2t_requests_total",
        "rd2t_inspection_seconds_bucket",
        "rd2t_decisions_total",
        "rd2t_queue_depth",
    ):
        assert name in text
    model = client.get("/v1/model").json()
    assert model["backend"] == "torch" and len(model["sha256"]) == 64 and model["config"]["image_size"] == 64
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/inspect", "/v1/inspections", "/v1/threshold", "/v1/inspect/batch"} <= set(paths)


def test_no_path_from_the_request_is_served(station):
    client, _ = station
    for url in ("/v1/inspections/..%2F..%2Fetc%2Fpasswd/image", "/v1/inspections/1%2F..%2F..%2Fx/image"):
        r = client.get(url)
        assert r.status_code in (404, 422) and b"root:" not in r.content


def test_events_stream_each_new_inspection(station):
    client, _ = station
    got: list[dict] = []
    ready = threading.Event()

    def listen():
        with client.stream("GET", "/v1/events", timeout=20) as r:
            event = None
            for line in r.iter_lines():
                ready.set()
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and event == "inspection":
                    got.append(json.loads(line[6:]))
                    return

    t = threading.Thread(target=listen, daemon=True)
    t.start()
    assert ready.wait(10)
    rec = inspect(client, images(1, seed=71)[0]).json()
    t.join(15)
    assert got and got[0] == rec


def test_mqtt_message_per_verdict(station):
    client, _ = station
    need(port_open(MQTT_HOST, MQTT_PORT), f"Mosquitto on {MQTT_HOST}:{MQTT_PORT}")
    sub = Subscriber(MQTT_PORT, TOPIC)
    try:
        rec = inspect(client, images(1, seed=81)[0], part_id="M1", station="S9").json()
        msg = sub.wait_for(rec["id"])
        assert msg == {
            "id": rec["id"],
            "time": rec["time"],
            "score": rec["score"],
            "decision": rec["decision"],
            "threshold": rec["threshold"],
            "model_id": rec["model"]["id"],
            "part_id": "M1",
            "line": None,
            "station": "S9",
            "image_sha256": rec["image_sha256"],
        }
    finally:
        sub.close()


# ---- other settings: a token, an ONNX model --------------------------------------------------------
def test_token_guards_api_but_not_health(trained_cli_model, tmp_path):
    from rd2t.service.settings import StationSettings

    s = StationSettings(trained_cli_model, images=tmp_path / "st", token="s3cret", threads=1)
    with running_server(s) as client:
        bare = httpx.Client(base_url=str(client.base_url))
        data = images(1, seed=91)[0]
        assert bare.post("/v1/inspect", files={"file": ("a.png", data)}).status_code == 401
        assert bare.get("/v1/inspections").status_code == 401
        wrong = bare.get("/v1/inspections", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert bare.get("/healthz").status_code == 200 and bare.get("/metrics").status_code == 200
        with_cookie = httpx.Client(base_url=str(client.base_url), cookies={"rd2t_token": "s3cret"})
        assert with_cookie.get("/v1/inspections").status_code == 200
        assert client.post("/v1/inspect", files={"file": ("a.png", data)}).status_code == 200
    os.environ["RD2T_TOKEN"] = "from-env"
    try:
        assert StationSettings(trained_cli_model).token == "from-env"
    finally:
        del os.environ["RD2T_TOKEN"]


def test_onnx_model_scores_through_the_same_predictor_and_keeps_the_threshold(trained_cli_model, tmp_path):
    """An exported model is the same model: it scores as the checkpoint does, and the threshold a person
    chose on the checkpoint's scores stays in force when the station restarts on the export."""
    from rd2t.inference.export import export_onnx
    from rd2t.service.settings import StationSettings
    from rd2t.service.station import Station

    onnx_path = export_onnx(trained_cli_model, tmp_path / "model.onnx")
    data = images(1, seed=95, defect=True)[0]
    (tmp_path / "x.png").write_bytes(data)
    same = Predictor.open(onnx_path, threads=1)  # --backend auto: the runtime measured fastest here
    expected = same.predict_one(tmp_path / "x.png").score
    torch_score = Predictor.open(trained_cli_model).predict_one(tmp_path / "x.png").score
    on_checkpoint = Station(StationSettings(trained_cli_model, images=tmp_path / "st", threads=1))
    try:
        chosen = torch_score + 1.0  # above this image's score: it passes
        on_checkpoint.set_threshold(chosen, by="qa", note="chosen on the checkpoint's scores")
    finally:
        on_checkpoint.close()
    with running_server(StationSettings(onnx_path, images=tmp_path / "st", threads=1)) as client:
        rec = inspect(client, data).json()
        assert client.get("/v1/model").json()["backend"] == same.backend.name in ("onnx", "openvino")
        state = client.get("/v1/threshold").json()
    assert rec["score"] == pytest.approx(expected, rel=1e-5) and rec["model"]["name"] == "model.onnx"
    assert rec["score"] == pytest.approx(torch_score, rel=1e-3)
    assert state["value"] == chosen and state["change_for_other_model"] is None
    assert state["history"][0]["this_model"] and state["history"][0]["model_id"] == on_checkpoint.model_id
    assert rec["threshold"] == chosen and rec["decision"] == "pass"


def test_lazy_overlay_is_drawn_when_first_asked_for(trained_cli_model, tmp_path):
    """The map is stored with the verdict and the overlay drawn when first viewed, also after the station
    moved to another model: on its own model's colour scale, the very PNG an eager station writes."""
    from rd2t.service.settings import StationSettings
    from rd2t.service.station import Station

    s = StationSettings(trained_cli_model, images=tmp_path / "st", threads=1, overlay="lazy")
    part, later_part = images(2, seed=97, defect=True)
    with running_server(s) as client:
        later = inspect(client, later_part).json()  # its overlay is not asked for under this model
        rec = inspect(client, part).json()
        assert not list((tmp_path / "st").glob("overlays/*/*.png")) and list(
            (tmp_path / "st").glob("maps/*/*.npy")
        )
        first = client.get(rec["links"]["overlay"])
        assert first.status_code == 200 and Image.open(io.BytesIO(first.content)).size == (96, 96)
        assert len(list((tmp_path / "st").glob("overlays/*/*.png"))) == 1  # drawn once, then served
        assert client.get(rec["links"]["overlay"]).content == first.content
        r = client.post("/v1/inspect?heatmap=png", files={"file": ("b.png", images(1, seed=98)[0])})
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    other = StationSettings(retrained_copy(trained_cli_model, tmp_path / "b.pt"), images=tmp_path / "st")
    with running_server(other) as client:  # restarted on another model, with another colour scale
        drawn = client.get(later["links"]["overlay"])
        assert drawn.status_code == 200
    eager = Station(StationSettings(trained_cli_model, images=tmp_path / "eager", threads=1, overlay="eager"))
    try:
        same = eager.inspect(later_part, "later.png")
        assert drawn.content == eager.overlay_file(eager.row(same["id"])).read_bytes()
    finally:
        eager.close()
