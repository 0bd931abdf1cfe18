"""Score drift: the station tells when its parts no longer score like the good images its model was
calibrated on (lighting, camera, product changed), per line, through a real uvicorn on SQLite and
PostgreSQL, and on the live view and Model page in Chromium."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the station needs the [station] extra")
pytest.importorskip("httpx")

from rd2t.service.drift import HIGH, LOW, MIN_PARTS, MIN_REFERENCE, score_level  # noqa: E402
from tests.conftest import texture  # noqa: E402
from tests.test_service import postgres_database, running_server  # noqa: E402


def test_score_level_says_where_the_typical_part_falls_among_the_good_images():
    reference = list(np.linspace(1.0, 2.0, 41))  # held-out good scores; median 1.5
    rng = np.random.default_rng(0)
    same = list(rng.uniform(1.0, 2.0, 200))
    level = score_level(same, reference, threshold=2.1)
    assert level["state"] == "ok" and abs(level["percentile"] - 50) < 10
    assert level["above_threshold"] == 0.0
    # a third of the parts far above (defects a line lets through unreviewed) does not move the median much
    with_defects = same[:140] + [9.0] * 60
    assert score_level(with_defects, reference)["state"] == "ok"
    higher = score_level([s + 0.45 for s in same], reference, threshold=2.1)
    assert higher["state"] == "higher" and higher["percentile"] >= HIGH
    assert 0.2 < higher["above_threshold"] < 0.5
    lower = score_level([s - 0.5 for s in same], reference)
    assert lower["state"] == "lower" and lower["percentile"] <= LOW
    assert score_level(same[: MIN_PARTS - 1], reference)["state"] == "too_few"
    assert score_level(same, reference[: MIN_REFERENCE - 1])["state"] == "no_reference"
    assert score_level([1.5] * 40, [1.5] * 30)["percentile"] == 50.0  # ties count half


@pytest.fixture(scope="module")
def model_with_reference(tmp_path_factory) -> Path:
    """A small model whose calibration holds 20 held-out good scores (40 images, --val-fraction 0.5)."""
    from rd2t.cli import main

    root = tmp_path_factory.mktemp("drift") / "stripes"
    (root / "train/good").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(40):
        Image.fromarray(texture(rng, 96)).save(root / f"train/good/{i:03d}.png")
    out = root.parent / "run"
    args = ["train", str(root), "--out", str(out), "--epochs", "1", "--image-size", "64"]
    assert main([*args, "--val-fraction", "0.5", "--batch-size", "4", "--device", "cpu"]) == 0
    return out / "model.pt"


def part(seed: int, gain: float = 1.0) -> bytes:
    """A good part; `gain` < 1: the same part under dimmer light."""
    img = texture(np.random.default_rng(seed), 96).astype(np.float32) * gain
    buf = io.BytesIO()
    Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def send(client, seed: int, line: str, gain: float = 1.0) -> dict:
    r = client.post("/v1/inspect", files={"file": ("p.png", part(seed, gain))}, data={"line": line})
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_station_warns_when_one_lines_parts_score_higher_than_the_good_images(
    backend, model_with_reference, tmp_path
):
    """Line L1 as at training, line L2 under light at 70 %: /v1/drift says L2 has moved and L1 has not,
    counts only this window and no part reviewed as a defect, and /metrics carries the level."""
    from rd2t.service.settings import StationSettings

    def run(db_url):
        settings = StationSettings(model_with_reference, db=db_url, images=tmp_path / "st", threads=1)
        with running_server(settings) as client:
            for i in range(MIN_PARTS):
                send(client, 1000 + i, "L1")
            assert client.get("/v1/drift", params={"line": "L2"}).json()["state"] == "too_few"
            dim = [send(client, 2000 + i, "L2", gain=0.7) for i in range(MIN_PARTS)]

            l1 = client.get("/v1/drift", params={"line": "L1"}).json()
            assert l1["state"] == "ok" and LOW < l1["percentile"] < HIGH, l1
            assert l1["parts"] == MIN_PARTS and l1["reference"]["images"] == MIN_REFERENCE
            l2 = client.get("/v1/drift", params={"line": "L2"}).json()
            assert l2["state"] == "higher" and l2["percentile"] >= HIGH, l2
            assert l2["median"] > l1["median"]
            both = client.get("/v1/drift", params={"last": MIN_PARTS}).json()  # the newest 30: L2's
            assert both["state"] == "higher" and both["since"] >= l1["until"]
            r = client.post(f"/v1/inspections/{dim[0]['id']}/review", json={"state": "confirmed_defect"})
            assert r.status_code == 200
            after = client.get("/v1/drift", params={"line": "L2"}).json()
            assert after["parts"] == MIN_PARTS - 1 and after["state"] == "too_few"  # a defect is no level
            assert client.get("/v1/drift", params={"last": 5}).status_code == 422  # under MIN_PARTS
            metrics = client.get("/metrics").text
            line = next(x for x in metrics.splitlines() if x.startswith("rd2t_score_level_percentile "))
            assert float(line.split()[1]) == client.get("/v1/drift").json()["percentile"]

    if backend == "sqlite":
        run(None)
    else:
        with postgres_database() as url:
            run(url)


def test_live_view_and_model_page_show_the_drift_of_their_line(model_with_reference, tmp_path, screenshots):
    """In Chromium: /?line=L2 (dimmed light) warns that parts score higher; /?line=L1 does not; the Model
    page gives the figures."""
    sync_api = pytest.importorskip("playwright.sync_api")
    from rd2t.service.settings import StationSettings
    from tests.test_review_page import CHROMIUM, need_chromium

    need_chromium()
    settings = StationSettings(model_with_reference, images=tmp_path / "st", threads=1)
    with running_server(settings) as client, sync_api.sync_playwright() as p:
        for i in range(MIN_PARTS):
            send(client, 1000 + i, "L1")
            send(client, 2000 + i, "L2", gain=0.7)
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        errors: list = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"{client.base_url}/?line=L2")
        warning = page.locator("#drift-warning")
        sync_api.expect(warning).to_be_visible()
        sync_api.expect(warning).to_contain_text("Parts score higher than the good images")
        sync_api.expect(warning).to_contain_text(f"the median of the last {MIN_PARTS}")
        page.screenshot(path=str(screenshots / "live-drift.png"), full_page=True, animations="disabled")
        page.goto(f"{client.base_url}/?line=L1")
        sync_api.expect(page.locator(".card")).to_have_count(MIN_PARTS)
        page.wait_for_load_state("networkidle")
        assert page.locator("#drift-warning").is_hidden()
        page.goto(f"{client.base_url}/model")
        panel = page.locator("#drift")
        # the whole station: its newest 60 parts, half of them dim, so the median sits between the two
        sync_api.expect(panel).to_contain_text(f"{2 * MIN_PARTS} (those reviewed as defects left out)")
        sync_api.expect(panel).to_contain_text(f"{MIN_REFERENCE} held-out good images")
        page.screenshot(path=str(screenshots / "model-drift.png"), full_page=True, animations="disabled")
        browser.close()
    assert not errors, errors
