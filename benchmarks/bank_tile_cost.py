"""What a memory bank costs per tile: one batch of random tiles through a trained (tiled) model, with its bank
and with the bank dropped, each in a fresh process so that its peak RSS is its own (docs/high-resolution.md).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bank_tile_cost.py \
        runs/hires2k/cmp_bank_cap/tile256_frac07/seed0/model.pt
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def measure(model_path: str, batch: int, threads: int, drop_bank: bool) -> dict:
    import torch

    from rd2t.data.transforms import to_model_input
    from rd2t.model.loading import load_model

    torch.set_num_threads(threads)
    model, _ = load_model(model_path)
    if drop_bank and model.memory_bank is not None:
        model.memory_bank.set_share(0)
    size = model.config.image_size
    x = to_model_input(torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8))
    with torch.no_grad():
        model(x[:1])  # warm-up, and the model's own memory before the batch
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    kept = 0 if model.memory_bank is None else int(model.memory_bank.patches.shape[0])
    return {
        "bank_patches": kept,
        "ms_per_tile": round(1000 * min(times) / batch, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "rss_before_batch_mib": round(before),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--batch", type=int, default=8, help="tiles per batch (the predictor: 16)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--one", choices=["bank", "plain"], help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(measure(a.model, a.batch, a.threads, a.one == "plain")))
        return
    for kind in ("bank", "plain"):
        cmd = [sys.executable, __file__, a.model, "--batch", str(a.batch), "--threads", str(a.threads)]
        out = subprocess.run([*cmd, "--one", kind], check=True, capture_output=True, text=True).stdout
        print(kind, out.strip())


if __name__ == "__main__":
    main()
