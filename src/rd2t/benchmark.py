"""Train and evaluate every category of a dataset over several seeds; resumable, one table at the end.

Layout of `out_dir`: `<category>/seed<k>/{last.pt, model.pt, metrics.json}`. A category/seed whose
metrics.json exists is skipped, and an interrupted training resumes from its last.pt, so re-running the
same command after a crash finishes the job. Published figures are printed beside ours, labelled as such.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rd2t.config import Config
from rd2t.data import Split, open_dataset
from rd2t.evaluate import evaluate
from rd2t.train import resolve_device, train

METRICS = ("image_auroc", "pixel_auroc", "au_pro")

# Published means (not measured by rd2t). RD4AD's PRO is its own per-image 200-threshold variant and is not
# comparable with the official AU-PRO; it is shown in brackets.
PUBLISHED = {
    "mvtec": {
        "Pei et al. 2023 (paper)": (99.43, 97.87, None),
        "RD4AD (CVPR 2022)": (98.5, 97.8, "(93.9)"),
        "RD++ (CVPR 2023)": (99.44, 98.25, 94.99),
        "PatchCore-1% (CVPR 2022)": (99.0, 98.0, 93.1),
    },
    "mvtec/bottle": {
        "RD4AD, re-run by anomalib": (100.0, 98.4, None),
        "PatchCore-1% (anomalib)": (100.0, 98.5, 95.9),
    },
    "btad": {"Pei et al. 2023 (paper)": (94.0, 98.0, None)},
}


@dataclass
class Job:
    dataset: str
    root: str
    category: str
    seed: int
    out_dir: str


def run_job(
    job: Job, config: Config, progress: bool = False, split: Split | None = None, size_of=None
) -> dict:
    """Train (or resume) one category/seed and evaluate it; the metrics are also written to disk."""
    out = Path(job.out_dir) / job.category / f"seed{job.seed}"
    done = out / "metrics.json"
    if done.exists():
        return json.loads(done.read_text())
    split = split or open_dataset(job.dataset, job.root, job.category)
    cfg = config.replace(seed=job.seed)
    t0 = time.time()
    result = train(cfg, [s.path for s in split.train], out, resume=True, progress=progress)
    train_s = time.time() - t0
    ev = evaluate(
        result.model,
        split,
        threshold=result.threshold["value"],
        device=resolve_device(cfg.device),
        progress=progress,
        size_of=size_of,
    )
    record = {
        "category": job.category,
        "seed": job.seed,
        "metrics": ev.metrics,
        "per_defect": ev.per_defect,
        "train_seconds": train_s,
        "epochs": cfg.epochs,
        "preset": cfg.preset,
        "config": cfg.to_dict(),
    }
    done.write_text(json.dumps(record, indent=1, default=float))
    return record


def mean_std(values: list[float]) -> str:
    """'mean ± std' in % over seeds (sample std), or the single value."""
    v = np.array([x for x in values if x is not None and not np.isnan(x)], dtype=float) * 100
    if len(v) == 0:
        return "—"
    return f"{v.mean():.2f} ± {v.std(ddof=1):.2f}" if len(v) > 1 else f"{v.mean():.2f}"


def table(records: list[dict], dataset: str, title: str = "rd2t (measured)") -> str:
    """Per-category mean ± std over seeds, a mean row, then the published rows."""
    cats = sorted({r["category"] for r in records})
    lines = [f"| category | seeds | {' | '.join(METRICS)} |", "|---|---|" + "---|" * len(METRICS)]
    means = {m: [] for m in METRICS}
    for c in cats:
        rs = [r for r in records if r["category"] == c]
        cells = [mean_std([r["metrics"][m] for r in rs]) for m in METRICS]
        lines.append(f"| {c} | {len(rs)} | " + " | ".join(cells) + " |")
        for m in METRICS:
            means[m].append(np.nanmean([r["metrics"][m] for r in rs]))
    if len(cats) > 1:
        lines.append("| **mean** | | " + " | ".join(f"{100 * np.mean(means[m]):.2f}" for m in METRICS) + " |")
    out = [f"#### {title}", "", *lines]
    key = dataset if len(cats) != 1 else f"{dataset}/{cats[0]}"
    pub = PUBLISHED.get(key) or PUBLISHED.get(dataset)
    if pub:
        out += [
            "",
            "Published figures, for reference (not measured by rd2t):",
            "",
            "| method | " + " | ".join(METRICS) + " |",
            "|---|" + "---|" * len(METRICS),
        ]
        for name, vals in pub.items():
            out.append(f"| {name} | " + " | ".join("—" if v is None else str(v) for v in vals) + " |")
    return "\n".join(out) + "\n"


def benchmark(
    dataset: str,
    root: str,
    categories: list[str],
    config: Config,
    seeds: int,
    out_dir: str,
    workers: int = 1,
    progress: bool = True,
) -> list[dict]:
    """All category × seed jobs; with workers > 1 they run in parallel processes (one job per worker)."""
    jobs = [Job(dataset, str(root), c, s, str(out_dir)) for c in categories for s in range(seeds)]
    if workers <= 1:
        records = []
        for job in jobs:
            if progress:
                print(f"{job.category} seed {job.seed}", flush=True)
            records.append(run_job(job, config, progress))
        return records
    from rd2t.parallel import run_parallel

    return run_parallel(jobs, config, workers)


def write_outputs(records: list[dict], dataset: str, out_dir: str | Path) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    md = out_dir / "results.md"
    js = out_dir / "results.json"
    md.write_text(table(records, dataset))
    js.write_text(json.dumps(records, indent=1, default=float))
    return md, js


__all__ = ["Job", "run_job", "benchmark", "table", "write_outputs", "resolve_device"]
