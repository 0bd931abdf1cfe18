"""The pass/fail threshold and what it was made from, as one typed record.

A threshold comes from defect-free validation images (never from test anomalies): a rule applied to
their scores; `youden` also uses the few labelled defective images the user gives at training
(`--val-defects`). The same record also fixes the heat-map colour scale, so every overlay, report and
the review page colour the same map the same way. It is written and read by `rd2t.model.checkpoint` for both
`.pt` checkpoints and ONNX metadata.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, field

import numpy as np

from rd2t.errors import ConfigError

RULES_HELP = "mean+Kstd (e.g. mean+3std), quantile:Q with 0 < Q <= 1, max, or youden (needs --val-defects)"
# The threshold sits at 3/4 of the colour scale: above it yellow to red, below it blue to green, faint.
THRESHOLD_POSITION = 0.75


def parse_rule(rule: str) -> tuple[str, float]:
    """("mean+std", K) | ("quantile", Q) | ("max" or "youden", 0); ConfigError naming the rule otherwise."""
    rule = str(rule).strip()
    try:
        if rule in ("max", "youden"):
            return rule, 0.0
        if rule.startswith("quantile:"):
            q = float(rule.split(":", 1)[1])
            if 0 < q <= 1:
                return "quantile", q
        elif rule.startswith("mean+") and rule.endswith("std"):
            k = float(rule[len("mean+") : -len("std")] or 1)
            if math.isfinite(k):
                return "mean+std", k
    except ValueError:
        pass
    raise ConfigError(f"threshold rule {rule!r}: expected {RULES_HELP}")


def youden(good, defects, floor: float = -math.inf) -> float:
    """The threshold that best tells `defects` from `good` scores: the midpoint of neighbouring sorted scores
    (no lower than `floor`) maximising (share of defects above it) - (share of good above it), Youden's J;
    ties go to the highest, fewer false alarms."""
    good, defects = np.sort(np.asarray(good, np.float64)), np.sort(np.asarray(defects, np.float64))
    values = np.unique(np.concatenate([good, defects]))
    candidates = (values[:-1] + values[1:]) / 2
    candidates = candidates[candidates >= floor]
    if not len(candidates):
        return float(max(floor, values[-1]))

    def share_above(scores: np.ndarray) -> np.ndarray:  # sorted: O(n log n), a station may hold many
        return (len(scores) - np.searchsorted(scores, candidates, side="right")) / max(len(scores), 1)

    gain = share_above(defects) - share_above(good)
    return float(candidates[np.flatnonzero(gain == gain.max())[-1]])


def threshold_from_scores(scores, rule: str, defect_scores=()) -> float:
    """Apply a rule to defect-free scores (`youden`: and to the labelled defects' scores)."""
    kind, k = parse_rule(rule)
    scores = np.asarray(scores, dtype=np.float64)
    if kind == "youden":
        if not len(defect_scores):
            raise ConfigError("threshold rule 'youden' needs labelled defective images (--val-defects DIR)")
        return youden(scores, defect_scores)
    if kind == "max":
        return float(scores.max())
    if kind == "quantile":
        return float(np.quantile(scores, k))
    return float(scores.mean() + k * scores.std(ddof=1 if len(scores) > 1 else 0))


# The rules `rd2t evaluate` compares on a labelled test set: from no false alarm on the held-out images
# (max) to one in ten of them (quantile:0.9).
COMPARED_RULES = ("max", "mean+3std", "mean+2std", "quantile:0.99", "quantile:0.95", "quantile:0.9")


def threshold_trade(good_scores, scores, labels, rules=COMPARED_RULES, defect_scores=()) -> list[dict]:
    """For each rule applied to the defect-free `good_scores` (`youden`: and the labelled `defect_scores`
    given at training): its threshold and the false alarms and misses it gives on labelled `scores`
    (labels: 1 = defective). What a user reads before moving a threshold."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=bool)
    rows = []
    for rule in dict.fromkeys(rules):  # keeps order, drops a repeated rule
        th = threshold_from_scores(good_scores, rule, defect_scores)
        rows.append(
            {
                "rule": rule,
                "threshold": th,
                "false_alarms": int((scores[~labels] > th).sum()),
                "misses": int((scores[labels] <= th).sum()),
            }
        )
    return rows


def map_range_from(good_map_median: float, threshold: float) -> tuple[float, float]:
    """Colour scale: from the typical defect-free map level to where the threshold sits at 3/4."""
    low = float(good_map_median)
    if not threshold > low:
        return low, low + 1.0
    return low, low + (threshold - low) / THRESHOLD_POSITION


@dataclass
class Calibration:
    threshold: float | None
    rule: str = ""
    source: str = ""  # "validation", or what else the scores came from
    scores: list[float] = field(default_factory=list)  # defect-free validation scores
    map_range: tuple[float, float] | None = None  # heat-map colour scale (low, high)
    # scores of the user's labelled defective images given at training (--val-defects): what the threshold
    # should catch; they never set it, the review page shows them beside the good ones
    defect_scores: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.threshold is not None:
            self.threshold = float(self.threshold)
        if self.map_range is not None:
            self.map_range = (float(self.map_range[0]), float(self.map_range[1]))

    def colour_range(self) -> tuple[float, float]:
        """The colour scale every heat map of this model uses."""
        if self.map_range is not None:
            return self.map_range
        # Models calibrated before the map median was recorded: half the median good score up to 1.5 x thr.
        vals = np.asarray(self.scores, dtype=float)
        thr = self.threshold
        if len(vals) and thr is not None:
            low = float(np.median(vals)) * 0.5
            return low, max(thr * 1.5, low + 1e-6)
        if thr is not None:
            return thr * 0.3, thr * 1.5
        return 0.0, 1.0

    def false_alarm_rate(self, threshold: float) -> tuple[int, int]:
        """(good validation scores above `threshold`, number of scores): the expected false-alarm rate."""
        vals = np.asarray(self.scores, dtype=float)
        return int((vals > threshold).sum()), len(vals)

    def scale_id(self) -> str | None:
        """What the model's scores are measured in, as 12 hex digits of the SHA-256 of its held-out good
        scores: the same for a checkpoint and its ONNX export (which carries them), another for a retrained
        or refitted model. A threshold chosen on one model's scores belongs to this id. None: no scores."""
        if not self.scores:
            return None
        return hashlib.sha256(np.asarray(self.scores, dtype="<f8").tobytes()).hexdigest()[:12]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["map_range"] = list(self.map_range) if self.map_range is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict | None) -> Calibration | None:
        """From a checkpoint's record; the legacy key "value" (rd2t <= 0.1 checkpoints) is read too."""
        if not d:
            return None
        thr = d.get("threshold", d.get("value"))
        return cls(
            thr,
            d.get("rule") or "",
            d.get("source") or "",
            list(d.get("scores") or []),
            tuple(d["map_range"]) if d.get("map_range") else None,
            list(d.get("defect_scores") or []),
        )
