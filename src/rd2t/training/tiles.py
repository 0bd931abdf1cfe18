"""Training tiles: every grid position of every good image at the model's scale, read once.

The model then learns the texture at the pixel size it will see at inference (the same `Tiler` cuts both),
and the teacher-feature cache works unchanged: one cached row per tile.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from tqdm.auto import tqdm

from rd2t.errors import InputError
from rd2t.inference.tiling import Tiler


def load_training_tiles(
    paths: list[Path], tiler: Tiler, progress: bool = True, what: str = "training"
) -> tuple[torch.Tensor, list[Path]]:
    """uint8 (n_tiles, 3, tile, tile) of every image's grid tiles; unreadable images are reported, skipped."""
    from rd2t.data import load_image

    tiles, kept = [], []
    for p in tqdm(paths, desc="cutting tiles", disable=not progress, leave=False):
        try:
            image = tiler.prepare(load_image(p))
        except InputError as e:
            print(f"skipped: {e}", file=sys.stderr)
            continue
        tiles.extend(batch for _, batch in tiler.tiles(image, 256))
        kept.append(Path(p))
    if not kept:
        raise InputError(f"none of the {len(paths)} {what} image(s) could be read")
    return torch.cat(tiles), kept
