"""Issue 14: how threshold rules trade false alarms for misses, with the rule applied to a model's own
held-out good scores (stored in its checkpoint) and counted on the test set. Nothing is fitted on test images.

Besides the rules it prints, as a diagnostic never used to choose, the fewest misses any threshold could give
while raising at most 0, 1, 2 or 5 % false alarms on the test's own good images: how far a rule is from the
model's ROC (when even that point misses many, the model is the limit, not the rule).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/threshold_rules.py runs/mt/offline_s0/model.pt \
        --data ../shared/data/magnetic_tile --category . --json runs/mt/rules_s0.json
    # or from an evaluation's per-image scores, without scoring again:
    .venv/bin/python benchmarks/threshold_rules.py runs/mt/offline_s0/model.pt \
        --scores runs/mt/offline_s0/eval/scores.csv --json runs/mt/rules_s0.json
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

from rd2t.calibration import threshold_from_scores, threshold_trade
from rd2t.data.datasets import open_dataset
from rd2t.inference.predictor import Predictor
from rd2t.model.checkpoint import Checkpoint

ORACLE_FALSE_ALARMS = (0.0, 0.01, 0.02, 0.05)  # shares of the test's good images


def rule_trade(val_scores: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> dict:
    """{rule: [false alarms, misses]} on the test set for each rule applied to the held-out good scores (as
    `rd2t evaluate` writes them), and {"oracle@B": ...}: the fewest misses at a false-alarm budget B on the
    test's own good images."""
    out = {r["rule"]: [r["false_alarms"], r["misses"]] for r in threshold_trade(val_scores, scores, labels)}
    good, bad = np.sort(scores[~labels]), scores[labels]
    for budget in ORACLE_FALSE_ALARMS:
        th = good[len(good) - 1 - int(budget * len(good))]  # that many good scores may lie above it
        out[f"oracle@{budget:g}"] = [int((good > th).sum()), int((bad <= th).sum())]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--data", help="the dataset root (scores its test split)")
    ap.add_argument("--dataset", default="mvtec")
    ap.add_argument("--category", default=".")
    ap.add_argument("--scores", help="scores.csv of `rd2t evaluate --out` instead of --data")
    ap.add_argument("--json")
    a = ap.parse_args()
    if a.scores:
        val = np.array(Checkpoint.load(a.model).calibration.scores)
        rows = list(csv.DictReader(open(a.scores)))
        scores = np.array([float(r["score"]) for r in rows])
        labels = np.array([r["label"] == "1" for r in rows])
    else:
        predictor = Predictor.open(a.model)
        val = np.array(predictor.calibration.scores)
        split = open_dataset(a.dataset, a.data, a.category)
        scores = np.array([p.score for p in predictor.predict([s.path for s in split.test], batch_size=16)])
        labels = np.array([s.label for s in split.test], dtype=bool)
    trade = rule_trade(val, scores, labels)
    for rule, (fa, miss) in trade.items():
        th = "" if rule.startswith("oracle") else f"{threshold_from_scores(val, rule):8.3f}"
        print(f"{rule:14s} {th:>8s}  false alarms {fa}/{(~labels).sum()}  misses {miss}/{labels.sum()}")
    if a.json:
        out = {"model": a.model, "n_val": len(val), "rules": trade, "scores": scores.tolist()}
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps({**out, "labels": labels.tolist()}, indent=1))


if __name__ == "__main__":
    main()
