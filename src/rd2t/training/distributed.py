"""Multi-process training under torchrun (DistributedDataParallel); single-process runs go straight to train.

`torchrun --nproc-per-node N -m rd2t train ...` starts N copies of the command; each sees WORLD_SIZE, RANK
and LOCAL_RANK and `rd2t.training.launcher` then runs `train_distributed`. The loop itself is
`rd2t.training.loop.train`, made rank-aware with the helpers below (all of them are no-ops with one process):

* the global batch is `batch_size`, split evenly over the ranks; every rank draws the same seeded per-epoch
  permutation and takes every WORLD_SIZE-th index of it (DistributedSampler's layout), so step k of any
  world size trains on the same images as step k of a single process;
* BatchNorm runs over the global batch (torch.nn.SyncBatchNorm on GPUs, `GlobalBatchNorm2d` below on CPU,
  where PyTorch has none), which with DDP's gradient averaging gives the single-process weights up to
  float rounding;
* teacher features are computed for one contiguous shard of the images per rank and exchanged once
  (all_gather), since the per-epoch reshuffle sends every image to every rank sooner or later;
* the process group is NCCL on GPUs, gloo on CPU, from env:// with a timeout (RD2T_DIST_TIMEOUT seconds,
  default 600) so that no rank waits forever on one that died.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

from rd2t.errors import RD2TError

DEFAULT_TIMEOUT_S = 600.0
T = TypeVar("T")


# ---- process group -----------------------------------------------------------------------------------


def timeout() -> timedelta:
    """How long a collective may wait for the other ranks: RD2T_DIST_TIMEOUT seconds (default 600)."""
    raw = os.environ.get("RD2T_DIST_TIMEOUT", "")
    try:
        seconds = float(raw) if raw.strip() else DEFAULT_TIMEOUT_S
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise RD2TError(f"RD2T_DIST_TIMEOUT={raw!r}: expected a positive number of seconds")
    return timedelta(seconds=seconds)


def _backend(device_name: str) -> tuple[str, int | None]:
    """("nccl", local GPU index) for GPU training, ("gloo", None) for CPU training."""
    if device_name == "cpu" or (device_name == "auto" and not torch.cuda.is_available()):
        return "gloo", None
    if device_name.startswith("cuda:"):
        raise RD2TError(
            f"--device {device_name} would put every process on one GPU: use --device cuda "
            "(process i then uses cuda:LOCAL_RANK)"
        )
    if device_name not in ("auto", "cuda"):
        raise RD2TError(f"device {device_name!r}: distributed training runs on cpu or cuda")
    if not torch.cuda.is_available():
        raise RD2TError(f"device {device_name!r} requested but CUDA is not available")
    local_rank, n_gpus = int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.device_count()
    if local_rank >= n_gpus:
        raise RD2TError(
            f"LOCAL_RANK {local_rank} but {n_gpus} GPU(s) visible: use --nproc-per-node {n_gpus} or fewer"
        )
    return "nccl", local_rank


@contextmanager
def process_group(device_name: str) -> Iterator[int]:
    """Join the torchrun job (env://) for the duration of the block; yields this process's rank.

    NCCL with one GPU per process (cuda:LOCAL_RANK) for cuda/auto on a GPU machine, gloo for CPU. The group
    is always destroyed on the way out, error or not. A group that already exists (set up by the caller)
    is used as it is and left alone.
    """
    if dist.is_initialized():
        yield dist.get_rank()
        return
    backend, gpu = _backend(device_name)
    wait = timeout()
    kwargs = {}
    if gpu is not None:
        torch.cuda.set_device(gpu)  # "cuda" now means this process's GPU everywhere
        if "device_id" in inspect.signature(dist.init_process_group).parameters:  # torch >= 2.3
            kwargs["device_id"] = torch.device("cuda", gpu)
    dist.init_process_group(backend, init_method="env://", timeout=wait, **kwargs)
    try:
        yield dist.get_rank()
    finally:
        dist.destroy_process_group()


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the current process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    if rank_and_world()[1] > 1:
        dist.barrier()


def from_rank0(fn: Callable[[], T]) -> T:
    """fn() evaluated on rank 0 only and sent to every rank; an RD2TError it raises, raised on every rank."""
    rank, world = rank_and_world()
    if world == 1:
        return fn()
    box: list = [None]
    if rank == 0:
        try:
            box[0] = (fn(), None)
        except RD2TError as e:
            box[0] = (None, e)
    dist.broadcast_object_list(box, src=0)
    value, error = box[0]
    if error is not None:
        raise error
    return value


def mean_over_ranks(value: float, device: torch.device) -> float:
    world = rank_and_world()[1]
    if world == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / world


# ---- data --------------------------------------------------------------------------------------------


def local_batch_size(n_images: int, batch_size: int) -> int:
    """This rank's share of the global batch; a one-line RD2TError, on every rank, when it cannot be split.

    At least 2 images per process (global-batch BatchNorm would run with 1, but plain BatchNorm, used
    outside training and by every single-process run, needs 2, and so does this rule for the data).

    The check is the same pure function of the data on every rank; a barrier first lines the ranks up, so
    they all fail together, before any training or checkpoint, instead of one rank exiting while another
    is still reading images (torchrun stops the others as soon as one worker has failed).
    """
    world = rank_and_world()[1]
    if world == 1:
        return batch_size
    barrier()
    if n_images < 2 * world:
        most = n_images // 2
        raise RD2TError(
            f"{n_images} training images for {world} processes: each process needs at least 2; run "
            f"{most} process{'es' if most != 1 else ''} in all (nodes x --nproc-per-node) or add images"
        )
    source = "--batch-size" if batch_size < n_images else "the number of training images"
    if batch_size % world:
        raise RD2TError(
            f"global batch {batch_size} ({source}) does not split evenly over {world} processes: "
            f"use a batch size that is a multiple of {world}"
        )
    if batch_size // world < 2:
        raise RD2TError(
            f"global batch {batch_size} over {world} processes is {batch_size // world} per process; "
            f"BatchNorm needs at least 2: use --batch-size {2 * world} or more"
        )
    return batch_size // world


def shard_bounds(n: int, rank: int | None = None) -> tuple[int, int]:
    """Rows [lo, hi) of n that this rank (or `rank`) computes teacher features for: contiguous, near-equal."""
    r, world = rank_and_world()
    r = r if rank is None else rank
    return r * n // world, (r + 1) * n // world


def gather_rows(array: torch.Tensor, device: torch.device) -> None:
    """Fill, in place, the rows of `array` that other ranks computed (each rank filled its shard_bounds)."""
    rank, world = rank_and_world()
    if world == 1:
        return
    bounds = [shard_bounds(len(array), r) for r in range(world)]
    rows = max(hi - lo for lo, hi in bounds)  # all_gather wants equal sizes: pad the shorter shards
    lo, hi = bounds[rank]
    send = torch.zeros((rows, *array.shape[1:]), dtype=array.dtype, device=device)
    send[: hi - lo] = array[lo:hi].to(device)
    parts = [torch.empty_like(send) for _ in range(world)]
    dist.all_gather(parts, send)
    for (lo, hi), part in zip(bounds, parts, strict=True):
        array[lo:hi] = part[: hi - lo].to(array.device)


# ---- model -------------------------------------------------------------------------------------------


class _SumOverRanks(torch.autograd.Function):
    """all_reduce(SUM) with its gradient: the gradient of a sum over ranks is the sum of the gradients."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the global batch, for CPU (gloo) process groups.

    torch.nn.SyncBatchNorm only runs on GPUs. Same maths, written with a differentiable all-reduce: the
    two-pass mean and biased variance of the batch over all ranks normalise, the unbiased variance
    updates the running statistics, exactly as BatchNorm2d does for the same batch in one process.
    Outside training, or without a process group, it is BatchNorm2d.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        world = rank_and_world()[1]
        if not self.training or world == 1:
            return super().forward(x)
        count = x.numel() // x.shape[1] * world
        mean = _SumOverRanks.apply(x.sum((0, 2, 3))) / count
        centred = x - mean.view(1, -1, 1, 1)
        var = _SumOverRanks.apply((centred * centred).sum((0, 2, 3))) / count
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1 / self.num_batches_tracked.item()
                self.running_mean.lerp_(mean, m)
                self.running_var.lerp_(var * count / max(count - 1, 1), m)
        y = centred * torch.rsqrt(var + self.eps).view(1, -1, 1, 1)
        if self.affine:
            y = y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return y


def _swap_batchnorm(module: nn.Module, old: tuple[type, ...], new: type) -> None:
    for name, child in module.named_children():
        if type(child) in old:
            bn = new(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
            bn.load_state_dict(child.state_dict())
            like = next((t for t in child.state_dict().values() if t.is_floating_point()), torch.empty(0))
            setattr(module, name, bn.to(like.device, like.dtype).train(child.training))
        else:
            _swap_batchnorm(child, old, new)


def sync_batchnorm(model: nn.Module, device: torch.device) -> None:
    """Global-batch BatchNorm in the trainable modules (the frozen teachers stay in eval mode, untouched).

    Call before the optimizer is built: the parameters are new objects (same names, same values).
    """
    new = nn.SyncBatchNorm if device.type == "cuda" else GlobalBatchNorm2d
    for name, child in model.named_children():
        if name != "teachers":
            _swap_batchnorm(child, (nn.BatchNorm2d,), new)


def local_batchnorm(model: nn.Module) -> None:
    """Back to plain BatchNorm2d (same state), as a single-process run returns the model."""
    _swap_batchnorm(model, (nn.SyncBatchNorm, GlobalBatchNorm2d), nn.BatchNorm2d)


class _Trainable(nn.Module):
    """The student side as one module for DDP: it registers (and syncs) none of the frozen teachers."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.parts = nn.ModuleList(m for name, m in model.named_children() if name != "teachers")
        self.reconstruct = model.reconstruct

    def forward(self, features):
        return self.reconstruct(features)


def data_parallel(model: nn.Module, device: torch.device) -> nn.Module:
    """DDP around model.reconstruct: call it like model.reconstruct; gradients are averaged over ranks.

    Buffers are not broadcast each step: with global-batch BatchNorm the running statistics are already
    equal on every rank.
    """
    ddp_class = nn.parallel.DistributedDataParallel
    ids = [torch.cuda.current_device()] if device.type == "cuda" else None
    new_name = "forward_sync_buffers" in inspect.signature(ddp_class).parameters  # torch >= 2.14
    no_sync = {"forward_sync_buffers" if new_name else "broadcast_buffers": False}
    return ddp_class(_Trainable(model), device_ids=ids, **no_sync)
