"""Issue 14, round 19 (a diagnostic): does each image's brightness (and contrast), set to the training set's
average before the teachers, let the kNN term see magnetic tile's large, faint "uneven" defects better?

The rule was written before any figure: docs/measured/round19/rule_written_before.txt. The frozen Lite2
teacher only (nothing trained): the model's kNN term (strides 8 + 16, 3 x 3 average, 1 % greedy coreset,
blurred as the model does; teacher_terms.knn_maps) for three inputs: `none` (as today), `mean` (each image's
pixels, all channels together so hues stay, shifted to the training images' average mean), `mean+std`
(shifted and scaled to their average mean and standard deviation). Pixel AUROC at 256 px per defect type
(bank_rules.pixel_auroc_by_type) and image AUROC of each map's maximum.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/photometric.py ../shared/data/magnetic_tile \
        --json docs/measured/round19/photometric_mt.json
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from bank_rules import pixel_auroc_by_type  # benchmarks/ is on the path when a script runs
from sklearn.metrics import roc_auc_score
from teacher_terms import TEACHERS, knn_maps, teacher_features, training_and_test

from rd2t.model.teachers import Teacher


def image_stats(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3, S, S) uint8 -> each image's mean and standard deviation over all its pixels and channels."""
    x = images.flatten(1).float()
    return x.mean(1), x.std(1)


def normalised(images: torch.Tensor, how: str, ref_mean: float, ref_std: float) -> torch.Tensor:
    """Each image moved to the reference mean (`mean`) or mean and spread (`mean+std`), back in uint8."""
    if how == "none":
        return images
    mean, std = image_stats(images)
    x = images.float() - mean[:, None, None, None]
    if how == "mean+std":
        x = x * (ref_std / std.clamp_min(1.0))[:, None, None, None]
    return (x + ref_mean).round().clamp(0, 255).to(torch.uint8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root")
    ap.add_argument("--category", default=".")
    ap.add_argument("--json", help="write the table here")
    a = ap.parse_args()
    t0 = time.time()
    train_paths, images, test, test_images, masks = training_and_test(a.root, a.category)
    labels = np.array([s.label for s in test], dtype=bool)
    mean, std = image_stats(images)
    ref_mean, ref_std = float(mean.mean()), float(std.mean())
    spread = {"image_mean_sd": float(mean.std()), "image_std_sd": float(std.std()), "ref_mean": ref_mean}
    print(f"training images: mean {ref_mean:.1f} (sd between images {spread['image_mean_sd']:.1f}), "
          f"std {ref_std:.1f} (sd {spread['image_std_sd']:.1f})", flush=True)  # fmt: skip
    teacher = Teacher(TEACHERS[0])
    table = {}
    for how in ("none", "mean", "mean+std"):
        train_feats = teacher_features(teacher, normalised(images, how, ref_mean, ref_std))
        test_feats = teacher_features(teacher, normalised(test_images, how, ref_mean, ref_std))
        maps = knn_maps(train_feats, test_feats, 3)
        row = pixel_auroc_by_type(test, masks, maps)
        row["image_auroc"] = float(roc_auc_score(labels, maps.flatten(1).amax(1).numpy()))
        table[how] = row
        print(f"{how:9s} " + "  ".join(f"{c} {v:.3f}" for c, v in row.items()), f"({time.time() - t0:.0f} s)",
              flush=True)  # fmt: skip
    print(f"{len(train_paths)} training images, {len(test)} test images, {time.time() - t0:.0f} s")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"root": a.root, "category": a.category, "spread": spread, "knn": table}, f, indent=1)


if __name__ == "__main__":
    main()
