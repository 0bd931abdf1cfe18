"""Running an exported rd2t model with ONNX Runtime (no torch in the loop), and its metadata's typed form."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

from rd2t.errors import InputError, RD2TError
from rd2t.files import file_sha256

# Parity an export must reach against torch on the probe images, relative to the map's magnitude (>= 1):
# a broken graph (wrong padding, normalisation, batch specialisation) is off by orders of magnitude more.
# Other runtimes running the export are held to it against ONNX Runtime (backends.OpenVinoBackend).
EXPORT_TOLERANCE = 1e-3

INPUT_NAME = "images"
OUTPUT_NAMES = ("scores", "anomaly_maps")
OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")
# Keys whose sidecar value is typed (the ONNX metadata holds strings only).
_INT_KEYS = ("image_size", "opset")


def first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else ""


def typed_metadata(meta: dict[str, str]) -> dict:
    """The string metadata with numbers, the threshold and the config as JSON values (the sidecar's form)."""
    out: dict = dict(meta)
    for key in _INT_KEYS:
        if meta.get(key, "").isdigit():
            out[key] = int(meta[key])
    if "threshold" in meta:
        out["threshold"] = float(meta["threshold"]) if meta["threshold"] else None
    for key in ("config", "calibration", "val_scores"):
        if meta.get(key):
            out[key] = json.loads(meta[key])
    return out


def sidecar_path(onnx_path: str | Path) -> Path:
    return Path(onnx_path).with_suffix(".json")


def verify_sidecar(onnx_path: Path, sha256: str | None = None) -> None:
    """Refuse a model whose bytes differ from the SHA-256 its export wrote beside it (a flipped byte
    can still run and give other scores). `sha256`: the file's digest when the caller has just computed
    it (`--backend auto` does), so a large model is not read and hashed twice per load."""
    side = sidecar_path(onnx_path)
    if not side.is_file():
        return
    try:
        record = json.loads(side.read_text())
    except (OSError, ValueError):
        raise InputError(f"{side}: unreadable sidecar of {onnx_path.name} (delete it or re-export)") from None
    if not isinstance(record, dict) or record.get("onnx_file") != onnx_path.name or "sha256" not in record:
        return  # a JSON of the same stem that is not this model's sidecar
    if (sha256 or file_sha256(onnx_path)) != record["sha256"]:
        raise InputError(
            f"{onnx_path}: SHA-256 does not match {side.name} (the file was changed or is corrupt; "
            "re-export it)"
        )


def ort_session(model_bytes_or_path, threads: int | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # torch runs next in this process
    if threads:
        so.intra_op_num_threads = threads
    return ort.InferenceSession(model_bytes_or_path, so, providers=["CPUExecutionProvider"])


class OnnxDetector:
    """Runs an exported rd2t model with ONNX Runtime: `predict(images) -> (scores, maps)`.

    `threads`: ORT intra-op threads (None: ORT's default, all cores). `providers`: ORT execution providers
    in order of preference (default CPU); requested ones this ORT lacks are dropped with a warning, CPU
    being the last resort. `optimization`: ORT graph optimisation level, one of OPTIMIZATION_LEVELS.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        threads: int | None = None,
        providers: list[str] | None = None,
        optimization: str = "all",
        sha256: str | None = None,
    ):
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(f"{self.path}: ONNX model not found")
        verify_sidecar(self.path, sha256)
        levels = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }
        if optimization not in levels:
            raise RD2TError(
                f"optimization={optimization!r}, expected one of {', '.join(OPTIMIZATION_LEVELS)}"
            )
        so = ort.SessionOptions()
        so.graph_optimization_level = levels[optimization]
        so.log_severity_level = 3
        if threads is not None:
            if threads < 1:
                raise RD2TError(f"threads={threads}: expected a positive number")
            so.intra_op_num_threads = threads
        self.providers = self._resolve_providers(providers, ort.get_available_providers())
        try:
            self.session = ort.InferenceSession(str(self.path), so, providers=self.providers)
        except Exception as e:  # noqa: BLE001 - protobuf, graph and provider errors: the file is unusable here
            raise InputError(
                f"{self.path}: not a loadable ONNX model ({type(e).__name__}: {first_line(e)})"
            ) from None
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.output_names = [o.name for o in self.session.get_outputs()]
        if OUTPUT_NAMES[0] in self.output_names and OUTPUT_NAMES[1] in self.output_names:
            self.output_names = list(OUTPUT_NAMES)
        declared = inp.shape[-1] if isinstance(inp.shape[-1], int) else None
        self.image_size: int = int(self.metadata.get("image_size") or declared or 0)
        if not self.image_size:
            raise InputError(f"{self.path}: no image size in the metadata or the input shape")
        t = self.metadata.get("threshold", "")
        self.threshold: float | None = float(t) if t else None
        self.fixed_batch: int | None = inp.shape[0] if isinstance(inp.shape[0], int) else None
        config = self.metadata.get("config")
        self.config: dict | None = json.loads(config) if config else None

    @staticmethod
    def _resolve_providers(requested: list[str] | None, available: list[str]) -> list[str]:
        if not requested:
            return ["CPUExecutionProvider"]
        kept = [p for p in requested if p in available]
        dropped = [p for p in requested if p not in available]
        if dropped:
            warnings.warn(
                f"ONNX Runtime here lacks {', '.join(dropped)} (available: "
                f"{', '.join(available)}); falling back",
                stacklevel=3,
            )
        if "CPUExecutionProvider" not in kept:
            kept.append("CPUExecutionProvider")
        return kept

    def check_input(self, images) -> np.ndarray:
        """`images` as a contiguous float32 array, or InputError saying what was expected and what came."""
        arr = np.asarray(images)
        s = self.image_size
        expected = f"(N, 3, {s}, {s}) float32 RGB in [0, 1]"
        if arr.dtype == np.uint8:
            raise InputError(f"expected {expected}, got uint8 {arr.shape}: divide by 255 first")
        if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
            raise InputError(f"expected {expected}, got dtype {arr.dtype}")
        if arr.ndim != 4 or arr.shape[1:] != (3, s, s):
            hint = ""
            if arr.ndim == 4 and arr.shape[-1] == 3:
                hint = " (channels last? transpose to NCHW with images.transpose(0, 3, 1, 2))"
            elif arr.ndim == 4 and arr.shape[1] == 3 and arr.shape[2:] != (s, s):
                hint = f" (resize to {s}x{s} first: rd2t.data.transforms.to_uint8_tensor(image, {s}) / 255)"
            raise InputError(f"expected images of shape {expected}, got shape {arr.shape}{hint}")
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if arr.size:
            lo, hi = float(arr.min()), float(arr.max())
            if not (np.isfinite(lo) and np.isfinite(hi)) or lo < -1e-3 or hi > 1 + 1e-3:
                raise InputError(
                    f"expected values in [0, 1], got [{lo:.4g}, {hi:.4g}] (uint8 data: divide "
                    "by 255; no mean/std normalisation: the model does it)"
                )
        return arr

    def predict(self, images) -> tuple[np.ndarray, np.ndarray]:
        """Images float32 (N, 3, S, S) RGB in [0, 1] -> (scores (N,), anomaly maps (N, S, S)), float32."""
        arr = self.check_input(images)
        n, s = len(arr), self.image_size
        if n == 0:
            return np.zeros(0, np.float32), np.zeros((0, s, s), np.float32)
        step = self.fixed_batch or n
        scores, maps = [], []
        for start in range(0, n, step):
            chunk = arr[start : start + step]
            m = len(chunk)
            if m < step:  # a fixed-batch graph: pad the last chunk with copies, drop their results
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], step - m, axis=0)])
            sc, mp = self.session.run(self.output_names, {self.input_name: chunk})
            scores.append(sc[:m])
            maps.append(mp[:m])
        if len(scores) == 1:
            return scores[0], maps[0]
        return np.concatenate(scores), np.concatenate(maps)

    def decide(self, scores: np.ndarray) -> np.ndarray:
        """True where anomalous (score > threshold); RD2TError when the export carries no threshold."""
        if self.threshold is None:
            raise RD2TError(f"{self.path}: no threshold in this model (trained without calibration)")
        return np.asarray(scores) > self.threshold
