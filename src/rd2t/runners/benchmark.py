"""Train and evaluate every category of a dataset over several seeds; resumable, one table at the end.

Layout of `out_dir`: `<category>/seed<k>/{last.pt, model.pt, metrics.json}`. A category/seed whose
metrics.json exists is skipped, and an interrupted training resumes from its last.pt, so re-running the
same command after a crash finishes the job. Published figures are printed beside ours, labelled as such.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from rd2t.config import Config
from rd2t.files import atomic_write
from rd2t.runners.jobs import Job, run_job
from rd2t.runners.parallel import run_parallel

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
    return run_parallel(jobs, config, workers)


def write_outputs(records: list[dict], dataset: str, out_dir: str | Path) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    md = out_dir / "results.md"
    js = out_dir / "results.json"
    atomic_write(md, table(records, dataset))
    atomic_write(js, json.dumps(records, indent=1, default=float))
    return md, js


__all__ = ["Job", "run_job", "benchmark", "table", "write_outputs"]
