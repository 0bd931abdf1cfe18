"""End-to-end `rd2t predict` throughput on real 900x900 PNG files against the model alone (issue 12).

    python benchmarks/predict_pipeline.py --images ../shared/data/mvtec_ad/bottle/train/good --n 200 \
        --threads 2 --batch 8 --json docs/measured/predict_pipeline.json

The model is the `offline` preset (real Lite weights, the student as initialised: speed does not depend on
the trained values), exported to ONNX and run by ONNX Runtime with `--threads` intra-op threads. Rows:

- model only: the backend on already-decoded, already-resized uint8 batches of the same images;
- predict: `Detector.predict_files` (what `rd2t predict` runs) on the files: decode, resize, model, results;
- predict --out: the same, also writing a full-resolution heat-map overlay per image (PNG, then JPEG);
- the CLI itself in a fresh process (start-up and model load included), for the record.

Each row is timed after a warm-up batch; stage times come from each Prediction's own timings.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def model_only(predictor, tensors: list, batch: int) -> float:
    predictor.score_tensors(torch.stack(tensors[:batch]))  # warm-up
    t0 = time.perf_counter()
    for i in range(0, len(tensors), batch):
        predictor.score_tensors(torch.stack(tensors[i : i + batch]))
    return len(tensors) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", required=True, type=Path)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, nargs="*", default=[8])
    ap.add_argument("--backend", default="onnx")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    from rd2t.api import Detector
    from rd2t.config import preset
    from rd2t.data.images import list_images
    from rd2t.data.transforms import decode, to_uint8_tensor
    from rd2t.inference.export import export_onnx
    from rd2t.model.checkpoint import Checkpoint
    from rd2t.model.network import RD2T

    files = list_images(a.images)[: a.n]
    torch.manual_seed(0)
    model = RD2T(preset("offline", pretrained=True)).eval()
    result: dict = {"n": len(files), "threads": a.threads, "backend": a.backend, "cpus": os.cpu_count()}
    result["load_start"] = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt = tmp / "offline.pt"
        Checkpoint(model.config, model.state_dict(), complete=True).save(ckpt)
        onnx = export_onnx(ckpt, tmp / "offline.onnx")
        path = onnx if a.backend != "torch" else ckpt
        det = Detector.load(path, backend=a.backend, threads=a.threads)
        predictor = det._require()
        size = predictor.image_size
        t0 = time.perf_counter()
        tensors = [to_uint8_tensor(decode(f), size) for f in files]
        result["decode_resize_serial_ms"] = 1e3 * (time.perf_counter() - t0) / len(files)
        rows = []
        for batch in a.batch:
            row: dict = {"batch": batch, "model_only_img_s": model_only(predictor, tensors, batch)}
            runs = [("predict", None, "png"), ("predict_out", "png", "png")]
            for label, out, fmt in [*runs, ("predict_out_jpg", "jpg", "jpg")]:
                out = out and tmp / f"{label}{batch}"
                kw = dict(out=out, batch_size=batch, overlay_format=fmt)
                list(det.predict_files(files[:batch], **kw))  # warm-up (threads, caches)
                t0 = time.perf_counter()
                records = list(det.predict_files(files, **kw))
                wall = time.perf_counter() - t0
                assert len(records) == len(files) and all(hasattr(r, "score") for r in records), records[:3]
                row[f"{label}_img_s"] = len(files) / wall
            stages = list(predictor.predict(files, batch_size=batch))
            row["decode_ms_median"] = statistics.median(p.timings["decode"] for p in stages)
            row["model_ms_per_image"] = statistics.median(p.timings["model"] for p in stages)
            row["predict_vs_model"] = row["predict_img_s"] / row["model_only_img_s"]
            row["predict_out_vs_model"] = row["predict_out_img_s"] / row["model_only_img_s"]
            row["predict_out_jpg_vs_model"] = row["predict_out_jpg_img_s"] / row["model_only_img_s"]
            rows.append(row)
            print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}))
        result["rows"] = rows
        # The CLI as a user runs it, start-up and model load included.
        env = {**os.environ, "OMP_NUM_THREADS": str(a.threads)}
        t0 = time.perf_counter()
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "rd2t",
                "predict",
                str(path),
                *map(str, files),
                "--backend",
                a.backend,
                "--threads",
                str(a.threads),
                "--batch-size",
                str(a.batch[0]),
                "--output",
                str(tmp / "r.jsonl"),
            ],
            env=env,
            capture_output=True,
            text=True,
        )
        result["cli_wall_s"] = time.perf_counter() - t0
        result["cli_rc"] = proc.returncode
        result["cli_img_s_incl_startup"] = len(files) / result["cli_wall_s"]
    result["load_end"] = os.getloadavg()[0]
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}), flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
