"""Training loop: RD4AD's recipe (Adam 0.005, betas (0.5, 0.999), batch 16, no augmentation).

Frozen teachers and no augmentation mean every teacher feature is a fixed function of its image, so
features are computed once and cached (memory or disk, fp16); each epoch then runs only the trainable
part. Checkpoints are written atomically after every epoch; `resume=True` continues from the last one
and gives the same weights as an uninterrupted run (the per-epoch shuffle is seeded by (seed, epoch)).

Under torchrun the same loop runs on every rank (see rd2t.distributed): each rank takes its slice of every
global batch, teacher features are computed shard by shard and exchanged once, BatchNorm and gradients are
synchronised, and only rank 0 writes checkpoints, shows progress and calibrates the threshold.
"""

from __future__ import annotations

import hashlib
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from rd2t import checkpoint
from rd2t import distributed as ddp
from rd2t.config import Config
from rd2t.errors import InputError, RD2TError
from rd2t.model import RD2T, Features
from rd2t.transforms import to_model_input, to_uint8_tensor


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RD2TError(f"device {name!r} requested but CUDA is not available")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_training_images(
    paths: list[Path], size: int, progress: bool = True
) -> tuple[torch.Tensor, list[Path]]:
    """Read and resize every image once; an unreadable one is reported and skipped, not fatal."""
    from rd2t.data import load_image

    tensors, kept = [], []
    for p in tqdm(paths, desc="reading images", disable=not progress, leave=False):
        try:
            tensors.append(to_uint8_tensor(load_image(p), size))
            kept.append(Path(p))
        except InputError as e:
            print(f"skipped: {e}", file=sys.stderr)
    if not tensors:
        raise InputError("no readable training images")
    return torch.stack(tensors), kept


def split_validation(paths: list[Path], fraction: float, seed: int) -> tuple[list[Path], list[Path]]:
    """Hold out a seeded share of the good images for threshold calibration (at least 2 stay for training)."""
    paths = sorted(paths)
    n_val = min(int(round(fraction * len(paths))), max(len(paths) - 2, 0))
    order = np.random.default_rng(seed).permutation(len(paths))
    val = sorted(paths[i] for i in order[:n_val])
    train = sorted(paths[i] for i in order[n_val:])
    return train, val


class FeatureCache:
    """Teacher features of every training image, fp16, in memory or in memmapped files on disk.

    In a distributed run each rank computes the features of its own contiguous shard of the images only;
    the memory cache then exchanges the shards once (all_gather), the disk cache has every rank write its
    rows into the same files (one folder shared by all ranks: always so on one machine).
    """

    def __init__(
        self,
        model: RD2T,
        images: torch.Tensor,
        kind: str,
        folder: Path | None,
        device: torch.device,
        batch_size: int = 16,
        progress: bool = True,
    ):
        self.kind, self.device, self.arrays = kind, device, []
        key = self._key(model, images)
        lo, hi = ddp.shard_bounds(len(images))  # (0, n) with one process
        if kind == "disk":
            assert folder is not None
            folder.mkdir(parents=True, exist_ok=True)
        shapes = None
        bar = tqdm(total=hi - lo, desc="caching teacher features", disable=not progress, leave=False)
        done_marker = folder / f"{key}.done" if folder is not None else None
        reuse = kind == "disk" and done_marker.exists()
        for start in range(lo, hi, batch_size):
            if reuse and shapes is not None:
                break
            batch = images[start : min(start + batch_size, hi)]
            feats = model.teacher_features(to_model_input(batch.to(device)))
            if shapes is None:
                shapes = [[(len(images), *f.shape[1:]) for f in tf] for tf in feats]
                self.arrays = self._alloc_all(folder, key, shapes, reuse)
                if reuse:
                    break
            for t, tf in enumerate(feats):
                for s, f in enumerate(tf):
                    arr = self.arrays[t][s]
                    chunk = f.half().cpu()
                    arr[start : start + len(f)] = chunk if kind == "memory" else chunk.numpy()
            bar.update(len(feats[0][0]))
        bar.close()
        if kind == "memory":
            for ts in self.arrays:
                for a in ts:
                    ddp.gather_rows(a, device)  # the other ranks' shards (nothing to do with one process)
        if kind == "disk" and not reuse:
            for ts in self.arrays:
                for a in ts:
                    a.flush()
            ddp.barrier()  # every rank's rows are on disk
            rank, world = ddp.rank_and_world()
            if rank == 0:
                done_marker.touch()
            if world > 1:  # reopen read-only what the other ranks wrote (a fresh view on a network FS)
                self.arrays = self._alloc_all(folder, key, shapes, reuse=True)

    @staticmethod
    def _key(model: RD2T, images: torch.Tensor) -> str:
        h = hashlib.sha1()
        h.update(
            repr((model.config.teachers, model.config.teacher_weights, model.config.out_indices)).encode()
        )
        h.update(images.numpy().tobytes())
        return h.hexdigest()[:16]

    def _alloc_all(self, folder, key, shapes, reuse):
        # New disk files are created by rank 0; the other ranks open them once they exist.
        rank, world = ddp.rank_and_world()
        create = self.kind == "disk" and not reuse and world > 1
        if create and rank > 0:
            ddp.barrier()
        arrays = [
            [self._alloc(folder, key, t, s, shape, reuse, rank) for s, shape in enumerate(ts)]
            for t, ts in enumerate(shapes)
        ]
        if create and rank == 0:
            ddp.barrier()
        return arrays

    def _alloc(self, folder, key, t, s, shape, reuse, rank=0):
        if self.kind == "memory":
            return torch.empty(shape, dtype=torch.float16)
        mode = "r" if reuse else "w+" if rank == 0 else "r+"
        path = folder / f"{key}_t{t}_s{s}.npy"
        if mode != "w+" and not path.exists():
            raise RD2TError(
                f"{path}: not visible from rank {rank}; a distributed disk cache needs an output folder "
                "shared by all ranks (or use --cache memory)"
            )
        return np.lib.format.open_memmap(path, mode=mode, dtype=np.float16, shape=shape)

    def get(self, index: torch.Tensor) -> Features:
        idx = index.numpy()
        out = []
        for ts in self.arrays:
            row = []
            for a in ts:
                t = (
                    a[index]
                    if self.kind == "memory"
                    else torch.from_numpy(np.ascontiguousarray(a[np.sort(idx)]))
                )
                row.append(t.to(self.device).float())
            out.append(row)
        if self.kind == "disk":  # memmap gathers need sorted indices; restore the shuffled order
            inv = torch.from_numpy(np.argsort(np.argsort(idx)))
            out = [[f[inv.to(f.device)] for f in ts] for ts in out]
        return out


# ---- thresholds -------------------------------------------------------------------------------------


def calibrate_threshold(scores: np.ndarray, rule: str) -> float:
    """Pass/fail threshold from defect-free validation scores only (never from test anomalies).

    "mean+Kstd" (default K=3), "quantile:Q" or "max".
    """
    scores = np.asarray(scores, dtype=np.float64)
    if rule == "max":
        return float(scores.max())
    if rule.startswith("quantile:"):
        return float(np.quantile(scores, float(rule.split(":", 1)[1])))
    if rule.startswith("mean+") and rule.endswith("std"):
        k = float(rule[len("mean+") : -len("std")] or 1)
        return float(scores.mean() + k * scores.std(ddof=1 if len(scores) > 1 else 0))
    raise RD2TError(f"unknown threshold rule {rule!r}: use mean+Kstd, quantile:Q or max")


@torch.no_grad()
def score_images(model: RD2T, images: torch.Tensor, device: torch.device, batch_size: int = 16) -> np.ndarray:
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        scores, _ = model(to_model_input(images[start : start + batch_size].to(device)))
        out.append(scores.cpu())
    return torch.cat(out).numpy() if out else np.zeros(0)


# ---- the loop ---------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    model: RD2T
    checkpoint: Path
    history: list[float] = field(default_factory=list)
    threshold: dict = field(default_factory=dict)
    epoch_seconds: list[float] = field(default_factory=list)  # this call's epochs, for benchmarks
    cache_seconds: float = 0.0


def _payload(model: RD2T, optimizer, epoch: int, history, files, complete: bool, threshold=None) -> dict:
    return {
        "config": model.config.to_dict(),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "epoch": epoch,
        "history": list(history),
        "train_files": [str(p) for p in files["train"]],
        "val_files": [str(p) for p in files["val"]],
        "complete": complete,
        "threshold": threshold,
    }


def train(
    config: Config,
    good_images: list[Path],
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
) -> TrainResult:
    """Train on defect-free images; writes out_dir/last.pt every epoch and out_dir/model.pt at the end.

    `stop_after` ends the run after that many epochs *of this call* (as an interruption would); the
    checkpoint then says incomplete and `resume=True` continues it.
    Inside a process group (train_distributed) every rank calls this; see the module docstring.
    """
    out_dir = Path(out_dir)
    last_path, final_path = out_dir / "last.pt", out_dir / "model.pt"
    rank, world = ddp.rank_and_world()
    progress = progress and rank == 0
    device = resolve_device(config.device)
    start_epoch, history, state = 0, [], None
    if resume:  # rank 0 reads the checkpoint and sends it to the others: only its out_dir must hold it
        state = ddp.from_rank0(lambda: checkpoint.load(last_path) if last_path.exists() else None)
    if state is not None:
        config = checkpoint.config_of(state).replace(device=config.device, epochs=config.epochs)
        start_epoch, history = state["epoch"], state["history"]
        train_paths, val_paths = (
            [Path(p) for p in state["train_files"]],
            [Path(p) for p in state["val_files"]],
        )
    else:
        train_paths, val_paths = split_validation(list(good_images), config.val_fraction, config.seed)

    seed_everything(config.seed)
    model = RD2T(config, pretrained=config.pretrained if state is None else False).to(device)
    if world > 1:
        ddp.sync_batchnorm(model, device)  # BatchNorm statistics over the global batch, as in one process
    optimizer = torch.optim.Adam(model.trainable_parameters(), lr=config.lr, betas=config.betas)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])

    images, train_paths = load_training_images(train_paths, config.image_size, progress)
    val_images, val_paths = (
        load_training_images(val_paths, config.image_size, progress)
        if val_paths
        else (torch.zeros(0, 3, 1, 1, dtype=torch.uint8), [])
    )
    files = {"train": train_paths, "val": val_paths}
    n = len(images)
    if n < 2:
        raise InputError(f"{len(train_paths)} training image(s): at least 2 are needed")
    batch_size = min(config.batch_size, n)  # partial batches are dropped: BN needs > 1 sample
    local_batch = ddp.local_batch_size(n, batch_size)  # batch_size // world; fails on every rank if it can't
    steps = n // batch_size

    cache, t_cache = None, time.perf_counter()
    if config.cache != "none":
        cache = FeatureCache(
            model, images, config.cache, out_dir / "cache", device, config.batch_size, progress
        )
    cache_seconds, epoch_seconds = time.perf_counter() - t_cache, []

    reconstruct = ddp.data_parallel(model, device) if world > 1 else model.reconstruct
    epochs_run = 0
    bar = tqdm(
        range(start_epoch, config.epochs),
        desc="training",
        disable=not progress,
        initial=start_epoch,
        total=config.epochs,
    )
    for epoch in bar:
        t_epoch = time.perf_counter()
        model.train()
        order = torch.randperm(n, generator=torch.Generator().manual_seed(config.seed * 100_003 + epoch))
        # This rank's share, DistributedSampler's layout: every world-th index of the permutation (all of it
        # with one process). Its k-th batch of local_batch and the other ranks' k-th batches together are
        # order[k * batch_size : (k + 1) * batch_size], the k-th batch of a single-process run.
        mine = order[: steps * batch_size][rank::world]
        losses = []
        for start in range(0, steps * local_batch, local_batch):
            idx = mine[start : start + local_batch]
            if cache is not None:
                features = cache.get(idx)
            else:
                features = model.teacher_features(to_model_input(images[idx].to(device)))
            loss = model.loss(features, reconstruct(features))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        history.append(ddp.mean_over_ranks(float(np.mean(losses)), device))
        epoch_seconds.append(time.perf_counter() - t_epoch)
        bar.set_postfix(loss=f"{history[-1]:.4f}")
        if rank == 0:
            checkpoint.save(last_path, _payload(model, optimizer, epoch + 1, history, files, complete=False))
        epochs_run += 1
        if stop_after is not None and epochs_run >= stop_after and epoch + 1 < config.epochs:
            return TrainResult(
                model, last_path, history, epoch_seconds=epoch_seconds, cache_seconds=cache_seconds
            )

    # Threshold from held-out good images; without any, the training images' scores (biased low: more alarms).
    # Rank 0 only (the weights are the same everywhere); the other ranks wait until model.pt is written.
    threshold = {}
    if rank == 0:
        calib = val_images if len(val_images) else images
        scores = score_images(model, calib, device, config.batch_size)
        threshold = {
            "value": calibrate_threshold(scores, config.threshold_rule),
            "rule": config.threshold_rule,
            "source": "validation" if len(val_images) else "training images (no validation images held out)",
            "scores": scores.tolist(),
        }
        payload = _payload(model, None, config.epochs, history, files, complete=True, threshold=threshold)
        checkpoint.save(final_path, payload)
        checkpoint.save(last_path, {**payload, "optimizer": optimizer.state_dict()})
    ddp.barrier()
    return TrainResult(model, final_path, history, threshold, epoch_seconds, cache_seconds)


def train_distributed(
    config: Config,
    good_images: list[Path],
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
) -> TrainResult | None:
    """`train` as one process of a torchrun launch: joins the process group (NCCL on GPUs, gloo on CPU),
    trains with DDP, leaves the group (always). The result on rank 0, None on the other ranks."""
    with ddp.process_group(config.device) as rank:
        result = train(config, good_images, out_dir, resume=resume, progress=progress)
    ddp.local_batchnorm(result.model)  # plain BatchNorm2d again, as from a single-process run
    return result if rank == 0 else None


def load_model(path: str | Path, device: str = "cpu") -> tuple[RD2T, dict]:
    """A trained model (teacher weights included in the checkpoint: no download) and its payload."""
    payload = checkpoint.load(path)
    config = checkpoint.config_of(payload).replace(device=device)
    model = RD2T(config, pretrained=False)
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as e:
        raise RD2TError(
            f"{path}: weights do not fit the model its config describes ({str(e).splitlines()[0]})"
        ) from None
    return model.to(resolve_device(device)).eval(), payload
