"""Are the line's parts still what the model learned? The score level of recent parts against the good
images the model was calibrated on.

A station runs for months; lighting ages, a camera is knocked, a supplier changes the material. The model
keeps answering, and its threshold, chosen on the training session's good images, silently means
something else: more false alarms if scores rise, more misses if they fall. Nothing in a single verdict
shows it. So the station compares the median score of the last parts it judged (those reviewed as defects
left out) with the held-out good images' scores stored in the model (`Calibration.scores`): where that
median falls among them, as a percentile.

Why the median and a percentile: the median ignores the few defects a line makes (up to half of the parts);
the percentile reads the same for every model and score scale ("the typical part now scores like the
good image at 95 %"). Without a change it sits near 50: with 76 held-out scores and 200 parts its spread is
about 7 points (binomial: sqrt(0.25/76 + 0.25/200)), so 90 or 10 is about 6 spreads out, a false warning
practically never. docs/serving.md, "Score drift", says what it caught on the development sets.
"""

from __future__ import annotations

import numpy as np

WINDOW = 200  # the last parts judged
MIN_PARTS = 30  # fewer: too few to say
# Fewer held-out good images than this: no comparison. With 20 and 200 parts the percentile's spread is about
# 12 points, so 90 and 10 are still 3.4 spreads out; with 3 (a 28-image training set) a single image decides.
MIN_REFERENCE = 20
HIGH, LOW = 90.0, 10.0  # the percentile past which the level has moved


def percentile_among(value: float, reference: np.ndarray) -> float:
    """The share of the sorted `reference` below `value`, in %, ties counted half (so a value equal to every
    reference score reads 50)."""
    below, equal = np.searchsorted(reference, value, "left"), np.searchsorted(reference, value, "right")
    return round(100.0 * float(below + (equal - below) / 2) / len(reference), 1)


def level_state(percentile: float) -> str:
    """The warning a percentile gives: "higher" at HIGH or above, "lower" at LOW or below, else "ok"."""
    return "higher" if percentile >= HIGH else "lower" if percentile <= LOW else "ok"


def score_level(recent: list[float], reference: list[float], threshold: float | None = None) -> dict:
    """Where the median of `recent` scores falls among `reference` (the model's held-out good scores).

    {"state": "ok" | "higher" | "lower" | "too_few" | "no_reference" (under MIN_REFERENCE), "parts",
    "median", "percentile", "reference": {"images", "median", "p10", "p90"}, "above_threshold": the share
    of `recent` above `threshold`}."""
    ref = np.sort(np.asarray(reference, dtype=float))
    now = np.asarray(recent, dtype=float)
    out: dict = {
        "parts": len(now),
        "median": float(np.median(now)) if len(now) else None,
        "percentile": None,
        "reference": None,
        "above_threshold": float(np.mean(now > threshold)) if len(now) and threshold is not None else None,
    }
    if len(ref):
        out["reference"] = {
            "images": len(ref),
            "median": float(np.median(ref)),
            "p10": float(np.quantile(ref, 0.1)),
            "p90": float(np.quantile(ref, 0.9)),
        }
    if len(ref) < MIN_REFERENCE:
        out["state"] = "no_reference"
    elif len(now) < MIN_PARTS:
        out["state"] = "too_few"
    else:
        out["percentile"] = percentile_among(out["median"], ref)
        out["state"] = level_state(out["percentile"])
    return out
