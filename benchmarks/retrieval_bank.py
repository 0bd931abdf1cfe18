"""Issue 14, round 23 (a diagnostic): does comparing each image's patches only with those of its most
similar training images (SPADE's two steps, Cohen & Hoshen 2020) let the kNN term see magnetic tile's
large, faint "uneven" defects?

The rule was written before any figure: docs/measured/round23/rule_written_before.txt. The frozen Lite2
teacher only (nothing trained), rounds 20-22's protocol: bank images are 90 % of the training images, every
10th is held out and only sets each map's scale (its mean per-image maximum). Variants:
- `coreset`: the model's kNN term today (strides 8 + 16, 3 x 3 average, 1 % greedy coreset among 100,000
  candidates, blurred as the model does);
- `nearest-K` (K = 10, 50): each scored image's K nearest bank images by a global descriptor (the mean of
  Lite2's stride-16 features, Euclidean), and every patch of those K images as its bank; the same patch
  features, distance, upsampling and blur.
Pixel AUROC at 256 px per defect type and image AUROC of each map's maximum. Round 24 (its rule:
docs/measured/round24/rule_written_before.txt): `--per-image-share 0.1` keeps only a greedy k-center 10 % of
each bank image's patches, the compact form a model could store.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/retrieval_bank.py ../shared/data/magnetic_tile \
        --json docs/measured/round23/retrieval_bank_mt.json
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from coreset_candidates import embeddings, fitted_bank, scaled_map  # benchmarks/ is on the path
from input_scale import held_out, lite2_features, over_held_out_peak, parse_args, report
from teacher_terms import SIGMA, SIZE, training_and_test

from rd2t.model.memory_bank import greedy_coreset, patch_embedding
from rd2t.model.network import GaussianBlur

NEIGHBOURS = (10, 50)


def descriptors(feats: list[torch.Tensor]) -> torch.Tensor:
    """(N, C): each image's mean stride-16 feature, its global look."""
    return feats[2].float().mean((2, 3))


def per_image_coresets(patches: torch.Tensor, n_images: int, share: float) -> torch.Tensor:
    """(N_bank * P, C) image-major -> (N_bank * p, C): `share` of each image's patches, greedy k-center
    within the image (a compact form a model could store)."""
    per_image = patches.shape[0] // n_images
    keep = max(1, round(share * per_image))
    return torch.cat([x[greedy_coreset(x, keep, 0)] for x in patches.view(n_images, per_image, -1)])


def retrieval_maps(
    bank_feats: list[torch.Tensor], scored: list[torch.Tensor], k: int, n_held: int, share: float = 1.0
) -> tuple[torch.Tensor, float]:
    """The blurred map of each scored image against the patches of its k nearest bank images (every patch,
    or `share` of each image's), divided by the held-out images' mean maximum."""
    bank_patches = embeddings(bank_feats)  # (N_bank * P, C), image-major
    if share < 1:
        bank_patches = per_image_coresets(bank_patches, len(bank_feats[0]), share)
    per_image = bank_patches.shape[0] // len(bank_feats[0])
    nearest = torch.cdist(descriptors(scored), descriptors(bank_feats)).topk(k, largest=False).indices
    blur, maps = GaussianBlur(SIGMA), []
    for i in range(len(scored[0])):
        e = patch_embedding([f[i : i + 1] for f in scored], 8, 3)  # (1, C, h, w)
        h, w = e.shape[-2:]
        q = e.flatten(2)[0].T  # (h*w, C)
        rows = (nearest[i, :, None] * per_image + torch.arange(per_image)).flatten()
        d = torch.cdist(q, bank_patches[rows]).amin(1).view(1, 1, h, w)
        maps.append(blur(F.interpolate(d, size=(SIZE, SIZE), mode="bilinear"))[:, 0])
    return over_held_out_peak(torch.cat(maps), n_held)


def main() -> None:
    a = parse_args(__doc__, lambda ap: ap.add_argument("--per-image-share", type=float, default=1.0))
    t0 = time.time()
    _, images, test, test_images, masks = training_and_test(a.root, a.category)
    held = held_out(len(images))
    n_held = int(held.sum())
    bank_feats, scored = lite2_features(images, held, test_images)
    maps, peaks = {}, {}
    bank = fitted_bank(embeddings(bank_feats), 100_000, 0)  # as MemoryBank.fit
    maps["coreset"], peaks["coreset"] = scaled_map(bank, scored, n_held)
    print(f"coreset: held-out peak {peaks['coreset']:.3f} ({time.time() - t0:.0f} s)", flush=True)
    for k in NEIGHBOURS:
        k_eff = min(k, len(bank_feats[0]))
        name = f"nearest-{k}" + (f" ({a.per_image_share:.0%})" if a.per_image_share < 1 else "")
        maps[name], peaks[name] = retrieval_maps(bank_feats, scored, k_eff, n_held, a.per_image_share)
        print(f"{name}: held-out peak {peaks[name]:.3f} ({time.time() - t0:.0f} s)", flush=True)
    report(a, test, masks, held, maps, peaks, t0)


if __name__ == "__main__":
    main()
