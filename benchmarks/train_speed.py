"""Training speed and memory: seconds per epoch on bottle's 209 images, with and without the teacher cache.

Each configuration runs in a fresh process so its peak RSS is its own. Results in docs/performance.md.
Every checkpoint write is timed (the file-writing helper is wrapped), so an epoch's wall time is its
compute plus its share of the checkpoints written during the loop (`--limit 18`: an 18-image subset).

    python benchmarks/train_speed.py --data ../shared/data/mvtec_ad/bottle/train/good --epochs 3
    python benchmarks/train_speed.py --limit 18 --epochs 6 --presets offline --caches memory
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def time_file_writes(writes: list) -> None:
    """Record (file name, seconds) of every file the checkpoint module writes."""
    from rd2t.model import checkpoint

    write = checkpoint.atomic_write

    def timed(path, data):
        t = time.perf_counter()
        result = write(path, data)
        writes.append((Path(path).name, time.perf_counter() - t))
        return result

    checkpoint.atomic_write = timed


def measure(
    preset_name: str, cache: str, data: str, epochs: int, threads: int, limit: int | None = None, **extra
) -> dict:
    import torch

    from rd2t.config import preset
    from rd2t.data import list_images
    from rd2t.training.loop import train

    torch.set_num_threads(threads)
    images = list_images(data)[:limit]
    writes: list = []
    time_file_writes(writes)
    # Hub presets get random teacher weights: the timing is the same, and no download is needed.
    cfg = preset(
        preset_name,
        epochs=epochs,
        cache=cache,
        val_fraction=0.0,
        device="cpu",
        pretrained=preset_name.endswith("offline"),
        **extra,
    )
    with tempfile.TemporaryDirectory() as out:
        t0 = time.time()
        result = train(cfg, images, out, progress=False)
        total = time.time() - t0
        sizes = {p.name: p.stat().st_size for p in Path(out).glob("*.pt")}
    per_epoch = sorted(result.epoch_seconds[1:] or result.epoch_seconds)  # epoch 1 includes warm-up
    end = next(i for i, (name, _) in enumerate(writes) if name == "model.pt")  # the loop's writes before it
    in_loop = writes[:end]
    compute = per_epoch[len(per_epoch) // 2]
    checkpoint_per_epoch = sum(s for _, s in in_loop) / len(result.epoch_seconds)
    return {
        "preset": preset_name,
        "cache": cache,
        "images": len(images),
        "epoch_seconds": compute,
        "checkpoint_seconds_per_epoch": checkpoint_per_epoch,
        "wall_epoch_seconds": compute + checkpoint_per_epoch,
        "checkpoint_writes_in_loop": [(n, round(s, 3)) for n, s in in_loop],
        "file_mib": {n: round(b / 2**20, 1) for n, b in sizes.items()},
        "load_avg_1_5_15_min_at_end": os.getloadavg(),
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
    ap.add_argument("--limit", type=int, default=None, help="first N images only (e.g. 18)")
    ap.add_argument(
        "--checkpoint-every", type=float, default=None, help="checkpoint_every_s (None: the config default)"
    )
    ap.add_argument("--memory-bank", type=float, help="config.memory_bank (default: each preset's; 0: plain)")
    ap.add_argument("--one", nargs=2, metavar=("PRESET", "CACHE"), help=argparse.SUPPRESS)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    if a.one:
        extra = {} if a.checkpoint_every is None else {"checkpoint_every_s": a.checkpoint_every}
        if a.memory_bank is not None:
            extra["memory_bank"] = a.memory_bank
        print(json.dumps(measure(a.one[0], a.one[1], a.data, a.epochs, a.threads, a.limit, **extra)))
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
            cmd += ["--limit", str(a.limit)] if a.limit else []
            cmd += ["--checkpoint-every", str(a.checkpoint_every)] if a.checkpoint_every is not None else []
            cmd += ["--memory-bank", str(a.memory_bank)] if a.memory_bank is not None else []
            rows.append(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout))
            r = rows[-1]
            print(
                f"{p:14s} cache={c:6s} {r['images']} images  compute {r['epoch_seconds']:6.2f} s/epoch  "
                f"wall {r['wall_epoch_seconds']:6.2f} s/epoch "
                f"(checkpoints {r['checkpoint_seconds_per_epoch']:.2f})  "
                f"cache build {r['cache_seconds']:5.1f} s"
                f"  peak RSS {r['peak_rss_gib']:.2f} GiB",
                flush=True,
            )
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
