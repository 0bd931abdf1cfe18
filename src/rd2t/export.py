"""ONNX export of a trained model, and a detector that runs the exported file with ONNX Runtime (no torch).

The exported graph is the whole `RD2T.forward`: per-teacher normalisation, both teachers, fusion, OCBE,
student, heads, anomaly map, Gaussian blur (a fixed-weight conv with reflect padding) and the max. Its one
input is "images", float32 (N, 3, S, S) RGB in [0, 1]: the same tensor `rd2t.transforms` gives torch
(`to_uint8_tensor(image, S)` then `/ 255`), so nothing of the preprocessing is left to re-implement outside
(the cause of anomalib's export mismatches). Its outputs are "scores" (N,) and "anomaly_maps" (N, S, S).

Everything a deployment needs is written into the file's metadata_props (strings) and, for people and
tools that cannot read ONNX metadata, into a sidecar JSON of the same stem with the same values typed.
Every export is checked: the ONNX checker (with strict shape inference), then ONNX Runtime against torch
on probe images at a batch size other than the traced one; a file failing either is never written.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np

from rd2t import __version__
from rd2t.errors import InputError, RD2TError

INPUT_NAME = "images"
OUTPUT_NAMES = ("scores", "anomaly_maps")
INPUT_DESCRIPTION = (
    "images: float32 (N, 3, {s}, {s}) NCHW, RGB, values in [0, 1] (uint8 / 255), resized to {s}x{s} with "
    "Pillow's bilinear filter (rd2t.transforms.to_uint8_tensor); each teacher's normalisation is inside "
    "the graph"
)
OUTPUT_DESCRIPTION = (
    "scores: float32 (N,) max of the anomaly map; anomaly_maps: float32 (N, {s}, {s}) blurred sum over "
    "teachers and scales of 1 - cosine(student, teacher), upsampled to the input"
)
DECISION_RULE = "anomalous when score > threshold"
OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")
# Parity an export must reach against torch on the probe images, relative to the map's magnitude (>= 1):
# a broken graph (wrong padding, normalisation, batch specialisation) is off by orders of magnitude more.
EXPORT_TOLERANCE = 1e-3
# Keys whose sidecar value is typed (the ONNX metadata holds strings only).
_INT_KEYS = ("image_size", "opset")


# ---- metadata ------------------------------------------------------------------------------------------


def _metadata(config, payload: dict, opset: int, exporter: str, check: float,
              dynamic_batch: bool) -> dict[str, str]:
    import torch

    threshold = payload.get("threshold") or {}
    value = threshold.get("value")
    s = config.image_size
    return {
        "rd2t_version": __version__,
        "checkpoint_rd2t_version": str(payload.get("rd2t_version", "")),
        "image_size": str(s),
        "threshold": "" if value is None else repr(float(value)),
        "threshold_rule": str(threshold.get("rule") or ""),
        "threshold_source": str(threshold.get("source") or ""),
        "decision_rule": DECISION_RULE,
        "preset": config.preset,
        "teachers": ",".join(config.teachers),
        "config": json.dumps(config.to_dict(), sort_keys=True),
        "input": INPUT_DESCRIPTION.format(s=s),
        "outputs": OUTPUT_DESCRIPTION.format(s=s),
        "batch": "dynamic" if dynamic_batch else "1",
        "opset": str(opset),
        "exporter": f"torch {torch.__version__} {exporter}",
        "export_check_max_abs_diff": f"{check:.3g}",
        "checkpoint_complete": str(bool(payload.get("complete", False))).lower(),
        "checkpoint_epoch": str(payload.get("epoch", "")),
    }


def typed_metadata(meta: dict[str, str]) -> dict:
    """The string metadata with numbers, the threshold and the config as JSON values (the sidecar's form)."""
    out: dict = dict(meta)
    for key in _INT_KEYS:
        if meta.get(key, "").isdigit():
            out[key] = int(meta[key])
    if "threshold" in meta:
        out["threshold"] = float(meta["threshold"]) if meta["threshold"] else None
    if meta.get("config"):
        out["config"] = json.loads(meta["config"])
    return out


def sidecar_path(onnx_path: str | Path) -> Path:
    return Path(onnx_path).with_suffix(".json")


# ---- export --------------------------------------------------------------------------------------------


def probe_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """(n, 3, size, size) float32 in [0, 1]: smooth coloured blobs plus stripes, not flat noise."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 8, 8, generator=g)
    blobs = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    period = 4 + 8 * torch.rand(n, 1, 1, 1, generator=g)
    stripes = 0.15 * torch.sin(2 * torch.pi * (xx + 0.5 * yy) / period)
    fine = 0.03 * torch.randn(n, 3, size, size, generator=g)
    return (0.7 * blobs + stripes + fine).clamp(0, 1).numpy().astype(np.float32)


def _export_torchscript(model, dummy, path: Path, opset: int, dynamic_batch: bool) -> None:
    import torch

    axes = {name: {0: "N"} for name in (INPUT_NAME, *OUTPUT_NAMES)} if dynamic_batch else None
    with warnings.catch_warnings():
        # Known and harmless: the TorchScript exporter's deprecation notice, and its note that the Slice
        # reversing timm's dynamic "same" padding list (step -1) is not constant-folded (ORT folds it).
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r"Constant folding - Only steps=1")
        torch.onnx.export(
            model, (dummy,), str(path), dynamo=False, opset_version=opset, input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES), dynamic_axes=axes, do_constant_folding=True,
            training=torch.onnx.TrainingMode.EVAL,
        )


def _export_dynamo(model, dummy, path: Path, opset: int, dynamic_batch: bool) -> None:
    import torch

    shapes = {"images": {0: torch.export.Dim("N", min=1, max=4096)}} if dynamic_batch else None
    program = torch.onnx.export(
        model, (dummy,), dynamo=True, opset_version=max(opset, 18), input_names=[INPUT_NAME],
        output_names=list(OUTPUT_NAMES), dynamic_shapes=shapes, optimize=True, verbose=False,
    )
    program.save(str(path))


def _fix_io(proto, size: int, dynamic_batch: bool) -> None:
    """Declare the outputs' true shapes (N,) and (N, S, S): the tracer's shape inference can leave them
    symbolic or even wrong (it labelled the map's height "N"), which misleads TensorRT, OpenVINO and users."""
    from onnx import TensorProto, helper

    batch = "N" if dynamic_batch else 1
    shapes = {INPUT_NAME: [batch, 3, size, size], OUTPUT_NAMES[0]: [batch],
              OUTPUT_NAMES[1]: [batch, size, size]}
    docs = {INPUT_NAME: INPUT_DESCRIPTION.format(s=size), OUTPUT_NAMES[0]: OUTPUT_DESCRIPTION.format(s=size)}
    for values in (proto.graph.input, proto.graph.output):
        for i, v in enumerate(values):
            if v.name in shapes:
                values[i].CopyFrom(helper.make_tensor_value_info(v.name, TensorProto.FLOAT, shapes[v.name],
                                                                 doc_string=docs.get(v.name, "")))
    # Intermediate value_info from the tracer may carry the same wrong symbolic labels: let ORT infer them.
    del proto.graph.value_info[:]


def _ort_session(model_bytes_or_path, threads: int | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # torch runs next in this process
    if threads:
        so.intra_op_num_threads = threads
    return ort.InferenceSession(model_bytes_or_path, so, providers=["CPUExecutionProvider"])


def _parity(model, proto, probe: np.ndarray) -> float:
    """Max abs difference of ORT vs torch over the maps and scores of `probe` (raises RD2TError if broken)."""
    import torch

    with torch.no_grad():
        t_scores, t_maps = model(torch.from_numpy(probe))
    session = _ort_session(proto.SerializeToString())
    o_scores, o_maps = session.run(list(OUTPUT_NAMES), {INPUT_NAME: probe})
    if o_maps.shape != tuple(t_maps.shape) or o_scores.shape != tuple(t_scores.shape):
        raise RD2TError(f"ONNX outputs {o_scores.shape}, {o_maps.shape}; torch {tuple(t_scores.shape)}, "
                        f"{tuple(t_maps.shape)}")
    diff = max(float(np.abs(o_maps - t_maps.numpy()).max()), float(np.abs(o_scores - t_scores.numpy()).max()))
    scale = max(1.0, float(t_maps.abs().max()))
    if not np.isfinite(diff) or diff > EXPORT_TOLERANCE * scale:
        raise RD2TError(f"ONNX Runtime differs from torch by {diff:.3g} on probe images (allowed "
                        f"{EXPORT_TOLERANCE * scale:.3g})")
    return diff


def export_onnx(checkpoint_path: str | Path, out_path: str | Path, *, opset: int = 17,
                dynamic_batch: bool = True, verify: bool = True) -> Path:
    """Write the whole model as one ONNX file (+ a sidecar JSON) and return the ONNX path.

    The TorchScript exporter is tried first (robust for this CNN); if it fails or its graph does not match
    torch, the dynamo exporter (needs `onnxscript`) is tried. `verify=False` skips the ORT-vs-torch check.
    """
    import onnx
    import torch

    from rd2t import checkpoint
    from rd2t.train import load_model

    model, payload = load_model(checkpoint_path, "cpu")
    model.eval()
    config = checkpoint.config_of(payload)  # as trained (load_model sets device="cpu" on the model's copy)
    size = config.image_size
    if not payload.get("complete", False):
        no_threshold = "" if (payload.get("threshold") or {}).get("value") is not None else " (no threshold)"
        warnings.warn(f"{checkpoint_path}: an unfinished training checkpoint (epoch {payload.get('epoch')}); "
                      f"exporting it all the same{no_threshold}", stacklevel=2)
    out_path = Path(out_path)
    if out_path.suffix.lower() != ".onnx":
        raise InputError(f"{out_path}: the output file must end in .onnx")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    # Trace at batch 2, check at batch 3 (a graph specialised to its tracing batch fails the check).
    dummy = torch.from_numpy(probe_images(2 if dynamic_batch else 1, size, seed=1))
    probe = probe_images(3 if dynamic_batch else 1, size, seed=2)

    errors = []
    for name, exporter in (("torchscript", _export_torchscript), ("dynamo", _export_dynamo)):
        if name == "dynamo":
            try:
                import onnxscript  # noqa: F401
            except ImportError:
                errors.append("dynamo: not tried (needs the onnxscript package)")
                break
        with tempfile.TemporaryDirectory(dir=out_path.parent, prefix=".rd2t-export-") as tmp:
            tmp_path = Path(tmp) / "model.onnx"
            try:
                exporter(model, dummy, tmp_path, opset, dynamic_batch)
                proto = onnx.load(str(tmp_path))
                _fix_io(proto, size, dynamic_batch)
                onnx.checker.check_model(proto, full_check=True)
                check = _parity(model, proto, probe) if verify else float("nan")
            except Exception as e:  # noqa: BLE001 - any failure of one exporter means: try the next
                errors.append(f"{name}: {type(e).__name__}: {_first_line(e)}")
                continue
        opset_used = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
        meta = _metadata(config, payload, int(opset_used), name, check, dynamic_batch)
        onnx.helper.set_model_props(proto, meta)
        proto.doc_string = f"rd2t {__version__} anomaly detector ({config.preset}). " + meta["input"]
        _atomic_write(out_path, proto.SerializeToString())
        sidecar = {"onnx_file": out_path.name, "sha256": hashlib.sha256(out_path.read_bytes()).hexdigest(),
                   **typed_metadata(meta)}
        _atomic_write(sidecar_path(out_path), (json.dumps(sidecar, indent=2) + "\n").encode())
        return out_path
    raise RD2TError(f"{checkpoint_path}: ONNX export failed; " + "; ".join(errors))


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else ""


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide a deployable file from other users
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---- inference -----------------------------------------------------------------------------------------


class OnnxDetector:
    """Runs an exported rd2t model with ONNX Runtime: `predict(images) -> (scores, maps)`.

    `threads`: ORT intra-op threads (None: ORT's default, all cores). `providers`: ORT execution providers
    in order of preference (default CPU); requested ones this ORT lacks are dropped with a warning, CPU
    being the last resort. `optimization`: ORT graph optimisation level, one of OPTIMIZATION_LEVELS.
    """

    def __init__(self, path: str | Path, *, threads: int | None = None, providers: list[str] | None = None,
                 optimization: str = "all"):
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(f"{self.path}: ONNX model not found")
        levels = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }
        if optimization not in levels:
            raise RD2TError(f"optimization={optimization!r}, expected one of "
                            f"{', '.join(OPTIMIZATION_LEVELS)}")
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
            raise InputError(f"{self.path}: not a loadable ONNX model ({type(e).__name__}: "
                             f"{_first_line(e)})") from None
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
            warnings.warn(f"ONNX Runtime here lacks {', '.join(dropped)} (available: "
                          f"{', '.join(available)}); falling back", stacklevel=3)
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
                hint = f" (resize to {s}x{s} first: rd2t.transforms.to_uint8_tensor(image, {s}) / 255)"
            raise InputError(f"expected images of shape {expected}, got shape {arr.shape}{hint}")
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if arr.size:
            lo, hi = float(arr.min()), float(arr.max())
            if not (np.isfinite(lo) and np.isfinite(hi)) or lo < -1e-3 or hi > 1 + 1e-3:
                raise InputError(f"expected values in [0, 1], got [{lo:.4g}, {hi:.4g}] (uint8 data: divide "
                                 "by 255; no mean/std normalisation: the model does it)")
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
