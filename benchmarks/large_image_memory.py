"""Peak memory (max RSS) of `rd2t predict` on very large JPEGs, with and without `--out` overlays.

    nice -n 10 .venv/bin/python benchmarks/large_image_memory.py --model runs/tiny/model.pt --sizes 6000,12000

Each run is its own process (`/usr/bin/time -v` reports its max RSS), one at a time. Without --model a
tiny 64 px model is trained first on generated images (a minute on one core). Prints a Markdown table;
"x image" is the peak RSS above the 256x256 run's, divided by the decoded image's own bytes (W * H * 3).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def make_jpeg(path: Path, side: int) -> Path:
    """A side x side JPEG of smooth stripes, written in bands so this script stays small itself."""
    if path.exists():
        return path
    yy = np.arange(side, dtype=np.float32)[:, None]
    xx = np.arange(side, dtype=np.float32)[None, :]
    band = 1000
    Image.MAX_IMAGE_PIXELS = None
    img = Image.new("RGB", (side, side))
    for top in range(0, side, band):
        rows = yy[top : top + band]
        v = 128 + 60 * np.sin(xx / 37.0) * np.cos(rows / 53.0)
        arr = np.repeat(v[..., None], 3, axis=2).astype(np.uint8)
        img.paste(Image.fromarray(arr), (0, top))
        del arr
    img.save(path, quality=90)
    return path


def tiny_model(folder: Path) -> Path:
    good = folder / "good"
    good.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(8):
        arr = np.clip(128 + rng.normal(0, 20, (64, 64, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(good / f"{i}.png")
    run = folder / "run"
    args = ["train", str(good), "--out", str(run), "--epochs", "1", "--image-size", "64", "--batch-size", "4"]
    subprocess.run([sys.executable, "-m", "rd2t", *args, "--device", "cpu"], check=True)
    return run / "model.pt"


def peak_rss_mb(cmd: list[str]) -> tuple[float, float, int]:
    """(max RSS in MB, wall seconds, exit code) of one command."""
    t0 = time.time()
    r = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True)
    wall = time.time() - t0
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr)
    if not m:
        raise SystemExit(r.stderr[-2000:])
    if r.returncode not in (0, 1):
        print(r.stderr[-1000:], file=sys.stderr)
    return int(m.group(1)) / 1024, wall, r.returncode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--sizes", default="6000,12000")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "rd2t-large-image")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    model = args.model or tiny_model(args.work / "model")
    env_threads = os.environ.get("OMP_NUM_THREADS", "(unset)")
    print(f"model {model}; OMP_NUM_THREADS={env_threads}; load: {os.getloadavg()[0]:.2f}\n")
    print("| image | decoded bytes (MB) | --out | peak RSS (MB) | x image | wall (s) | exit |")
    print("|---|---|---|---|---|---|---|")
    baseline: dict[bool, float] = {}
    for side in [256] + [int(s) for s in args.sizes.split(",")]:  # 256: the process's own baseline
        jpeg = make_jpeg(args.work / f"large_{side}.jpg", side)
        image_mb = side * side * 3 / 2**20
        for with_out in (False, True):
            cmd = [sys.executable, "-m", "rd2t", "predict", str(model), str(jpeg)]
            if with_out:
                cmd += ["--out", str(args.work / f"out_{side}")]
            mb, wall, rc = peak_rss_mb(cmd)
            base = baseline.setdefault(with_out, mb)
            print(
                f"| {side}x{side} | {image_mb:.0f} | {'yes' if with_out else 'no'} | {mb:.0f} | "
                f"{(mb - base) / image_mb:.1f} | {wall:.1f} | {rc} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
