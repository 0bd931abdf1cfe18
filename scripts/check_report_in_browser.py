#!/usr/bin/env python3
"""Render an rd2t HTML report in headless Chromium and check that the screenshot is not blank.

    .venv/bin/python scripts/check_report_in_browser.py REPORT.html OUT.png
    .venv/bin/python scripts/check_report_in_browser.py --demo DIR OUT.png  # DIR/demo_report.html first

The demo report is built from synthetic parts (painted defects, blurred-blob heat maps) with the real
metrics code, so the check needs no dataset and no trained model. Needs Debian's ``chromium`` package
(``apt-get install -y chromium``). Exit status 0 = rendered and not blank, 1 = failed (reason on stderr).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

WINDOW = (1400, 3000)
# A page of only text and flat boxes has a few hundred colours (anti-aliasing); rendered photos and
# heat maps bring thousands. Fewer than this means the images did not render.
MIN_COLOURS = 1000


def screenshot(report: Path, out: Path, timeout: float = 120.0) -> None:
    """Render ``report`` to ``out`` with headless Chromium (no network, throw-away profile)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        raise SystemExit("chromium not found: apt-get install -y chromium")
    out.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        cmd = [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            # Containers often have a tiny /dev/shm, where Chromium's renderer would crash.
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            f"--screenshot={out.resolve()}",
            f"--window-size={WINDOW[0]},{WINDOW[1]}",
            report.resolve().as_uri(),
        ]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise SystemExit(f"chromium did not finish within {timeout:.0f} s") from None
    if proc.returncode != 0 or not out.is_file():
        raise SystemExit(f"chromium failed (exit {proc.returncode}), no screenshot:\n{proc.stderr[-2000:]}")


def check_not_blank(png: Path) -> str:
    """Raise SystemExit unless the screenshot has the window's size and real content; return a summary."""
    with Image.open(png) as im:
        rgb = np.asarray(im.convert("RGB"))
    if rgb.shape[1] != WINDOW[0] or rgb.shape[0] < 100:
        raise SystemExit(f"{png}: unexpected screenshot size {rgb.shape[1]}x{rgb.shape[0]}")
    std = float(rgb.std())
    colours = len(np.unique(rgb.reshape(-1, 3)[::7], axis=0))
    if std < 5.0:
        raise SystemExit(f"{png}: blank screenshot (pixel std {std:.1f})")
    if colours < MIN_COLOURS:
        raise SystemExit(f"{png}: only {colours} colours: text rendered but no images")
    return f"{rgb.shape[1]}x{rgb.shape[0]}, pixel std {std:.1f}, {colours} colours"


# --------------------------------------------------------------------------------------------
# Demo report from synthetic parts
# --------------------------------------------------------------------------------------------


def _part(rng: np.random.Generator, size: int) -> np.ndarray:
    """A machined round part (brushed disk with a bore) on a dark conveyor, RGB uint8."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    r = np.hypot(yy, xx)
    brushed = 0.62 + 0.05 * np.sin(2 * np.pi * (r * 60 + rng.uniform(0, 1))) + rng.normal(0, 0.02, r.shape)
    grey = np.where((r < 0.4) & (r > 0.12), brushed, 0.12 + rng.normal(0, 0.015, r.shape))
    grey = np.where((r <= 0.12) & (r > 0.1), 0.35, grey)
    rgb = grey[..., None] * np.array([1.0, 0.97, 0.92], np.float32)
    return (np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def _defect(rng: np.random.Generator, img: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    size = img.shape[0]
    yy, xx = np.mgrid[0:size, 0:size]
    ang = rng.uniform(0, 2 * np.pi)
    rad = rng.uniform(0.2, 0.33) * size
    cy, cx = size / 2 + rad * np.sin(ang), size / 2 + rad * np.cos(ang)
    out = img.astype(np.float32)
    if kind == "scratch":
        theta = rng.uniform(0, np.pi)
        along = (yy - cy) * np.sin(theta) + (xx - cx) * np.cos(theta)
        across = (yy - cy) * np.cos(theta) - (xx - cx) * np.sin(theta)
        mask = (np.abs(across) < 3) & (np.abs(along) < size * rng.uniform(0.06, 0.14))
        out[mask] *= 0.45
    elif kind == "stain":
        mask = (yy - cy) ** 2 / rng.uniform(0.6, 1.6) + (xx - cx) ** 2 <= (
            size * rng.uniform(0.04, 0.08)
        ) ** 2
        out[mask] = out[mask] * 0.5 + np.array([120, 70, 20], np.float32)
    else:  # dent: a darker, slightly larger round blemish
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= (size * rng.uniform(0.035, 0.07)) ** 2
        out[mask] *= 0.75
    return np.clip(out, 0, 255).astype(np.uint8), mask


def _map_for(rng: np.random.Generator, mask: np.ndarray, strength: float, map_size: int) -> np.ndarray:
    """A heat map like a distillation model's: blurred response on the defect, a weak one along the
    part's edges (where real models are least sure) and smooth noise everywhere."""
    from scipy import ndimage

    small = np.asarray(Image.fromarray(mask.astype(np.float32)).resize((map_size, map_size), Image.BILINEAR))
    yy, xx = np.mgrid[0:map_size, 0:map_size].astype(np.float32) / map_size - 0.5
    r = np.hypot(yy, xx)
    edges = np.exp(-(((r - 0.4) / 0.02) ** 2)) + np.exp(-(((r - 0.11) / 0.015) ** 2))
    noise = ndimage.gaussian_filter(rng.normal(0, 1, (map_size, map_size)), 4)
    noise = noise / noise.std()
    response = ndimage.gaussian_filter(small, 4)
    response = response / response.max() if response.max() > 0 else response
    base = 0.08 + 0.012 * noise + 0.05 * edges * rng.uniform(0.6, 1.2)
    return (base + strength * response).astype(np.float32)


def write_demo(folder: Path) -> Path:
    """A 100-image evaluation report (40 good, 3 defect types x 20) with metrics and curves."""
    from rd2t.evaluation.metrics import Evaluator, pro_curve, roc_curve_points
    from rd2t.report import ImageResult, resize_map, write_report

    rng = np.random.default_rng(7)
    size, map_size = 512, 256
    img_dir = folder / "images"
    results, ev, masks_full, maps_full = [], Evaluator(), [], []
    plan = [("good", 0, 40)] + [(k, 1, 20) for k in ("dent", "scratch", "stain")]
    for kind, label, n in plan:
        (img_dir / kind).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = _part(rng, size)
            mask = np.zeros((size, size), bool)
            if label:
                img, mask = _defect(rng, img, kind)
                strength = rng.uniform(0.1, 0.5)  # some defects respond weakly: misses
            else:
                # A few good parts get a spurious blob: false alarms.
                strength = rng.uniform(0.15, 0.3) if rng.random() < 0.08 else 0.0
                fake = np.zeros((size, size), bool)
                y0, x0 = rng.integers(130, 350, 2)
                fake[y0 : y0 + 30, x0 : x0 + 30] = True
            amap = _map_for(rng, mask if label else fake, strength, map_size)
            path = img_dir / kind / f"{i:03d}.png"
            Image.fromarray(img).save(path)
            score = float(amap.max())
            results.append(ImageResult(path, label, kind, score, amap, mask))
            full = resize_map(amap, (size, size))
            ev.add(label, score, full, mask, kind)
            masks_full.append(mask)
            maps_full.append(full)
    good_scores = np.array([r.score for r in results if r.label == 0])
    threshold = float(np.quantile(good_scores, 0.95))
    metrics = ev.compute()
    labels = [r.label for r in results]
    curves = {
        "roc": roc_curve_points(labels, [r.score for r in results]),
        "pro": pro_curve(masks_full, maps_full),
    }
    info = {
        "preset": "balanced",
        "teachers": ["tf_efficientnet_lite0", "tf_efficientnet_lite1"],
        "epochs": 200,
        "image size": "256 x 256",
        "training time": "12 min 41 s",
        "checkpoint": "runs/demo/model.safetensors",
        "threshold rule": "quantile:0.95 of held-out good images",
    }
    return write_report(
        folder / "demo_report.html",
        results,
        metrics=metrics,
        per_defect=ev.compute_by_defect(),
        threshold=threshold,
        curves=curves,
        title="Demo part — synthetic defects",
        info=info,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("report", type=Path, help="the HTML report (with --demo: a folder to write one into)")
    parser.add_argument("out", type=Path, help="screenshot PNG to write")
    parser.add_argument(
        "--demo", action="store_true", help="first write a demo report into REPORT (a folder)"
    )
    args = parser.parse_args(argv)
    report = write_demo(args.report) if args.demo else args.report
    if not report.is_file():
        print(f"{report}: report not found", file=sys.stderr)
        return 1
    try:
        screenshot(report, args.out)
        summary = check_not_blank(args.out)
    except SystemExit as e:
        print(e, file=sys.stderr)
        return 1
    size_mb = report.stat().st_size / 1e6
    print(f"ok: {report} ({size_mb:.1f} MB) rendered to {args.out}: {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
