"""Ablations of the two-teacher design on real data (docs/ablations.md has the results and the command).

Every row uses the offline EfficientNet-Lite weights, the same fixed epoch count (chosen before looking at
any test result) and the same seeds; only the named component changes. Results are written per run to
OUT/<dataset>/<row>/<category>/seed<k>/metrics.json (resumable) and summarised in OUT/ablations.md.

    python benchmarks/ablations.py --data ../shared/data --out runs/ablations --epochs 40 --seeds 3

`--resized` reads the copies made by prepare_resized_copy.py (identical model input, metrics still at the
original resolution via their sizes.json).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np

T1, T2 = "tf_efficientnet_lite2", "tf_efficientnet_lite0"
ROWS = {
    "single T1 (Lite2)": dict(teachers=(T1,), teacher_weights=(None,)),
    "single T2 (Lite0)": dict(teachers=(T2,), teacher_weights=(None,)),
    "two teachers, sum fusion": dict(fusion="sum"),
    "two teachers, iAFF (offline preset)": dict(),
    "two teachers, iAFF, no channel attention": dict(channel_attention=False),
    "two teachers, iAFF, consistent student (MBConv)": dict(student="mbconv"),
    "RD4AD baseline (rd4ad-offline preset)": "rd4ad-offline",
}
DATASETS = {"bottle": ("mvtec_ad", "bottle"), "hazelnut_toy": (".", "hazelnut_toy")}


def _config(row: str, epochs: int, device: str):
    from rd2t.config import preset

    spec = ROWS[row]
    if isinstance(spec, str):
        return preset(spec, epochs=epochs, device=device)
    return preset("offline", epochs=epochs, device=device, **spec)


def _run(
    row: str,
    dataset: str,
    data: str,
    seed: int,
    out: str,
    epochs: int,
    device: str,
    resized: bool,
    threads: int,
) -> dict:
    import torch

    from rd2t.benchmark import Job, run_job
    from rd2t.data import mvtec

    torch.set_num_threads(threads)
    sub, category = DATASETS[dataset]
    root = Path(data) / sub
    split = mvtec(root, category)
    size_of = None
    if resized:  # pre-resized copy: evaluate at the original size recorded beside it
        sizes = json.loads((root / category / "sizes.json").read_text())
        size_of = lambda s, wh: tuple(sizes[str(s.path.relative_to(root / category))])  # noqa: E731
    slug = row.split(" (")[0].replace(" ", "_").replace(",", "")
    job = Job("mvtec", str(root), category, seed, str(Path(out) / dataset / slug))
    rec = run_job(job, _config(row, epochs, device), split=split, size_of=size_of)
    rec["row"], rec["dataset"] = row, dataset
    if "metrics_at_256" not in rec:
        # Also score at the model's 256 px, as many papers' code and the DESIGN reference sketch do.
        from rd2t.evaluate import evaluate
        from rd2t.train import load_model, resolve_device

        dev = str(resolve_device(device))
        model, _ = load_model(Path(job.out_dir) / category / f"seed{seed}" / "model.pt", device=dev)
        s = model.config.image_size
        rec["metrics_at_256"] = evaluate(
            model, split, device=dev, progress=False, size_of=lambda smp, wh: (s, s)
        ).metrics
    return rec


def summarise(records: list[dict], epochs: int) -> str:
    lines = [
        f"Epochs {epochs} (fixed in advance), seeds {sorted({r['seed'] for r in records})}; "
        "mean ± std over seeds, in %.",
        "",
    ]
    for dataset in DATASETS:
        rs = [r for r in records if r["dataset"] == dataset]
        if not rs:
            continue
        lines += [
            f"#### {dataset}",
            "",
            "| row | image AUROC | pixel AUROC | AU-PRO | pixel AUROC @256 | AU-PRO @256 | train s/run |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in ROWS:
            rr = [r for r in rs if r["row"] == row]
            if not rr:
                continue
            cells = []
            for m in ("image_auroc", "pixel_auroc", "au_pro"):
                v = 100 * np.array([r["metrics"][m] for r in rr])
                cells.append(f"{v.mean():.2f} ± {v.std(ddof=1):.2f}" if len(v) > 1 else f"{v.mean():.2f}")
            t = np.mean([r["train_seconds"] for r in rr])
            for m in ("pixel_auroc", "au_pro"):
                v = 100 * np.array([r["metrics_at_256"][m] for r in rr])
                cells.append(f"{v.mean():.2f} ± {v.std(ddof=1):.2f}" if len(v) > 1 else f"{v.mean():.2f}")
            lines.append(f"| {row} | " + " | ".join(cells) + f" | {t:.0f} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--out", default="runs/ablations")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--rows", nargs="*", default=list(ROWS))
    ap.add_argument("--datasets", nargs="*", default=list(DATASETS))
    ap.add_argument("--device", default="auto")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--resized", action="store_true")
    a = ap.parse_args()
    threads = max(1, (os.cpu_count() or 2) // a.workers)
    args = [
        (row, ds, a.data, seed, a.out, a.epochs, a.device, a.resized, threads)
        for ds in a.datasets
        for seed in range(a.seeds)
        for row in a.rows
    ]
    t0, records = time.time(), []
    with ProcessPoolExecutor(a.workers) as pool:
        futures = {pool.submit(_run, *x): x for x in args}
        for f in as_completed(futures):
            rec = f.result()
            records.append(rec)
            m = rec["metrics"]
            print(
                f"[{time.time() - t0:6.0f}s] {rec['dataset']:12s} seed {rec['seed']} {rec['row']:48s} "
                f"img {m['image_auroc']:.4f} px {m['pixel_auroc']:.4f} pro {m['au_pro']:.4f} "
                f"({rec['train_seconds']:.0f}s)",
                flush=True,
            )
            text = summarise(records, a.epochs)  # rewritten after every run: a cut-off job keeps its rows
            Path(a.out).mkdir(parents=True, exist_ok=True)
            (Path(a.out) / "ablations.md").write_text(text)
            (Path(a.out) / "ablations.json").write_text(json.dumps(records, default=float))
    print(text)


if __name__ == "__main__":
    main()
