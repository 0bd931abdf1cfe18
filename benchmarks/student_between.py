"""Issue 14, round 16: can the held-out good images alone tell where the per-pixel maximum helps?

The rule was written before this was run on any model of the round
(docs/measured/round16/rule_written_before.txt). For each trained plain model this computes, on its own
held-out good images (the checkpoint's val_files, read as training reads them), the student term's
between-image share (rd2t.model.memory_bank.between_image_share, what training prints when it fits the
bank), and the rule's pick: the maximum above 0.05 with at least 10 held-out images, the sum otherwise.
Nothing here reads a test image. `--table` then sets each pick beside `benchmarks/bank_stride.py`'s figures
for the sum (auto_max) and the maximum (auto_maxof) on the same models and checks the rule's conditions.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/student_between.py runs/mt_s0/model.pt \
        runs/bottle_s0/model.pt --json docs/measured/round16/between.json     # merges into the file
    .venv/bin/python benchmarks/student_between.py --table docs/measured/round16/between.json \
        docs/measured/round16/gen*_s0.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from bank_stride_table import FIGURES, cell, passes_screen  # benchmarks/ is on the path when a script runs

from rd2t.data.transforms import to_model_input
from rd2t.model.checkpoint import Checkpoint
from rd2t.model.loading import model_from
from rd2t.model.memory_bank import between_image_share
from rd2t.training.loop import FEW_CALIBRATION_IMAGES, load_training_images

THRESHOLD = 0.05  # fixed in the rule file before the round's models existed


def student_share(path: str) -> dict:
    """The between-image share of the student term on one plain model's held-out good images."""
    t0 = time.time()
    ckpt = Checkpoint.load(path)
    model = model_from(ckpt, "cpu", path)
    size = ckpt.config.image_size
    held_out, _ = load_training_images([Path(p) for p in ckpt.val_files], size, False)
    maps = []
    with torch.no_grad():  # as fit_memory_bank's terms_of computes the student's term
        for start in range(0, len(held_out), ckpt.config.batch_size):
            feats = model.teacher_features(to_model_input(held_out[start : start + ckpt.config.batch_size]))
            maps.append(model.student_map(feats, model.reconstruct(feats), (size, size)))
    share = between_image_share(torch.cat(maps))
    enough = len(held_out) >= FEW_CALIBRATION_IMAGES
    pick = "max" if enough and share > THRESHOLD else "sum"
    return {"n_held_out": len(held_out), "share": share, "pick": pick, "seconds": time.time() - t0}


def differences(r: dict) -> dict[str, float]:
    """The maximum minus the sum (auto_maxof - auto_max), in points."""
    return {k: 100 * (r["auto_maxof"][k] - r["auto_max"][k]) for k in FIGURES}


def table(between_path: str, stride_paths: list[str]) -> None:
    """Per model: share, pick and, where bank_stride.py scored it, the sum's and the maximum's figures and the
    rule's conditions. A model that picks the sum needs no figures: its map is the default's."""
    between = json.loads(Path(between_path).read_text())
    scored = {(r := json.loads(Path(p).read_text()))["model"]: r for p in stride_paths}
    print("| model | held-out | share | pick | sum (default) | maximum | maximum minus sum | condition |")
    print("|---|---|---|---|---|---|---|---|")
    mt = []
    for model, b in between.items():
        is_mt = "/mt_" in model
        r = scored.get(model)
        # the rule reads the share itself; the pick (what training would do) also needs 10 held-out images
        if is_mt:
            ok = "above: the maximum" if b["share"] > THRESHOLD else "**fails: at or below**"
        elif b["share"] <= THRESHOLD:
            ok = "at or below: the sum"
        elif r is None:
            ok = "above: maximum not scored"
        else:
            within = passes_screen(differences(r), magnetic_tile=False)
            ok = "above, maximum within the bar" if within else "**fails: above, the maximum costs**"
        figures = "| | |"
        if r is not None:
            mt += [r] if is_mt else []
            diff = " / ".join(f"{v:+.2f}" for v in differences(r).values())
            figures = f"{cell(r['auto_max'], share=False)} | {cell(r['auto_maxof'], share=False)} | {diff} |"
        print(f"| {model} | {b['n_held_out']} | {b['share']:.4f} | {b['pick']} | {figures} {ok} |")
    if mt:
        mean = {k: sum(differences(r)[k] for r in mt) / len(mt) for k in FIGURES}
        before, after = (
            sum(r[v]["false_alarms"] + r[v]["misses"] for r in mt) for v in ("auto_max", "auto_maxof")
        )
        # the rule also asks for no more false alarms + misses there
        ok = passes_screen(mean, magnetic_tile=True) and after <= before
        print(
            f"\nmagnetic tile, {len(mt)} seeds, maximum minus sum: "
            + " / ".join(f"{x:+.2f}" for x in mean.values())
            + f"; false alarms + misses {before} -> {after}: {'passes' if ok else 'fails'}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="+", help="plain checkpoints; with --table, bank_stride.py's JSON files")
    ap.add_argument("--json", help="the file to merge each model's share into")
    ap.add_argument("--table", metavar="BETWEEN_JSON", help="judge the rule on bank_stride.py's JSON files")
    a = ap.parse_args()
    if a.table:
        table(a.table, a.paths)
        return
    out = json.loads(Path(a.json).read_text()) if a.json and Path(a.json).exists() else {}
    for path in a.paths:
        out[path] = student_share(path)
        print(f"{path}: {out[path]}", flush=True)
        if a.json:
            Path(a.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
