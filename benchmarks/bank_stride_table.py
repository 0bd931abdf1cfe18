"""The round-5 table of docs/ablations.md from `benchmarks/bank_stride.py`'s JSON files, one row per file;
with --max first, round 6's: the z-scored sum (the default) against the terms scaled by their good maxima.

.venv/bin/python benchmarks/bank_stride_table.py docs/measured/bank_stride/*.json
.venv/bin/python benchmarks/bank_stride_table.py --max docs/measured/bank_stride_max/*.json
.venv/bin/python benchmarks/bank_stride_table.py --thr docs/measured/bank_thr/*.json     # round 10
.venv/bin/python benchmarks/bank_stride_table.py --excess docs/measured/round11/*.json   # round 11
.venv/bin/python benchmarks/bank_stride_table.py --versus dice docs/measured/round15/*.json  # round 15
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

FIGURES = ("image_auroc", "pixel_auroc", "au_pro")


def cell(f: dict, stride: int | None = None, share: bool = True) -> str:
    figures = f"{' / '.join(f'{100 * f[k]:.2f}' for k in FIGURES)}, {f['false_alarms']} / {f['misses']}"
    if not share:  # results without a share (a plain model's, a saved-terms script's) have none to show
        return figures
    return figures + (f" (s{stride}, {f['share']:.1f})" if stride else f" ({f['share']:.1f})")


def max_table(paths: list[str]) -> None:
    print(
        "| set | plain | `bank_stride=0`, 0.5 (default) | stride 8, max | stride 4, max "
        "| `bank_stride=0`, max | good maxima s8 (student, kNN) | good maxima s4 |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for path in paths:
        r = json.loads(Path(path).read_text())
        s8, s4 = r["strides"]["8"], r["strides"]["4"]
        row = [Path(path).stem, cell(r["plain"], share=False)]
        row += [cell(r["auto_fixed"], r["auto_fixed"]["stride"])]
        row += [cell(s8["max"], share=False), cell(s4["max"], share=False)]
        row += [cell(r["auto_max"], r["auto_max"]["stride"])]
        row += [", ".join(f"{m:.2f}" for m in s["good_maxima"]) for s in (s8, s4)]
        print("| " + " | ".join(row) + " |")


def by_set(runs: dict[str, dict]) -> dict[str, list[dict]]:
    """The runs grouped by set: the file stem up to its last "_s" (mt_s0, mt_s1 -> mt)."""
    sets: dict[str, list[dict]] = {}
    for path, r in runs.items():
        sets.setdefault(Path(path).stem.rsplit("_s", 1)[0], []).append(r)
    return sets


def set_rows(runs: dict[str, dict], rules: tuple[str, ...], spread: bool = False) -> None:
    """Per set (by_set) and rule, the mean figures over its files (with `spread`, ± their sample std) and the
    false alarms / misses summed over them."""
    print("\n| set (seeds) | " + " | ".join(("plain",) + rules) + " |")
    print("|---" * (len(rules) + 2) + "|")
    for name, rs in by_set(runs).items():
        row = [f"{name} ({len(rs)})"]
        for k in ("plain",) + rules:
            v = np.array([[100 * r[k][m] for m in FIGURES] for r in rs])
            sd = v.std(0, ddof=1) if len(rs) > 1 else np.zeros(len(FIGURES))
            figures = " / ".join(
                f"{m:.2f} ± {d:.2f}" if spread else f"{m:.2f}" for m, d in zip(v.mean(0), sd, strict=True)
            )
            fa, miss = sum(r[k]["false_alarms"] for r in rs), sum(r[k]["misses"] for r in rs)
            row.append(f"{figures}, {fa} / {miss}")
        print("| " + " | ".join(row) + " |")


THR_RULES = ("auto_max", "auto_thr", "auto_maxof")


def thr_table(paths: list[str]) -> None:
    """Round 10: the default (max) against thr and maxof, per file, then the mean per set (file stem up to
    the last "_s"), and what each rule of the stored threshold trades for the default."""
    print("| set | plain | `max` (default) | `thr` | `maxof` | good thresholds s8 (student, kNN) | s4 |")
    print("|---|---|---|---|---|---|---|")
    runs = {p: json.loads(Path(p).read_text()) for p in paths}
    for path, r in runs.items():
        row = [Path(path).stem, cell(r["plain"], share=False)]
        row += [cell(r[k], r[k]["stride"], share=False) + f" (s{r[k]['stride']})" for k in THR_RULES]
        row += [", ".join(f"{m:.2f}" for m in r["strides"][s]["good_thresholds"]) for s in ("8", "4")]
        print("| " + " | ".join(row) + " |")
    set_rows(runs, THR_RULES)
    print("\nThe default (`max`): false alarms / misses per threshold rule, summed over the files")
    trades: dict[str, list[int]] = {}
    for r in runs.values():
        for rule, (fa, miss) in r["auto_max"]["rules"].items():
            acc = trades.setdefault(rule, [0, 0])
            acc[0] += fa
            acc[1] += miss
    print("| " + " | ".join(trades) + " |\n" + "|---" * len(trades) + "|")
    print("| " + " | ".join(f"{fa} / {m}" for fa, m in trades.values()) + " |")


EXCESS_RULES = ("auto_max", "auto_maxof", "auto_excess")


def excess_table(paths: list[str]) -> None:
    """Round 11: the default (max) against maxof and excess, per file, then per set (file stem up to the last
    "_s") the mean and the spread (sample std) over its files, which the adoption rule compares."""
    print("| set | plain | `max` (default) | `maxof` | `excess` | g (s8, s4) |")
    print("|---|---|---|---|---|---|")
    runs = {p: json.loads(Path(p).read_text()) for p in paths}
    for path, r in runs.items():
        row = [Path(path).stem, cell(r["plain"], share=False)]
        row += [cell(r[k], share=False) + f" (s{r[k]['stride']})" for k in EXCESS_RULES]
        row += [", ".join(f"{r['strides'][s]['excess']['g']:.3f}" for s in ("8", "4"))]
        print("| " + " | ".join(row) + " |")
    set_rows(runs, EXCESS_RULES, spread=True)


# The screen of rounds 14-15 (docs/measured/round1{4,5}/*rule_written_before.txt): minimum differences, in
# points, of image AUROC / pixel AUROC / AU-PRO on magnetic tile, and of pixel AUROC / AU-PRO elsewhere.
SCREEN_MT = {"image_auroc": -0.3, "pixel_auroc": 1.0, "au_pro": -0.5}
SCREEN_ELSEWHERE = {"pixel_auroc": -0.05, "au_pro": -0.1}


def passes_screen(diff: dict[str, float], magnetic_tile: bool) -> bool:
    """Whether differences in points (image_auroc, pixel_auroc, au_pro) meet the screen's minimums."""
    screen = SCREEN_MT if magnetic_tile else SCREEN_ELSEWHERE
    return all(diff[k] >= low for k, low in screen.items())


def versus_table(suffix: str, paths: list[str]) -> None:
    """Each X.json against its X_<suffix>.json (a candidate trained like X but for one setting): the plain
    model and the default's map (auto_max), the candidate's differences, uneven's AU-PRO where the set has
    it, and the screen's verdict on the default's map."""
    print("| set | model | plain | default (bank) | default minus baseline | uneven AU-PRO plain / default |")
    print("|---|---|---|---|---|---|")
    for path in sorted(p for p in paths if not Path(p).stem.endswith("_" + suffix)):
        candidate_path = Path(path).with_name(f"{Path(path).stem}_{suffix}.json")
        if not candidate_path.exists():
            continue
        base, cand = json.loads(Path(path).read_text()), json.loads(candidate_path.read_text())
        diff = {k: 100 * (cand["auto_max"][k] - base["auto_max"][k]) for k in FIGURES}
        verdict = "passes" if passes_screen(diff, Path(path).stem.startswith("mt")) else "fails"
        for name, r in (("baseline", base), (suffix, cand)):
            uneven = [r[k].get("per_defect", {}).get("uneven") for k in ("plain", "auto_max")]
            row = [Path(path).stem, name, cell(r["plain"], share=False)]
            row += [cell(r["auto_max"], share=False) + f" (s{r['auto_max']['stride']})"]
            row += [" / ".join(f"{diff[k]:+.2f}" for k in FIGURES) + f", {verdict}" if r is cand else ""]
            row += [" / ".join(f"{100 * u['au_pro']:.1f}" for u in uneven) if all(uneven) else ""]
            print("| " + " | ".join(row) + " |")


def main() -> None:
    if sys.argv[1] == "--versus":
        return versus_table(sys.argv[2], sys.argv[3:])
    if sys.argv[1] == "--max":
        return max_table(sys.argv[2:])
    if sys.argv[1] == "--thr":
        return thr_table(sys.argv[2:])
    if sys.argv[1] == "--excess":
        return excess_table(sys.argv[2:])
    print(
        "| set | plain | stride 8, chosen | stride 4, chosen | stride 8, 0.5 | stride 4, 0.5 "
        "| `bank_stride=0`, chosen | `bank_stride=0`, 0.5 |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for path in sys.argv[1:]:
        r = json.loads(Path(path).read_text())
        s8, s4 = r["strides"]["8"], r["strides"]["4"]
        row = [Path(path).stem, cell(r["plain"], share=False)]
        row += [cell(s8["chosen"]), cell(s4["chosen"]), cell(s8["fixed"]), cell(s4["fixed"])]
        row += [cell(r[k], r[k]["stride"]) for k in ("auto_chosen", "auto_fixed")]
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
