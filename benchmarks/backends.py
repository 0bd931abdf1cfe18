"""Every backend side by side through the shared Predictor (issue 12): speed, map error, accuracy.

    # speed: the Lite presets as built (real teacher weights; speed does not depend on trained values)
    python benchmarks/backends.py speed --presets offline rd4ad-offline --threads 2 \
        --json docs/measured/backends_speed.json
    # map error vs torch fp32 and bottle metrics per backend, for trained checkpoints
    python benchmarks/backends.py accuracy --checkpoints runs/x/model.pt \
        --data ../shared/data/mvtec_ad/bottle --json docs/measured/backends_accuracy.json

Backends: torch (the .pt, fp32, channels-last for the Lite presets as `rd2t predict` runs it), onnx (ONNX
Runtime fp32), openvino (f32 hint), openvino-bf16. Timed on uint8 batches of real images (decoding and
resizing excluded: `predict_pipeline.py` measures those): median of --runs calls at batch 1 and of
--runs16 at batch 16, after warm-up. The map error is the largest |map - torch map| over the test images,
also as a share of the torch maps' range.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from speed import median_seconds  # benchmarks/ is on the path when a script runs

BACKENDS = ["torch", "onnx", "openvino", "openvino-bf16"]


def median_ms(fn, runs: int, warmup: int = 2) -> float:
    return 1e3 * median_seconds(fn, runs, warmup)


def export(ckpt: Path, out: Path) -> Path:
    from rd2t.inference.export import export_onnx

    return export_onnx(ckpt, out)


def open_all(ckpt: Path, onnx: Path, threads: int) -> dict:
    from rd2t.inference.predictor import Predictor

    out = {}
    for name in BACKENDS:
        out[name] = Predictor.open(ckpt if name == "torch" else onnx, backend=name, threads=threads)
    return out


def real_batch(images: Path, n: int, size: int) -> torch.Tensor:
    from rd2t.data.images import list_images
    from rd2t.data.transforms import decode, to_uint8_tensor

    files = sorted(list_images(images))[:n]
    return torch.stack([to_uint8_tensor(decode(f), size) for f in files])


def speed(a) -> None:
    from rd2t.config import preset
    from rd2t.model.checkpoint import Checkpoint
    from rd2t.model.network import RD2T

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.presets:
            torch.manual_seed(0)
            model = RD2T(preset(name, pretrained=True)).eval()
            ckpt = Path(tmp) / f"{name}.pt"
            Checkpoint(model.config, model.state_dict(), complete=True).save(ckpt)
            predictors = open_all(ckpt, export(ckpt, Path(tmp) / f"{name}.onnx"), a.threads)
            batch = real_batch(a.images, 16, model.config.image_size)
            for backend, p in predictors.items():
                row = {
                    "preset": name,
                    "backend": backend,
                    "b1_ms": median_ms(lambda p=p, b=batch: p.score_tensors(b[:1]), a.runs),
                    "b16_img_s": 16e3 / median_ms(lambda p=p, b=batch: p.score_tensors(b), a.runs16, 1),
                }
                rows.append(row)
                print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}))
    write(a, {"mode": "speed", "threads": a.threads, "load_end": os.getloadavg(), "rows": rows})


def accuracy(a) -> None:
    from rd2t.api import open_split
    from rd2t.evaluation.evaluate import evaluate

    split = open_split(a.data)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for ckpt in a.checkpoints:
            ckpt = Path(ckpt)
            predictors = open_all(ckpt, export(ckpt, Path(tmp) / "m.onnx"), a.threads)
            files = [s.path for s in split.test] if hasattr(split.test[0], "path") else list(split.test)
            ref = [p.model_map for p in predictors["torch"].predict(files, batch_size=8)]
            span = float(np.max([m.max() for m in ref]) - np.min([m.min() for m in ref]))
            for backend, p in predictors.items():
                maps = [q.model_map for q in p.predict(files, batch_size=8)]
                err = max(float(np.abs(m - r).max()) for m, r in zip(maps, ref, strict=True))
                res = evaluate(p, split, threshold=p.threshold, progress=False, curves=False)
                row = {"checkpoint": str(ckpt), "preset": p.config.preset, "backend": backend}
                row |= {"max_map_error": err, "map_error_share_of_range": err / span}
                keys = ("image_auroc", "pixel_auroc", "au_pro", "false_alarms", "misses")
                row |= {k: res.metrics.get(k) for k in keys}  # decisions at the model's stored threshold
                rows.append(row)
                print(json.dumps({k: round(v, 6) if isinstance(v, float) else v for k, v in row.items()}))
    write(a, {"mode": "accuracy", "threads": a.threads, "data": str(a.data), "rows": rows})


def write(a, result: dict) -> None:
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["speed", "accuracy"])
    ap.add_argument("--presets", nargs="*", default=["offline", "rd4ad-offline"])
    ap.add_argument("--checkpoints", nargs="*", default=[])
    ap.add_argument("--data", type=Path, default=Path("../shared/data/mvtec_ad/bottle"))
    ap.add_argument("--images", type=Path, default=Path("../shared/data/mvtec_ad/bottle/test/broken_large"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--runs16", type=int, default=5)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    speed(a) if a.mode == "speed" else accuracy(a)


if __name__ == "__main__":
    main()
