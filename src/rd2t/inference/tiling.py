"""Tiles for high-resolution images: the grid, the smooth stitching window and a streaming stitcher.

    image --resize by scale--> (H', W') --grid of tile x tile crops, every stride px--> model --> tile maps
    --> weighted sum into one map (H', W') (or a reduced one for huge images) / the window's weight sum

The grid's last row and column are aligned to the border, so every pixel is covered by a real image crop
(no padding); only an image smaller than one tile is reflect-padded up to it and its map cropped back.
Each tile map is weighted by a separable window that is 1 in the middle and falls towards the tile's
edges (where the convolutions saw padding), so overlapping tiles blend without seams. The grid is a
product of one row grid and one column grid and the window is an outer product, so the weight sum is
separable too: the stitcher holds only the map sum (one float32 map) and two 1-D weight vectors.
Pure numpy/torch: the Predictor uses it for the torch and ONNX backends alike.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

# Above this many map pixels (at the tiled resolution) the stitched map is accumulated at a reduced
# resolution: a 100-megapixel part keeps a ~16-megapixel map (64 MB) instead of 400 MB.
MAX_MAP_PIXELS = 16_000_000


def starts(length: int, tile: int, stride: int) -> list[int]:
    """Tile start offsets along one axis: every `stride`, the last one flush with the border."""
    if length <= tile:
        return [0]
    out = list(range(0, length - tile + 1, stride))
    if out[-1] != length - tile:
        out.append(length - tile)
    return out


def window_1d(tile: int) -> np.ndarray:
    """A ramp window: a half-Hann rise over the outer quarter at each end, 1 in the middle, never 0."""
    ramp = max(tile // 4, 1)
    w = np.ones(tile, np.float64)
    rise = 0.5 - 0.5 * np.cos(np.pi * (np.arange(ramp) + 0.5) / ramp)  # (0, 1): no pixel has weight 0
    w[:ramp], w[tile - ramp :] = rise, rise[::-1]
    return w


@dataclass(frozen=True)
class Tiler:
    tile: int
    stride: int
    scale: float = 1.0

    @classmethod
    def of(cls, config) -> Tiler | None:
        """The config's tiler, or None when the model works on whole resized images."""
        return cls(config.tile, config.stride, float(config.scale)) if getattr(config, "tile", 0) else None

    def scaled_size(self, size_wh: tuple[int, int]) -> tuple[int, int]:
        w, h = size_wh
        return max(1, round(w * self.scale)), max(1, round(h * self.scale))

    def prepare(self, image: Image.Image) -> torch.Tensor:
        """uint8 (3, H', W') of the image resized by `scale` (the same filter as the untiled resize)."""
        w, h = self.scaled_size(image.size)
        if (w, h) != image.size:
            image = image.resize((w, h), Image.BILINEAR)
        return torch.from_numpy(np.array(image)).permute(2, 0, 1)  # one copy: large images count

    def positions(self, height: int, width: int) -> list[tuple[int, int]]:
        """(y, x) of every tile's top-left corner, row by row."""
        return [
            (y, x)
            for y in starts(height, self.tile, self.stride)
            for x in starts(width, self.tile, self.stride)
        ]

    def tiles(
        self, image: torch.Tensor, batch_size: int
    ) -> Iterator[tuple[list[tuple[int, int]], torch.Tensor]]:
        """Batches of (positions, uint8 (n, 3, tile, tile)) covering the (3, H', W') image."""
        image = self.pad(image)
        pos = self.positions(*image.shape[-2:])
        t = self.tile
        for i in range(0, len(pos), batch_size):
            chunk = pos[i : i + batch_size]
            yield chunk, torch.stack([image[:, y : y + t, x : x + t] for y, x in chunk])

    def pad(self, image: torch.Tensor) -> torch.Tensor:
        """Reflect-pad (then edge-pad, for very small images) an image smaller than one tile up to it."""
        h, w = image.shape[-2:]
        ph, pw = max(self.tile - h, 0), max(self.tile - w, 0)
        if not ph and not pw:
            return image
        x = image[None].float()
        rh, rw = min(ph, h - 1), min(pw, w - 1)  # reflect padding must be smaller than the side
        if rh or rw:
            x = F.pad(x, (0, rw, 0, rh), mode="reflect")
        x = F.pad(x, (0, pw - rw, 0, ph - rh), mode="replicate")
        return x[0].to(image.dtype)


class Stitcher:
    """Accumulates weighted tile maps into one map of (height, width) tiled pixels, streaming.

    With `max_pixels` exceeded the map is kept `factor` times smaller in each direction (each tile map is
    area-averaged before it is added), so memory is one map of at most ~max_pixels floats whatever the
    number of tiles.
    """

    def __init__(self, height: int, width: int, tiler: Tiler, max_pixels: int = MAX_MAP_PIXELS):
        self.height, self.width, self.tiler = height, width, tiler
        ph, pw = max(height, tiler.tile), max(width, tiler.tile)  # the padded image an undersized one becomes
        self.factor = 1
        while (ph // self.factor) * (pw // self.factor) > max_pixels and tiler.tile // (2 * self.factor) >= 8:
            self.factor *= 2
        f = self.factor
        self.sum = np.zeros((-(-ph // f), -(-pw // f)), np.float32)
        win = window_1d(tiler.tile)
        if f > 1:
            win = F.avg_pool1d(torch.from_numpy(win)[None, None], f)[0, 0].numpy()  # tile % f == 0
        self.win = win.astype(np.float32)
        wy = np.zeros(self.sum.shape[0], np.float64)
        wx = np.zeros(self.sum.shape[1], np.float64)
        tf = tiler.tile // f
        for y in starts(ph, tiler.tile, tiler.stride):
            wy[y // f : y // f + tf] += win
        for x in starts(pw, tiler.tile, tiler.stride):
            wx[x // f : x // f + tf] += win
        self.wy, self.wx = wy.astype(np.float32), wx.astype(np.float32)

    def add(self, positions: list[tuple[int, int]], maps: np.ndarray) -> None:
        """Add tile maps (n, tile, tile) at their (y, x) positions (in tiled-image pixels)."""
        f, win = self.factor, self.win
        maps = np.asarray(maps, np.float32)
        if f > 1:
            maps = F.avg_pool2d(torch.from_numpy(maps)[:, None], f)[:, 0].numpy()
        t = maps.shape[-1]
        weight = np.outer(win, win)
        for (y, x), m in zip(positions, maps, strict=True):
            y, x = y // f, x // f
            self.sum[y : y + t, x : x + t] += m * weight

    def result(self) -> np.ndarray:
        """The stitched map, float32, cropped to the image (reduced by `factor` for huge images)."""
        out = self.sum
        out /= self.wy[:, None]
        out /= self.wx[None, :]
        f = self.factor
        return out[: -(-self.height // f), : -(-self.width // f)]
