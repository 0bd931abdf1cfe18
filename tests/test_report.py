"""Heat-map pictures and the HTML report, on small generated images, maps and masks."""

from __future__ import annotations

import base64
import io
import math
import re
from html.parser import HTMLParser
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from rd2t.evaluation.metrics import Evaluator, image_auroc, pro_curve
from rd2t.report import (
    ImageResult,
    binary_mask,
    colorize,
    contour,
    default_map_range,
    overlay,
    resize_map,
    write_report,
)
from rd2t.report.heatmap import COLORMAP

# --------------------------------------------------------------------------------------------
# Heat-map pictures
# --------------------------------------------------------------------------------------------


def _lut_index(colours: np.ndarray) -> np.ndarray:
    """Position of each colour on the colormap (nearest of its 256 entries)."""
    lut = np.round(matplotlib.colormaps[COLORMAP](np.linspace(0, 1, 256))[:, :3] * 255)
    d = ((colours.reshape(-1, 1, 3).astype(float) - lut[None]) ** 2).sum(-1)
    return d.argmin(1)


def test_colorize_is_monotonic_on_the_colormap_and_clipped():
    ramp = np.linspace(-1.0, 2.0, 1201, dtype=np.float32)[None, :].repeat(3, 0)
    rgb = colorize(ramp, low=0.0, high=1.0)
    assert rgb.shape == (3, 1201, 3) and rgb.dtype == np.uint8
    idx = _lut_index(rgb[0])
    assert np.all(np.diff(idx) >= 0)
    # Clipped: everything <= low is the first colour, everything >= high the last.
    assert np.all(idx[ramp[0] <= 0.0] == 0) and np.all(idx[ramp[0] >= 1.0] == 255)
    assert len(np.unique(idx)) > 200  # the scale in between is really used


def test_colorize_survives_a_flat_scale_and_nan():
    amap = np.array([[0.5, 0.5], [np.nan, 0.7]], np.float32)
    rgb = colorize(amap, 0.5, 0.5)
    idx = _lut_index(rgb).reshape(2, 2)
    assert idx[0, 0] == 0 and idx[1, 0] == 0 and idx[1, 1] == 255


def test_overlay_keeps_the_image_where_low_and_turns_hot_where_high():
    rng = np.random.default_rng(0)
    grey = rng.integers(90, 170, (96, 128, 1), dtype=np.uint8)
    pixels = np.repeat(grey, 3, axis=-1)  # textured grey part, not square
    image = Image.fromarray(pixels)
    amap = np.zeros((64, 64), np.float32)
    amap[24:40, 24:40] = 1.0  # hot square in the middle (map at the model's resolution)
    out = np.asarray(overlay(image, amap, low=0.0, high=1.0, alpha=0.5)).astype(int)
    assert out.shape == pixels.shape
    # Far from the hot square the map is at `low`: the image is untouched.
    np.testing.assert_array_equal(out[:20, :30], pixels[:20, :30])
    np.testing.assert_array_equal(out[-20:, -30:], pixels[-20:, -30:])
    # In the middle of the square: red dominates and the picture changed.
    centre = out[44:52, 60:68].reshape(-1, 3)
    assert np.all(centre[:, 0] > centre[:, 1] + 30) and np.all(centre[:, 0] > centre[:, 2] + 30)
    # The image still shows through (alpha 0.5): the texture survives in the hot area.
    assert centre[:, 1].std() > 5


def test_overlay_blends_more_for_higher_values():
    image = Image.new("RGB", (32, 32), (128, 128, 128))
    changes = []
    for value in (0.0, 0.25, 0.5, 0.75, 1.0):
        out = np.asarray(overlay(image, np.full((8, 8), value, np.float32), 0.0, 1.0)).astype(int)
        changes.append(np.abs(out - 128).sum())
    assert changes[0] == 0 and all(a < b for a, b in zip(changes, changes[1:], strict=False))


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Mask pixels with an 8-neighbour outside the mask (or on the image edge), computed directly."""
    padded = np.pad(mask, 1, constant_values=False)
    h, w = mask.shape
    all_in = np.ones_like(mask)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            all_in &= padded[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
    return mask & ~all_in


def test_contour_draws_only_on_the_mask_boundary():
    image = Image.new("RGB", (64, 48), (10, 20, 30))
    yy, xx = np.mgrid[0:48, 0:64]
    mask = (yy - 24) ** 2 + (xx - 30) ** 2 <= 12**2
    out = np.asarray(contour(image, mask, color=(0, 255, 0)))
    changed = np.any(out != (10, 20, 30), axis=-1)
    np.testing.assert_array_equal(changed, _boundary(mask))
    assert np.all(out[changed] == (0, 255, 0))


def test_contour_resizes_the_mask_and_keeps_thin_defects():
    image = Image.new("RGB", (64, 64), (0, 0, 0))
    mask = np.zeros((512, 512), bool)
    mask[200:202, 100:400] = True  # a 2-px scratch at 8x the thumbnail's resolution
    out = np.asarray(contour(image, mask, color=(255, 0, 255)))
    drawn = np.all(out == (255, 0, 255), axis=-1)
    assert drawn.sum() >= 30  # still visible after shrinking
    rows, cols = np.nonzero(drawn)
    assert rows.min() >= 24 and rows.max() <= 26 and cols.min() >= 12 and cols.max() <= 50


def test_binary_mask_is_map_above_threshold():
    amap = np.array([[0.1, 0.5], [0.50001, 0.9]], np.float32)
    np.testing.assert_array_equal(binary_mask(amap, 0.5), [[False, False], [True, True]])


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


class _Tags(HTMLParser):
    """Collects every tag's attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def _parse(path: Path) -> tuple[str, list[tuple[str, dict[str, str | None]]]]:
    text = path.read_text(encoding="utf-8")
    parser = _Tags()
    parser.feed(text)
    return text, parser.tags


def _assert_self_contained(text: str, tags) -> list[Image.Image]:
    """No external reference anywhere; every <img> a data: URI that decodes as PNG. Returns them."""
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:|//)""", text, re.I)
    assert "<script" not in text.lower() and "<link" not in text.lower()
    assert not re.search(r"url\(\s*['\"]?\s*(https?:|//)", text, re.I)
    images = []
    for tag, attrs in tags:
        if tag != "img":
            continue
        src = attrs.get("src") or ""
        assert src.startswith("data:image/png;base64,"), src[:40]
        data = base64.b64decode(src.split(",", 1)[1], validate=True)
        with Image.open(io.BytesIO(data)) as im:
            assert im.format == "PNG"
            im.load()
            images.append(im.copy())
    return images


def _part(rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    grey = 140 + 30 * np.sin(xx / 3.0) + rng.normal(0, 4, (size, size))
    return np.clip(np.stack([grey, grey * 0.97, grey * 0.92], -1), 0, 255).astype(np.uint8)


def _dataset(
    tmp_path: Path,
    n_good: int = 5,
    per_type: int = 3,
    size: int = 96,
    map_size: int = 32,
    with_pro: bool = True,
):
    """Good parts and parts with a painted defect, maps = blurred defect + noise, real metrics."""
    rng = np.random.default_rng(1)
    results, ev, masks, maps = [], Evaluator(), [], []
    plan = [("good", 0, n_good), ("stain", 1, per_type), ("scratch", 1, per_type)]
    for kind, label, n in plan:
        folder = tmp_path / "images" / kind
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = _part(rng, size)
            mask = np.zeros((size, size), bool)
            if label:
                cy, cx = rng.integers(size // 4, 3 * size // 4, 2)
                if kind == "stain":
                    yy, xx = np.mgrid[0:size, 0:size]
                    mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= (size // 10) ** 2
                else:
                    mask[cy : cy + 2, cx - size // 6 : cx + size // 6] = True
                img[mask] = (200, 40, 30)
            small = np.asarray(Image.fromarray(mask.astype(np.float32)).resize((map_size, map_size)))
            amap = (
                0.1
                + 0.02 * rng.random((map_size, map_size))
                + (0.2 + 0.1 * i)
                * ndimage.gaussian_filter(small, 1.5)
                / max(ndimage.gaussian_filter(small, 1.5).max(), 1e-6)
            ).astype(np.float32)
            path = folder / f"{i:03d}.png"
            Image.fromarray(img).save(path)
            score = float(amap.max())
            results.append(ImageResult(path, label, kind, score, amap, mask))
            full = resize_map(amap, (size, size))
            ev.add(label, score, full, mask, kind)
            masks.append(mask)
            maps.append(full)
    return results, ev, {"pro": pro_curve(masks, maps)} if with_pro else {}


def test_report_is_self_contained_with_metrics_threshold_types_and_png_gallery(tmp_path):
    results, ev, curves = _dataset(tmp_path)
    metrics = ev.compute()
    threshold = 0.21
    info = {
        "preset": "fast",
        "teachers": ["lite0", "lite1"],
        "epochs": 3,
        "checkpoint": "runs/x/model.safetensors",
    }
    out = write_report(
        tmp_path / "out" / "report.html",
        results,
        metrics=metrics,
        per_defect=ev.compute_by_defect(),
        threshold=threshold,
        curves=curves,
        title="Unit <test> report",
        info=info,
    )
    assert out == tmp_path / "out" / "report.html" and out.is_file()
    text, tags = _parse(out)
    images = _assert_self_contained(text, tags)
    # 3 plots + colour bars + 3 panels per card: far more than the plots alone.
    assert len(images) > 30
    assert all(max(im.size) <= 1000 for im in images)
    gallery = [im for im in images if im.size[0] <= 256 and im.size[1] <= 256 and im.size[1] > 20]
    assert len(gallery) >= 3 * 4

    for key in ("image_auroc", "pixel_auroc", "au_pro", "image_f1_max", "pixel_ap"):
        assert not math.isnan(metrics[key])
        assert f"{metrics[key]:.4f}" in text, key
    for name in ("Image AUROC", "Pixel AUROC", "AU-PRO", "F1-max", "Pixel AP"):
        assert name in text
    assert "0.21" in text and "threshold" in text.lower()
    for defect in ("stain", "scratch", "good"):
        assert f">{defect}<" in text
    for value in ("lite0, lite1", "runs/x/model.safetensors", "fast"):
        assert value in text
    assert "Unit &lt;test&gt; report" in text  # escaped, not markup
    assert "image-level metrics only" not in text
    # Counts at the threshold agree with the data.
    alarms = sum(r.label == 0 and r.score > threshold for r in results)
    misses = sum(r.label == 1 and r.score <= threshold for r in results)
    assert f"<b>{alarms}</b> false alarm" in text and f"<b>{misses}</b> miss" in text
    # The lowest-scoring defective image is in the hardest-cases gallery.
    worst = min((r for r in results if r.label == 1), key=lambda r: r.score)
    assert f"{worst.path.parent.name}/{worst.path.name}" in text


def test_nan_pixel_metrics_give_the_image_level_only_note(tmp_path):
    results, ev, _ = _dataset(tmp_path, n_good=3, per_type=2)
    results = [ImageResult(r.path, r.label, r.defect_type, r.score, r.anomaly_map, None) for r in results]
    metrics = {
        "image_auroc": 0.875,
        "image_f1_max": 0.8,
        "pixel_auroc": math.nan,
        "au_pro": math.nan,
        "pixel_ap": math.nan,
    }
    out = write_report(tmp_path / "r.html", results, metrics=metrics, threshold=0.2)
    text, tags = _parse(out)
    _assert_self_contained(text, tags)
    assert "image-level metrics only" in text
    assert "0.8750" in text and "—" in text
    assert "No PRO curve" in text  # no masks, so no pixel curve
    assert "ground-truth defect" not in text  # no mask outline legend without masks


def test_unknown_labels_give_a_prediction_gallery_sorted_by_score(tmp_path):
    results, _, _ = _dataset(tmp_path, n_good=3, per_type=2)
    plain = [ImageResult(r.path, None, "", r.score, r.anomaly_map, None) for r in results]
    threshold = 0.25
    out = write_report(tmp_path / "pred.html", plain, metrics={}, threshold=threshold, max_gallery=5)
    text, tags = _parse(out)
    _assert_self_contained(text, tags)
    assert "<h2>Predictions</h2>" in text
    assert "<h2>Curves</h2>" not in text and "<h2>Hardest cases</h2>" not in text
    # Cards in descending score order, max_gallery of them.
    names = re.findall(r'<div class="name" title="[^"]*">([^<]+)</div>', text)
    expected = [f"{r.path.parent.name}/{r.path.name}" for r in sorted(plain, key=lambda r: -r.score)[:5]]
    assert names == expected
    flagged = sum(r.score > threshold for r in sorted(plain, key=lambda r: -r.score)[:5])
    gallery = text[text.index("<h2>Predictions</h2>") : text.index("<h2>All images</h2>")]
    assert gallery.count('class="badge ng"') == flagged
    # Every image is listed in the table (open: it is what a prediction run is for), with its decision.
    table = text[text.index("<h2>All images</h2>") :]
    assert "<details open>" in table and f"All {len(plain)} images" in table
    assert all(str(r.path) in table for r in plain)
    assert table.count('class="badge ng"') == sum(r.score > threshold for r in plain)


def test_decisions_given_by_the_caller_win_and_missing_images_do_not_break_the_report(tmp_path):
    amap = np.zeros((16, 16), np.float32)
    amap[4:8, 4:8] = 1.0
    results = [
        ImageResult(tmp_path / "gone" / "a.png", 1, "crack", 1.0, amap, None, decision=False),
        ImageResult(tmp_path / "gone" / "b.png", 0, "good", 0.0, np.zeros((16, 16), np.float32), None),
    ]
    out = write_report(tmp_path / "r.html", results, metrics={"image_auroc": 1.0}, threshold=0.5)
    text, tags = _parse(out)
    _assert_self_contained(text, tags)
    assert "image file could not be read" in text
    assert "missed defect" in text  # the caller's decision (False) is kept even though 1.0 > 0.5


def test_default_map_range_is_one_scale_from_good_images_and_threshold():
    rng = np.random.default_rng(0)
    good = [
        ImageResult(
            Path(f"g{i}.png"), 0, "good", 0.0, (0.1 + 0.01 * rng.random((8, 8))).astype(np.float32), None
        )
        for i in range(4)
    ]
    for r in good:
        r.score = float(r.anomaly_map.max())
    hot = np.full((8, 8), 0.1, np.float32)
    hot[2, 2] = 0.9
    bad = ImageResult(Path("b.png"), 1, "stain", 0.9, hot, None)
    low, high = default_map_range(good + [bad], threshold=0.3)
    assert low == pytest.approx(np.median(np.concatenate([r.anomaly_map.ravel() for r in good])))
    assert (0.3 - low) / (high - low) == pytest.approx(0.75)  # threshold at 3/4 of the scale
    # Without a threshold: the 99th percentile of the maps' maxima.
    low2, high2 = default_map_range(good + [bad])
    assert low2 == low and high2 == pytest.approx(
        np.percentile([r.anomaly_map.max() for r in good + [bad]], 99)
    )
    # Scores not on the maps' scale (e.g. normalised): the threshold is not used for the colours.
    shifted = [
        ImageResult(r.path, r.label, r.defect_type, r.score + 10, r.anomaly_map, None) for r in good + [bad]
    ]
    assert default_map_range(shifted, threshold=10.3) == (low2, high2)


def test_a_100_image_report_stays_small(tmp_path):
    results, _, _ = _dataset(tmp_path, n_good=34, per_type=33, size=256, map_size=64, with_pro=False)
    assert len(results) == 100
    auroc = image_auroc([r.label for r in results], [r.score for r in results])
    out = write_report(tmp_path / "big.html", results, metrics={"image_auroc": auroc}, threshold=0.25)
    assert out.stat().st_size < 15e6
    text, tags = _parse(out)
    assert len(_assert_self_contained(text, tags)) >= 3 * (12 + 3 * 4)
