"""Image <-> model geometry, in one place: what an image becomes before the model, and how a map
comes back to the image's own size. The only preprocessing outside the model graph is the resize."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from rd2t.data.images import load_image, to_rgb
from rd2t.errors import InputError


def decode(item, name: str | None = None) -> Image.Image:
    """An 8-bit RGB PIL image from a path, a PIL image (any mode) or an HxW / HxWxC numpy array.

    Arrays are converted by their real range, never clipped: uint8 as is; bool as 0/255; uint16 and
    other integers within 0..65535 as 16-bit; floats within [0, 1] as fractions, within [0, 255] as
    8-bit values. NaN/inf, negative values and anything wider are refused with a one-line InputError.
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
    return Image.fromarray(_array_to_uint8(arr, name)).convert("RGB")


def _array_to_uint8(arr: np.ndarray, name: str) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.integer):
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 65535:
            raise InputError(f"{name}: integer pixel values {lo}..{hi} are outside 0..65535")
        if arr.dtype == np.uint16 or hi > 255:  # 16-bit samples: the full range onto 0..255
            return ((arr.astype(np.int64) * 255 + 32767) // 65535).astype(np.uint8)
        return arr.astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        a = arr.astype(np.float64)
        if not np.isfinite(a).all():
            raise InputError(f"{name}: image array holds NaN or infinite values")
        lo, hi = float(a.min()), float(a.max())
        if lo < 0 or hi > 255:
            raise InputError(f"{name}: float pixel values {lo:.4g}..{hi:.4g} are outside [0, 1] and [0, 255]")
        scale = 255.0 if hi <= 1.0 else 1.0  # floats in [0, 1] are fractions; above 1, 8-bit values
        return np.round(a * scale).astype(np.uint8)
    raise InputError(f"{name}: unsupported pixel type {arr.dtype}")


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


def resize_map(anomaly_map: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float map to (W, H) = an image's original size: the only map resizer, used
    by metrics, predictions, overlays and reports alike."""
    w, h = int(size_wh[0]), int(size_wh[1])
    a = np.asarray(anomaly_map, dtype=np.float32)
    if a.shape == (h, w):
        return a
    t = torch.from_numpy(np.ascontiguousarray(a))[None, None]
    return F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)[0, 0].numpy()
