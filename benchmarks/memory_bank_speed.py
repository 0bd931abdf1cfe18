"""Issue 14: what the memory bank costs per image, torch and ONNX Runtime, model alone (uint8 batches of real
images already resized; decoding excluded). Process CPU time per image at one thread, median of --runs calls,
so other jobs on the machine disturb it little (wall time would not be comparable under load).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/memory_bank_speed.py \
        runs/mt/offline_s0/model.pt runs/mt/offline_s0_mb/model.pt --json docs/measured/memory_bank_speed.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from rd2t.data import load_image
from rd2t.data.transforms import to_uint8_tensor
from rd2t.inference.export import export_onnx
from rd2t.inference.predictor import Predictor
from rd2t.model.checkpoint import Checkpoint


def cpu_ms(predictor: Predictor, batch: torch.Tensor, runs: int) -> float:
    predictor.score_tensors(batch)  # warm-up
    times = []
    for _ in range(runs):
        t0 = time.process_time()
        predictor.score_tensors(batch)
        times.append((time.process_time() - t0) / len(batch))
    return 1000 * float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+")
    ap.add_argument("--images", type=Path, default=Path("../shared/data/mvtec_ad/bottle/test/broken_large"))
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--json")
    a = ap.parse_args()
    torch.set_num_threads(1)
    paths = sorted(a.images.glob("*.png"))[:8]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in a.models:
            ckpt = Checkpoint.load(model)
            size = ckpt.config.image_size
            batch = torch.stack([to_uint8_tensor(load_image(p), size) for p in paths])
            onnx_path = export_onnx(model, Path(tmp) / f"{len(rows)}.onnx")
            bank = ckpt.weights.get("memory_bank.patches")
            row = {"model": model, "bank_patches": 0 if bank is None else len(bank)}
            for backend, path in (("torch", model), ("onnx", onnx_path)):
                p = Predictor.open(path, backend=backend, threads=1)
                for b in (1, 8):
                    row[f"{backend}_b{b}_cpu_ms"] = round(cpu_ms(p, batch[:b], a.runs), 1)
            rows.append(row)
            print(json.dumps(row), flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
