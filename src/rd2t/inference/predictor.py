"""The one path from an image to a verdict. Every entry point scores through `Predictor.predict`:
`rd2t predict`, `rd2t evaluate`, the service, the demo, the benchmark and `Detector`.

    item (path | PIL | array) --decode--> RGB --resize--> uint8 (3, S, S) --backend--> score, map
    --> decision (score > threshold; a NaN score is an error, never a pass) --> map at the image's size

One unreadable image is yielded as its error, in order, and the others are scored. Decoding of the next
images runs in threads while the backend scores the current batch.
"""

from __future__ import annotations

import glob
import math
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from rd2t.calibration import Calibration
from rd2t.config import Config
from rd2t.data.images import list_images
from rd2t.data.transforms import decode, resize_map, to_uint8_tensor
from rd2t.errors import ConfigError, InputError, RD2TError
from rd2t.inference.backends import TorchBackend, open_backend
from rd2t.inference.tiling import Stitcher, Tiler
from rd2t.model.checkpoint import ModelInfo


class ScoreError(RD2TError):
    """The model gave a non-finite score for an image: an error for that image, never a pass."""


@dataclass(eq=False)
class Prediction:
    score: float
    is_defective: bool | None  # None when the model has no threshold
    model_map: np.ndarray  # float32 (S, S) at the model's input size; tiled: the stitched map (H', W')
    size: tuple[int, int]  # the image's own (W, H)
    path: Path | None = None
    image: Image.Image | None = None  # the decoded RGB image, when asked to keep it
    timings: dict[str, float] = field(default_factory=dict)  # milliseconds: decode, model

    @cached_property
    def anomaly_map(self) -> np.ndarray:
        """float32 (H, W) at the image's own size (computed on first use)."""
        return resize_map(self.model_map, self.size)

    def defect_mask(self, threshold: float) -> np.ndarray:
        return self.anomaly_map > threshold


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


def check_threshold(value) -> float | None:
    if value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"threshold {value!r}: expected a number") from None
    if not math.isfinite(value):
        raise ConfigError(f"threshold {value}: expected a finite number (NaN would pass every image)")
    return value


class Predictor:
    """A trained model (`.pt` or `.onnx`) that turns images into Predictions."""

    def __init__(self, backend, info: ModelInfo):
        self.backend = backend
        self.info = info
        self.image_size: int = backend.image_size
        self._threshold = check_threshold(info.calibration.threshold if info.calibration else None)

    @classmethod
    def open(
        cls, path: str | Path, *, backend: str = "auto", device: str = "cpu", threads: int | None = None
    ) -> Predictor:
        be, info = open_backend(path, backend, device, threads)
        return cls(be, info)

    @classmethod
    def from_model(cls, model, calibration: Calibration | None = None) -> Predictor:
        """Around a model in memory (training's calibration, tests); runs it as it is."""
        return cls(TorchBackend(model), ModelInfo(model.config, calibration))

    @property
    def config(self) -> Config:
        return self.info.config

    @property
    def calibration(self) -> Calibration | None:
        return self.info.calibration

    @property
    def threshold(self) -> float | None:
        return self._threshold

    @threshold.setter
    def threshold(self, value: float | None) -> None:
        self._threshold = check_threshold(value)

    def colour_range(self) -> tuple[float, float]:
        cal = self.calibration or Calibration(self._threshold)
        return cal.colour_range()

    def score_tensors(self, batch_uint8: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Scores (N,) and maps (N, S, S) at the model's size for an already-resized uint8 batch."""
        scores, maps = self.backend(batch_uint8)
        return np.asarray(scores, dtype=np.float32), np.asarray(maps, dtype=np.float32)

    def predict(
        self,
        items: Iterable,
        *,
        batch_size: int = 16,
        threshold: float | None = None,
        keep_images: bool = False,
        decode_threads: int = 2,
    ) -> Iterator[Prediction | RD2TError]:
        """Predictions for paths, PIL images or arrays, in input order; a bad item yields its error."""
        if batch_size < 1:
            raise ConfigError(f"batch_size {batch_size}: expected a whole number >= 1")
        threshold = self._threshold if threshold is None else check_threshold(threshold)
        tiler = Tiler.of(self.config)
        if tiler is not None:
            yield from self._predict_tiled(items, tiler, batch_size, threshold, keep_images)
            return
        pending: list = []  # errors and decoded images in input order, until a batch is full

        def flush() -> Iterator[Prediction | RD2TError]:
            decoded = [e for e in pending if not isinstance(e, RD2TError)]
            if decoded:
                t0 = time.perf_counter()
                scores, maps = self.score_tensors(torch.stack([d[3] for d in decoded]))
                model_ms = (time.perf_counter() - t0) * 1000 / len(decoded)
                results = iter(zip(scores, maps, strict=True))
            for entry in pending:
                if isinstance(entry, RD2TError):
                    yield entry
                    continue
                path, img, size, _, decode_ms = entry
                sc, m = next(results)
                sc = float(sc)
                if not math.isfinite(sc):
                    yield ScoreError(
                        f"{path or 'image'}: the model gave a non-finite score ({sc}); the "
                        "model file may be corrupt"
                    )
                    continue
                yield Prediction(
                    sc,
                    None if threshold is None else sc > threshold,
                    m,
                    size,
                    path,
                    img,
                    {"decode": decode_ms, "model": model_ms},
                )
            pending.clear()

        n_decoded = 0
        # A whole batch is decoded ahead, so the next batch is ready when the model finishes this one.
        ahead = batch_size + 2 * decode_threads
        for item, result in self._decoded(items, self.image_size, decode_threads, keep_images, ahead):
            if isinstance(result, RD2TError):
                pending.append(result)
                continue
            path = Path(item) if isinstance(item, (str, Path)) else None
            pending.append((path, *result))
            n_decoded += 1
            if n_decoded % batch_size == 0:
                yield from flush()
        yield from flush()

    def score_tiled(self, image_uint8: torch.Tensor, tiler: Tiler, batch_size: int = 16) -> np.ndarray:
        """The stitched map of one (3, H', W') uint8 image, its tiles scored `batch_size` at a time."""
        stitcher = Stitcher(*image_uint8.shape[-2:], tiler)
        for positions, tiles in tiler.tiles(image_uint8, batch_size):
            stitcher.add(positions, self.score_tensors(tiles)[1])
        return stitcher.result()

    def _predict_tiled(self, items, tiler: Tiler, batch_size: int, threshold, keep_images: bool):
        """One image at a time (a large image is the batch): decoded inline, so at most one is in memory."""
        for item, result in self._decoded(items, 0, 1, keep_images, prepare=tiler.prepare):
            if isinstance(result, RD2TError):
                yield result
                continue
            img, size, tensor, decode_ms = result
            path = Path(item) if isinstance(item, (str, Path)) else None
            t0 = time.perf_counter()
            m = self.score_tiled(tensor, tiler, batch_size)
            del tensor
            model_ms = (time.perf_counter() - t0) * 1000
            sc = float(m.max())
            if not math.isfinite(sc):
                yield ScoreError(
                    f"{path or 'image'}: the model gave a non-finite score ({sc}); the model file "
                    "may be corrupt"
                )
                continue
            yield Prediction(
                sc,
                None if threshold is None else sc > threshold,
                m,
                size,
                path,
                img,
                {"decode": decode_ms, "model": model_ms},
            )

    def predict_one(self, item, *, threshold: float | None = None) -> Prediction:
        """One image's Prediction, or its error raised."""
        (result,) = list(self.predict([item], batch_size=1, threshold=threshold, keep_images=True))
        if isinstance(result, RD2TError):
            raise result
        return result

    @staticmethod
    def _decoded(items: Iterable, size: int, threads: int, keep: bool, ahead: int = 1, prepare=None):
        """(item, (image | None, (W, H), tensor, ms) | error) in order; files are decoded up to `ahead`
        items ahead in threads. The decoded image is dropped at once unless `keep`: only the model's
        input travels, so decoding ahead costs little memory even for large images."""

        def work(item):
            t0 = time.perf_counter()
            try:
                img = decode(item)
                tensor = prepare(img) if prepare else to_uint8_tensor(img, size)
                return (img if keep else None), img.size, tensor, (time.perf_counter() - t0) * 1000
            except InputError as e:
                return e

        if threads <= 1:
            for item in items:
                yield item, work(item)
            return
        with ThreadPoolExecutor(threads, thread_name_prefix="rd2t-decode") as pool:
            window: deque = deque()
            for item in items:
                window.append((item, pool.submit(work, item)))
                if len(window) > ahead:
                    head, fut = window.popleft()
                    yield head, fut.result()
            while window:
                head, fut = window.popleft()
                yield head, fut.result()
