"""Distributed training entry (torchrun). Single-process runs go straight to rd2t.train.train."""

from __future__ import annotations

import os
from pathlib import Path

from rd2t.config import Config
from rd2t.train import TrainResult, train


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def maybe_distributed_train(
    config: Config, images: list[Path], out_dir: Path, *, resume: bool = False, progress: bool = True
) -> TrainResult | None:
    """Plain training, or DDP when launched by torchrun (WORLD_SIZE > 1); None on ranks other than 0."""
    if world_size() <= 1:
        return train(config, images, out_dir, resume=resume, progress=progress)
    from rd2t.train import train_distributed

    return train_distributed(config, images, out_dir, resume=resume, progress=progress)
