"""Image -> model input. The only preprocessing outside the model graph is this resize."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def to_pil(image) -> Image.Image:
    """PIL image from a PIL image or an HxW / HxWx{1,3,4} numpy array (uint8, or float in [0, 1])."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr.astype(np.float32), 0, 1) * 255 + 0.5).astype(np.uint8)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[..., :3]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] != 3):
        raise ValueError(f"expected an HxW or HxWx3 image array, got shape {arr.shape}")
    return Image.fromarray(arr).convert("RGB")


def to_uint8_tensor(image, size: int) -> torch.Tensor:
    """(3, size, size) uint8: resized with Pillow's antialiased bilinear filter."""
    img = to_pil(image).resize((size, size), Image.BILINEAR)
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)


def to_model_input(batch_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float [0, 1]; each teacher normalises inside the model."""
    return batch_uint8.float().div_(255.0)
