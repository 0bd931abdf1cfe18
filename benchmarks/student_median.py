"""Issue 14, round 14: the student's term with each image's own median taken off (`student_median`).

The rule was written before any model of the round was trained
(docs/measured/round14/rule_written_before.txt). This scores the candidate on the terms that
`benchmarks/bank_stride.py --save-terms` saved for one model: the z-scored student and kNN terms of the
held-out good images and of the test images, at the bank's stride that the default chose on painted images
(the `auto_max` entry of bank_stride.py's JSON). Every map is scored the same way, at the original
resolution (bank_rules.test_figures; threshold mean + 3 std of the held-out good images' scores of that same
map):

- `default`: each term divided by its mean per-image peak on the held-out good images, summed: the default's
  map, recomputed from the saved (float16) terms so that every row shares their rounding;
- `student_median` (the candidate): the student's term minus its own per-image median first, then scaled
  and summed as the default; the kNN term unchanged;
- diagnostics, never adopted: `both_median` (each term minus its own median), `student` and
  `student_minus_median` (the student's term alone).

It also reports, from the held-out good images only, the share of each term's pixel variance that lies
between images (the variance of the per-image medians over the total).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/student_median.py docs/measured/round14/mt_s0.json \
        runs/terms/mt_s0 --root ../shared/data/magnetic_tile --out docs/measured/round14/mt_s0_median.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from bank_rules import blend, saved_default_terms, test_figures, test_set  # benchmarks/ on the path

from rd2t.model.memory_bank import good_peaks


def minus_median(terms: torch.Tensor, which: tuple[int, ...]) -> torch.Tensor:
    """(N, 2, H, W) terms with each image's own median taken off the terms in `which`."""
    out = terms.clone()
    for t in which:
        out[:, t] -= out[:, t].flatten(1).median(1).values[:, None, None]
    return out


def summed(good: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The default's combination: each term divided by its mean good peak, then the equal-share blend."""
    peaks = good_peaks(good)[None, :, None, None]
    return blend(good / peaks, 0.5), blend(test / peaks, 0.5)


def between_share(good: torch.Tensor) -> list[float]:
    """Per term: variance of the per-image medians over the pixel variance, on held-out good images."""
    x = good.flatten(2)
    return (x.median(2).values.var(0) / x.transpose(0, 1).flatten(1).var(1)).tolist()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stride_json", help="bank_stride.py's JSON for the model")
    ap.add_argument("terms", help="the folder bank_stride.py --save-terms wrote")
    ap.add_argument("--root", required=True)
    ap.add_argument("--category", default=".")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    t0 = time.time()
    result, stride, good, terms = saved_default_terms(a.stride_json, a.terms)
    test, sizes, _, masks = test_set(a.root, a.category, good.shape[-1])
    assert len(test) == len(terms), "the saved terms are not this test set's"

    maps = {
        "default": summed(good, terms),
        "student_median": summed(minus_median(good, (0,)), minus_median(terms, (0,))),
        "both_median": summed(minus_median(good, (0, 1)), minus_median(terms, (0, 1))),
        "student": (good[:, 0], terms[:, 0]),
        "student_minus_median": (minus_median(good, (0,))[:, 0], minus_median(terms, (0,))[:, 0]),
    }
    out = {
        "model": result["model"],
        "stride": stride,
        "between_image_share": dict(zip(("student", "knn"), between_share(good), strict=True)),
        "stored_default": {k: result["auto_max"][k] for k in ("image_auroc", "pixel_auroc", "au_pro")},
    }
    print(f"stride {stride}; between-image share of the good pixels' variance: {out['between_image_share']}")
    for name, (good_map, test_map) in maps.items():
        f = test_figures(test_map, good_map, test, sizes, masks)
        out[name] = f
        print(
            f"{name:22s} "
            + " / ".join(f"{100 * f[k]:.2f}" for k in ("image_auroc", "pixel_auroc", "au_pro"))
            + f", {f['false_alarms']} FA / {f['misses']} misses",
            flush=True,
        )
    out["seconds"] = time.time() - t0
    Path(a.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
