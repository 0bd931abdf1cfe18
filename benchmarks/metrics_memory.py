"""Peak memory and time of rd2t.evaluation.metrics.Evaluator on a full-resolution synthetic test set.

Default: 150 test images at 1024x1024 (157 M pixels; 30 defect-free, 120 over 4 defect types),
float32 maps, the exact AU-PRO / pixel AUROC / AP of compute(), then compute_by_defect().
Run it as its own process, so that ru_maxrss is this evaluation's peak and nothing else's:

    .venv/bin/python benchmarks/metrics_memory.py [--images 150] [--size 1024] [--normal 30]
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np

from rd2t.evaluation.metrics import Evaluator

GIB = 1024**3


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def synthetic_image(rng: np.random.Generator, size: int, defective: bool) -> tuple[np.ndarray, np.ndarray]:
    """A smooth float32 map (coarse noise, upsampled, plus fine noise) and blob mask raising it."""
    coarse = rng.random((size // 32, size // 32), dtype=np.float32)
    amap = np.repeat(np.repeat(coarse, 32, axis=0), 32, axis=1)
    amap += 0.3 * rng.random((size, size), dtype=np.float32)  # nearly every pixel a distinct score
    mask = np.zeros((size, size), dtype=bool)
    if defective:
        yy, xx = np.ogrid[:size, :size]
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.integers(0, size, 2)
            ry, rx = rng.integers(size // 64, size // 8, 2)
            mask |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        amap[mask] += 0.5
    return amap, mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=150)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--normal", type=int, default=30)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    types = ["crack", "scratch", "hole", "stain"]
    evaluator = Evaluator()
    t0 = time.perf_counter()
    for i in range(args.images):
        defective = i >= args.normal
        amap, mask = synthetic_image(rng, args.size, defective)
        # Image score = max of the map, as rd2t scores images.
        evaluator.add(int(defective), float(amap.max()), amap, mask if defective else None, types[i % 4])
        del amap, mask
    t_add = time.perf_counter() - t0
    rss_added = peak_rss_bytes()

    t0 = time.perf_counter()
    result = evaluator.compute()
    t_compute = time.perf_counter() - t0
    rss_compute = peak_rss_bytes()

    t0 = time.perf_counter()
    by_defect = evaluator.compute_by_defect()
    t_by_defect = time.perf_counter() - t0
    rss_end = peak_rss_bytes()

    pixels = args.images * args.size**2
    print(f"test set: {args.images} images at {args.size}x{args.size} = {pixels / 1e6:.1f} M pixels")
    print(f"generate + add:       {t_add:7.1f} s   peak RSS {rss_added / GIB:.2f} GiB")
    print(f"compute():            {t_compute:7.1f} s   peak RSS {rss_compute / GIB:.2f} GiB")
    print(f"compute_by_defect():  {t_by_defect:7.1f} s   peak RSS {rss_end / GIB:.2f} GiB")
    print("metrics: " + ", ".join(f"{k}={v:.4f}" for k, v in result.items()))
    for kind, values in by_defect.items():
        print(f"  {kind:8s} au_pro={values['au_pro']:.4f} pixel_auroc={values['pixel_auroc']:.4f}")
    verdict = "OK" if rss_end < 4 * GIB else "OVER BUDGET"
    print(f"peak RSS {rss_end / GIB:.2f} GiB ({rss_end / pixels:.1f} B/pixel), budget 4 GiB: {verdict}")


if __name__ == "__main__":
    main()
