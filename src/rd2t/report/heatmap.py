"""Anomaly heat maps as pictures: colour a map, blend it over its image, outline masks.

Every function takes the colour scale ``(low, high)`` explicitly instead of stretching each map to its
own min..max: a report colours all its maps on ONE shared scale, so a red spot means the same score
on every image and a defect-free image stays calm instead of showing its own noise in full red.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image

from rd2t.data.images import resize_mask
from rd2t.data.transforms import resize_map

__all__ = ["COLORMAP", "binary_mask", "colorize", "contour", "mask_image", "overlay", "resize_map"]

# "jet" is the colour scale used throughout the anomaly-detection literature (MVTec AD, RD4AD), so
# engineers read it without a legend: blue = normal, red = anomalous.
COLORMAP = "jet"
# Overlay weight = alpha * t ** WEIGHT_GAMMA. Linear (1.0) paints every normal image's low-level noise
# in jet's saturated dark blue; 1.5 keeps that faint while t = 0.75 still gets 65 % of alpha.
WEIGHT_GAMMA = 1.5
OVERLAY_BAND_ROWS = 256


@lru_cache(maxsize=4)
def _lut(name: str) -> np.ndarray:
    """The colormap as a 256x3 uint8 table (matplotlib imported on first use, not at module load)."""
    import matplotlib

    rgba = matplotlib.colormaps[name](np.linspace(0.0, 1.0, 256))
    return np.round(rgba[:, :3] * 255).astype(np.uint8)


def _normalise(anomaly_map: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map values to [0, 1] on the scale low..high (clipped); NaN counts as low (nothing to show)."""
    a = np.nan_to_num(np.asarray(anomaly_map, dtype=np.float32), nan=low, posinf=high, neginf=low)
    span = float(high) - float(low)
    if not span > 0:
        # A degenerate scale (one value everywhere) must not divide by zero: above it is hot, else cold.
        return (a > low).astype(np.float32)
    return np.clip((a - np.float32(low)) / np.float32(span), 0.0, 1.0)


def colorize(anomaly_map: np.ndarray, low: float, high: float) -> np.ndarray:
    """HxWx3 uint8 picture of a 2-D map: ``low`` and below get the colormap's start, ``high`` up its end."""
    t = _normalise(anomaly_map, low, high)
    if t.ndim != 2:
        raise ValueError(f"anomaly map must be 2-D, got shape {t.shape}")
    return _lut(COLORMAP)[np.round(t * 255).astype(np.intp)]


def overlay(
    image: Image.Image, anomaly_map: np.ndarray, low: float, high: float, alpha: float = 0.5
) -> Image.Image:
    """The image with the coloured map blended on top, the map resized (bilinear) to the image's size.

    The blend weight of each pixel is ``alpha`` times its normalised value t in [0, 1] (to the power
    WEIGHT_GAMMA), so where the map is at or below ``low`` the part is shown untouched and only hot
    spots are painted over it: the quality engineer still sees the part's surface everywhere the model
    finds nothing, and weak noise does not tint the whole part blue.
    Drawn in bands of rows: a 100-megapixel part needs its own pixels and the result's, no full-size float
    map and no float copy of the image.
    """
    w, h = image.size
    out = image.convert("RGB")  # a copy; hot pixels are blended into it band by band
    palette = _lut(COLORMAP).tobytes()
    # The blend weight per colour index, as 0..255: PIL's masked paste blends in C, 5x faster than numpy
    # floats over the whole picture (the weight is quantised to 1/255, like the colour already is).
    weights = np.round(255 * float(alpha) * np.linspace(0.0, 1.0, 256) ** WEIGHT_GAMMA).astype(np.uint8)
    for top in range(0, h, OVERLAY_BAND_ROWS):
        rows = slice(top, min(top + OVERLAY_BAND_ROWS, h))
        t = _normalise(resize_map(anomaly_map, (w, h), rows=rows), low, high)
        index = Image.fromarray(np.round(t * 255).astype(np.uint8))
        weight = index.point(weights.tolist())
        index.putpalette(palette)  # colouring through a palette: 20x faster than indexing lut in numpy
        out.paste(index.convert("RGB"), (0, top), weight)
    return out


def mask_image(anomaly_map: np.ndarray, size_wh: tuple[int, int], threshold: float) -> Image.Image:
    """The predicted defect region at the image's size as an 8-bit picture (255 where the map, resized,
    exceeds ``threshold``), drawn in bands of rows like ``overlay``."""
    w, h = int(size_wh[0]), int(size_wh[1])
    out = Image.new("L", (w, h))
    for top in range(0, h, OVERLAY_BAND_ROWS):
        band = resize_map(anomaly_map, (w, h), rows=slice(top, top + OVERLAY_BAND_ROWS)) > threshold
        out.paste(Image.fromarray(band.view(np.uint8) * np.uint8(255)), (0, top))
    return out


def contour(
    image: Image.Image, mask: np.ndarray, color: tuple[int, int, int] = (0, 255, 0), width: int = 1
) -> Image.Image:
    """The image with the outline of a binary mask drawn in ``color`` (the mask is resized to the image).

    The outline is the mask's own border pixels (``width`` pixels thick, inside the region), so the
    region's interior stays visible. A region touching the image edge is closed along that edge.
    """
    from scipy import ndimage  # only reports draw contours: `rd2t predict` never loads scipy

    rgb = np.array(image.convert("RGB"))
    m = resize_mask(mask, image.size)
    # border_value=0: pixels on the image edge count as border, so edge regions get a closed outline.
    inner = ndimage.binary_erosion(m, structure=np.ones((3, 3), bool), iterations=max(1, int(width)))
    rgb[m & ~inner] = color
    return Image.fromarray(rgb)


def binary_mask(anomaly_map: np.ndarray, threshold: float) -> np.ndarray:
    """The predicted defect region: bool array, True where the map exceeds ``threshold``.

    With rd2t the image score is the maximum of its map, so an image is flagged exactly when this
    region is not empty.
    """
    return np.asarray(anomaly_map) > threshold
