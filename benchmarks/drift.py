"""Does the station's score-drift warning (rd2t.service.drift) stay quiet on an unchanged line and speak
when the line changes? On a trained model and a real set's test images, through the station's own path
(Predictor.predict_one, then drift.score_level on the scores):

- `as trained`: the good test images as they are (another day's parts, no change): should read ~50;
- `all test images`: good and defective together, unchanged (a line with many defects, none reviewed);
- `light 80 %`, `light 120 %`: the good test images with the light dimmed or raised;
- `focus lost`: blurred (Gaussian, radius 0.4 % of the longest side);
- `camera knocked`: rotated by 2 degrees and 6 % closer (centre crop, resized back).

For each: the parts, their median score, its percentile among the model's held-out good scores, the
warning the station would give, and the share above the stored threshold (for good images: the false
alarms the change causes); also the percentiles of the scores' 75th and 90th percentiles (the alternatives
of docs/measured/drift/rule_written_before.txt) and the scores themselves.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/drift.py runs/bottle/model.pt ../shared/data/mvtec_ad \
        --category bottle --json docs/measured/drift/bottle.json
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from rd2t.data import load_image, mvtec
from rd2t.inference.predictor import Predictor
from rd2t.service.drift import level_state, percentile_among


def knocked(im: Image.Image) -> Image.Image:
    w, h = im.size
    r = im.rotate(2, resample=Image.Resampling.BILINEAR)
    dx, dy = round(0.03 * w), round(0.03 * h)
    return r.crop((dx, dy, w - dx, h - dy)).resize((w, h), Image.Resampling.BILINEAR)


QUANTILES = (50, 75, 90)  # of the recent scores, each placed among the held-out good scores
CHANGES: dict[str, Callable[[Image.Image], Image.Image]] = {
    "as trained": lambda im: im,
    "light 80 %": lambda im: ImageEnhance.Brightness(im).enhance(0.8),
    "light 120 %": lambda im: ImageEnhance.Brightness(im).enhance(1.2),
    "focus lost": lambda im: im.filter(ImageFilter.GaussianBlur(0.004 * max(im.size))),
    "camera knocked": knocked,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("root")
    ap.add_argument("--category", default=".")
    ap.add_argument("--json")
    a = ap.parse_args()
    t0 = time.time()
    predictor = Predictor.open(a.model)
    cal = predictor.calibration
    reference, threshold = np.sort(np.asarray(cal.scores, dtype=float)), cal.threshold
    test = mvtec(a.root, a.category).test
    images = {s.path: load_image(s.path) for s in test}
    good = [s.path for s in test if not s.label]

    def score(paths, change) -> np.ndarray:
        return np.array([predictor.predict_one(change(images[p]).convert("RGB")).score for p in paths])

    rows = {}
    runs = [(name, good, change) for name, change in CHANGES.items()]
    runs.insert(1, ("all test images", [s.path for s in test], CHANGES["as trained"]))
    for name, paths, change in runs:
        s = score(paths, change)
        # the percentile of each quantile of the scores among the held-out ones (q50 is the station's)
        quantiles = {f"q{q}": percentile_among(float(np.quantile(s, q / 100)), reference) for q in QUANTILES}
        pct = quantiles["q50"]
        state = level_state(pct)  # the station's rule, without its 30-part minimum (bottle has 20 good)
        rows[name] = {
            "parts": len(s),
            "median": float(np.median(s)),
            "percentile": pct,
            "warning": state,
            "above_threshold": float(np.mean(s > threshold)),
            "quantile_percentiles": quantiles,
            "scores": s.tolist(),
        }
        print(f"{name:16s} {len(s):4d} parts  median {np.median(s):.4g}  percentile {pct:5.1f}  {state:6s}  "
              f"above threshold {100 * rows[name]['above_threshold']:5.1f} %  "
              + "  ".join(f"{k} {v:5.1f}" for k, v in quantiles.items())
              + f"  ({time.time() - t0:.0f} s)", flush=True)  # fmt: skip
    med = np.median(reference)
    print(f"{len(reference)} held-out good images, median {med:.4g}, threshold {threshold:.4g}")
    if a.json:
        with open(a.json, "w") as f:
            out = {"model": a.model, "root": a.root, "category": a.category, "held_out": len(reference)}
            json.dump({**out, "threshold": threshold, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
