"""Inference: a trained model (torch checkpoint or exported ONNX) over images, paths, folders and globs.

One unreadable image is reported and skipped; the others are scored. Maps are returned at each image's
original size so they line up with the user's picture.
"""

from __future__ import annotations

import glob
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from rd2t.data import list_images, load_image
from rd2t.errors import InputError, RD2TError
from rd2t.evaluate import upsample
from rd2t.transforms import to_model_input, to_pil, to_uint8_tensor


@dataclass
class Prediction:
    score: float
    is_defective: bool | None  # None when the model has no threshold
    anomaly_map: np.ndarray  # float32 (H, W) at the image's original size
    path: Path | None = None

    def defect_mask(self, threshold: float) -> np.ndarray:
        return self.anomaly_map > threshold


class Backend:
    """Scores (B,) and maps (B, S, S) from a uint8 batch; torch or ONNX Runtime behind one interface."""

    image_size: int
    threshold: float | None
    val_scores: list[float]

    @staticmethod
    def open(
        path: str | Path, device: str = "cpu", backend: str = "auto", threads: int | None = None
    ) -> Backend:
        path = Path(path)
        if backend == "onnx" or (backend == "auto" and path.suffix == ".onnx"):
            return OnnxBackend(path, threads)
        if path.suffix == ".onnx":
            raise RD2TError(f"{path}: an ONNX file needs --backend onnx")
        return TorchBackend(path, device)

    def __call__(self, batch_uint8: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError


class TorchBackend(Backend):
    def __init__(self, path: Path, device: str = "cpu"):
        from rd2t.train import load_model

        self.model, payload = load_model(path, device)
        self.device = next(self.model.parameters()).device
        # On CPU, channels-last measured 1.3-1.5x faster for the EfficientNet presets but 2-3x slower for
        # the WideResNet ones (docs/performance.md); same results to float rounding.
        lite = all("efficientnet" in t for t in self.model.config.teachers)
        cpu_lite = self.device.type == "cpu" and lite
        self.memory_format = torch.channels_last if cpu_lite else torch.contiguous_format
        self.model = self.model.to(memory_format=self.memory_format)
        self.image_size = self.model.config.image_size
        thr = payload.get("threshold") or {}
        self.threshold = thr.get("value")
        self.val_scores = thr.get("scores", [])
        self.config = self.model.config

    @torch.no_grad()
    def __call__(self, batch_uint8: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        x = to_model_input(batch_uint8.to(self.device)).contiguous(memory_format=self.memory_format)
        scores, maps = self.model(x)
        return scores.cpu().numpy(), maps.cpu().numpy()


class OnnxBackend(Backend):
    def __init__(self, path: Path, threads: int | None = None):
        from rd2t.export import OnnxDetector

        self.detector = OnnxDetector(path, threads=threads)
        self.image_size = self.detector.image_size
        self.threshold = self.detector.threshold
        self.val_scores = list(self.detector.metadata.get("val_scores", []) or [])

    def __call__(self, batch_uint8: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        return self.detector.predict(to_model_input(batch_uint8).numpy())


def expand_paths(items: Iterable[str | Path]) -> tuple[list[Path], list[str]]:
    """Files, folders (their images) and globs -> image paths, plus one error line per unusable item."""
    paths, errors = [], []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = list_images(p)
            if not found:
                errors.append(f"{p}: folder holds no images")
            paths.extend(found)
        elif p.is_file():
            paths.append(p)
        elif any(c in str(item) for c in "*?["):
            found = sorted(Path(m) for m in glob.glob(str(item), recursive=True) if Path(m).is_file())
            if not found:
                errors.append(f"{item}: pattern matches no file")
            paths.extend(found)
        else:
            errors.append(f"{p}: no such file or folder")
    return paths, errors


def predict_images(
    backend: Backend, images: Iterable, *, batch_size: int = 16, threshold: float | None = None
) -> Iterator[Prediction | InputError]:
    """Predictions for paths, PIL images or arrays, in order; an unreadable path yields its InputError."""
    threshold = backend.threshold if threshold is None else threshold
    size = backend.image_size
    pending: list[tuple[Path | None, tuple[int, int]]] = []
    tensors: list[torch.Tensor] = []

    def flush() -> Iterator[Prediction]:
        scores, maps = backend(torch.stack(tensors))
        for (path, wh), sc, m in zip(pending, scores, maps, strict=True):
            decision = None if threshold is None else bool(sc > threshold)
            yield Prediction(float(sc), decision, upsample(m.astype(np.float32), wh), path)
        pending.clear()
        tensors.clear()

    for item in images:
        path = None
        if isinstance(item, (str, Path)):
            path = Path(item)
            try:
                img = load_image(path)
            except InputError as e:
                yield e
                continue
        else:
            img = to_pil(item)
        pending.append((path, img.size))
        tensors.append(to_uint8_tensor(img, size))
        if len(tensors) == batch_size:
            yield from flush()
    if tensors:
        yield from flush()


def save_overlay(pred: Prediction, image: Image.Image, out: Path, low: float, high: float) -> Path:
    from rd2t.report.heatmap import overlay

    out.parent.mkdir(parents=True, exist_ok=True)
    overlay(image, pred.anomaly_map, low, high).save(out)
    return out


def map_range(backend: Backend) -> tuple[float, float]:
    """Heat-map colour scale shared by all images: from typical good scores up to well past the threshold."""
    vals = np.asarray(backend.val_scores, dtype=float)
    thr = backend.threshold
    if len(vals) and thr is not None:
        low = float(np.median(vals)) * 0.5
        return low, max(thr * 1.5, low + 1e-6)
    if thr is not None:
        return thr * 0.3, thr * 1.5
    return 0.0, 1.0
