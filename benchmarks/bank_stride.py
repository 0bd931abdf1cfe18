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

import torch
from bank_rules import blend, test_figures, test_set, z_terms  # benchmarks/ is on the path when a script runs

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
NAMES = ("chosen", "fixed", "max", "thr", "maxof")


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
    painted, paint = paint_pseudo_defects(
        held_out, max(1, -(-PSEUDO_DEFECTS // len(held_out))), seed=ckpt.config.seed
    )
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
