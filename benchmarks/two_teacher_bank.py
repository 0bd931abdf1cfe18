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

import time

from input_scale import held_out, parse_args, report, scaled_knn  # benchmarks/ is on the path
from teacher_terms import TEACHERS, training_and_test

from rd2t.model.teachers import Teacher


def main() -> None:
    a = parse_args(__doc__)
    t0 = time.time()
    _, images, test, test_images, masks = training_and_test(a.root, a.category)
    held = held_out(len(images))
    maps, peaks = {}, {}
    for name in TEACHERS:  # Lite2 (the bank's today), Lite0
        short = name.removeprefix("tf_efficientnet_")
        maps[short], peaks[short] = scaled_knn(Teacher(name), images, held, test_images)
        print(f"{short}: held-out peak {peaks[short]:.3f} ({time.time() - t0:.0f} s)", flush=True)
    maps["lite2+lite0"] = maps["lite2"] + maps["lite0"]
    report(a, test, masks, held, maps, peaks, t0)


if __name__ == "__main__":
    main()
