"""ONNX export of a trained model, and a detector that runs the exported file with ONNX Runtime (no torch).

The exported graph is the whole `RD2T.forward`: per-teacher normalisation, both teachers, fusion, OCBE,
student, heads, anomaly map, Gaussian blur (a fixed-weight conv with reflect padding) and the max. Its one
input is "images", float32 (N, 3, S, S) RGB in [0, 1]: the same tensor `rd2t.data.transforms` gives torch
(`to_uint8_tensor(image, S)` then `/ 255`), so nothing of the preprocessing is left to re-implement outside
(the cause of anomalib's export mismatches). Its outputs are "scores" (N,) and "anomaly_maps" (N, S, S).

Everything a deployment needs is written into the file's metadata_props (strings) and, for people and
tools that cannot read ONNX metadata, into a sidecar JSON of the same stem with the same values typed.
Every export is checked: the ONNX checker (with strict shape inference), then ONNX Runtime against torch
on probe images at a batch size other than the traced one; a file failing either is never written.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path

import numpy as np

from rd2t import __version__
from rd2t.errors import InputError, OutputError, RD2TError
from rd2t.files import atomic_write, check_writable, file_sha256
from rd2t.inference.onnx_runtime import (
    EXPORT_TOLERANCE,
    INPUT_NAME,
    OUTPUT_NAMES,
    first_line,
    ort_session,
    sidecar_path,
    typed_metadata,
)
from rd2t.model.checkpoint import ModelInfo

INPUT_DESCRIPTION = (
    "images: float32 (N, 3, {s}, {s}) NCHW, RGB, values in [0, 1] (uint8 / 255), resized to {s}x{s} with "
    "Pillow's bilinear filter (rd2t.data.transforms.to_uint8_tensor); each teacher's normalisation is inside "
    "the graph"
)
OUTPUT_DESCRIPTION = (
    "scores: float32 (N,) max of the anomaly map; anomaly_maps: float32 (N, {s}, {s}) blurred sum over "
    "teachers and scales of 1 - cosine(student, teacher), upsampled to the input"
)
DECISION_RULE = "anomalous when score > threshold"
TILING_DESCRIPTION = (
    "resize the image by {c.scale}, cover it with {c.tile}x{c.tile} tiles every {c.stride} px (last row and "
    "column flush with the border), score each tile, blend the tile maps with a raised-cosine edge window "
    "(rd2t.inference.tiling); image score = max of the stitched map"
)


# ---- metadata ------------------------------------------------------------------------------------------


def _metadata(
    info: ModelInfo, opset: int, exporter: str, check: float, dynamic_batch: bool
) -> dict[str, str]:
    import torch

    s = info.config.image_size
    return {
        "rd2t_version": __version__,
        **info.to_metadata(),
        "decision_rule": DECISION_RULE,
        # Tiled models: the graph scores one tile; the image must be cut and stitched as rd2t does.
        "tiling": TILING_DESCRIPTION.format(c=info.config) if info.config.tile else "none",
        "input": INPUT_DESCRIPTION.format(s=s),
        "outputs": OUTPUT_DESCRIPTION.format(s=s),
        "batch": "dynamic" if dynamic_batch else "1",
        "opset": str(opset),
        "exporter": f"torch {torch.__version__} {exporter}",
        "export_check_max_abs_diff": f"{check:.3g}",
    }


# ---- export --------------------------------------------------------------------------------------------


def probe_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """(n, 3, size, size) float32 in [0, 1]: smooth coloured blobs plus stripes, not flat noise."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 8, 8, generator=g)
    blobs = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    yy, xx = torch.meshgrid(
        torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij"
    )
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
            model,
            (dummy,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes=axes,
            do_constant_folding=True,
            training=torch.onnx.TrainingMode.EVAL,
        )


def _export_dynamo(model, dummy, path: Path, opset: int, dynamic_batch: bool) -> None:
    import torch

    shapes = {"images": {0: torch.export.Dim("N", min=1, max=4096)}} if dynamic_batch else None
    program = torch.onnx.export(
        model,
        (dummy,),
        dynamo=True,
        opset_version=max(opset, 18),
        input_names=[INPUT_NAME],
        output_names=list(OUTPUT_NAMES),
        dynamic_shapes=shapes,
        optimize=True,
        verbose=False,
    )
    program.save(str(path))


def _fix_io(proto, size: int, dynamic_batch: bool) -> None:
    """Declare the outputs' true shapes (N,) and (N, S, S): the tracer's shape inference can leave them
    symbolic or even wrong (it labelled the map's height "N"), which misleads TensorRT, OpenVINO and users."""
    from onnx import TensorProto, helper

    batch = "N" if dynamic_batch else 1
    shapes = {
        INPUT_NAME: [batch, 3, size, size],
        OUTPUT_NAMES[0]: [batch],
        OUTPUT_NAMES[1]: [batch, size, size],
    }
    docs = {INPUT_NAME: INPUT_DESCRIPTION.format(s=size), OUTPUT_NAMES[0]: OUTPUT_DESCRIPTION.format(s=size)}
    for values in (proto.graph.input, proto.graph.output):
        for i, v in enumerate(values):
            if v.name in shapes:
                values[i].CopyFrom(
                    helper.make_tensor_value_info(
                        v.name, TensorProto.FLOAT, shapes[v.name], doc_string=docs.get(v.name, "")
                    )
                )
    # Intermediate value_info from the tracer may carry the same wrong symbolic labels: let ORT infer them.
    del proto.graph.value_info[:]


def _parity(model, proto, probe: np.ndarray) -> float:
    """Max abs difference of ORT vs torch over the maps and scores of `probe` (raises RD2TError if broken)."""
    import torch

    with torch.no_grad():
        t_scores, t_maps = model(torch.from_numpy(probe))
    session = ort_session(proto.SerializeToString())
    o_scores, o_maps = session.run(list(OUTPUT_NAMES), {INPUT_NAME: probe})
    if o_maps.shape != tuple(t_maps.shape) or o_scores.shape != tuple(t_scores.shape):
        raise RD2TError(
            f"ONNX outputs {o_scores.shape}, {o_maps.shape}; torch {tuple(t_scores.shape)}, "
            f"{tuple(t_maps.shape)}"
        )
    diff = max(float(np.abs(o_maps - t_maps.numpy()).max()), float(np.abs(o_scores - t_scores.numpy()).max()))
    scale = max(1.0, float(t_maps.abs().max()))
    if not np.isfinite(diff) or diff > EXPORT_TOLERANCE * scale:
        raise RD2TError(
            f"ONNX Runtime differs from torch by {diff:.3g} on probe images (allowed "
            f"{EXPORT_TOLERANCE * scale:.3g})"
        )
    return diff


def export_onnx(
    checkpoint_path: str | Path,
    out_path: str | Path,
    *,
    opset: int = 17,
    dynamic_batch: bool = True,
    verify: bool = True,
) -> Path:
    """Write the whole model as one ONNX file (+ a sidecar JSON) and return the ONNX path.

    The TorchScript exporter is tried first (robust for this CNN); if it fails or its graph does not match
    torch, the dynamo exporter (needs `onnxscript`) is tried. `verify=False` skips the ORT-vs-torch check.
    """
    import onnx
    import torch

    from rd2t.model.loading import load_model

    model, ckpt = load_model(checkpoint_path, "cpu")
    model.eval()
    config = ckpt.config  # as trained (load_model sets device="cpu" on the model's copy)
    size = config.image_size
    if not ckpt.complete:
        no_threshold = (
            "" if ckpt.calibration and ckpt.calibration.threshold is not None else " (no threshold)"
        )
        warnings.warn(
            f"{checkpoint_path}: an unfinished training checkpoint (epoch {ckpt.epoch}); "
            f"exporting it all the same{no_threshold}",
            stacklevel=2,
        )
    out_path = Path(out_path)
    if out_path.suffix.lower() != ".onnx":
        raise InputError(f"{out_path}: the output file must end in .onnx")
    check_writable(out_path.parent)
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
            except OSError as e:  # a full disk or a lost folder: no other exporter would do better
                raise OutputError(f"{out_path}: cannot write ({e.strerror or type(e).__name__})") from None
            except Exception as e:  # noqa: BLE001 - any failure of one exporter means: try the next
                errors.append(f"{name}: {type(e).__name__}: {first_line(e)}")
                continue
        opset_used = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
        meta = _metadata(ckpt.info(checkpoint_path), int(opset_used), name, check, dynamic_batch)
        onnx.helper.set_model_props(proto, meta)
        proto.doc_string = f"rd2t {__version__} anomaly detector ({config.preset}). " + meta["input"]
        atomic_write(out_path, proto.SerializeToString())
        sidecar = {
            "onnx_file": out_path.name,
            "sha256": file_sha256(out_path),
            **typed_metadata(meta),
        }
        atomic_write(sidecar_path(out_path), (json.dumps(sidecar, indent=2) + "\n").encode())
        return out_path
    raise RD2TError(f"{checkpoint_path}: ONNX export failed; " + "; ".join(errors))
