"""Pseudo-defects painted on good images (data/pseudo_defects.py): what the bank's weight is chosen on."""

import numpy as np
import torch

from rd2t.data.pseudo_defects import FAMILIES, MIN_PIXELS, VISIBLE, paint_pseudo_defects


def _good(n: int = 4, size: int = 64) -> torch.Tensor:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    imgs = [
        120
        + 60 * np.sin(xx / (3 + i) + rng.uniform(0, 6))[..., None] * np.array([1.0, 0.8, 0.6])
        + rng.normal(0, 4, (size, size, 3))
        for i in range(n)
    ]
    return torch.from_numpy(np.clip(np.stack(imgs), 0, 255).astype(np.uint8)).permute(0, 3, 1, 2)


def test_masks_are_exactly_where_the_paint_shows():
    good = _good()
    painted, masks = paint_pseudo_defects(good, per_image=3, seed=5)
    assert painted.shape == (12, 3, 64, 64) and painted.dtype == torch.uint8
    assert masks.shape == (12, 64, 64) and masks.dtype == torch.bool
    source = good.repeat(3, 1, 1, 1)  # output k paints image k % n
    change = (painted.int() - source.int()).abs().amax(1)
    assert torch.equal(masks, change > VISIBLE)  # every visible change is marked, nothing else
    assert bool((masks.flatten(1).float().mean(1) >= MIN_PIXELS).all())  # each one shows


def test_same_seed_same_paint_and_families_rotate():
    good = _good()
    a, ma = paint_pseudo_defects(good, per_image=3, seed=1)
    b, mb = paint_pseudo_defects(good, per_image=3, seed=1)
    c, _ = paint_pseudo_defects(good, per_image=3, seed=2)
    assert torch.equal(a, b) and torch.equal(ma, mb) and not torch.equal(a, c)
    # the brightness family (every 3rd output from index 1) scales the region: one sign of change inside it
    for k in range(FAMILIES.index("brightness"), 12, len(FAMILIES)):
        d = (a[k].int() - good[k % 4].int()).sum(0)[ma[k]]
        assert bool((d > 0).all()) or bool((d < 0).all())
