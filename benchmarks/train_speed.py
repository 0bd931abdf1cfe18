"""Training speed and memory: seconds per epoch on bottle's 209 images, with and without the teacher cache.

Each configuration runs in a fresh process so its peak RSS is its own. Results in docs/performance.md.

    python benchmarks/train_speed.py --data ../shared/data/mvtec_ad/bottle/train/good --epochs 3
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def measure(preset_name: str, cache: str, data: str, epochs: int, threads: int) -> dict:
    import torch

    from rd2t.config import preset
    from rd2t.data import list_images
    from rd2t.training.loop import train

    torch.set_num_threads(threads)
    images = list_images(data)
    # Hub presets get random teacher weights: the timing is the same, and no download is needed.
    cfg = preset(
        preset_name,
        epochs=epochs,
        cache=cache,
        val_fraction=0.0,
        device="cpu",
        pretrained=preset_name.endswith("offline"),
    )
    with tempfile.TemporaryDirectory() as out:
        t0 = time.time()
        result = train(cfg, images, out, progress=False)
        total = time.time() - t0
    per_epoch = sorted(result.epoch_seconds[1:] or result.epoch_seconds)  # epoch 1 includes warm-up
    return {
        "preset": preset_name,
        "cache": cache,
        "images": len(images),
        "epoch_seconds": per_epoch[len(per_epoch) // 2],
        "cache_seconds": result.cache_seconds,
        "total_seconds": total,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "threads": threads,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="../shared/data/mvtec_ad/bottle/train/good")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--presets", nargs="*", default=["offline", "rd4ad-offline"])
    ap.add_argument("--caches", nargs="*", default=["memory", "none"])
    ap.add_argument("--one", nargs=2, metavar=("PRESET", "CACHE"), help=argparse.SUPPRESS)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(measure(a.one[0], a.one[1], a.data, a.epochs, a.threads)))
        return
    rows = []
    for p in a.presets:
        for c in a.caches:
            cmd = [
                sys.executable,
                __file__,
                "--one",
                p,
                c,
                "--data",
                a.data,
                "--epochs",
                str(a.epochs),
                "--threads",
                str(a.threads),
            ]
            rows.append(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout))
            r = rows[-1]
            print(
                f"{p:14s} cache={c:6s} {r['epoch_seconds']:6.1f} s/epoch  "
                f"cache build {r['cache_seconds']:5.1f} s"
                f"  peak RSS {r['peak_rss_gib']:.2f} GiB",
                flush=True,
            )
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
