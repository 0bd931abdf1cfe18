"""Training loop: RD4AD's recipe (Adam 0.005, betas (0.5, 0.999), batch 16, no augmentation).

Frozen teachers and no augmentation mean every teacher feature is a fixed function of its image, so
features are computed once and cached (memory or disk, fp16); each epoch then runs only the trainable
part. Checkpoints are written atomically after every epoch; `resume=True` continues from the last one
and gives the same weights as an uninterrupted run (the per-epoch shuffle is seeded by (seed, epoch)).
"""

from __future__ import annotations

import hashlib
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from rd2t import checkpoint
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
    """Teacher features of every training image, fp16, in memory or in memmapped files on disk."""

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
        if kind == "disk":
            assert folder is not None
            folder.mkdir(parents=True, exist_ok=True)
        shapes = None
        bar = tqdm(total=len(images), desc="caching teacher features", disable=not progress, leave=False)
        done_marker = folder / f"{key}.done" if folder is not None else None
        reuse = kind == "disk" and done_marker.exists()
        for start in range(0, len(images), batch_size):
            if reuse and shapes is not None:
                break
            feats = model.teacher_features(to_model_input(images[start : start + batch_size].to(device)))
            if shapes is None:
                shapes = [[(len(images), *f.shape[1:]) for f in tf] for tf in feats]
                self.arrays = [
                    [self._alloc(folder, key, t, s, shape, reuse) for s, shape in enumerate(ts)]
                    for t, ts in enumerate(shapes)
                ]
                if reuse:
                    break
            for t, tf in enumerate(feats):
                for s, f in enumerate(tf):
                    arr = self.arrays[t][s]
                    chunk = f.half().cpu()
                    arr[start : start + len(f)] = chunk if kind == "memory" else chunk.numpy()
            bar.update(len(feats[0][0]))
        bar.close()
        if kind == "disk" and not reuse:
            for ts in self.arrays:
                for a in ts:
                    a.flush()
            done_marker.touch()

    @staticmethod
    def _key(model: RD2T, images: torch.Tensor) -> str:
        h = hashlib.sha1()
        h.update(
            repr((model.config.teachers, model.config.teacher_weights, model.config.out_indices)).encode()
        )
        h.update(images.numpy().tobytes())
        return h.hexdigest()[:16]

    def _alloc(self, folder, key, t, s, shape, reuse):
        if self.kind == "memory":
            return torch.empty(shape, dtype=torch.float16)
        mode = "r" if reuse else "w+"
        return np.lib.format.open_memmap(
            folder / f"{key}_t{t}_s{s}.npy", mode=mode, dtype=np.float16, shape=shape
        )

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
    """
    out_dir = Path(out_dir)
    last_path, final_path = out_dir / "last.pt", out_dir / "model.pt"
    device = resolve_device(config.device)
    start_epoch, history, state = 0, [], None
    if resume and last_path.exists():
        state = checkpoint.load(last_path)
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

    cache = None
    if config.cache != "none":
        cache = FeatureCache(
            model, images, config.cache, out_dir / "cache", device, config.batch_size, progress
        )

    epochs_run = 0
    bar = tqdm(
        range(start_epoch, config.epochs),
        desc="training",
        disable=not progress,
        initial=start_epoch,
        total=config.epochs,
    )
    for epoch in bar:
        model.train()
        order = torch.randperm(n, generator=torch.Generator().manual_seed(config.seed * 100_003 + epoch))
        losses = []
        for start in range(0, n - batch_size + 1, batch_size):
            idx = order[start : start + batch_size]
            if cache is not None:
                features = cache.get(idx)
            else:
                features = model.teacher_features(to_model_input(images[idx].to(device)))
            loss = model.loss(features, model.reconstruct(features))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        history.append(float(np.mean(losses)))
        bar.set_postfix(loss=f"{history[-1]:.4f}")
        checkpoint.save(last_path, _payload(model, optimizer, epoch + 1, history, files, complete=False))
        epochs_run += 1
        if stop_after is not None and epochs_run >= stop_after and epoch + 1 < config.epochs:
            return TrainResult(model, last_path, history)

    # Threshold from held-out good images; without any, the training images' scores (biased low: more alarms).
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
    return TrainResult(model, final_path, history, threshold)


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
