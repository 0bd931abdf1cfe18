"""Issue 14, round 16 (a diagnostic): which of the student's six distance maps sees what?

The student's term (RD2T.student_map) sums, over both teachers and their three levels (strides 4, 8 and
16), the upsampled per-pixel distance between each teacher feature and its rebuilt copy, then blurs the sum.
On magnetic tile that sum sees "uneven" (large, faint changes) hardly at all. This scores each of the six maps
on its own, blurred as the model blurs, and their sum (the model's term), on one trained plain model:

- pixel AUROC per defect type (that type's images plus every good test image; rd2t's exact metric over every
  pixel, masks shrunk keeping any covered pixel) at the 256 px input resolution, as teacher_terms.py;
- from the held-out good images only, each map's between-image share (memory_bank.between_image_share).

Nothing is chosen here and nothing is trained.

With `--painted` (round 18) the same maps are also scored on the pseudo-defects training paints on the
held-out good images (data.pseudo_defects, as many and with the same seed as training's choices): pixel
AUROC over the painted images' pixels (their painted regions the positives) with every unpainted held-out
image's, overall and per paint family. Could painted images tell which levels see a part's defects?

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/student_scales.py runs/mt_s0/model.pt \
        --root ../shared/data/magnetic_tile --json docs/measured/round16/scales_mt_s0.json [--painted]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from bank_rules import pixel_auroc_by_type, test_set  # benchmarks/ is on the path when a script runs

from rd2t.data.images import resize_mask
from rd2t.data.pseudo_defects import FAMILIES, paint_pseudo_defects
from rd2t.data.transforms import to_model_input
from rd2t.evaluation.metrics import pixel_auroc
from rd2t.model.checkpoint import Checkpoint
from rd2t.model.loading import model_from
from rd2t.model.memory_bank import between_image_share
from rd2t.model.network import RD2T, distance
from rd2t.training.loop import PSEUDO_DEFECTS, load_training_images


@torch.no_grad()
def scale_maps(model: RD2T, images: torch.Tensor, batch: int = 16) -> tuple[torch.Tensor, list[str]]:
    """(N, 3, S, S) uint8 -> (N, 6, S, S): each teacher level's distance map, upsampled and blurred."""
    size = tuple(images.shape[-2:])
    out = []
    for i in range(0, len(images), batch):
        feats = model.teacher_features(to_model_input(images[i : i + batch]))
        maps = []
        for t_feats, s_feats in zip(feats, model.reconstruct(feats), strict=True):
            for t, s in zip(t_feats, s_feats, strict=True):
                d = distance(s, t, model.config.distance).unsqueeze(1)
                maps.append(model.blur(F.interpolate(d, size=size, mode="bilinear", align_corners=False)))
        out.append(torch.cat(maps, 1))
    names = [
        f"{t.name.removeprefix('tf_efficientnet_')} stride {s}" for t in model.teachers for s in t.strides
    ]
    return torch.cat(out), names


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="a trained plain checkpoint")
    ap.add_argument("--root", required=True)
    ap.add_argument("--category", default=".")
    ap.add_argument("--json", help="write the table here")
    ap.add_argument("--painted", action="store_true", help="also score each map on painted pseudo-defects")
    a = ap.parse_args()
    t0 = time.time()
    ckpt = Checkpoint.load(a.model)
    model = model_from(ckpt, "cpu", a.model)
    size = ckpt.config.image_size
    held_out, _ = load_training_images([Path(p) for p in ckpt.val_files], size, False)
    good_maps, names = scale_maps(model, held_out)
    test, _, test_images, masks = test_set(a.root, a.category, size)
    masks = [resize_mask(m, (size, size)) for m in masks]  # shrinking keeps any covered pixel
    maps, _ = scale_maps(model, test_images)
    # the model's own term is the blurred sum; blurring is linear, so it is the sum of the blurred maps
    terms = {n: (maps[:, i], good_maps[:, i]) for i, n in enumerate(names)}
    terms["sum (the model's term)"] = (maps.sum(1), good_maps.sum(1))
    # the levels put on one scale by the held-out good images alone before the sum: each level's pixel mean
    # and std (as the bank z-scores its two terms), or its mean per-image peak (bank_scale=max)
    flat = good_maps.double().transpose(0, 1).flatten(1)
    mean, std = flat.mean(1).float(), flat.std(1).float()
    peaks = good_maps.flatten(2).amax(2).mean(0)

    def scaled(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return ((x - shift[:, None, None]) / scale[:, None, None]).sum(1)

    zero = torch.zeros_like(peaks)
    terms["sum of z-scored levels"] = (scaled(maps, mean, std), scaled(good_maps, mean, std))
    terms["sum of peak-scaled levels"] = (scaled(maps, zero, peaks), scaled(good_maps, zero, peaks))

    table = {}
    for name, (score, good_score) in terms.items():
        table[name] = {
            "between_share": between_image_share(good_score),
            **pixel_auroc_by_type(test, masks, score),
        }
        print(f"{name:24s} " + "  ".join(f"{c} {v:.3f}" for c, v in table[name].items()), flush=True)
    painted_table = painted_aurocs(model, held_out, good_maps, names, ckpt.config.seed) if a.painted else None
    print(f"{len(test)} test images, {len(held_out)} held-out good, {time.time() - t0:.0f} s")
    if a.json:
        out = {"model": a.model, "pixel_auroc": table}
        if painted_table is not None:
            out["painted_pixel_auroc"] = painted_table
        Path(a.json).write_text(json.dumps(out, indent=1))


def painted_aurocs(
    model: RD2T, held_out: torch.Tensor, good_maps: torch.Tensor, names: list[str], seed: int
) -> dict[str, dict[str, float]]:
    """Each level's (and the sum's) pixel AUROC on training's painted pseudo-defects against the unpainted
    held-out images, overall and per paint family (families rotate over the painted images)."""
    painted, paint = paint_pseudo_defects(held_out, max(1, -(-PSEUDO_DEFECTS // len(held_out))), seed=seed)
    maps, _ = scale_maps(model, painted)
    family = [FAMILIES[k % len(FAMILIES)] for k in range(len(painted))]
    good_masks = [torch.zeros(good_maps.shape[-2:], dtype=torch.bool).numpy()] * len(good_maps)
    columns = {"all": list(range(len(painted)))} | {
        f: [k for k in range(len(painted)) if family[k] == f] for f in FAMILIES
    }
    table = {}
    for i, name in enumerate([*names, "sum (the model's term)"]):
        bad = maps.sum(1) if i == len(names) else maps[:, i]
        good = good_maps.sum(1) if i == len(names) else good_maps[:, i]
        table[name] = {
            col: pixel_auroc(
                [paint[k].numpy() for k in keep] + good_masks,
                [bad[k].numpy() for k in keep] + [g.numpy() for g in good],
            )
            for col, keep in columns.items()
        }
        print(f"painted {name:24s} " + "  ".join(f"{c} {v:.3f}" for c, v in table[name].items()), flush=True)
    return table


if __name__ == "__main__":
    main()
