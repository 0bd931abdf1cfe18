"""Issue 14, round 21 (a diagnostic): does a kNN term on the second teacher too (Lite0 beside Lite2) see
magnetic tile's defects better?

The rule was written before any figure: docs/measured/round21/rule_written_before.txt. The frozen teachers
only (nothing trained): the model's kNN term (strides 8 + 16, 3 x 3 average, 1 % greedy coreset, blurred as
the model does), its bank fitted on 90 % of the training images; every 10th is held out and only sets each
map's scale (its mean per-image maximum), as round 20 (input_scale.scaled_knn). Variants: `lite2` (the
model's term today), `lite0` (the second teacher's) and `lite2+lite0` (the two scaled maps summed). Pixel
AUROC at 256 px per defect type and image AUROC of each map's maximum.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/two_teacher_bank.py ../shared/data/magnetic_tile \
        --json docs/measured/round21/two_teacher_bank_mt.json
"""

from __future__ import annotations

import argparse
import json
import time

from input_scale import held_out, scaled_knn, table_of  # benchmarks/ is on the path when a script runs
from teacher_terms import TEACHERS, training_and_test

from rd2t.model.teachers import Teacher


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root")
    ap.add_argument("--category", default=".")
    ap.add_argument("--json", help="write the table here")
    a = ap.parse_args()
    t0 = time.time()
    train_paths, images, test, test_images, masks = training_and_test(a.root, a.category)
    held = held_out(len(images))
    maps, peaks = {}, {}
    for name in TEACHERS:  # Lite2 (the bank's today), Lite0
        short = name.removeprefix("tf_efficientnet_")
        maps[short], peaks[short] = scaled_knn(Teacher(name), images, held, test_images)
        print(f"{short}: held-out peak {peaks[short]:.3f} ({time.time() - t0:.0f} s)", flush=True)
    maps["lite2+lite0"] = maps["lite2"] + maps["lite0"]
    table = table_of(test, masks, maps)
    print(f"{int((~held).sum())} bank images, {int(held.sum())} held out, {len(test)} test images, "
          f"{time.time() - t0:.0f} s")  # fmt: skip
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"root": a.root, "category": a.category, "peaks": peaks, "knn": table}, f, indent=1)


if __name__ == "__main__":
    main()
