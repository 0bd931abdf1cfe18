"""Issue 14, round 20 (a diagnostic): does a second, coarser input scale let the kNN term see magnetic tile's
large, faint "uneven" defects?

The rule was written before any figure: docs/measured/round20/rule_written_before.txt. The frozen Lite2
teacher only (nothing trained): the model's kNN term (strides 8 + 16, 3 x 3 average, 1 % greedy coreset,
blurred as the model does; teacher_terms.knn_maps), its bank fitted on 90 % of the training images. Every
10th training image is held out and only sets each map's scale (its mean per-image maximum, the model's
`bank_scale = max`). Variants: `256` (as today), `128` (the images halved before the teacher, the map
upsampled to 256 px) and `256+128` (the two scaled maps summed). Pixel AUROC at 256 px per defect type
(bank_rules.pixel_auroc_by_type) and image AUROC of each map's maximum.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/input_scale.py ../shared/data/magnetic_tile \
        --json docs/measured/round20/input_scale_mt.json
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from bank_rules import pixel_auroc_by_type  # benchmarks/ is on the path when a script runs
from sklearn.metrics import roc_auc_score
from teacher_terms import SIZE, TEACHERS, knn_maps, teacher_features, training_and_test

from rd2t.model.teachers import Teacher

HOLD_OUT_EVERY = 10


def resized(images: torch.Tensor, size: int) -> torch.Tensor:
    """(N, 3, S, S) uint8 -> (N, 3, size, size) uint8, antialiased like a camera image shrunk by Pillow."""
    if size == images.shape[-1]:
        return images
    x = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8)


def scaled_knn(teacher: Teacher, images: torch.Tensor, held: torch.Tensor, test_images: torch.Tensor,
               size: int = SIZE) -> tuple[torch.Tensor, float]:  # fmt: skip
    """The kNN term of `teacher` on the images resized to `size`: the bank from the training images not
    `held` out; the test images' maps (at SIZE) divided by the held-out images' mean per-image maximum."""
    bank_feats = teacher_features(teacher, resized(images[~held], size))
    scored = teacher_features(teacher, resized(torch.cat([images[held], test_images]), size))
    return over_held_out_peak(knn_maps(bank_feats, scored, 3), int(held.sum()))  # upsampled to SIZE inside


def over_held_out_peak(maps: torch.Tensor, n_held: int) -> tuple[torch.Tensor, float]:
    """Maps of the held-out images first, then the test images' -> the test maps divided by the held-out
    images' mean per-image maximum (the model's `bank_scale = max`), and that divisor."""
    peak = float(maps[:n_held].flatten(1).amax(1).mean())
    return maps[n_held:] / peak, peak


def lite2_features(images: torch.Tensor, held: torch.Tensor, test_images: torch.Tensor) -> tuple[list, list]:
    """The frozen Lite2 teacher's features of the bank images (those not `held`) and of the scored ones
    (the held-out images first, then the test images), as rounds 22-23 use them."""
    teacher = Teacher(TEACHERS[0])
    return teacher_features(teacher, images[~held]), teacher_features(
        teacher, torch.cat([images[held], test_images])
    )


def table_of(test: list, masks: list, maps: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    """Pixel AUROC per defect type and image AUROC (map maximum) of each map, printed as they come."""
    labels = np.array([s.label for s in test], dtype=bool)
    table = {}
    for name, m in maps.items():
        row = pixel_auroc_by_type(test, masks, m)
        row["image_auroc"] = float(roc_auc_score(labels, m.flatten(1).amax(1).numpy()))
        table[name] = row
        print(f"{name:12s} " + "  ".join(f"{c} {v:.3f}" for c, v in row.items()), flush=True)
    return table


def held_out(n: int) -> torch.Tensor:
    held = torch.zeros(n, dtype=torch.bool)
    held[::HOLD_OUT_EVERY] = True
    return held


def parse_args(
    doc: str, extra: Callable[[argparse.ArgumentParser], object] | None = None
) -> argparse.Namespace:
    """The teacher-only diagnostics' command line (rounds 20-24): a set, where to write the table, and
    what `extra` adds."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root")
    ap.add_argument("--category", default=".")
    ap.add_argument("--json", help="write the table here")
    if extra:
        extra(ap)
    return ap.parse_args()


def report(a: argparse.Namespace, test: list, masks: list, held: torch.Tensor, maps: dict, peaks: dict,
           t0: float) -> None:  # fmt: skip
    """Print the table of `maps` and write it with the held-out peaks to --json."""
    table = table_of(test, masks, maps)
    print(f"{int((~held).sum())} bank images, {int(held.sum())} held out, {len(test)} test images, "
          f"{time.time() - t0:.0f} s")  # fmt: skip
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"root": a.root, "category": a.category, "peaks": peaks, "knn": table}, f, indent=1)


def main() -> None:
    a = parse_args(__doc__)
    t0 = time.time()
    _, images, test, test_images, masks = training_and_test(a.root, a.category)
    held = held_out(len(images))
    teacher = Teacher(TEACHERS[0])
    maps, peaks = {}, {}
    for size in (SIZE, SIZE // 2):
        maps[str(size)], peaks[size] = scaled_knn(teacher, images, held, test_images, size)
        print(f"{size} px: held-out peak {peaks[size]:.3f} ({time.time() - t0:.0f} s)", flush=True)
    maps[f"{SIZE}+{SIZE // 2}"] = maps[str(SIZE)] + maps[str(SIZE // 2)]
    report(a, test, masks, held, maps, peaks, t0)


if __name__ == "__main__":
    main()
