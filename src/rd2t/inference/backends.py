"""What runs the network: torch or ONNX Runtime behind one call, uint8 (N, 3, S, S) -> (scores, maps).

Everything before (decoding, resizing) and after (decision, map resizing) is the Predictor's, shared
by all backends, so a model gives the same verdict whichever runs it.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from rd2t.data.transforms import to_model_input
from rd2t.errors import ConfigError, RD2TError
from rd2t.files import atomic_write, file_sha256
from rd2t.inference.onnx_runtime import EXPORT_TOLERANCE
from rd2t.model.checkpoint import ModelInfo
from rd2t.model.network import RD2T

BACKENDS = ("auto", "torch", "onnx", "openvino", "openvino-bf16")
# openvino-bf16 moves maps by 2-7 % of their range (docs/performance.md); a wrong graph is off by far more.
BF16_TOLERANCE = 0.25


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


class RuntimeDisagrees(ConfigError):
    """A runtime whose maps are off ONNX Runtime's on the same `.onnx`: the finding, then what to do."""

    def __init__(self, finding: str, advice: str):
        super().__init__(f"{finding}; {advice}")
        self.finding = finding


class OnnxBackend:
    name = "onnx"

    def __init__(self, path: Path, threads: int | None = None, sha256: str | None = None):
        from rd2t.inference.onnx_runtime import OnnxDetector

        self.detector = OnnxDetector(path, threads=threads, sha256=sha256)
        self.metadata = self.detector.metadata
        self.image_size = self.detector.image_size

    @classmethod
    def open(
        cls, path: Path, threads: int | None = None, sha256: str | None = None
    ) -> tuple[OnnxBackend, ModelInfo]:
        backend = cls(path, threads, sha256)
        return backend, ModelInfo.from_metadata(backend.metadata, str(path))

    def __call__(self, batch_uint8: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        return self.detector.predict(to_model_input(batch_uint8).numpy())


class OpenVinoBackend:
    """An rd2t `.onnx` run by OpenVINO (optional: pip install 'rd2t[openvino]'), fp32 unless asked.

    OpenVINO runs bf16 by itself on CPUs with AVX-512-BF16/AMX (maps off by ~3.5 % of their range,
    docs/performance.md), so the precision hint is always set: f32 for `openvino`, bf16 for `openvino-bf16`.
    Opening checks OpenVINO's maps against ONNX Runtime's on one probe image and refuses a disagreement:
    OpenVINO 2026.3.0-2026.4.1 compute the memory bank's graph wrong (docs/performance.md), and a runtime that
    is fast and wrong must not be chosen silently.
    """

    def __init__(
        self, path: Path, threads: int | None = None, precision: str = "f32", sha256: str | None = None
    ):
        try:
            import openvino as ov
        except ImportError:
            raise ConfigError(
                f"{path}: --backend openvino needs the openvino package (pip install 'rd2t[openvino]')"
            ) from None
        from rd2t.inference.onnx_runtime import OnnxDetector

        self.name = "openvino" if precision == "f32" else f"openvino-{precision}"
        # the same checks and metadata as ORT, and the parity reference
        reference = OnnxDetector(path, threads=1, sha256=sha256)
        self.metadata = reference.metadata
        self.image_size = int(self.metadata["image_size"])
        config = {"INFERENCE_PRECISION_HINT": precision}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        core = ov.Core()
        self.model = core.compile_model(core.read_model(str(path)), "CPU", config)
        self.scores, self.maps = self.model.output("scores"), self.model.output("anomaly_maps")
        self._local = threading.local()
        s = self.image_size
        probe = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (1, 3, s, s), dtype=np.uint8))
        want = reference.predict(to_model_input(probe).numpy())[1]
        off = float(np.abs(self(probe)[1] - want).max())
        tolerance = EXPORT_TOLERANCE if precision == "f32" else BF16_TOLERANCE
        limit = tolerance * max(1.0, float(np.abs(want).max()))
        if not off <= limit:  # NaN fails too
            version = ov.__version__.split("-")[0]
            raise RuntimeDisagrees(
                f"{path}: OpenVINO {version} ({self.name}) gives maps {off:.3g} off ONNX Runtime's "
                f"(limit {limit:.3g})",
                "use --backend onnx, or another OpenVINO version",
            )

    @classmethod
    def open(
        cls, path: Path, threads: int | None = None, precision: str = "f32", sha256: str | None = None
    ) -> tuple[OpenVinoBackend, ModelInfo]:
        backend = cls(path, threads, precision, sha256)
        return backend, ModelInfo.from_metadata(backend.metadata, str(path))

    def __call__(self, batch_uint8: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        # One infer request per calling thread: a compiled model's own request is not safe to share, and
        # the station scores from several worker threads.
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.model.create_infer_request()
        out = request.infer(to_model_input(batch_uint8).numpy())
        return np.array(out[self.scores], np.float32), np.array(out[self.maps], np.float32)


def open_backend(path: str | Path, backend: str = "auto", device: str = "cpu", threads: int | None = None):
    """(backend, ModelInfo) for a `.pt` checkpoint or an `.onnx` export; unknown names are refused.

    `auto`: a `.pt` runs with torch (its channels-last choice is per preset); an `.onnx` with the fastest
    runtime installed here (ONNX Runtime, OpenVINO f32), measured once per file, machine and thread count
    and recorded (`choose_onnx_runtime`)."""
    path = Path(path)
    if backend not in BACKENDS:
        raise ConfigError(f"backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    is_onnx = path.suffix.lower() == ".onnx"
    sha256 = None  # the file's digest, once `auto` has read it: the sidecar check reuses it
    if backend == "auto" and is_onnx:
        record, measured, sha256 = _choose(path, threads, remeasure=False)
        backend = record["chosen"]
        if backend in measured:  # just measured: the runtime is open already, not built a second time
            return measured[backend], ModelInfo.from_metadata(measured[backend].metadata, str(path))
    if backend.startswith("openvino"):
        if not is_onnx:
            raise ConfigError(f"{path}: --backend {backend} needs an .onnx file (make one with rd2t export)")
        return OpenVinoBackend.open(path, threads, "bf16" if backend == "openvino-bf16" else "f32", sha256)
    if backend == "onnx":
        if not is_onnx:
            raise ConfigError(f"{path}: --backend onnx needs an .onnx file (make one with rd2t export)")
        return OnnxBackend.open(path, threads, sha256)
    if is_onnx:
        raise ConfigError(f"{path}: an ONNX file runs with --backend onnx, openvino or auto, not {backend}")
    if threads:
        torch.set_num_threads(threads)
    return TorchBackend.open(path, device)


# ---- auto: the fastest ONNX runtime on this machine -----------------------------------------------------


def choice_record_path() -> Path:
    """Where `auto` records its measurements: $RD2T_CACHE_DIR, else $XDG_CACHE_HOME/rd2t or ~/.cache/rd2t."""
    root = (
        os.environ.get("RD2T_CACHE_DIR")
        or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rd2t"
    )
    return Path(root) / "backend_choice.json"


def _machine(threads: int | None) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    return f"{cpu} x{os.cpu_count()}, threads {threads or 'default'}"


def _runtimes() -> dict[str, str]:
    """The ONNX runtimes installed here, with their versions (part of what a measurement is valid for)."""
    found = {}
    for name, module in (("onnx", "onnxruntime"), ("openvino", "openvino")):
        try:
            found[name] = importlib.import_module(module).__version__
        except ImportError:
            continue
    return found


def median_ms(backend, batch: torch.Tensor, runs: int = 5) -> float:
    """Median milliseconds of `runs` calls of a backend on `batch`, after 2 warm-up calls."""
    for _ in range(2):
        backend(batch)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        backend(batch)
        times.append((time.perf_counter() - t0) * 1000)
    return float(np.median(times))


def choose_onnx_runtime(path: Path, threads: int | None = None, *, remeasure: bool = False) -> dict:
    """The fastest installed runtime for this `.onnx` at batch 1 on this machine and thread count.

    Measured once (2 warm-up and 5 timed calls each, a few seconds) and recorded by the file's SHA-256, the
    CPU, the thread count and the runtimes' versions, so later loads reuse it. bf16 is never chosen: it
    changes the maps (docs/performance.md). Returns {"chosen", "b1_ms": {runtime: ms}, "machine"}."""
    return _choose(path, threads, remeasure)[0]


def _choose(path: Path, threads: int | None, remeasure: bool) -> tuple[dict, dict, str | None]:
    """`choose_onnx_runtime`'s record, the backends it opened when it measured now (else {}), and the
    file's SHA-256 when it read it (else None)."""
    runtimes = _runtimes()
    if len(runtimes) < 2 and not remeasure:
        return {"chosen": "onnx", "b1_ms": {}, "machine": _machine(threads)}, {}, None  # nothing to choose
    digest = file_sha256(path)
    key = " | ".join([digest[:16], _machine(threads), *(f"{k} {v}" for k, v in sorted(runtimes.items()))])
    record_path = choice_record_path()
    try:
        records = json.loads(record_path.read_text())
    except (OSError, ValueError):
        records = {}
    if key in records and not remeasure:
        return records[key], {}, digest
    opened, refused = {"onnx": OnnxBackend(path, threads, digest)}, {}
    if "openvino" in runtimes:
        try:
            opened["openvino"] = OpenVinoBackend(path, threads, sha256=digest)
        except RuntimeDisagrees as e:  # never the choice for this file
            refused["openvino"] = e.finding
            warnings.warn(f"{e.finding}; --backend auto runs it with onnx", stacklevel=3)
    size = opened["onnx"].image_size
    batch = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (1, 3, size, size), dtype=np.uint8))
    b1 = {be.name: round(median_ms(be, batch), 2) for be in opened.values()}
    record = {"chosen": min(b1, key=b1.get), "b1_ms": b1, "machine": _machine(threads)}
    if refused:
        record["refused"] = refused
    try:
        record_path.parent.mkdir(parents=True, exist_ok=True)
        records[key] = record
        atomic_write(record_path, (json.dumps(records, indent=1) + "\n").encode())
    except (OSError, RD2TError) as e:  # an unwritable cache costs a re-measurement next time, nothing else
        warnings.warn(f"{record_path}: backend choice not recorded ({e})", stacklevel=3)
    return record, opened, digest
