"""Issue 14, round 5: `bank_stride=0`, the bank's stride chosen on pseudo-defects, scored on one plain model.

Round 4 found that the finer bank (stride 4) helps bottle, hazelnut_toy and the generated sets, the coarse
one (stride 8) magnetic tile, and that the pseudo-defect criterion preferred the right one on both sets it
was run on. `bank_stride=0` makes training fit both and keep the one whose map tells the painted images
best (training.loop.fit_memory_bank). This script asks whether that choice holds on every set, for both
ways of weighing the terms (`bank_weight` -1: share chosen on the painted images; 0.5: the plain sum):

- it fits a bank at each stride onto one trained plain model, exactly as training does (fit_memory_bank,
  same training and held-out files, same seed), z-scores the terms, paints the same pseudo-defects;
- it computes the criterion table per stride (choose_bank_share) and the choice training would make from it
  (best_share, best_stride: the same functions);
- it scores the test set at the original resolution with rd2t's Evaluator for the plain map (share 0) and,
  per stride, the chosen share and the share 0.5, so the chosen stride can be compared with the other.

Round 11 adds `excess` (docs/measured/round11/rule_written_before.txt): the sum s + k of the max-scaled terms
plus max(0, |s - k| - g), g the held-out good images' mean per-image maximum of |s - k|; and, as a diagnostic
that chooses nothing, each rule's criterion on a fourth painted family, large faint soft-edged brightness
changes (paint_faint).

Round 10 adds two more good-images-only variants per stride: `thr` (each term divided by mean + 3 std of its
held-out per-image maxima) and `maxof` (the max-scaled terms combined by their per-pixel maximum).

Nothing here chooses on the test images; the figures of the stride not chosen are shown to judge the choice.
`benchmarks/memory_bank.py --bank-stride 0` then `rd2t evaluate` is the product's path to the same model.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bank_stride.py runs/bottle/offline_s0/model.pt \
        --root ../shared/data/mvtec_ad --category bottle --json runs/stride/bottle_s0.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from bank_rules import blend, test_figures, test_set, z_terms  # benchmarks/ is on the path when a script runs
from scipy import ndimage

from rd2t.data.pseudo_defects import paint_pseudo_defects
from rd2t.model.checkpoint import Checkpoint
from rd2t.model.memory_bank import good_peaks
from rd2t.model.network import RD2T
from rd2t.training.loop import (
    BANK_STRIDES,
    FEW_CALIBRATION_IMAGES,
    PSEUDO_DEFECTS,
    best_share,
    best_stride,
    choose_bank_share,
    criterion,
    fit_memory_bank,
    load_training_images,
)

FIXED_SHARE = 0.5
NAMES = ("chosen", "fixed", "max", "thr", "maxof", "excess")


def paint_faint(images: torch.Tensor, per_image: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Round 11's diagnostic only: large, soft, faint brightness changes (uneven lighting, a stain), a family
    the painted set lacks (its blobs cover 0.5-6 % with sharp edges and change 15-40 %). Each covers 8-25 %
    of the image, its edge blurred over 3 % of the side, brightness x (1 +- 0.08-0.2); the truth is where the
    change is at least half its full strength. Nothing here is chosen with it; it asks whether its criterion
    would tell the sets where maxof helps from those where it costs."""
    rng = np.random.default_rng(seed + 11)
    good = images.permute(0, 2, 3, 1).numpy().astype(np.float32)
    n, h, w, _ = good.shape
    out, masks = [], []
    for k in range(n * per_image):
        img = good[k % n]
        noise = ndimage.gaussian_filter(
            rng.standard_normal((h, w)), rng.uniform(0.1, 0.2) * min(h, w), mode="wrap"
        )
        blob = (noise > np.quantile(noise, 1 - rng.uniform(0.08, 0.25))).astype(np.float32)
        alpha = ndimage.gaussian_filter(blob, 0.03 * min(h, w))
        alpha = alpha / max(float(alpha.max()), 1e-6)
        gain = rng.choice([-1, 1]) * rng.uniform(0.08, 0.2)
        out.append(np.clip(img * (1 + gain * alpha[..., None]), 0, 255).round().astype(np.uint8))
        masks.append(alpha >= 0.5)
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(np.stack(masks))


def excess(terms: torch.Tensor, g: float) -> torch.Tensor:
    """Round 11's E: s + k + max(0, |s - k| - g) of (N, 2, H, W) scaled terms -> (N, H, W): the sum where the
    terms disagree no more than g, 2 max(s, k) - g where they disagree more."""
    s, k = terms[:, 0], terms[:, 1]
    return s + k + ((s - k).abs() - g).clamp_min(0)


def map_criterion(good: torch.Tensor, bad: torch.Tensor, paint: torch.Tensor) -> float:
    """choose_bank_share's criterion for one already-combined (N, H, W) map: as the student term at share 0,
    the kNN term zero."""

    def one(m: torch.Tensor) -> torch.Tensor:
        return torch.stack([m, torch.zeros_like(m)], 1)

    return choose_bank_share(one(good), one(bad), paint, (0.0,))[2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="a trained plain checkpoint (no bank needed)")
    ap.add_argument("--root", required=True)
    ap.add_argument("--category", default=".")
    ap.add_argument("--share", type=float, default=0.01, help="config.memory_bank")
    ap.add_argument("--json", required=True)
    ap.add_argument("--save-terms", help="also save each stride's z-scored terms here (float16)")
    a = ap.parse_args()
    t0 = time.time()
    ckpt = Checkpoint.load(a.model)
    size = ckpt.config.image_size
    images, _ = load_training_images([Path(p) for p in ckpt.train_files], size, False)
    held_out, _ = load_training_images([Path(p) for p in ckpt.val_files], size, False)
    per_image = max(1, -(-PSEUDO_DEFECTS // len(held_out)))  # as fit_memory_bank
    painted, paint = paint_pseudo_defects(held_out, per_image, seed=ckpt.config.seed)
    faint, faint_paint = paint_faint(held_out, per_image, ckpt.config.seed)
    test, sizes, test_images, masks = test_set(a.root, a.category, size)
    first = 1 if len(held_out) >= FEW_CALIBRATION_IMAGES else 2  # as choose_bank_share

    def scored(w: float, good: torch.Tensor, terms: torch.Tensor) -> dict:
        fig = test_figures(blend(terms, w), blend(good, w), test, sizes, masks)
        return {"share": w, **fig}

    results = {"model": a.model, "n_held_out": len(held_out), "n_painted": len(painted), "strides": {}}
    for stride in BANK_STRIDES:
        t1 = time.time()
        # fixed weight: fit_memory_bank only fits and z-scores; the share is chosen below, as training does
        # bank_scale std: the z-scored terms, as round 5's default; the max variant is scaled from them below
        # exactly as training does (good_peaks), whatever the plain model's own config says
        config = ckpt.config.replace(
            memory_bank=a.share, bank_weight=FIXED_SHARE, bank_stride=stride, bank_scale="std"
        )
        model = RD2T(config.replace(device="cpu"), pretrained=False)
        model.load_state_dict(ckpt.weights, strict=False)
        with torch.no_grad():
            fit_memory_bank(model, images, held_out, None, config.batch_size)
        fit_s = time.time() - t1
        good, bad, terms = z_terms(model, held_out), z_terms(model, painted), z_terms(model, test_images)
        share, table, value = choose_bank_share(good, bad, paint)
        fixed = next(r for r in table if r[0] == FIXED_SHARE)
        row = {
            "fit_seconds": fit_s,
            "pseudo_table": table,
            "chosen_share": share,
            "criterion_chosen": value,
            "criterion_fixed": criterion(fixed, first),
            "chosen": scored(share, good, terms),
            "fixed": scored(FIXED_SHARE, good, terms),
        }
        assert best_share(table, first) == share
        # bank_scale max (round 6): each z-scored term divided by its mean peak on the held-out images
        peaks = good_peaks(good)
        g_max, b_max, t_max = (t / peaks[None, :, None, None] for t in (good, bad, terms))
        _, _, row["criterion_max"] = choose_bank_share(g_max, b_max, paint, (FIXED_SHARE,))
        row["max"] = scored(FIXED_SHARE, g_max, t_max)
        row["good_maxima"] = peaks.tolist()
        # round 10: two more good-images-only rules (docs/measured/bank_thr/rule_written_before.txt)
        # thr: each term divided by its own stored-threshold rule, mean + 3 std of its good per-image maxima
        maxima = good.flatten(2).amax(2).double()
        thr = (maxima.mean(0) + 3 * maxima.std(0)).float().clamp_min(1e-6)
        g_thr, b_thr, t_thr = (t / thr[None, :, None, None] for t in (good, bad, terms))
        _, _, row["criterion_thr"] = choose_bank_share(g_thr, b_thr, paint, (FIXED_SHARE,))
        row["thr"] = scored(FIXED_SHARE, g_thr, t_thr)
        row["good_thresholds"] = thr.tolist()
        # maxof: the two max-scaled terms combined by their per-pixel maximum (bank_combine=max)
        _, _, row["criterion_maxof"] = choose_bank_share(g_max, b_max, paint, (FIXED_SHARE,), "max")
        figures = test_figures(t_max.amax(1), g_max.amax(1), test, sizes, masks)
        row["maxof"] = {"share": FIXED_SHARE, **figures}
        # round 11: excess, g from the held-out good images only; its criterion on the combined map, pooled
        g = float((g_max[:, 0] - g_max[:, 1]).abs().flatten(1).amax(1).mean())
        e_good = excess(g_max, g)
        row["criterion_excess"] = map_criterion(e_good, excess(b_max, g), paint)
        figures = test_figures(excess(t_max, g), e_good, test, sizes, masks)
        row["excess"] = {"share": FIXED_SHARE, "g": g, **figures}
        # diagnostic: each rule's criterion on the faint painted family alone (paint_faint)
        f_max = z_terms(model, faint) / peaks[None, :, None, None]
        e_faint = excess(f_max, g)
        row["faint"] = {
            "max": choose_bank_share(g_max, f_max, faint_paint, (FIXED_SHARE,))[2],
            "maxof": choose_bank_share(g_max, f_max, faint_paint, (FIXED_SHARE,), "max")[2],
            "excess": map_criterion(e_good, e_faint, faint_paint),
        }
        print(f"stride {stride} faint criteria: {row['faint']}", flush=True)
        if a.save_terms:
            Path(a.save_terms).mkdir(parents=True, exist_ok=True)
            torch.save(
                {"good": good.half(), "bad": bad.half(), "paint": paint, "terms": terms.half()},
                Path(a.save_terms) / f"stride{stride}.pt",
            )
        if "plain" not in results:
            results["plain"] = scored(0.0, good, terms)
        results["strides"][stride] = row
        for name in NAMES:
            f = row[name]
            print(
                f"stride {stride} {name} (w {f['share']:.1f}, criterion {row['criterion_' + name]:.4f}): "
                + " / ".join(f"{f[k]:.4f}" for k in ("image_auroc", "pixel_auroc", "au_pro"))
                + f", {f['false_alarms']} FA / {f['misses']} misses",
                flush=True,
            )
    for name in NAMES:
        pick = best_stride({s: r[f"criterion_{name}"] for s, r in results["strides"].items()})
        results[f"auto_{name}"] = {"stride": pick, **results["strides"][pick][name]}
        print(f"bank_stride=0, {name} share: stride {pick}", flush=True)
    p = results["plain"]
    print("plain: " + " / ".join(f"{p[k]:.4f}" for k in ("image_auroc", "pixel_auroc", "au_pro")))
    results["seconds"] = time.time() - t0
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
