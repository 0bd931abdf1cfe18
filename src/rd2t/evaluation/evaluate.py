"""Evaluate a trained model on a test split: metrics at each image's original resolution.

Maps come out of the model at `image_size`; they are upsampled (bilinear) to the original image size
before any pixel metric, as MVTec's official evaluation requires. Nothing here is tuned on the test set.
"""

from __future__ import annotations

import csv
import io
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from rd2t.calibration import COMPARED_RULES, threshold_trade
from rd2t.data import Sample, Split, load_mask
from rd2t.data.transforms import resize_map
from rd2t.errors import RD2TError
from rd2t.evaluation.metrics import Evaluator, pro_curve, roc_curve_points
from rd2t.inference.predictor import Predictor


@dataclass
class Scored:
    sample: Sample
    score: float
    anomaly_map: np.ndarray  # float32 at the model's image_size
    original_size: tuple[int, int]  # (W, H) as PIL reports it


def score_samples(
    predictor: Predictor,
    samples: Sequence[Sample],
    *,
    batch_size: int = 16,
    progress: bool = True,
    size_of: Callable[[Sample, tuple[int, int]], tuple[int, int]] | None = None,
) -> Iterator[Scored]:
    """Score images through the predictor; an unreadable image is reported on stderr and skipped."""
    by_path = {s.path: s for s in samples}
    bar = tqdm(total=len(samples), desc="scoring", disable=not progress, leave=False)
    for p in predictor.predict([s.path for s in samples], batch_size=batch_size, threshold=None):
        bar.update(1)
        if isinstance(p, RD2TError):
            print(f"skipped: {p}", file=sys.stderr)
            continue
        s = by_path[p.path]
        yield Scored(s, p.score, p.model_map, size_of(s, p.size) if size_of else p.size)
    bar.close()


@dataclass
class EvalResult:
    metrics: dict[str, float]
    per_defect: dict[str, dict[str, float]]
    scored: list[Scored]
    has_masks: bool
    threshold: float | None = None
    curves: dict = field(default_factory=dict)
    skipped: int = 0
    trade: list[dict] = field(default_factory=list)  # calibration.threshold_trade on this test set
    trade_from: int = 0  # how many held-out good scores the rules were applied to
    report_path: Path | None = None  # set when an HTML report was written

    def decisions(self) -> np.ndarray | None:
        if self.threshold is None:
            return None
        return np.array([s.score > self.threshold for s in self.scored])


def evaluate(
    predictor: Predictor,
    split: Split,
    *,
    threshold: float | None = None,
    batch_size: int = 16,
    progress: bool = True,
    curves: bool = False,
    size_of: Callable[[Sample, tuple[int, int]], tuple[int, int]] | None = None,
) -> EvalResult:
    """Image and pixel metrics (AUROC, F1-max, AP, AU-PRO) plus the per-defect-type breakdown.

    `threshold` (default: the predictor's calibrated one) gives the false-alarm and miss counts.

    `size_of(sample, loaded_size)` overrides the original size (used when scoring pre-resized copies).
    """
    threshold = predictor.threshold if threshold is None else threshold
    ev = Evaluator()
    scored: list[Scored] = []
    masks, maps = [], []
    for item in score_samples(
        predictor, split.test, batch_size=batch_size, progress=progress, size_of=size_of
    ):
        s = item.sample
        full_map = resize_map(item.anomaly_map, item.original_size)
        mask = None
        if split.has_masks:
            mask = (
                load_mask(s.mask_path, item.original_size)
                if s.mask_path
                else np.zeros(full_map.shape, dtype=bool)
            )
        ev.add(s.label, item.score, full_map if split.has_masks else None, mask, s.defect_type)
        if curves and split.has_masks:
            masks.append(mask)
            maps.append(full_map)
        scored.append(item)
    result = EvalResult(
        ev.compute(),
        ev.compute_by_defect(),
        scored,
        split.has_masks,
        threshold,
        skipped=len(split.test) - len(scored),
    )
    labels = np.array([s.sample.label for s in scored], dtype=bool)
    scores = np.array([s.score for s in scored], dtype=np.float64)
    if threshold is not None:
        dec = result.decisions()
        result.metrics["false_alarms"] = int((dec & ~labels).sum())
        result.metrics["misses"] = int((~dec & labels).sum())
    cal = predictor.calibration
    if cal is not None and cal.scores and scored:
        # what each rule, applied to the same held-out good scores, would have given here
        rules = (*COMPARED_RULES, cal.rule) if cal.rule else COMPARED_RULES
        result.trade = threshold_trade(cal.scores, scores, labels, rules, cal.defect_scores)
        for r in result.trade:
            r["stored"] = r["rule"] == cal.rule
        result.trade_from = len(cal.scores)
    if curves:
        result.curves["roc"] = roc_curve_points(labels, scores)
        if masks:
            result.curves["pro"] = pro_curve(masks, maps)
    return result


def scores_csv(result: EvalResult) -> str:
    """One row per scored test image: path, defect type, label (1 = defective), score and, with a threshold,
    the verdict. Enough to study any threshold offline (benchmarks/threshold_rules.py --scores)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "defect_type", "label", "score", "defective"])
    dec = result.decisions()
    for i, s in enumerate(result.scored):
        verdict = "" if dec is None else bool(dec[i])
        w.writerow([s.sample.path, s.sample.defect_type, int(s.sample.label), repr(float(s.score)), verdict])
    return buf.getvalue()


def metrics_markdown(result: EvalResult, title: str) -> str:
    """A Markdown table of the overall and per-defect metrics."""
    keys = ["image_auroc", "pixel_auroc", "au_pro", "image_f1_max", "pixel_ap"]

    def fmt(v) -> str:
        return "—" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.4f}"

    lines = [f"### {title}", "", "| subset | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    lines.append("| all | " + " | ".join(fmt(result.metrics.get(k)) for k in keys) + " |")
    for defect, m in sorted(result.per_defect.items()):
        lines.append(f"| {defect} | " + " | ".join(fmt(m.get(k)) for k in keys) + " |")
    if not result.has_masks:
        lines.append("\nNo ground-truth masks: image-level metrics only.")
    if result.trade:
        n_good, n_bad = (sum(s.sample.label == k for s in result.scored) for k in (0, 1))
        lines += [
            "",
            f"Threshold rules, each applied to the model's {result.trade_from} held-out good scores "
            f"(false alarms of {n_good} good / misses of {n_bad} defective test images):",
            "",
            "| rule | threshold | false alarms | misses |",
            "|---|---|---|---|",
        ]
        for r in result.trade:
            rule = f"**{r['rule']}** (stored)" if r.get("stored") else r["rule"]
            lines.append(f"| {rule} | {r['threshold']:.4f} | {r['false_alarms']} | {r['misses']} |")
    return "\n".join(lines) + "\n"
