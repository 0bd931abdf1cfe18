"""How `rd2t train` starts: one process, or one of N under torchrun (see rd2t.training.distributed)."""

from __future__ import annotations

import os
from pathlib import Path

from rd2t.config import Config
from rd2t.data.datasets import Sample
from rd2t.training import distributed as ddp
from rd2t.training.loop import TrainResult, train


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def maybe_distributed_train(
    config: Config,
    images: list[Path],
    out_dir: Path,
    *,
    resume: bool = False,
    progress: bool = True,
    held_out: list[Path] | None = None,
    val_defects: list[Sample] | None = None,
) -> TrainResult | None:
    """Plain training, or DDP when launched by torchrun (WORLD_SIZE > 1); None on ranks other than 0."""
    run = train if world_size() <= 1 else train_distributed
    return run(
        config,
        images,
        out_dir,
        resume=resume,
        progress=progress,
        held_out=held_out,
        val_defects=val_defects,
    )


def train_distributed(
    config: Config,
    good_images: list[Path],
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    held_out: list[Path] | None = None,
    val_defects: list[Sample] | None = None,
) -> TrainResult | None:
    """`train` as one process of a torchrun launch: joins the process group (NCCL on GPUs, gloo on CPU),
    trains with DDP, leaves the group (always). The result on rank 0, None on the other ranks."""
    with ddp.process_group(config.device) as rank:
        result = train(
            config,
            good_images,
            out_dir,
            resume=resume,
            progress=progress,
            held_out=held_out,
            val_defects=val_defects,
        )
    ddp.local_batchnorm(result.model)  # plain BatchNorm2d again, as from a single-process run
    return result if rank == 0 else None
