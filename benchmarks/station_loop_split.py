"""Issue 14: the station's loop on magnetic tile through the CLI, as a user runs it (the split it needs).

A line confirms defects at the station, downloads them (`<type>/` folders of images, no masks) and gives them
to `rd2t train --resume --val-defects` on its finished run. To measure that without using a defect twice, this
writes, from an MVTec-layout test set, round 12's split (benchmarks/val_defects.halves: per defect type,
sorted by path, shuffled with the seed, the first half chooses):

- OUT/defects/<type>/...: the choosing half, images only, as the station's zip gives them;
- OUT/eval: an MVTec-layout copy (symbolic links) of every good test image and the scoring half with its
  masks, for `rd2t evaluate`.

    .venv/bin/python benchmarks/station_loop_split.py ../shared/data/magnetic_tile --out runs/mt_loop --seed 0
"""

from __future__ import annotations

import argparse
from pathlib import Path

from val_defects import halves  # benchmarks/ is on the path when a script runs

from rd2t.data import mvtec


def link(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.symlink_to(src.resolve())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root")
    ap.add_argument("--category", default=".")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0, help="the model's seed, as round 12")
    a = ap.parse_args()
    out = Path(a.out)
    if out.exists():
        raise SystemExit(f"{out} exists: give a new --out")
    test = mvtec(a.root, a.category).test
    choose, score = halves(test, a.seed)
    for i in choose:
        s = test[i]
        link(Path(s.path), out / "defects" / s.defect_type / Path(s.path).name)
    for i, s in enumerate(test):
        if s.label == 0 or i in set(score):
            kind = s.defect_type if s.label else "good"
            link(Path(s.path), out / "eval" / "test" / kind / Path(s.path).name)
            if s.mask_path:
                link(Path(s.mask_path), out / "eval" / "ground_truth" / kind / Path(s.mask_path).name)
    print(
        f"{len(choose)} labelled defects in {out / 'defects'}; {len(score)} defective and "
        f"{sum(1 for s in test if s.label == 0)} good test images in {out / 'eval'}"
    )


if __name__ == "__main__":
    main()
