"""Image <-> model geometry, in one place: what an image becomes before the model, and how a map
comes back to the image's own size. The only preprocessing outside the model graph is the resize."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from rd2t.data.images import array_to_uint8, load_image, to_rgb
from rd2t.errors import InputError


def decode(item, name: str | None = None) -> Image.Image:
    """An 8-bit RGB PIL image from a path, a PIL image (any mode) or an HxW / HxWxC numpy array.

    Arrays (and 16-bit / float PIL images) are converted by their real range, never clipped or
    stretched: see `rd2t.data.images.array_to_uint8`; what has no such range is refused (InputError).
    """
    if isinstance(item, (str, os.PathLike)):
        return load_image(Path(item))
    name = name or "image"
    if isinstance(item, Image.Image):
        return to_rgb(item, name)
    arr = np.asarray(item)
    if arr.ndim == 3 and arr.shape[2] in (1, 3, 4):
        arr = arr[..., 0] if arr.shape[2] == 1 else arr[..., :3]
    if arr.ndim not in (2, 3) or min(arr.shape[:2], default=0) < 1:
        raise InputError(f"{name}: expected an HxW or HxWx3 image array, got shape {arr.shape}")
    img = Image.fromarray(array_to_uint8(arr, name))
    return img if img.mode == "RGB" else img.convert("RGB")  # convert() copies even an RGB image


def to_pil(image) -> Image.Image:
    """Kept for callers of rd2t 0.1: `decode` for in-memory images."""
    return decode(image)


def to_uint8_tensor(image, size: int) -> torch.Tensor:
    """(3, size, size) uint8: resized with Pillow's antialiased bilinear filter."""
    img = decode(image).resize((size, size), Image.BILINEAR)
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)


def to_model_input(batch_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float [0, 1]; each teacher normalises inside the model."""
    return batch_uint8.float().div_(255.0)


def resize_map(anomaly_map: np.ndarray, size_wh: tuple[int, int], rows: slice | None = None) -> np.ndarray:
    """Bilinear resize of a float map to (W, H) = an image's original size: the only map resizer, used
    by metrics, predictions, overlays and reports alike.

    `rows` (a slice of the output's rows) computes that band only, equal to the whole's rows to float
    rounding (< 1e-5): a very large image's overlay and mask are drawn band by band, never holding its
    full-size float map.
    """
    w, h = int(size_wh[0]), int(size_wh[1])
    a = np.asarray(anomaly_map, dtype=np.float32)
    if a.shape == (h, w):
        return a if rows is None else a[rows]
    if rows is None:
        t = torch.from_numpy(np.ascontiguousarray(a))[None, None]
        return F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)[0, 0].numpy()
    # Source rows of the band (align_corners=False: src = (dst + 0.5) * scale - 0.5, clamped at 0), each
    # row resized to width w first, then blended vertically: the order torch's bilinear kernel uses.
    top, bottom, _ = rows.indices(h)
    if bottom <= top:
        return np.zeros((0, w), np.float32)
    scale = np.float32(a.shape[0]) / np.float32(h)
    src = np.maximum(
        scale * (np.arange(top, bottom, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5), 0
    )
    y0 = src.astype(np.int64)
    y1 = np.minimum(y0 + 1, a.shape[0] - 1)
    lam = (src - y0).astype(np.float32)[:, None]
    first, last = int(y0[0]), int(y1[-1]) + 1
    band = torch.from_numpy(np.ascontiguousarray(a[first:last]))[None, None]
    wide = F.interpolate(band, size=(last - first, w), mode="bilinear", align_corners=False)[0, 0].numpy()
    return (1 - lam) * wide[y0 - first] + lam * wide[y1 - first]
