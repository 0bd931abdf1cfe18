"""The review page in a real browser: a real `rd2t serve` on a loopback port, Chromium through Playwright.

One server (with a token, SQLite in tmp) and one browser for the module. The walk is a quality
engineer's: sign in, parts arrive and appear without a reload, open a flagged one, call it a false alarm,
move the threshold and see the rates change, apply it, and the next inspection uses the new value.
Screenshots of every page go to the test's tmp folder (or RD2T_SCREENSHOTS) to be looked at.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi", reason="the station needs the [station] extra")
httpx = pytest.importorskip("httpx")
try:
    from playwright import sync_api
except ImportError:  # a user's machine without the dev extra skips; CI must have it
    if os.environ.get("RD2T_REQUIRE_SERVICES") == "1":
        raise
    pytest.skip("browser tests need the playwright package (dev extra)", allow_module_level=True)

from rd2t.data import load_image  # noqa: E402
from rd2t.data.transforms import to_uint8_tensor  # noqa: E402
from rd2t.inference.predictor import Predictor  # noqa: E402
from rd2t.model.checkpoint import Checkpoint  # noqa: E402
from tests.conftest import paint_defect, texture  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
TOKEN = "line-3-secret"


def need_chromium() -> None:
    if CHROMIUM.exists():
        return
    if os.environ.get("RD2T_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{CHROMIUM} is missing and RD2T_REQUIRE_SERVICES=1")
    pytest.skip(f"browser tests need Chromium at {CHROMIUM} (Debian package `chromium`)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png(seed: int, defect: bool = False) -> bytes:
    rng = np.random.default_rng(seed)
    img = texture(rng, 96)
    if defect:
        img = paint_defect(img, rng)[0]
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "PNG")
    return buf.getvalue()


def with_labelled_defects(model: Path, texture_set: Path, dest: Path) -> Path:
    """A copy of the model as `rd2t train --val-defects` leaves it: its calibration also holds the stained
    test images' scores (test_memory_bank checks that training records them)."""
    shutil.copytree(model.parent, dest)
    ckpt = Checkpoint.load(dest / model.name)
    size = ckpt.config.image_size
    stained = sorted((texture_set / "test/stain").glob("*.png"))
    batch = torch.stack([to_uint8_tensor(load_image(p), size) for p in stained])
    ckpt.calibration.defect_scores = Predictor.open(dest / model.name).score_tensors(batch)[0].tolist()
    return ckpt.save(dest / model.name)


@pytest.fixture(scope="module")
def station(trained_cli_model, texture_set, tmp_path_factory):
    """`rd2t serve` with a token, in its own process, of a model trained with labelled defects; yields an API
    client that carries the token."""
    need_chromium()
    folder = tmp_path_factory.mktemp("station")
    model = with_labelled_defects(trained_cli_model, texture_set, folder / "model")
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("RD2T_TOKEN", None)
    command = [sys.executable, "-m", "rd2t", "serve", str(model), "--port", str(port)]
    command += ["--images", str(folder / "images"), "--threads", "1", "--workers", "1", "--token", TOKEN]
    log = open(folder / "serve.log", "wb")  # noqa: SIM115 (closed below)
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    client = httpx.Client(base_url=base, timeout=60, headers={"Authorization": f"Bearer {TOKEN}"})
    try:
        deadline = time.time() + 120
        while True:
            assert process.poll() is None, (folder / "serve.log").read_text()[-2000:]
            assert time.time() < deadline, "rd2t serve did not become ready in 120 s"
            try:
                if client.get("/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        client.base, client.images = base, folder / "images"
        yield client
    finally:
        client.close()
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@pytest.fixture(scope="module")
def browser():
    need_chromium()
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield chromium
        chromium.close()


def new_page(browser, errors: list):
    page = browser.new_page(viewport={"width": 1280, "height": 860})
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.set_default_timeout(20_000)
    return page


def sign_in(page, base: str, token: str, path: str = "/") -> None:
    page.goto(base + path)
    page.fill("#token", token)
    page.click("button[type=submit]")


def test_pages_need_the_token(station, browser):
    errors: list = []
    page = new_page(browser, errors)
    base = station.base
    page.goto(base + "/threshold")
    assert page.url.startswith(base + "/login"), "a page without the token must go to the login form"
    sign_in(page, base, "not-the-token", "/threshold")
    sync_api.expect(page.locator(".notice.error")).to_have_text("Wrong token.")
    assert not page.context.cookies(), "a wrong token must not set the cookie"
    assert httpx.get(base + "/v1/threshold").status_code == 401  # the JSON API refuses it too
    page.fill("#token", TOKEN)
    page.click("button[type=submit]")
    page.wait_for_url(base + "/threshold")  # back where the user was going
    (cookie,) = page.context.cookies()
    assert (cookie["name"], cookie["httpOnly"], cookie["sameSite"]) == ("rd2t_token", True, "Strict")
    page.goto(base + "/login?next=//evil.example/")  # the target after login stays on this station
    assert page.locator("input[name=next]").input_value() == "/"
    page.close()
    assert not errors


def test_review_path(station, browser, screenshots):
    errors: list = []
    page = new_page(browser, errors)
    base = station.base
    sign_in(page, base, TOKEN)
    page.wait_for_url(base + "/")
    sync_api.expect(page.locator("#live-status")).to_contain_text("updated")  # the view polls

    # Parts arrive through the API; the open live view shows them without a reload.
    sent = [
        ("G-1", png(1)),
        ("G-2", png(2)),
        ("<b>X&1</b>", png(3, defect=True)),
        ("D-2", png(4, defect=True)),
    ]
    records = []
    for part, data in sent:
        r = station.post(
            "/v1/inspect", files={"file": ("part.png", data, "image/png")}, data={"part_id": part}
        )
        assert r.status_code == 200, r.text
        records.append(r.json())
    cards = page.locator(".card")
    sync_api.expect(cards).to_have_count(len(sent))
    # Newest first, and a part id is text, never markup.
    sync_api.expect(cards.first).to_have_attribute("data-id", str(records[-1]["id"]))
    sync_api.expect(page.locator(".card .part", has_text="<b>X&1</b>")).to_have_count(1)
    n_defect = sum(r["decision"] == "defect" for r in records)
    assert n_defect == 2, [r["score"] for r in records]  # painted stains on a trained texture model
    sync_api.expect(page.locator("[data-count=defect]")).to_have_text(str(n_defect))
    sync_api.expect(page.locator("[data-count=unreviewed]")).to_have_text(str(len(sent)))
    sync_api.expect(page.locator("#today")).to_have_text("Today: 4 inspected · 2 defective (50.0 %)")
    page.screenshot(path=str(screenshots / "live.png"), full_page=True, animations="disabled")
    page.click("[data-filter=defect]")  # the CSV link takes the filter shown
    page.wait_for_url(base + "/?show=defect")
    with page.expect_download() as download:
        page.click("#export-csv")
    exported = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text(encoding="utf-8"))))
    assert [int(x["id"]) for x in exported] == [r["id"] for r in records if r["decision"] == "defect"]
    page.goto(base + "/")

    # Open a flagged part; the heat map toggles with H; F marks it a false alarm, with a note.
    flagged = min((r for r in records if r["decision"] == "defect"), key=lambda r: r["score"])
    flagged_image = sent[records.index(flagged)][1]
    page.click(f".card[data-id='{flagged['id']}']")
    page.wait_for_url(f"{base}/inspections/{flagged['id']}")
    sync_api.expect(page.locator(".banner .verdict")).to_have_text("DEFECT")
    page.keyboard.press("h")
    assert page.eval_on_selector("#overlay", "e => getComputedStyle(e).opacity") == "0"
    page.keyboard.press("h")
    page.fill("#note", "dust on the lens <script>")
    page.fill("#by", "Ana")
    page.keyboard.press("Escape")  # leave the text field: the keys are review keys again
    page.keyboard.press("f")
    sync_api.expect(page.locator("#review-message")).to_have_text("Saved: false alarm.")
    saved = station.get(f"/v1/inspections/{flagged['id']}").json()["review"]
    assert (saved["state"], saved["note"], saved["by"]) == ("false_alarm", "dust on the lens <script>", "Ana")
    page.screenshot(path=str(screenshots / "inspection.png"), full_page=True, animations="disabled")
    page.reload()  # the note comes back from the database as text, not markup
    sync_api.expect(page.locator("#note")).to_have_value("dust on the lens <script>")
    sync_api.expect(page.locator("#review-state")).to_have_text("false alarm")

    assert page.goto(f"{base}/inspections/999999").status == 404  # a page saying so, not a stack trace
    sync_api.expect(page.locator("h1")).to_have_text("Not found")

    # Another engineer confirms the other flagged part as a real defect (through the API).
    confirmed = max((r for r in records if r["decision"] == "defect"), key=lambda r: r["score"])
    review = {"state": "confirmed_defect", "note": "crack", "by": "Ben"}
    assert station.post(f"/v1/inspections/{confirmed['id']}/review", json=review).status_code == 200
    page.goto(base + "/")  # today's line counts the reviews too
    sync_api.expect(page.locator("#today")).to_have_text(
        "Today: 4 inspected · 2 defective (50.0 %) · reviewed: 1 false alarm, 1 confirmed defect"
    )

    page.goto(base + "/?show=unreviewed")  # the reviewer's to-do list: the two reviewed parts are gone
    sync_api.expect(page.locator(".card")).to_have_count(len(sent) - 2)
    sync_api.expect(page.locator("[data-count=unreviewed]")).to_have_text(str(len(sent) - 2))

    # The threshold page: both reviews are in the chart; the slider changes the rates.
    # The labelled defects given at training have their own row and rate.
    page.goto(base + "/threshold")
    analysis = station.get("/v1/threshold/analysis").json()
    val, labelled = analysis["validation_good"], analysis["labelled_defect"]
    n = len(val)
    assert n >= 1 and len(labelled) == 6
    sync_api.expect(page.locator("#hist")).to_contain_text("Labelled defects given at training: 6")
    sync_api.expect(page.locator("#rate-revgood")).to_have_text("1 of 1 (100.0 %)")  # above the threshold
    slider = page.locator("#slider")
    slider.focus()
    page.keyboard.press("Home")  # lowest value: every good image would be flagged
    sync_api.expect(page.locator("#rate-val")).to_have_text(f"{n} of {n} (100.0 %)")
    sync_api.expect(page.locator("#rate-miss")).to_have_text("0 of 1 (0 %)")
    sync_api.expect(page.locator("#rate-labelled")).to_have_text("0 of 6 (0 %)")
    page.keyboard.press("End")  # highest: none would, and every defect would pass
    sync_api.expect(page.locator("#rate-val")).to_have_text(f"0 of {n} (0 %)")
    sync_api.expect(page.locator("#rate-miss")).to_have_text("1 of 1 (100.0 %)")
    sync_api.expect(page.locator("#rate-labelled")).to_have_text("6 of 6 (100.0 %)")
    # The suggested value, the best split of the good scores from the defects', is one click away.
    t = float(f"{analysis['suggested']:.4g}")
    page.click("#try-suggested")
    sync_api.expect(page.locator("#value")).to_have_value(f"{t:.4g}")
    sync_api.expect(page.locator("#rate-labelled")).to_contain_text(f"{sum(v <= t for v in labelled)} of 6 (")
    sync_api.expect(page.locator("#rate-val")).to_contain_text(f"{sum(v > t for v in val)} of {n} (")
    page.screenshot(path=str(screenshots / "threshold-suggested.png"), full_page=True, animations="disabled")

    # Type a value between the false alarm and the confirmed defect; apply it, with who and why.
    new_value = float(f"{(flagged['score'] + confirmed['score']) / 2:.4g}")
    page.fill("#value", str(new_value))
    sync_api.expect(page.locator("#rate-revgood")).to_have_text("0 of 1 (0 %)")
    sync_api.expect(page.locator("#rate-miss")).to_have_text("0 of 1 (0 %)")
    page.fill("#apply-by", "Ana")
    page.fill("#apply-note", "lens dust gives false alarms")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#apply")
    sync_api.expect(page.locator("#apply-message")).to_contain_text("Applied")
    sync_api.expect(page.locator("#history tbody tr")).to_have_count(1)
    sync_api.expect(page.locator("#history tbody tr").first).to_contain_text("lens dust gives false alarms")
    sync_api.expect(page.locator("#current-threshold")).to_have_text(f"{new_value:.4g}")
    page.screenshot(path=str(screenshots / "threshold.png"), full_page=True, animations="disabled")

    # The running service uses it for the next inspection: the same part now passes.
    r = station.post("/v1/inspect", files={"file": ("again.png", flagged_image, "image/png")}).json()
    assert r["threshold"] == pytest.approx(new_value)
    assert r["decision"] == "pass"
    history = station.get("/v1/threshold").json()["history"]
    assert (history[0]["value"], history[0]["by"]) == (pytest.approx(new_value), "Ana")

    # The model page, and the reviewed-good images as new training images.
    page.goto(base + "/model")
    sync_api.expect(page.locator("h1")).to_have_text("Loaded model")
    caught = sum(v > station.get("/v1/threshold").json()["calibrated"] for v in labelled)
    sync_api.expect(page.locator("#labelled-defects")).to_contain_text(f"{caught} of 6 above the calibrated")
    sync_api.expect(page.locator("#storage")).to_contain_text("keeps every image")  # no policy set
    sync_api.expect(page.locator("#line-controller")).to_contain_text("start with --mqtt")  # none set
    with page.expect_download() as download:
        page.click("#export")
    with zipfile.ZipFile(download.value.path()) as zf:
        (name,) = zf.namelist()
        assert zf.read(name) == flagged_image  # the original bytes of the false alarm
    with page.expect_download() as download:  # and the confirmed defect, as a --val-defects folder
        page.click("#export-defects")
    with zipfile.ZipFile(download.value.path()) as zf:
        assert zf.namelist() == [f"defect/{confirmed['id']:08d}_{confirmed['image_sha256'][:12]}.png"]
    page.screenshot(path=str(screenshots / "model.png"), full_page=True, animations="disabled")
    page.close()
    assert not errors, errors


def test_reviews_made_under_an_earlier_model_are_scored_again_on_request(
    station, browser, screenshots, trained_cli_model, tmp_path
):
    """Parts reviewed while another model served (another scale) are left out of the threshold page until
    someone asks: then the running station scores their stored originals with its own model, and they join
    its reviewed-good row with the scores it gives them."""
    from rd2t.service.settings import StationSettings
    from rd2t.service.station import Station

    earlier = Checkpoint.load(trained_cli_model)  # the same weights on another scale, as a retrained model
    earlier.calibration.scores = [3 * v for v in earlier.calibration.scores]
    earlier_path = earlier.save(tmp_path / "earlier" / "model.pt")
    before = len(station.get("/v1/threshold/analysis").json()["reviewed_good"])
    old = Station(StationSettings(earlier_path, images=station.images, threads=1))
    try:
        ids = [old.inspect(png(300 + i), f"old{i}.png")["id"] for i in range(2)]
        for i in ids:
            old.review(i, "false_alarm", "reviewed under the earlier model", "Ana")
    finally:
        old.close()
    errors: list = []
    page = new_page(browser, errors)
    sign_in(page, station.base, TOKEN, "/threshold")
    page.wait_for_url(station.base + "/threshold")
    sync_api.expect(page.locator("#other-model-reviews")).to_contain_text("2 reviewed inspections scored by")
    shot = screenshots / "threshold-other-model.png"
    page.screenshot(path=str(shot), full_page=True, animations="disabled")
    page.route("**/v1/threshold/rescore", lambda route: route.abort())  # the station out of reach
    page.click("#rescore")
    sync_api.expect(page.locator("#rescore-progress")).to_contain_text("rescoring failed:")
    sync_api.expect(page.locator("#rescore")).to_be_enabled()  # it can be pressed again
    page.screenshot(
        path=str(screenshots / "threshold-rescore-failed.png"), full_page=True, animations="disabled"
    )
    page.unroute("**/v1/threshold/rescore")
    page.click("#rescore")
    sync_api.expect(page.locator("#other-model-reviews")).to_have_count(0)  # reloaded: all scored again
    page.close()
    assert not errors, errors
    analysis = station.get("/v1/threshold/analysis").json()
    assert len(analysis["reviewed_good"]) == before + 2 and analysis["reviewed_other_models"] == 0
    mine = Predictor.open(station.get("/v1/model").json()["path"])  # the running model scores them so
    for i in ids:
        stored = Image.open(io.BytesIO(station.get(f"/v1/inspections/{i}/image").content))
        score = mine.predict_one(stored).score
        assert any(abs(score - v) <= 1e-5 * max(1.0, abs(v)) for v in analysis["reviewed_good"])


def test_threshold_page_draws_more_reviewed_scores_than_one_call_can_take(station, browser, screenshots):
    """A line months in: 150k reviewed parts. Their scores are the page's data; spreading that many into one
    Math.min call overflows V8's stack (a RangeError, and no chart). The page draws and counts them all.
    Runs last: the rows stay in the module's station."""
    import datetime

    import sqlalchemy as sa

    from rd2t.service import db

    before = len(station.get("/v1/threshold/analysis").json()["reviewed_good"])
    many, rng = 150_000, np.random.default_rng(0)
    now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    model_id = station.get("/v1/model").json()["id"]  # scored by the station's model: the page shows them
    row = dict(time=now, decision="pass", threshold=1.0, model_id=model_id, model_name="m", model_version="1")
    row |= dict(decode_ms=0.0, model_ms=0.0, total_ms=0.0, image_sha256="0" * 64, image_type="png")
    row |= dict(image_path="x", overlay_path="x", thumb_path="x", width=1, height=1)
    row |= dict(review_state="confirmed_good")
    engine = sa.create_engine(f"sqlite:///{station.images / 'rd2t.sqlite'}")
    with engine.begin() as conn:  # what a station that reviewed them would hold: one row per part
        conn.execute(db.inspections.insert(), [{**row, "score": float(v)} for v in rng.uniform(0, 2, many)])
    engine.dispose()
    errors: list = []
    page = new_page(browser, errors)
    sign_in(page, station.base, TOKEN, "/threshold")
    page.wait_for_url(station.base + "/threshold")
    slider = page.locator("#slider")
    slider.focus()
    page.keyboard.press("Home")  # lowest value: every reviewed good part would be flagged
    total = before + many
    grouped = f"{total:,}".replace(",", "\u202f")  # thousands grouped by a narrow space, as the station shows
    sync_api.expect(page.locator("#rate-revgood")).to_have_text(f"{grouped} of {grouped} (100.0 %)")
    page.screenshot(path=str(screenshots / "threshold-150k.png"), full_page=True, animations="disabled")
    # the live view's counts, grouped too (rendered by the server, then refreshed by the script)
    passed = station.get("/v1/inspections?decision=pass&limit=1").json()["total"]
    assert passed >= many
    page.goto(station.base + "/")
    sync_api.expect(page.locator("[data-count=pass]")).to_have_text(f"{passed:,}".replace(",", "\u202f"))
    page.close()
    assert not errors, errors


def test_model_page_loads_a_retrained_model_put_in_place(trained_cli_model, browser, tmp_path, screenshots):
    """The operator copies a retrained model over the station's --model file and presses the Model page's
    button: the page then describes the new model, which scores the next part; a broken file is refused
    with the reason, the model in use named."""
    from rd2t.files import file_sha256
    from rd2t.service.settings import StationSettings
    from tests.test_service import retrained_copy, running_server

    live = tmp_path / "current.pt"
    shutil.copy(trained_cli_model, live)
    old_id = file_sha256(live)[:12]
    new_id = file_sha256(retrained_copy(trained_cli_model, tmp_path / "next.pt"))[:12]
    errors: list = []
    with running_server(StationSettings(live, images=tmp_path / "st", threads=1)) as client:
        page = new_page(browser, errors)
        page.goto(f"{client.base_url}/model")
        sync_api.expect(page.locator("#model-id")).to_have_text(old_id)
        page.click("#reload-model")
        sync_api.expect(page.locator("#reload-message")).to_contain_text("nothing to reload")
        os.replace(tmp_path / "next.pt", live)
        page.click("#reload-model")
        sync_api.expect(page.locator("#reload-message")).to_contain_text(f"Model {new_id}")
        sync_api.expect(page.locator("#model-id")).to_have_text(new_id)  # the page reloaded itself
        r = client.post("/v1/inspect", content=png(90), headers={"Content-Type": "image/png"})
        assert r.json()["model"]["id"] == new_id
        live.write_bytes(b"half a copy")
        page.click("#reload-model")
        message = page.locator("#reload-message")
        sync_api.expect(message).to_contain_text(f"Not reloaded: 409: model not reloaded, {new_id} stays")
        sync_api.expect(message).to_have_class("notice error")
        page.screenshot(
            path=str(screenshots / "model-reload-refused.png"), full_page=True, animations="disabled"
        )
        page.close()
    assert not errors, errors


def test_live_view_warns_while_the_line_controller_is_not_told(
    trained_cli_model, browser, tmp_path, screenshots
):
    """--mqtt to a broker that does not answer: the live view says the verdicts are not reaching the line
    controller, and inspections go on."""
    from rd2t.service.settings import StationSettings
    from tests.test_service import running_server

    away = f"mqtt://plc:s3cret@127.0.0.1:{free_port()}/line/verdicts"  # nothing listens there
    errors: list = []
    with running_server(
        StationSettings(trained_cli_model, images=tmp_path / "st", threads=1, mqtt=away)
    ) as client:
        r = client.post("/v1/inspect", content=png(91), headers={"Content-Type": "image/png"})
        assert r.status_code == 200
        page = new_page(browser, errors)
        page.goto(f"{client.base_url}/")
        sync_api.expect(page.locator("#mqtt-down")).to_be_visible()
        sync_api.expect(page.locator("#mqtt-down")).to_contain_text("the line controller is not being told")
        sync_api.expect(page.locator(".card")).to_have_count(1)
        page.screenshot(path=str(screenshots / "live-mqtt-down.png"), full_page=True, animations="disabled")
        page.goto(f"{client.base_url}/model")  # where the operator checks the wiring
        panel = page.locator("#line-controller")
        sync_api.expect(panel).to_contain_text("not connected: verdicts wait in a queue")
        sync_api.expect(panel).to_contain_text("line/verdicts/status")
        assert "s3cret" not in page.content()  # the broker's password is never shown
        page.close()
    assert not errors, errors


def test_live_view_of_one_line_of_a_shared_database(trained_cli_model, browser, tmp_path, screenshots):
    """Two lines record into one database: /?line=L1 shows, counts, polls, exports and sums today only L1's
    parts, its filters keep to L1, and so do an inspection opened from it ("Next unreviewed", the way
    back)."""
    from rd2t.service.settings import StationSettings
    from tests.test_service import running_server

    errors: list = []
    with running_server(StationSettings(trained_cli_model, images=tmp_path / "st", threads=1)) as client:

        def send(seed: int, line: str) -> dict:
            r = client.post("/v1/inspect", files={"file": ("p.png", png(seed))}, data={"line": line})
            return r.json()

        for seed, line in ((101, "L1"), (102, "L2"), (103, "L1"), (104, "L2"), (105, "L2")):
            send(seed, line)
        page = new_page(browser, errors)
        page.goto(f"{client.base_url}/?line=L1")
        sync_api.expect(page.locator("#scope")).to_contain_text("line L1")
        sync_api.expect(page.locator(".card")).to_have_count(2)
        sync_api.expect(page.locator("[data-count=all]")).to_have_text("2")
        sync_api.expect(page.locator("#today")).to_contain_text("Today: 2 inspected")
        assert "line=L1" in page.locator("#export-csv").get_attribute("href")
        assert "line=L1" in page.locator("a[data-filter=defect]").get_attribute("href")
        send(106, "L2")  # another line's part does not appear; this line's does, without a reload
        send(107, "L1")
        sync_api.expect(page.locator(".card")).to_have_count(3)
        sync_api.expect(page.locator("[data-count=all]")).to_have_text("3")
        page.screenshot(path=str(screenshots / "live-one-line.png"), full_page=True, animations="disabled")
        assert page.locator(".card[data-id='7']").get_attribute("href") == "/inspections/7?line=L1"  # live
        send(108, "L2")  # the newest unreviewed part overall is now another line's
        page.click(".card[data-id='3']")
        sync_api.expect(page).to_have_url(f"{client.base_url}/inspections/3?line=L1")
        assert page.locator("#next-unreviewed").get_attribute("href") == "/inspections/7?line=L1"
        sync_api.expect(page.locator("#next-unreviewed")).to_contain_text("Next unreviewed of L1")
        assert page.locator("#back-live").get_attribute("href") == "/?line=L1"
        page.goto(f"{client.base_url}/inspections/3")  # opened from the whole view: the newest of any line
        assert page.locator("#next-unreviewed").get_attribute("href") == "/inspections/8"
        page.goto(f"{client.base_url}/")
        sync_api.expect(page.locator(".card")).to_have_count(8)
        page.close()
    assert not errors, errors
