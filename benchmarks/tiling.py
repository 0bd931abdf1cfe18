"""Tiled high-resolution inference: the evidence in docs/high-resolution.md.

    # a generated high-resolution set (MVTec layout, exact masks), then tiled vs 256 px resize on it
    python benchmarks/tiling.py generate --out runs/hires/data --size 1024 --train 16 --test-good 8 \
        --test-bad 18
    python benchmarks/tiling.py compare --data runs/hires/data --category weave --out runs/hires/cmp \
        --epochs 6 --run resize256 --run tile256
    # inference time and peak RSS per megapixel count (one fresh process per size)
    python benchmarks/tiling.py scaling --model runs/hires/cmp/tile256_frac25/seed0/model.pt --mp 1 4 16 64 \
        --scale 0.5 --json runs/hires/scaling_half.json

Runs `compare` row by row (`--run NAME`, rows in ROWS), each in its own folder with metrics.json, so an
interrupted sweep resumes. The settings are fixed before looking at any test image.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROWS = {
    "resize256": dict(image_size=256),
    # 14 resized images are 1 step per epoch, a quarter of 350 tiles 5: about the same optimizer steps.
    "resize256_steps": dict(image_size=256, epoch_factor=5),
    "tile256": dict(tile=256, stride=192, scale=1.0),
    "tile256_half": dict(tile=256, stride=192, scale=0.5),
    "tile256_frac25": dict(tile=256, stride=192, scale=1.0, tile_fraction=0.25),
    # equal optimizer steps to tile256 (all tiles) at 4x its epochs: all tiles vs a random share per epoch
    "tile256_frac25_steps": dict(tile=256, stride=192, scale=1.0, tile_fraction=0.25, epoch_factor=4),
    # bottle (900 px) at scale 1 is a 5x5 grid: 0.16 of it is 4 tiles per image per epoch. (Scale 0.5 is a
    # 3x3 grid at 450 px, starts 0/192/194, so `tile256_half` sees 9 per image, not 4.)
    "tile256_frac16": dict(tile=256, stride=192, scale=1.0, tile_fraction=0.16),
    # 2048 px (11x11 grid) and 4096 px (21x21): shares that keep about the 1024 px row's ~90 tiles per epoch
    "tile256_frac07": dict(tile=256, stride=192, scale=1.0, tile_fraction=0.07),
    "tile256_frac04": dict(tile=256, stride=192, scale=1.0, tile_fraction=0.04),
}


# ---- a high-resolution set with small defects -------------------------------------------------------


def texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A fine woven surface at native pixel scale: two thread directions every 6-8 px, slow shading, noise.
    Its period is 1.5-2 px once the image is resized to 256 px: what the resize keeps is mostly blur."""
    y, x = np.mgrid[:size, :size].astype(np.float32)
    px, py, phase = rng.uniform(6, 8), rng.uniform(6, 8), rng.uniform(0, 2 * np.pi, 2)
    weave = 18 * np.sin(2 * np.pi * x / px + phase[0]) * np.sin(2 * np.pi * y / py + phase[1])
    shade = 12 * np.sin(2 * np.pi * (x + y) / (size * rng.uniform(0.8, 1.6)) + rng.uniform(0, 6))
    gray = 130 + weave + shade + rng.normal(0, 5, (size, size))
    tint = np.array([1.0, 0.95, 0.85], np.float32)
    return np.clip(gray[..., None] * tint, 0, 255).astype(np.uint8)


def paint(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, str]:
    """One small defect, 3-20 px wide, the mask exactly the changed pixels: a thin scratch (3-6 px wide,
    60-200 px long) or a spot (6-20 px) that shift the brightness by 25-45 levels, or a snag (8-20 px wide,
    20-60 px long) where the weave is missing but the mean brightness is kept, invisible once blurred."""
    from scipy import ndimage

    size = img.shape[0]
    y, x = np.mgrid[:size, :size].astype(np.float32)
    cy, cx = rng.uniform(0.1, 0.9, 2) * size
    kind = str(rng.choice(["scratch", "spot", "snag"]))
    if kind == "spot":
        r = rng.uniform(3, 10)
        mask = (x - cx) ** 2 + ((y - cy) / rng.uniform(0.7, 1.0)) ** 2 <= r * r
    else:
        angle = rng.uniform(0, np.pi)
        length, width = (
            (rng.uniform(60, 200), rng.uniform(3, 6))
            if kind == "scratch"
            else (rng.uniform(20, 60), rng.uniform(8, 20))
        )
        dx, dy = np.cos(angle), np.sin(angle)
        along = (x - cx) * dx + (y - cy) * dy
        across = -(x - cx) * dy + (y - cy) * dx
        mask = (np.abs(along) <= length / 2) & (np.abs(across) <= width / 2)
    out = img.astype(np.float32)
    if kind == "snag":  # the local mean (a 15 px box averages the 6-8 px weave away) plus the sensor noise
        flat = ndimage.uniform_filter(out, size=(15, 15, 1))
        out[mask] = flat[mask] + rng.normal(0, 5, (int(mask.sum()), 1))
    else:
        out[mask] += rng.choice([-1, 1]) * rng.uniform(25, 45)
    return np.clip(out, 0, 255).astype(np.uint8), mask, kind


def generate(out: Path, size: int, n_train: int, n_good: int, n_bad: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    base = out / "weave"
    for kind in ("scratch", "spot", "snag"):
        for sub in ("train/good", "test/good", f"test/{kind}", f"ground_truth/{kind}"):
            (base / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n_train):
        Image.fromarray(texture(rng, size)).save(base / f"train/good/{i:03d}.png")
    for i in range(n_good):
        Image.fromarray(texture(rng, size)).save(base / f"test/good/{i:03d}.png")
    for i in range(n_bad):
        img, mask, kind = paint(texture(rng, size), rng)
        Image.fromarray(img).save(base / f"test/{kind}/{i:03d}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(base / f"ground_truth/{kind}/{i:03d}_mask.png")
    print(f"wrote {base}: {n_train} train, {n_good} good + {n_bad} defective test images of {size} px")


# ---- tiled vs resized ----------------------------------------------------------------------------------


CONFIG_KEYS = (
    "image_size",
    "tile",
    "stride",
    "scale",
    "tile_fraction",
    "epochs",
    "memory_bank",
    "bank_stride",
)


def compare(args) -> None:
    import torch

    from rd2t.config import preset
    from rd2t.data.datasets import open_dataset
    from rd2t.evaluation.evaluate import evaluate
    from rd2t.inference.predictor import Predictor
    from rd2t.training.loop import train

    torch.set_num_threads(args.threads)
    split = open_dataset(args.dataset, args.data, args.category)
    for name in args.run:
        for seed in args.seed_list if args.seed_list is not None else range(args.seeds):
            folder = Path(args.out) / name / f"seed{seed}"
            if (folder / "metrics.json").exists():
                print(f"{name} seed {seed}: done before")
                continue
            fields = dict(ROWS[name])
            epochs = args.epochs * fields.pop("epoch_factor", 1)
            if args.memory_bank is not None:  # the plain rows in docs/high-resolution.md: --memory-bank 0
                fields["memory_bank"] = args.memory_bank
            cfg = preset("offline", epochs=epochs, seed=seed, device="cpu", cache=args.cache, **fields)
            t0 = time.perf_counter()
            result = train(cfg, [s.path for s in split.train], folder, progress=False)
            train_s = time.perf_counter() - t0
            predictor = Predictor.from_model(result.model, result.calibration)
            t0 = time.perf_counter()
            ev = evaluate(predictor, split, progress=False)
            eval_s = time.perf_counter() - t0
            cache_mb = (
                sum(f.stat().st_size for f in (folder / "cache").glob("*")) / 2**20
                if args.cache == "disk"
                else None
            )
            row = {
                "row": name,
                "seed": seed,
                "config": {  # the trained model's: bank_stride 0 has become the stride chosen
                    k: getattr(result.model.config, k) for k in CONFIG_KEYS
                },
                **{k: ev.metrics.get(k) for k in ("image_auroc", "pixel_auroc", "au_pro", "pixel_ap")},
                "train_s": round(train_s, 1),
                "epoch_s": round(float(np.mean(result.epoch_seconds)), 2),
                "cache_s": round(result.cache_seconds, 1),
                "cache_mb": cache_mb,
                "infer_ms_per_image": round(1000 * eval_s / max(len(ev.scored), 1), 1),
                "threshold": result.calibration.threshold if result.calibration else None,
                "false_alarms": ev.metrics.get("false_alarms"),
                "misses": ev.metrics.get("misses"),
                "load": os.getloadavg()[0],
                "per_defect": {
                    d: {k: m.get(k) for k in ("image_auroc", "pixel_auroc", "au_pro")}
                    for d, m in ev.per_defect.items()
                },
            }
            (folder / "metrics.json").write_text(json.dumps(row, indent=1))
            print(json.dumps(row))


def per_defect(args) -> None:
    """Per-defect-type metrics of the trained rows (model.pt in each row folder), into per_defect.json."""
    import torch

    from rd2t.data.datasets import open_dataset
    from rd2t.evaluation.evaluate import evaluate
    from rd2t.inference.predictor import Predictor

    torch.set_num_threads(args.threads)
    split = open_dataset(args.dataset, args.data, args.category)
    for name in args.run:
        folder = Path(args.out) / name / "seed0"
        ev = evaluate(Predictor.open(folder / "model.pt"), split, progress=False)
        keys = ("image_auroc", "pixel_auroc", "au_pro")
        table = {d: {k: m.get(k) for k in keys} for d, m in ev.per_defect.items()}
        (folder / "per_defect.json").write_text(json.dumps(table, indent=1))
        print(name, json.dumps(table))


def summary(args) -> None:
    """One Markdown row per compare row: mean +- std over its seeds (metrics in %), cost, decisions."""
    print(
        "| row | seeds | image AUROC | pixel AUROC | AU-PRO | pixel AP | s/epoch | inference ms/image "
        "| false alarms / misses per seed |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for folder in sorted(p for p in Path(args.out).iterdir() if p.is_dir()):
        runs = [json.loads(m.read_text()) for m in sorted(folder.glob("seed*/metrics.json"))]
        if not runs:
            continue

        def stat(key: str, pct: bool = True, runs: list = runs) -> str:
            v = np.array([r[key] for r in runs], float) * (100 if pct else 1)
            return f"{v.mean():.2f} ± {v.std():.2f}" if len(v) > 1 else f"{v[0]:.2f}"

        decisions = ", ".join(f"{r['false_alarms']} / {r['misses']}" for r in runs)
        metrics = " | ".join(stat(k) for k in ("image_auroc", "pixel_auroc", "au_pro", "pixel_ap"))
        print(
            f"| {folder.name} | {len(runs)} | {metrics} "
            f"| {stat('epoch_s', False)} | {stat('infer_ms_per_image', False)} "
            f"| {decisions} |"
        )


# ---- scaling: time and peak memory per image size ------------------------------------------------------


def scaling_one(model: str, megapixels: float, threads: int, scale: float | None = None) -> dict:
    """Predict one generated square image of `megapixels` in this process; time and peak RSS."""
    import torch

    from rd2t.inference.predictor import Predictor

    torch.set_num_threads(threads)
    side = int(round((megapixels * 1e6) ** 0.5))
    predictor = Predictor.open(model)
    if scale is not None:  # the same weights, another resize factor before tiling
        predictor.info.config = predictor.config.replace(scale=scale)
    predictor.predict_one(np.zeros((256, 256, 3), np.uint8))  # warm-up: lazy init outside the timing
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rng = np.random.default_rng(0)
    tile = texture(rng, 1024)
    image = np.tile(tile, (side // 1024 + 1, side // 1024 + 1, 1))[:side, :side]
    image_mb = image.nbytes / 2**20
    t0, c0 = time.perf_counter(), time.process_time()
    (p,) = list(predictor.predict([image], batch_size=8))
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    return {
        "megapixels": round(side * side / 1e6, 2),
        "side": side,
        "seconds": round(seconds, 1),
        "s_per_mp": round(seconds / (side * side / 1e6), 2),
        # CPU seconds of this process: what the image costs, much less disturbed by other load than wall time
        "cpu_s": round(cpu_seconds, 1),
        "cpu_s_per_mp": round(cpu_seconds / (side * side / 1e6), 2),
        "map_shape": list(p.model_map.shape),
        "map_mb": round(p.model_map.nbytes / 2**20, 1),
        "image_mb": round(image_mb, 1),
        "rss_before_mb": round(rss_before),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "load": os.getloadavg()[0],
    }


def scaling(args) -> None:
    rows = []
    for mp in args.mp:
        cmd = [sys.executable, __file__, "_scaling_one", "--model", args.model, "--mp", str(mp)]
        cmd += ["--threads", str(args.threads)] + (["--scale", str(args.scale)] if args.scale else [])
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        rows.append(json.loads(out))
        print(out, flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


def plot(args) -> None:
    """CPU seconds and peak RSS against megapixels, one line per scaling JSON."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(9, 3.6))
    for path in args.json:
        rows = json.loads(Path(path).read_text())
        mp = [r["megapixels"] for r in rows]
        label = Path(path).stem
        ax_t.plot(mp, [r["cpu_s"] for r in rows], "o-", label=label)
        ax_m.plot(mp, [r["peak_rss_mb"] for r in rows], "o-", label=f"{label}: peak RSS")
        ax_m.plot(mp, [r["rss_before_mb"] + r["image_mb"] + r["map_mb"] for r in rows], "k:", lw=1)
    ax_t.set(xlabel="image megapixels", ylabel="CPU seconds per image", title="time (1 thread)")
    ax_m.set(xlabel="image megapixels", ylabel="MB", title="peak RSS (dotted: model + image + map)")
    for ax in (ax_t, ax_m):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate")
    g.add_argument("--out", type=Path, required=True)
    g.add_argument("--size", type=int, default=1024)
    g.add_argument("--train", type=int, default=16)
    g.add_argument("--test-good", type=int, default=8)
    g.add_argument("--test-bad", type=int, default=16)
    g.add_argument("--seed", type=int, default=0)
    c = sub.add_parser("compare")
    c.add_argument("--data", required=True)
    c.add_argument("--dataset", default="mvtec")
    c.add_argument("--category", default="weave")
    c.add_argument("--out", required=True)
    c.add_argument("--run", action="append", choices=list(ROWS), required=True)
    c.add_argument("--epochs", type=int, default=6)
    c.add_argument("--seeds", type=int, default=1)
    c.add_argument("--seed-list", type=int, nargs="+", help="these seeds instead of 0..seeds-1")
    c.add_argument("--cache", default="memory", choices=["memory", "disk", "none"])
    c.add_argument("--threads", type=int, default=1)
    c.add_argument("--memory-bank", type=float, help="config.memory_bank (default: offline's; 0: plain)")
    d = sub.add_parser("per_defect")
    for flag, default in (("--data", None), ("--dataset", "mvtec"), ("--category", "weave"), ("--out", None)):
        d.add_argument(flag, default=default, required=default is None)
    d.add_argument("--run", action="append", choices=list(ROWS), required=True)
    d.add_argument("--threads", type=int, default=1)
    for name in ("scaling", "_scaling_one"):
        s = sub.add_parser(name)
        s.add_argument("--model", required=True)
        s.add_argument("--mp", type=float, nargs="+" if name == "scaling" else None, default=[1, 4, 16, 64])
        s.add_argument("--threads", type=int, default=1)
        s.add_argument("--scale", type=float, help="override the model's scale")
        s.add_argument("--json")
    sm = sub.add_parser("summary")
    sm.add_argument("--out", required=True)
    pl = sub.add_parser("plot")
    pl.add_argument("--json", nargs="+", required=True)
    pl.add_argument("--out", required=True)
    args = ap.parse_args()
    if args.cmd == "generate":
        generate(args.out, args.size, args.train, args.test_good, args.test_bad, args.seed)
    elif args.cmd == "compare":
        compare(args)
    elif args.cmd == "summary":
        summary(args)
    elif args.cmd == "plot":
        plot(args)
    elif args.cmd == "per_defect":
        per_defect(args)
    elif args.cmd == "scaling":
        scaling(args)
    else:
        print(json.dumps(scaling_one(args.model, args.mp, args.threads, args.scale)))


if __name__ == "__main__":
    main()
