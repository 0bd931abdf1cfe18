"""Issue 14, round 14 (diagnostics): what do the frozen teachers alone see of magnetic tile's defects?

Two of the issue's ideas for "uneven" (large, faint changes the student's cosine map does not see), measured
on the teachers alone, without training anything:

1. **The feature norm.** The cosine ignores magnitude. Round 1 scored | |s| - |t| | / |t| on a student
   trained with the cosine loss, whose magnitudes nothing constrains, so that test could not tell. A
   student trained to match magnitudes too could at best see what the teacher's own norm shows. Every
   training image's per-pixel feature norm at each level of both teachers sets a mean and spread (one per
   level, position-free: tiles have every aspect ratio); a test pixel scores its norm's z-score.
2. **A wider neighbourhood for the kNN term.** The kNN term (model/memory_bank.py: Lite2 strides 8 + 16, each
   3 x 3-averaged, PatchCore's recipe) is what sees uneven. Uneven regions cover a fifth to a half of a
   tile, so a wider average (`--knn-pool 3,5,7`) might see them better. Each aggregation gets its own bank:
   1 % of every training patch, greedy coreset (MemoryBank.fit), distances blurred as the model does.

Pixel AUROC per defect type (that type's images plus every good test image; rd2t's exact metric over every
pixel, masks shrunk keeping any covered pixel), at the 256 px input resolution, not the original one: these
rank the ideas, they are not comparable with the tables at the original resolution.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/teacher_terms.py ../shared/data/magnetic_tile --knn-pool 3,7
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F
from bank_rules import pixel_auroc_by_type, test_set  # benchmarks/ is on the path when a script runs

from rd2t.data import mvtec
from rd2t.data.images import resize_mask
from rd2t.data.transforms import to_model_input
from rd2t.model.memory_bank import MemoryBank, patch_embedding
from rd2t.model.network import GaussianBlur
from rd2t.model.teachers import Teacher
from rd2t.training.loop import load_training_images

SIZE = 256
TEACHERS = ("tf_efficientnet_lite2", "tf_efficientnet_lite0")  # offline's two; the bank uses the first
BANK_SHARE = 0.01  # offline's memory_bank
SIGMA = 4.0  # offline's blur


@torch.no_grad()
def teacher_features(teacher: Teacher, images: torch.Tensor, batch: int = 16) -> list[torch.Tensor]:
    """(N, 3, S, S) uint8 -> the teacher's three levels for every image, float16 to fit in memory."""
    out = [teacher(to_model_input(images[i : i + batch])) for i in range(0, len(images), batch)]
    return [torch.cat([o[level] for o in out]).half() for level in range(len(out[0]))]


def level_norms(features: list[torch.Tensor]) -> torch.Tensor:
    """Each level's per-pixel feature norm, upsampled: (N, levels, S, S)."""
    norms = [f.float().norm(dim=1, keepdim=True) for f in features]
    return torch.cat([F.interpolate(n, size=(SIZE, SIZE), mode="bilinear") for n in norms], 1)


@torch.no_grad()
def knn_maps(train: list[torch.Tensor], test: list[torch.Tensor], pool: int, batch: int = 64) -> torch.Tensor:
    def embed(feats: list[torch.Tensor], i: int, n: int) -> torch.Tensor:
        return patch_embedding([f[i : i + n] for f in feats], 8, pool)

    n_train = len(train[0])
    patches = torch.cat(
        [embed(train, i, batch).permute(0, 2, 3, 1).flatten(0, 2) for i in range(0, n_train, batch)]
    )
    bank = MemoryBank(patches.shape[1])
    bank.fit(patches, BANK_SHARE)
    blur = GaussianBlur(SIGMA)
    maps = []
    for i in range(0, len(test[0]), 16):
        d = F.interpolate(bank.distance(embed(test, i, 16)), size=(SIZE, SIZE), mode="bilinear")
        maps.append(blur(d)[:, 0])
    return torch.cat(maps)


def training_and_test(root: str, category: str) -> tuple[list, torch.Tensor, list, torch.Tensor, list]:
    """A set at SIZE px: training paths and images (uint8), test samples, images and masks (shrunk keeping
    any covered pixel), as every teacher-only diagnostic reads it."""
    train_paths = [s.path for s in mvtec(root, category).train]
    images, _ = load_training_images(train_paths, SIZE, False)
    test, _, test_images, masks = test_set(root, category, SIZE)
    return train_paths, images, test, test_images, [resize_mask(m, (SIZE, SIZE)) for m in masks]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root")
    ap.add_argument("--category", default=".")
    ap.add_argument("--norm-every", type=int, default=4, help="every k-th training image: the norm's mean")
    ap.add_argument("--knn-pool", default="", help="comma-separated kNN aggregations to score, e.g. 3,7")
    ap.add_argument("--json", help="write the table here")
    a = ap.parse_args()
    t0 = time.time()
    train_paths, images, test, test_images, masks = training_and_test(a.root, a.category)
    teachers = [Teacher(name) for name in TEACHERS]
    train_feats = [teacher_features(t, images) for t in teachers]
    test_feats = [teacher_features(t, test_images) for t in teachers]

    terms: dict[str, torch.Tensor] = {}
    good_norms = torch.cat([level_norms([f[:: a.norm_every] for f in tf]) for tf in train_feats], 1)
    mean, std = good_norms.mean((0, 2, 3)), good_norms.std((0, 2, 3))
    z = (torch.cat([level_norms(tf) for tf in test_feats], 1) - mean[:, None, None]) / std[:, None, None]
    short = [t.name.removeprefix("tf_efficientnet_") for t in teachers]
    names = [f"norm {n} stride {s}" for n, t in zip(short, teachers, strict=True) for s in t.strides]
    terms.update({n: z[:, i] for i, n in enumerate(names)})
    terms["norm, sum of z"] = z.sum(1)  # a larger norm than training's = a defect
    terms["norm, sum of |z|"] = z.abs().sum(1)  # either way
    for pool in [int(p) for p in a.knn_pool.split(",") if p]:
        terms[f"kNN Lite2, {pool}x{pool} average"] = knn_maps(train_feats[0], test_feats[0], pool)

    table = {}
    for name, score in terms.items():
        table[name] = pixel_auroc_by_type(test, masks, score)
        print(f"{name:28s} " + "  ".join(f"{c} {v:.3f}" for c, v in table[name].items()), flush=True)
    print(f"{len(train_paths)} training images, {len(test)} test images, {time.time() - t0:.0f} s")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"root": a.root, "category": a.category, "pixel_auroc": table}, f, indent=1)


if __name__ == "__main__":
    main()
