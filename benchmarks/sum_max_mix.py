"""Issue 14, round 14 (a diagnostic that adopts nothing): how do the sum and the per-pixel maximum trade?

The default sums the two max-scaled terms; `bank_combine=max` takes their per-pixel maximum. The maximum gains
magnetic tile ~4.5 pixel AUROC and costs bottle ~0.3 AU-PRO (rounds 10-11). Is the trade between them
proportional, or does a little of the maximum buy much of magnetic tile's gain for little of bottle's cost?
On the terms `benchmarks/bank_stride.py --save-terms` saved, at the default's stride, this scores

    (1 - a) * mean(s, k) + a * max(s, k)      for a in --mix (0 = the default's map, 1 = the maximum's)

at the original resolution, threshold mean + 3 std of the held-out good images' scores of the same map. Its
figures come from seed-0 test sets, so no value of `a` may be chosen on them: a later round would need a value
fixed beforehand and judged on other seeds and sets.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/sum_max_mix.py docs/measured/round14/mt_s0.json \
        runs/terms/mt_s0 --root ../shared/data/magnetic_tile --out docs/measured/round14/mt_s0_mix.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from bank_rules import test_figures, test_set  # benchmarks/ is on the path when a script runs

from rd2t.model.memory_bank import good_peaks


def mixed(terms: torch.Tensor, peaks: torch.Tensor, a: float) -> torch.Tensor:
    scaled = terms / peaks[None, :, None, None]
    return (1 - a) * scaled.mean(1) + a * scaled.amax(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stride_json", help="bank_stride.py's JSON for the model")
    ap.add_argument("terms", help="the folder bank_stride.py --save-terms wrote")
    ap.add_argument("--root", required=True)
    ap.add_argument("--category", default=".")
    ap.add_argument("--mix", default="0,0.25,0.5,0.75,1")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    result = json.loads(Path(a.stride_json).read_text())
    stride = int(result["auto_max"]["stride"])
    saved = torch.load(Path(a.terms) / f"stride{stride}.pt")
    good, terms = saved["good"].float(), saved["terms"].float()
    test, sizes, _, masks = test_set(a.root, a.category, good.shape[-1])
    peaks = good_peaks(good)
    out = {"model": result["model"], "stride": stride, "mix": {}}
    for share in (float(x) for x in a.mix.split(",")):
        f = test_figures(mixed(terms, peaks, share), mixed(good, peaks, share), test, sizes, masks)
        out["mix"][str(share)] = f
        print(
            f"a = {share:.2f}: "
            + " / ".join(f"{100 * f[k]:.2f}" for k in ("image_auroc", "pixel_auroc", "au_pro"))
            + f", {f['false_alarms']} FA / {f['misses']} misses",
            flush=True,
        )
    Path(a.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
