"""Checkpoints: config + weights + training state, written atomically, read with weights_only=True."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from rd2t import __version__
from rd2t.config import Config
from rd2t.errors import CheckpointError

FORMAT = "rd2t-checkpoint"
FORMAT_VERSION = 1


def save(path: str | Path, payload: dict) -> Path:
    """Write via a temp file in the same folder and rename: a crash never leaves a half file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "rd2t_version": __version__, **payload}
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it owner-only; models are deployed as other users
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load(path: str | Path) -> dict:
    """The checkpoint's dict, or CheckpointError naming the file and what is wrong with it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated zip, pickle error, foreign file: all unusable
        raise CheckpointError(
            f"{path}: not a readable rd2t checkpoint (truncated or corrupt: {type(e).__name__})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an rd2t checkpoint")
    if payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {payload.get('format_version')} "
            f"from rd2t {payload.get('rd2t_version')}, "
            f"this rd2t {__version__} reads format {FORMAT_VERSION}"
        )
    return payload


def config_of(payload: dict) -> Config:
    return Config.from_dict(payload["config"])
