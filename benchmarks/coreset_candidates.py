"""Issue 14, round 22 (a diagnostic): does choosing the kNN term's coreset from every training patch, as
PatchCore does, instead of from 100,000 random ones (memory_bank.MAX_CANDIDATES) change what it sees?

The rule was written before any figure: docs/measured/round22/rule_written_before.txt. The frozen Lite2
teacher only (nothing trained): the model's kNN term (strides 8 + 16, 3 x 3 average, 1 % greedy coreset,
blurred as the model does), its bank fitted on 90 % of the training images; every 10th is held out and only
sets each map's scale (its mean per-image maximum), as rounds 20-21. Variants: `100k` (as today: the coreset
chosen among 100,000 patches drawn with seed 0), `100k-draw1` (the same with another draw, seed 1: how much
the draw alone moves the figures) and `all` (the coreset chosen among every patch). Pixel AUROC at 256 px per
defect type and image AUROC of each map's maximum.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/coreset_candidates.py ../shared/data/magnetic_tile \
        --json docs/measured/round22/coreset_candidates_mt.json
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from input_scale import (  # benchmarks/ is on the path
    held_out,
    lite2_features,
    over_held_out_peak,
    parse_args,
    report,
)
from teacher_terms import BANK_SHARE, SIGMA, SIZE, training_and_test

from rd2t.model import memory_bank
from rd2t.model.memory_bank import MemoryBank, greedy_coreset, patch_embedding
from rd2t.model.network import GaussianBlur


def embeddings(feats: list[torch.Tensor], batch: int = 64) -> torch.Tensor:
    """(N images' features) -> (P, C) stride-8 patch embeddings, float32."""
    n = len(feats[0])
    return torch.cat(
        [
            patch_embedding([f[i : i + batch] for f in feats], 8, 3).permute(0, 2, 3, 1).flatten(0, 2)
            for i in range(0, n, batch)
        ]
    )


def fitted_bank(patches: torch.Tensor, candidates: int | None, draw: int) -> MemoryBank:
    """The bank MemoryBank.fit keeps, with its candidates drawn by seed `draw` (None: every patch)."""
    n = max(1, min(len(patches), memory_bank.MAX_KEPT, round(BANK_SHARE * len(patches))))
    x = patches
    if candidates is not None and len(x) > candidates:
        g = torch.Generator().manual_seed(draw)
        x = x[torch.randperm(len(x), generator=g)[:candidates]]
    bank = MemoryBank(patches.shape[1])
    bank.patches = x[greedy_coreset(x, n, 0)].contiguous()
    bank.fitted = True
    return bank


def scaled_map(bank: MemoryBank, feats: list[torch.Tensor], n_held: int) -> tuple[torch.Tensor, float]:
    """The blurred kNN map at SIZE of every scored image (held-out first), divided by the held-out peak."""
    blur, maps = GaussianBlur(SIGMA), []
    for i in range(0, len(feats[0]), 16):
        e = patch_embedding([f[i : i + 16] for f in feats], 8, 3)
        d = F.interpolate(bank.distance(e), size=(SIZE, SIZE), mode="bilinear")
        maps.append(blur(d)[:, 0])
    return over_held_out_peak(torch.cat(maps), n_held)


def main() -> None:
    a = parse_args(__doc__)
    t0 = time.time()
    _, images, test, test_images, masks = training_and_test(a.root, a.category)
    held = held_out(len(images))
    bank_feats, scored = lite2_features(images, held, test_images)
    patches = embeddings(bank_feats)
    print(f"{len(patches)} training patches ({time.time() - t0:.0f} s)", flush=True)
    maps, peaks = {}, {}
    for name, candidates, draw in (("100k", 100_000, 0), ("100k-draw1", 100_000, 1), ("all", None, 0)):
        bank = fitted_bank(patches, candidates, draw)
        maps[name], peaks[name] = scaled_map(bank, scored, int(held.sum()))
        print(f"{name}: {len(bank.patches)} kept, held-out peak {peaks[name]:.3f} ({time.time() - t0:.0f} s)",
              flush=True)  # fmt: skip
    report(a, test, masks, held, maps, peaks, t0)


if __name__ == "__main__":
    main()
