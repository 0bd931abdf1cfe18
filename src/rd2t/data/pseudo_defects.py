"""Pseudo-defects painted on good images, for choices that must not look at real defects (issue 14).

Training sees good images only, yet some settings (how much the memory bank's term weighs against the
student's) are about what a defect looks like. Painting stand-in defects on held-out good images answers
that without touching a test set: DRAEM's recipe (Zavrtanik et al., ICCV 2021) of a smooth random blob
mask filled with foreign content, here taken from the images themselves (DRAEM's DTD textures are a
download). Three families, so no single defect kind decides:

* foreign structure: the same region of another good image, shifted and flipped;
* brightness: the region darkened or brightened by 15-40 % (stains, uneven lighting of the part);
* scramble: the region filled with this image rotated by 90 degrees (a break in the texture's direction).

Everything is a pure function of the seed.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

FAMILIES = ("foreign", "brightness", "scramble")
VISIBLE = 8  # gray levels: a smaller change is not a defect anyone could mark
MIN_PIXELS = 0.002  # share of the image a painted region must visibly cover, else paint another
TRIES = 10


def _blob_mask(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth random blob (or a few) covering 0.5-6 % of the image: thresholded low-pass noise."""
    sigma = rng.uniform(0.03, 0.08) * min(h, w)
    noise = ndimage.gaussian_filter(rng.standard_normal((h, w)), sigma, mode="wrap")
    share = rng.uniform(0.005, 0.06)
    return noise > np.quantile(noise, 1 - share)


def paint_pseudo_defects(
    images: torch.Tensor, per_image: int = 2, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3, H, W) uint8 good images -> (N * per_image, 3, H, W) uint8 with one painted region each, and
    their (N * per_image, H, W) bool masks. Families rotate over the outputs."""
    rng = np.random.default_rng(seed)
    good = images.permute(0, 2, 3, 1).numpy().astype(np.float32)  # (N, H, W, 3)
    n, h, w, _ = good.shape
    out, masks = [], []
    for k in range(n * per_image):
        i = k % n
        img = good[i]
        family = FAMILIES[k % len(FAMILIES)]
        for _ in range(TRIES):  # until the paint shows (a brightened blob on a white background does not)
            blob = _blob_mask(rng, h, w)
            if family == "foreign":
                other = good[(i + 1 + rng.integers(max(n - 1, 1))) % n] if n > 1 else img
                source = np.roll(other[::-1, ::-1], (rng.integers(h), rng.integers(w)), axis=(0, 1))
            elif family == "brightness":
                source = img * (rng.choice([-1, 1]) * rng.uniform(0.15, 0.4) + 1)
            else:
                source = np.rot90(img, 1, axes=(0, 1)) if h == w else img[::-1]  # untiled models see squares
            alpha = ndimage.gaussian_filter(blob.astype(np.float32), 1.0)[..., None] * rng.uniform(0.6, 1.0)
            painted = np.clip(img * (1 - alpha) + source * alpha, 0, 255).round()
            # The truth is where the paint changed the image visibly, as an annotator would draw it.
            mask = (alpha[..., 0] > 0.01) & (np.abs(painted - img).max(-1) > VISIBLE)
            if mask.sum() >= MIN_PIXELS * h * w:
                break
        out.append(painted.astype(np.uint8))
        masks.append(mask)
    defective = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()
    return defective, torch.from_numpy(np.stack(masks))
