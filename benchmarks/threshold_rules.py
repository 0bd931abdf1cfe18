"""Issue 14: how threshold rules trade false alarms for misses, with the rule applied to a model's own
held-out good scores (stored in its checkpoint) and counted on the test set. Nothing is fitted on test images.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/threshold_rules.py runs/mt/offline_s0/model.pt \
        --data ../shared/data/magnetic_tile --category . --json runs/mt/rules_s0.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from rd2t.calibration import threshold_from_scores
from rd2t.data.datasets import open_dataset
from rd2t.inference.predictor import Predictor

RULES = ("max", "mean+3std", "mean+2std", "quantile:0.99", "quantile:0.95", "quantile:0.9")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--data", required=True)
    ap.add_argument("--dataset", default="mvtec")
    ap.add_argument("--category", default=".")
    ap.add_argument("--json")
    a = ap.parse_args()
    predictor = Predictor.open(a.model)
    val = np.array(predictor.calibration.scores)
    split = open_dataset(a.dataset, a.data, a.category)
    scores = np.array([p.score for p in predictor.predict([s.path for s in split.test], batch_size=16)])
    labels = np.array([s.label for s in split.test], dtype=bool)
    rows = []
    for rule in RULES:
        th = threshold_from_scores(val, rule)
        fa, miss = int((scores[~labels] > th).sum()), int((scores[labels] <= th).sum())
        rows.append({"rule": rule, "threshold": th, "false_alarms": fa, "misses": miss})
        print(f"{rule:14s} {th:8.3f}  false alarms {fa}/{(~labels).sum()}  misses {miss}/{labels.sum()}")
    if a.json:
        out = {"model": a.model, "n_val": len(val), "rules": rows, "scores": scores.tolist()}
        Path(a.json).write_text(json.dumps({**out, "labels": labels.tolist()}, indent=1))


if __name__ == "__main__":
    main()
