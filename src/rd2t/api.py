"""The Python API in one class.

from rd2t import Detector
det = Detector("offline", epochs=40).fit("my_good_images/", out_dir="runs/line3")
pred = det.predict("part_0042.png")          # or a PIL image, an HxWx3 numpy array, or a list
pred.score, pred.is_defective, pred.anomaly_map
det = Detector.load("runs/line3/model.pt")
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from rd2t import checkpoint
from rd2t.config import Config, preset
from rd2t.data import Split, open_dataset
from rd2t.errors import InputError
from rd2t.infer import Backend, Prediction, TorchBackend, predict_images


def training_images(data) -> list[Path]:
    """Good training images from a folder (plain or dataset layout), a Split, or a list of paths."""
    if isinstance(data, Split):
        return [s.path for s in data.train]
    if isinstance(data, (list, tuple)):
        return [Path(p) for p in data]
    root = Path(data)
    if not root.exists():
        raise InputError(f"{root}: no such folder")
    return [s.path for s in open_dataset("folder", root, None).train]  # a plain folder or a dataset layout


class Detector:
    def __init__(self, config: Config | str = "offline", **overrides):
        self.config = preset(config, **overrides) if isinstance(config, str) else config.replace(**overrides)
        self.backend: Backend | None = None
        self.checkpoint_path: Path | None = None

    def fit(
        self, data, out_dir: str | Path | None = None, *, resume: bool = False, progress: bool = True
    ) -> Detector:
        from rd2t.train import train

        out = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="rd2t-"))
        result = train(self.config, training_images(data), out, resume=resume, progress=progress)
        self.checkpoint_path = result.checkpoint
        self.backend = TorchBackend(
            result.checkpoint,
            device=self.config.device
            if self.config.device != "auto"
            else ("cuda" if next(result.model.parameters()).is_cuda else "cpu"),
        )
        return self

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", backend: str = "auto") -> Detector:
        be = Backend.open(path, device=device, backend=backend)
        det = cls(be.config if isinstance(be, TorchBackend) else Config())
        det.backend, det.checkpoint_path = be, Path(path)
        return det

    @property
    def threshold(self) -> float | None:
        return self._require().threshold

    @threshold.setter
    def threshold(self, value: float) -> None:
        self._require().threshold = float(value)

    def save(self, path: str | Path) -> Path:
        """Copy of the trained model (config, weights, threshold) to `path`, written atomically."""
        payload = checkpoint.load(self._require_checkpoint())
        if payload.get("threshold") is not None:
            payload["threshold"] = {**payload["threshold"], "value": self.threshold}
        return checkpoint.save(
            path, {k: v for k, v in payload.items() if k not in ("format", "format_version")}
        )

    def predict(self, x, *, batch_size: int = 16) -> Prediction | list[Prediction]:
        """Score one image (path, PIL image, HxW[x3] array) or many (a list, or an NxHxWx3 array)."""
        single = not isinstance(x, (list, tuple)) and not (isinstance(x, np.ndarray) and x.ndim == 4)
        items = [x] if single else list(x)
        out = []
        for p in predict_images(self._require(), items, batch_size=batch_size):
            if isinstance(p, InputError):
                raise p
            out.append(p)
        return out[0] if single else out

    def _require(self) -> Backend:
        if self.backend is None:
            raise InputError("detector is not trained: call fit() or Detector.load()")
        return self.backend

    def _require_checkpoint(self) -> Path:
        self._require()
        if self.checkpoint_path is None or self.checkpoint_path.suffix == ".onnx":
            raise InputError("only a torch checkpoint can be saved; export ONNX with rd2t export")
        return self.checkpoint_path
