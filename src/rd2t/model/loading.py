"""A trained model from its checkpoint, on the device asked for (no download: teachers are inside)."""

from __future__ import annotations

from pathlib import Path

import torch

from rd2t.errors import RD2TError
from rd2t.model.checkpoint import Checkpoint
from rd2t.model.network import RD2T


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RD2TError(f"device {name!r} requested but CUDA is not available")
    return torch.device(name)


def load_model(path: str | Path, device: str = "cpu") -> tuple[RD2T, Checkpoint]:
    """A trained model in eval mode and its checkpoint record."""
    ckpt = Checkpoint.load(path)
    return model_from(ckpt, device, path), ckpt


def model_from(ckpt: Checkpoint, device: str = "cpu", path: str | Path = "checkpoint") -> RD2T:
    model = RD2T(ckpt.config.replace(device=device), pretrained=False)
    try:
        model.load_state_dict(ckpt.weights)
    except RuntimeError as e:
        raise RD2TError(
            f"{path}: weights do not fit the model its config describes ({str(e).splitlines()[0]})"
        ) from None
    return model.to(resolve_device(device)).eval()
