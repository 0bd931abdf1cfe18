"""Issue 14, round 17: the default's map with the student's term read from its coarse levels only (`coarse`).

The rule was written before any figure of the candidate with the memory bank existed
(docs/measured/round17/rule_written_before.txt). For one trained plain model, twice: the default (every
level of the student's term) and the candidate (the stride-4 maps of both teachers left out of the student's
term), each given the memory bank exactly as training gives it (fit_memory_bank with offline's settings from
the checkpoint's own training and held-out files), then scored on the test set at the original resolution
(bank_rules.test_figures: image score = the map's maximum, threshold mean + 3 std of the held-out good
images).
The candidate lives here only, as a subclass: the product has no such option unless the rule's later
conditions hold.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/student_levels.py runs/bottle_s0/model.pt \
        --root ../shared/data/mvtec_ad --category bottle --json docs/measured/round17/bottle_s0.json
    .venv/bin/python benchmarks/student_levels.py --table docs/measured/round17/*.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from bank_rules import test_figures, test_set  # benchmarks/ is on the path when a script runs
from bank_stride_table import FIGURES, cell, passes_screen

from rd2t.data.transforms import to_model_input
from rd2t.model.checkpoint import Checkpoint
from rd2t.model.network import RD2T, distance
from rd2t.training.loop import fit_memory_bank, load_training_images

COARSE = (1, 2)  # level indices kept by the candidate: strides 8 and 16 of each teacher


class Coarse(RD2T):
    """The candidate: the student's term sums only the levels in COARSE (bank, blur, the rest unchanged)."""

    def student_map(self, features, predictions, size):
        amap = 0.0
        for t_feats, s_feats in zip(features, predictions, strict=True):
            for level, (t, s) in enumerate(zip(t_feats, s_feats, strict=True)):
                if level in COARSE:
                    d = distance(s, t, self.config.distance).unsqueeze(1)
                    amap = amap + F.interpolate(d, size=size, mode="bilinear", align_corners=False)
        return self.blur(amap)


@torch.no_grad()
def maps_of(model: RD2T, images: torch.Tensor, batch: int) -> torch.Tensor:
    return torch.cat([model(to_model_input(images[i : i + batch]))[1] for i in range(0, len(images), batch)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="+", help="a trained plain checkpoint; with --table, this script's JSON")
    ap.add_argument("--root")
    ap.add_argument("--category", default=".")
    ap.add_argument("--json")
    ap.add_argument("--table", action="store_true", help="the candidate against the default per file")
    a = ap.parse_args()
    if a.table:
        table(a.paths)
        return
    t0 = time.time()
    ckpt = Checkpoint.load(a.paths[0])
    # offline's bank on the plain model (its config already holds offline's bank settings but memory_bank 0)
    config = ckpt.config.replace(memory_bank=0.01, device="cpu")
    size = config.image_size
    images, _ = load_training_images([Path(p) for p in ckpt.train_files], size, False)
    held_out, _ = load_training_images([Path(p) for p in ckpt.val_files], size, False)
    test, sizes, test_images, masks = test_set(a.root, a.category, size)
    out = {"model": a.paths[0], "settings": {k: getattr(config, k) for k in ("bank_stride", "bank_weight")}}
    for name, cls in (("default", RD2T), ("coarse", Coarse)):
        t1 = time.time()
        model = cls(config, pretrained=False)
        model.load_state_dict(ckpt.weights, strict=False)
        model.eval()
        with torch.no_grad():
            fit_memory_bank(model, images, held_out, None, config.batch_size)
        figures = test_figures(
            maps_of(model, test_images, config.batch_size),
            maps_of(model, held_out, config.batch_size),
            test,
            sizes,
            masks,
        )
        chosen = {"stride": model.config.bank_stride, "combine": model.config.bank_combine}
        out[name] = {**chosen, **figures, "seconds": time.time() - t1}
        print(
            f"{name}: {cell(figures, share=False)} (s{chosen['stride']}) in {time.time() - t1:.0f}s",
            flush=True,
        )
    out["seconds"] = time.time() - t0
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))


def table(paths: list[str]) -> None:
    """Per file: default, candidate, their difference and the rule's bar for sets other than magnetic tile."""
    print("| model | default | `coarse` | coarse minus default | rule |")
    print("|---|---|---|---|---|")
    for path in paths:
        r = json.loads(Path(path).read_text())
        d, c = r["default"], r["coarse"]
        diff = {k: 100 * (c[k] - d[k]) for k in FIGURES}
        if "/mt_" in r["model"]:
            verdict = "information only (chose it)"
        else:
            verdict = "passes" if passes_screen(diff, magnetic_tile=False) else "**fails**"
        row = [
            Path(path).stem,
            f"{cell(d, share=False)} (s{d['stride']})",
            f"{cell(c, share=False)} (s{c['stride']})",
        ]
        row += [" / ".join(f"{x:+.2f}" for x in diff.values()), verdict]
        print("| " + " | ".join(row) + " |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
