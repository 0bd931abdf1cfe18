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
    .venv/bin/python benchmarks/sum_max_mix.py --table docs/measured/round14/*_mix.json    # a = 0.25 - a = 0
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from bank_rules import saved_default_terms, test_figures, test_set  # benchmarks/ on the path
from bank_stride_table import FIGURES, cell, passes_screen

from rd2t.model.memory_bank import good_peaks


def mixed(terms: torch.Tensor, peaks: torch.Tensor, a: float) -> torch.Tensor:
    scaled = terms / peaks[None, :, None, None]
    return (1 - a) * scaled.mean(1) + a * scaled.amax(1)


def table(files: list[str], share: str = "0.25") -> None:
    """Each file's `share` row minus its default (a = 0), and the rule's verdict
    (docs/measured/round14/mix_rule_written_before.txt; magnetic tile files are those named mt_*)."""
    print(f"| file | a = 0 | a = {share} | minus a = 0 | rule |")
    print("|---|---|---|---|---|")
    for name in files:
        mix = json.loads(Path(name).read_text())["mix"]
        base, cand = mix["0.0"], mix[share]
        d = {k: 100 * (cand[k] - base[k]) for k in FIGURES}
        magnetic_tile = Path(name).name.startswith("mt_")
        ok = passes_screen(d, magnetic_tile)
        if magnetic_tile:  # this rule also asks for no more false alarms + misses there
            ok = ok and cand["false_alarms"] + cand["misses"] <= base["false_alarms"] + base["misses"]
        delta = " / ".join(f"{v:+.2f}" for v in d.values())
        figures = [cell(f, share=False) for f in (base, cand)]
        print("| " + " | ".join([Path(name).stem, *figures, delta, "pass" if ok else "FAIL"]) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stride_json", nargs="?", help="bank_stride.py's JSON for the model")
    ap.add_argument("terms", nargs="?", help="the folder bank_stride.py --save-terms wrote")
    ap.add_argument("--root")
    ap.add_argument("--category", default=".")
    ap.add_argument("--mix", default="0,0.25,0.5,0.75,1")
    ap.add_argument("--out")
    ap.add_argument("--table", nargs="+", help="instead: the a = 0.25 table of these result files")
    a = ap.parse_args()
    if a.table:
        return table(a.table)
    if not (a.stride_json and a.terms and a.root and a.out):
        ap.error("give stride_json, terms, --root and --out (or --table FILES)")
    result, stride, good, terms = saved_default_terms(a.stride_json, a.terms)
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
