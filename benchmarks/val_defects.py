"""Issue 14, round 12: a few labelled defects of the user's own part choose the bank's stride and the sum or
the maximum (`rd2t train --val-defects`), scored on defects they did not see.

The rule was written before any model of the round finished (docs/measured/round12/rule_written_before.txt).
For one trained plain model (`--memory-bank 0`) and its data set:

- the test set's defective images are split per defect type (sorted by path, shuffled with the model's
  seed): the first half of each type is the *choosing* half, the rest the *scoring* half; every good test
  image is scored and none chooses (the good side of every choice is the held-out training images);
- the bank is fitted three times by the product's own path (training.loop.fit_memory_bank, offline's
  settings: bank_stride 0, share 0.5, scaled by peaks, bank_combine "chosen"): (a) `default`, no labelled
  defects (stride on painted images, the sum: today's model); (b) `labelled`, the choosing half with its
  masks (read by the product's loader); (c) `image_only`, the same images without masks;
- each of the four candidates (stride 8 or 4, sum or max) is fitted once and scored on the scoring set at
  the original resolution; a variant's figures are those of the candidate it chose, after checking that
  the variant's own model gives that candidate's maps. Every fit reads the training images' fp16
  teacher-feature cache, as training's own fit does (so the default's figures differ from round 11's,
  fitted from float32 features, by float noise), and computes each coreset once (remember_coresets).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/val_defects.py runs/mt_s0/model.pt \
        --root ../shared/data/magnetic_tile --json docs/measured/round12/mt_s0.json
    python benchmarks/val_defects.py --table docs/measured/round12/*.json     # the tables in docs
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from bank_rules import test_figures, test_set, z_terms  # benchmarks/ is on the path when a script runs
from bank_stride_table import by_set

import rd2t.model.memory_bank as memory_bank_module
from rd2t.calibration import threshold_from_scores, youden
from rd2t.data.pseudo_defects import paint_pseudo_defects
from rd2t.data.transforms import to_model_input
from rd2t.model.checkpoint import Checkpoint
from rd2t.model.network import RD2T
from rd2t.training.cache import FeatureCache
from rd2t.training.loop import (
    BANK_STRIDES,
    PSEUDO_DEFECTS,
    LabelledDefects,
    choose_bank_share,
    fit_memory_bank,
    load_labelled_defects,
    load_training_images,
)

COMBINES = ("sum", "max")
VARIANTS = ("default", "labelled", "image_only")
FIGURES = ("image_auroc", "pixel_auroc", "au_pro")


def halves(test: list, seed: int) -> tuple[list[int], list[int]]:
    """Indices of the choosing and scoring defective images: per defect type, sorted by path, shuffled with
    `seed`, the first floor(n/2) choose."""
    by_type = defaultdict(list)
    for i, s in enumerate(test):
        if s.label == 1:
            by_type[s.defect_type].append(i)
    choose, score = [], []
    rng = np.random.default_rng(seed)
    for kind in sorted(by_type):
        idx = sorted(by_type[kind], key=lambda i: str(test[i].path))
        idx = [idx[j] for j in rng.permutation(len(idx))]
        choose += idx[: len(idx) // 2]
        score += idx[len(idx) // 2 :]
    return sorted(choose), sorted(score)


def remember_coresets() -> None:
    """greedy_coreset is deterministic in its patches, count and seed, so every fit here after the first on
    the same patches (5 more per stride) reuses its picks instead of recomputing them (~1 min each on
    magnetic tile); the fitted banks are the ones the product computes."""
    greedy, done = memory_bank_module.greedy_coreset, {}

    def remembered(x: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
        key = (hashlib.sha1(x.contiguous().numpy().tobytes()).hexdigest(), tuple(x.shape), n, seed)
        if key not in done:
            done[key] = greedy(x, n, seed)
        return done[key].clone()

    memory_bank_module.greedy_coreset = remembered


def offline_bank(ckpt: Checkpoint, share: float, **fields) -> RD2T:
    """The plain model with offline's bank settings (fields override), unfitted."""
    config = ckpt.config.replace(
        memory_bank=share,
        bank_stride=0,
        bank_weight=0.5,
        bank_scale="max",
        bank_combine="chosen",
        device="cpu",
    )
    model = RD2T(config.replace(**fields), pretrained=False)
    model.load_state_dict(ckpt.weights, strict=False)
    return model.eval()


def run(a: argparse.Namespace) -> None:
    t0 = time.time()
    ckpt = Checkpoint.load(a.model)
    size, seed = ckpt.config.image_size, ckpt.config.seed
    remember_coresets()
    images, _ = load_training_images([Path(p) for p in ckpt.train_files], size, False)
    # training fits the bank from its fp16 teacher-feature cache (config.cache "memory"); so does this
    cache = FeatureCache(offline_bank(ckpt, a.share), images, "memory", None, torch.device("cpu"), 16, False)
    held_out, _ = load_training_images([Path(p) for p in ckpt.val_files], size, False)
    test, sizes, test_images, masks = test_set(a.root, a.category, size)
    choose, score_defects = halves(test, seed)
    scoring = sorted([i for i, s in enumerate(test) if s.label == 0] + score_defects)
    painted, paint = paint_pseudo_defects(
        held_out, max(1, -(-PSEUDO_DEFECTS // len(held_out))), seed=seed
    )  # as fit_memory_bank paints them
    labelled = load_labelled_defects([test[i] for i in choose], size)
    assert labelled is not None and labelled.masks is not None
    defects = {"default": None, "labelled": labelled, "image_only": LabelledDefects(labelled.images, None)}
    sub = ([test[i] for i in scoring], [sizes[i] for i in scoring], [masks[i] for i in scoring])
    out = {
        "model": a.model,
        "n_held_out": len(held_out),
        "n_choose": len(choose),
        "n_score_defects": len(score_defects),
        "n_score_good": len(scoring) - len(score_defects),
        "choose_files": [str(test[i].path) for i in choose],
        "scoring_labels": [test[i].label for i in scoring],
        "candidates": {},
    }
    maps = {}  # (stride, combine) -> scoring-set maps
    for stride in BANK_STRIDES:
        model = offline_bank(ckpt, a.share, bank_stride=stride, bank_combine="sum")
        with torch.no_grad():
            fit_memory_bank(model, images, held_out, cache, ckpt.config.batch_size)
        good, terms = z_terms(model, held_out), z_terms(model, test_images[scoring])
        bad, painted_z = z_terms(model, labelled.images), z_terms(model, painted)
        for combine in COMBINES:
            name = f"s{stride}_{combine}"
            # the criteria the product computes, for the record (the choice itself is the product's, below)
            crit = {
                "labelled": choose_bank_share(good, bad, labelled.masks, (0.5,), combine)[2],
                "image_only": choose_bank_share(good, bad, None, (0.5,), combine)[2],
                "painted": choose_bank_share(good, painted_z, paint, (0.5,), combine)[2],  # ties: sum's
            }
            pick = (lambda t: t.sum(1)) if combine == "sum" else (lambda t: t.amax(1))
            maps[stride, combine] = pick(terms)
            figures = test_figures(pick(terms), pick(good), *sub)
            # image scores, for threshold rules studied later: held-out good, choosing half, scoring set
            scores = {
                k: pick(v).flatten(1).amax(1).tolist()
                for k, v in (("held_out", good), ("choose", bad), ("scoring", terms))
            }
            out["candidates"][name] = {"criterion": crit, **figures, "scores": scores}
            print(f"{name}: criteria {crit}, " + " / ".join(f"{figures[k]:.4f}" for k in FIGURES), flush=True)
    for variant in VARIANTS:
        model = offline_bank(ckpt, a.share)
        with torch.no_grad():
            fit_memory_bank(model, images, held_out, cache, ckpt.config.batch_size, defects=defects[variant])
            got = model(to_model_input(test_images[scoring[:4]]))[1]
        key = (model.config.bank_stride, model.config.bank_combine)
        # the variant's own model gives the candidate's maps: its figures are that candidate's
        torch.testing.assert_close(got, maps[key][:4], atol=1e-3, rtol=1e-4)
        name = f"s{key[0]}_{key[1]}"
        out[variant] = {"chosen": name, **out["candidates"][name]}
        print(f"{variant}: {name}", flush=True)
    out["seconds"] = time.time() - t0
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(out, indent=1))


def cell(f: dict) -> str:
    return " / ".join(f"{100 * f[k]:.2f}" for k in FIGURES) + f", {f['false_alarms']} / {f['misses']}"


def table(paths: list[str]) -> None:
    """Per set: each variant's choices, mean figures over seeds, and (b) - (a), (c) - (a)."""
    sets = by_set({p: json.loads(Path(p).read_text()) for p in sorted(paths)})
    print("| set (seeds) | variant | chosen | image / pixel / AU-PRO, FA / misses | minus default |")
    print("|---|---|---|---|---|")
    for name, runs in sets.items():
        base = {k: np.mean([r["default"][k] for r in runs]) for k in FIGURES}
        for variant in VARIANTS:
            mean = {k: np.mean([r[variant][k] for r in runs]) for k in FIGURES}
            mean["false_alarms"] = sum(r[variant]["false_alarms"] for r in runs)
            mean["misses"] = sum(r[variant]["misses"] for r in runs)
            diff = " / ".join(f"{100 * (mean[k] - base[k]):+.2f}" for k in FIGURES)
            chosen = ", ".join(r[variant]["chosen"] for r in runs)
            print(f"| {name} ({len(runs)}) | {variant} | {chosen} | {cell(mean)} | {diff} |")


def label_thresholds(paths: list[str]) -> None:
    """The addendum's rules (docs/measured/round12/threshold_rules_written_before.txt) on the labelled
    variant's chosen candidate: false alarms / misses on the scoring set, per result file that has scores."""
    print("| result | chosen | stored mean+3std | mean+2std | youden | youden_cap2 | catch90 |")
    print("|---|---|---|---|---|---|---|")
    for path in sorted(paths):
        r = json.loads(Path(path).read_text())
        name = r["labelled"]["chosen"]
        scores = r["candidates"][name].get("scores")
        if scores is None:
            print(f"| {Path(path).stem} | {name} | (no scores recorded) | | | | |")
            continue
        good, bad = np.array(scores["held_out"]), np.array(scores["choose"])
        test, labels = np.array(scores["scoring"]), np.array(r["scoring_labels"], dtype=bool)
        rules = {
            "mean+3std": threshold_from_scores(good, "mean+3std"),
            "mean+2std": threshold_from_scores(good, "mean+2std"),
            "youden": youden(good, bad),
            "youden_cap2": youden(good, bad, float(np.quantile(good, 0.98))),
            "catch90": float(np.nextafter(np.quantile(bad, 0.1), -np.inf)),
        }
        counts = [(int((test[~labels] > t).sum()), int((test[labels] <= t).sum())) for t in rules.values()]
        assert counts[0] == (r["labelled"]["false_alarms"], r["labelled"]["misses"])  # the stored rule's
        cells = [f"{fa} / {miss}" for fa, miss in counts]
        print(
            f"| {Path(path).stem} ({(~labels).sum()} good, {labels.sum()} defective) | {name} | "
            + " | ".join(cells)
            + " |"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", help="a trained plain checkpoint (no bank needed)")
    ap.add_argument("--root")
    ap.add_argument("--category", default=".")
    ap.add_argument("--share", type=float, default=0.01, help="config.memory_bank (offline's)")
    ap.add_argument("--json")
    ap.add_argument("--table", nargs="+", help="print the tables of these result files instead")
    ap.add_argument("--thresholds", nargs="+", help="print the addendum's threshold rules for these files")
    a = ap.parse_args()
    if a.table:
        table(a.table)
    elif a.thresholds:
        label_thresholds(a.thresholds)
    else:
        run(a)


if __name__ == "__main__":
    main()
