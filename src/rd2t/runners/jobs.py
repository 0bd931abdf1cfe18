"""One benchmark job: train (or resume) one category/seed and evaluate it; its folder is its state.

Layout: `<out_dir>/<category>/seed<k>/{last.pt, model.pt, metrics.json}`. A job whose metrics.json exists
is finished; an interrupted training resumes from its last.pt.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from rd2t.api import Detector
from rd2t.config import Config
from rd2t.data import Split, open_dataset
from rd2t.evaluation.evaluate import evaluate
from rd2t.files import atomic_write


@dataclass
class Job:
    dataset: str
    root: str
    category: str
    seed: int
    out_dir: str

    @property
    def folder(self) -> Path:
        return Path(self.out_dir) / self.category / f"seed{self.seed}"

    def finished(self) -> dict | None:
        """The job's metrics record when it has run (its metrics.json exists), else None."""
        done = self.folder / "metrics.json"
        return json.loads(done.read_text()) if done.exists() else None


def run_job(
    job: Job, config: Config, progress: bool = False, split: Split | None = None, size_of=None
) -> dict:
    """Train (or resume) one category/seed and evaluate it; the metrics are also written to disk."""
    record = job.finished()
    if record is not None:
        return record
    split = split or open_dataset(job.dataset, job.root, job.category)
    cfg = config.replace(seed=job.seed)
    t0 = time.time()
    det = Detector(cfg).fit(split, job.folder, resume=True, progress=progress)
    train_s = time.time() - t0
    ev = evaluate(det.predictor, split, progress=progress, size_of=size_of)
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
    atomic_write(job.folder / "metrics.json", json.dumps(record, indent=1, default=float))
    return record
