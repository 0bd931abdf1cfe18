"""What runs the network: torch or ONNX Runtime behind one call, uint8 (N, 3, S, S) -> (scores, maps).

Everything before (decoding, resizing) and after (decision, map resizing) is the Predictor's, shared
by all backends, so a model gives the same verdict whichever runs it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from rd2t.data.transforms import to_model_input
from rd2t.errors import ConfigError
from rd2t.model.checkpoint import ModelInfo
from rd2t.model.network import RD2T

BACKENDS = ("auto", "torch", "onnx", "openvino", "openvino-bf16")


class TorchBackend:
    name = "torch"

    def __init__(self, model: RD2T, memory_format: torch.memory_format = torch.contiguous_format):
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.memory_format = memory_format
        if memory_format != torch.contiguous_format:
            self.model = self.model.to(memory_format=memory_format)
        self.image_size = model.config.image_size

    @classmethod
    def open(cls, path: Path, device: str = "cpu") -> tuple[TorchBackend, ModelInfo]:
        from rd2t.model.loading import load_model

        model, ckpt = load_model(path, device)
        # On CPU, channels-last measured 1.3-1.5x faster for the EfficientNet presets but 2-3x slower for
        # the WideResNet ones (docs/performance.md); same results to float rounding.
        lite = all("efficientnet" in t for t in model.config.teachers)
        on_cpu = next(model.parameters()).device.type == "cpu"
        fmt = torch.channels_last if lite and on_cpu else torch.contiguous_format
        return cls(model, fmt), ckpt.info(path)

    @torch.no_grad()
    def __call__(self, batch_uint8: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        x = to_model_input(batch_uint8.to(self.device)).contiguous(memory_format=self.memory_format)
        scores, maps = self.model(x)
        return scores.cpu().numpy(), maps.cpu().numpy()


class OnnxBackend:
    name = "onnx"

    def __init__(self, path: Path, threads: int | None = None):
        from rd2t.inference.onnx_runtime import OnnxDetector

        self.detector = OnnxDetector(path, threads=threads)
        self.image_size = self.detector.image_size

    @classmethod
    def open(cls, path: Path, threads: int | None = None) -> tuple[OnnxBackend, ModelInfo]:
        backend = cls(path, threads)
        return backend, ModelInfo.from_metadata(backend.detector.metadata, str(path))

    def __call__(self, batch_uint8: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        return self.detector.predict(to_model_input(batch_uint8).numpy())


class OpenVinoBackend:
    """An rd2t `.onnx` run by OpenVINO (optional: pip install 'rd2t[openvino]'), fp32 unless asked.

    OpenVINO runs bf16 by itself on CPUs with AVX-512-BF16/AMX (maps off by ~3.5 % of their range,
    docs/performance.md), so the precision hint is always set: f32 for `openvino`, bf16 for `openvino-bf16`.
    """

    def __init__(self, path: Path, threads: int | None = None, precision: str = "f32"):
        try:
            import openvino as ov
        except ImportError:
            raise ConfigError(
                f"{path}: --backend openvino needs the openvino package (pip install 'rd2t[openvino]')"
            ) from None
        from rd2t.inference.onnx_runtime import OnnxDetector

        self.name = "openvino" if precision == "f32" else f"openvino-{precision}"
        self.metadata = OnnxDetector(path, threads=1).metadata  # the same checks and metadata as ORT
        self.image_size = int(self.metadata["image_size"])
        config = {"INFERENCE_PRECISION_HINT": precision}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        core = ov.Core()
        self.model = core.compile_model(core.read_model(str(path)), "CPU", config)
        self.scores, self.maps = self.model.output("scores"), self.model.output("anomaly_maps")

    @classmethod
    def open(
        cls, path: Path, threads: int | None = None, precision: str = "f32"
    ) -> tuple[OpenVinoBackend, ModelInfo]:
        backend = cls(path, threads, precision)
        return backend, ModelInfo.from_metadata(backend.metadata, str(path))

    def __call__(self, batch_uint8: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        out = self.model(to_model_input(batch_uint8).numpy())
        return np.asarray(out[self.scores], np.float32), np.asarray(out[self.maps], np.float32)


def open_backend(path: str | Path, backend: str = "auto", device: str = "cpu", threads: int | None = None):
    """(backend, ModelInfo) for a `.pt` checkpoint or an `.onnx` export; unknown names are refused."""
    path = Path(path)
    if backend not in BACKENDS:
        raise ConfigError(f"backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    is_onnx = path.suffix.lower() == ".onnx"
    if backend.startswith("openvino"):
        if not is_onnx:
            raise ConfigError(f"{path}: --backend {backend} needs an .onnx file (make one with rd2t export)")
        return OpenVinoBackend.open(path, threads, "bf16" if backend == "openvino-bf16" else "f32")
    if backend == "onnx" or (backend == "auto" and is_onnx):
        if not is_onnx:
            raise ConfigError(f"{path}: --backend onnx needs an .onnx file (make one with rd2t export)")
        return OnnxBackend.open(path, threads)
    if is_onnx:
        raise ConfigError(f"{path}: an ONNX file runs with --backend onnx (or auto), not {backend}")
    if threads:
        torch.set_num_threads(threads)
    return TorchBackend.open(path, device)
