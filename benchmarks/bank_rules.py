"""Issue 14, round 4: ways to add the memory bank's kNN term to the student's map, scored on one model.

Round 3 weighs the two z-scored terms, (1 - w) z(student) + w z(kNN), with w chosen on pseudo-defects
painted on the held-out good images. On bottle that choice costs 0.7-2.2 AU-PRO. This script asks two
questions of one trained model whose bank is fitted (`benchmarks/memory_bank.py --bank-weight 0.5` keeps the
patches whatever the share):

1. Does another rule that a user could get without real defects do better? Each rule's share is chosen
   exactly as training chooses it (training.loop.choose_bank_share on the same painted images, same seed):
   - `sum`: round 3's rule, criterion = mean of image AUROC, pixel AUROC and AU-PRO on the pseudo-defects;
   - `sum/pixel`: the same sum, criterion = pixel AUROC and AU-PRO only (on bottle, image AUROC on the
     painted images is what pushes the share up);
   - `gate`: (1 - w) z(student) + w max(0, z(kNN) - q), q = the 99th percentile of z(kNN) over the held-out
     good pixels: the kNN term only speaks where it exceeds what 99 % of good pixels show, so it cannot
     reorder the good pixels that AU-PRO's false-positive range (up to 30 %) is made of;
   - `gate/pixel`: the gate with the pixel-only criterion;
   - `sum/0.5`: the plain sum, no choice (`--bank-weight 0.5`, round 2's rule).
2. Diagnostic only, never used to choose: each rule's test figures at fixed shares 0, 0.2 ... 1, to see
   whether any share of it avoids bottle's cost at all; with `--coarse` also the student's own map averaged
   over 8x8 cells (the stride-8 kNN term's grid) and 4x4 cells, to see what a coarse grid alone costs.

The bank is the model's own: `memory_bank.py --bank-stride 8` gives round 3's PatchCore patches,
`--bank-stride 4` the finer ones (strides 4 + 8, `bank_stride=4`).

Test figures at the original resolution (rd2t's Evaluator, maps upsampled as `rd2t evaluate` does); image
score = map maximum; threshold = mean + 3 std of the held-out images' scores (the default rule).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bank_rules.py runs/bottle/offline_s0_mb050/model.pt \
        --root ../shared/data/mvtec_ad --category bottle --json runs/rules/bottle_s0.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from threshold_rules import rule_trade  # benchmarks/ is on the path when a script runs

from rd2t.calibration import threshold_from_scores
from rd2t.data import load_image, load_mask, mvtec
from rd2t.data.pseudo_defects import paint_pseudo_defects
from rd2t.data.transforms import resize_map, to_model_input, to_uint8_tensor
from rd2t.evaluation.metrics import Evaluator, pixel_auroc
from rd2t.model.checkpoint import Checkpoint
from rd2t.model.loading import model_from
from rd2t.training.loop import (
    FEW_CALIBRATION_IMAGES,
    PSEUDO_DEFECTS,
    best_share,
    choose_bank_share,
    load_training_images,
)

GATE_QUANTILE = 0.99
DIAGNOSTIC_SHARES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


@torch.no_grad()
def z_terms(model, images: torch.Tensor, batch: int = 8) -> torch.Tensor:
    """(N, 3, H, W) uint8 -> (N, 2, H, W): z(student), z(kNN), exactly the terms the model sums."""
    out = []
    for i in range(0, len(images), batch):
        feats = model.teacher_features(to_model_input(images[i : i + batch]))
        s, k = model.term_maps(feats, model.reconstruct(feats), tuple(images.shape[-2:]))
        out.append(torch.cat(model.memory_bank.standardise(s, k), 1))
    return torch.cat(out)


def coarsened(maps: torch.Tensor, cell: int, blur) -> torch.Tensor:
    """(N, H, W) maps averaged over cell x cell blocks, upsampled and blurred back (a grid's own loss)."""
    x = F.avg_pool2d(maps[:, None], cell)
    return blur(F.interpolate(x, size=maps.shape[-2:], mode="bilinear", align_corners=False))[:, 0]


def gated(terms: torch.Tensor, q: float) -> torch.Tensor:
    return torch.cat([terms[:, :1], (terms[:, 1:] - q).clamp_min(0)], 1)


def blend(terms: torch.Tensor, w: float) -> torch.Tensor:
    """(N, 2, H, W) z-scored terms -> (N, H, W): the map at kNN share w (the model's 2x scale aside)."""
    return (1 - w) * terms[:, 0] + w * terms[:, 1]


def test_set(root: str, category: str, size: int) -> tuple[list, list, torch.Tensor, list]:
    """An MVTec-layout test split: samples, original sizes, images resized to `size` (uint8), masks."""
    test, sizes, images = mvtec(root, category).test, [], []
    for s in test:
        im = load_image(s.path)
        sizes.append(im.size)
        images.append(to_uint8_tensor(im, size))
    masks = [
        load_mask(s.mask_path, wh) if s.mask_path else np.zeros(wh[::-1], dtype=bool)
        for s, wh in zip(test, sizes, strict=True)
    ]
    return test, sizes, torch.stack(images), masks


def saved_default_terms(stride_json: str, terms_dir: str) -> tuple[dict, int, torch.Tensor, torch.Tensor]:
    """bank_stride.py's JSON for one model and the terms its --save-terms wrote at the stride the default
    chose (`auto_max`): (the JSON, that stride, held-out good terms, test terms), float32 (N, 2, H, W)."""
    result = json.loads(Path(stride_json).read_text())
    stride = int(result["auto_max"]["stride"])
    saved = torch.load(Path(terms_dir) / f"stride{stride}.pt")
    return result, stride, saved["good"].float(), saved["terms"].float()


def pixel_auroc_by_type(test: list, masks: list, maps: torch.Tensor) -> dict[str, float]:
    """Pixel AUROC over every pixel of all defective images ("all") and of each defect type, each with every
    good test image; masks and (N, H, W) maps at one resolution (the diagnostics' 256 px)."""
    types = np.array([s.defect_type for s in test])
    good = np.array([not s.label for s in test])
    out = {}
    for col in ["all", *sorted(set(types[~good]))]:
        keep = np.flatnonzero(good | (~good if col == "all" else types == col))
        out[col] = pixel_auroc([masks[i] for i in keep], [maps[i].numpy() for i in keep])
    return out


def test_figures(maps, val_maps, test, sizes, masks) -> dict:
    scores = maps.flatten(1).amax(1).numpy()
    ev = Evaluator()
    for i, s in enumerate(test):
        ev.add(s.label, float(scores[i]), resize_map(maps[i].numpy(), sizes[i]), masks[i], s.defect_type)
    m = ev.compute()
    per = ev.compute_by_defect()
    labels = np.array([s.label for s in test], dtype=bool)
    val_scores = val_maps.flatten(1).amax(1).numpy()
    th = threshold_from_scores(val_scores, "mean+3std")
    return {
        "rules": rule_trade(val_scores, scores, labels),
        "image_auroc": m["image_auroc"],
        "pixel_auroc": m["pixel_auroc"],
        "au_pro": m["au_pro"],
        "pixel_ap": m["pixel_ap"],
        "false_alarms": int((scores[~labels] > th).sum()),
        "misses": int((scores[labels] <= th).sum()),
        "per_defect": {d: {k: v[k] for k in ("image_auroc", "au_pro")} for d, v in per.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="a checkpoint with a fitted memory bank")
    ap.add_argument("--root", required=True)
    ap.add_argument("--category", default=".")
    ap.add_argument("--json", required=True)
    ap.add_argument("--no-diagnostic", action="store_true", help="skip the fixed-share test curves")
    ap.add_argument("--coarse", action="store_true", help="also score the student's map on coarse grids")
    a = ap.parse_args()
    t0 = time.time()
    ckpt = Checkpoint.load(a.model)
    model = model_from(ckpt, "cpu", a.model)
    assert model.memory_bank is not None and model.memory_bank.fitted, (
        "fit the bank first (--bank-weight 0.5)"
    )
    size = ckpt.config.image_size
    held_out, _ = load_training_images([Path(p) for p in ckpt.val_files], size, False)
    painted, paint = paint_pseudo_defects(
        held_out, max(1, -(-PSEUDO_DEFECTS // len(held_out))), seed=ckpt.config.seed
    )
    test, sizes, images, masks = test_set(a.root, a.category, size)
    good, bad, terms = z_terms(model, held_out), z_terms(model, painted), z_terms(model, images)
    del images
    print(f"terms of {len(good)} held-out, {len(bad)} painted, {len(test)} test in {time.time() - t0:.0f}s")

    q = float(
        torch.quantile(good[:, 1].flatten()[:: max(1, good[:, 1].numel() // 10_000_000)], GATE_QUANTILE)
    )
    forms = {"sum": lambda t: t, "gate": lambda t: gated(t, q)}
    first = 1 if len(good) >= FEW_CALIBRATION_IMAGES else 2  # as choose_bank_share
    results = {"model": a.model, "gate_q": q, "n_held_out": len(good), "n_painted": len(bad), "rules": {}}
    for form, f in forms.items():
        fg, ft = f(good), f(terms)
        _, table, _ = choose_bank_share(fg, f(bad), paint)
        rules = [(form, best_share(table, first)), (f"{form}/pixel", best_share(table, 2))]
        for name, w in rules + ([("sum/0.5", 0.5)] if form == "sum" else []):
            fig = test_figures(blend(ft, w), blend(fg, w), test, sizes, masks)
            results["rules"][name] = {"share": w, "pseudo_table": table, "test": fig}
            print(
                f"{name:11s} w {w:.1f}: "
                + " / ".join(f"{fig[k]:.4f}" for k in ("image_auroc", "pixel_auroc", "au_pro"))
                + f", {fig['false_alarms']} FA / {fig['misses']} misses",
                flush=True,
            )
        if not a.no_diagnostic:
            diag = {}
            for w in DIAGNOSTIC_SHARES:
                fig = test_figures(blend(ft, w), blend(fg, w), test, sizes, masks)
                diag[w] = {
                    k: fig[k] for k in ("image_auroc", "pixel_auroc", "au_pro", "false_alarms", "misses")
                }
                print(
                    f"  diagnostic {form} w {w:.1f}: "
                    + " / ".join(f"{diag[w][k]:.4f}" for k in ("image_auroc", "pixel_auroc", "au_pro")),
                    flush=True,
                )
            results["rules"][form]["diagnostic_test"] = diag
    if a.coarse:
        results["coarsened_student"] = {}
        for cell in (8, 4):
            fig = test_figures(
                coarsened(terms[:, 0], cell, model.blur),
                coarsened(good[:, 0], cell, model.blur),
                test,
                sizes,
                masks,
            )
            results["coarsened_student"][cell] = {k: fig[k] for k in ("image_auroc", "pixel_auroc", "au_pro")}
            print(
                f"  diagnostic student averaged over {cell}x{cell}: "
                + " / ".join(f"{fig[k]:.4f}" for k in ("image_auroc", "pixel_auroc", "au_pro")),
                flush=True,
            )
    results["seconds"] = time.time() - t0
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
