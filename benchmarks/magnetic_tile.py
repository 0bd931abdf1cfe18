"""Issue 14, magnetic tile: test hypotheses that need no retraining on one trained model (docs/ablations.md).

For a trained checkpoint (model.pt, or an unfinished last.pt) and its dataset this script computes, for the
held-out good validation images (the checkpoint's val_files) and every test image:
- `cos`: the model's own map (sum over teachers and scales of 1 - cosine, blurred);
- `mag`: a magnitude-aware term, sum over teachers and scales of | |s| - |t| | / |t| (per pixel norms);
- `gauss`: Mahalanobis distance of the first teacher's 3x3-pooled stride-8+16 features to ONE Gaussian fitted
  on `--bank-images` training images (PaDiM-like but global: tiles of every aspect ratio share it);
- `knn`: distance to the nearest of `--bank` random training patches of the same features (PatchCore-like,
  random instead of greedy coreset), or with `--coreset F` to the product's memory bank
  (rd2t.model.memory_bank: a greedy k-center coreset of F x the patches, PatchCore's selection, among at most
  100k random candidates).
Sums (`cos+gauss`, ...) add the maps after z-scoring each by its good-validation pixel mean and std (a rule
fixed before looking; nothing is fitted on test images); `cos|knn` takes the per-pixel max of the two z-maps.
Image score = max of the map, or the mean of its top 1 % pixels. Metrics at the original resolution (rd2t's
Evaluator). Threshold rules are applied to the validation scores; false alarms and misses are counted on
the test set.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/magnetic_tile.py \
        --model runs/mt/offline_s0/last.pt --root ../shared/data/magnetic_tile --category . \
        --out runs/mt/mt.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from rd2t.calibration import threshold_from_scores
from rd2t.data import load_image, load_mask, mvtec
from rd2t.data.transforms import resize_map, to_model_input, to_uint8_tensor
from rd2t.evaluation.metrics import Evaluator, image_auroc
from rd2t.model.checkpoint import Checkpoint
from rd2t.model.loading import model_from
from rd2t.model.memory_bank import MemoryBank, patch_embedding

SIZE = 256


def embed(feats) -> torch.Tensor:
    """(B, P, C): the memory bank's patches (teacher 0, stride 8 + 16, 3x3-averaged, as PatchCore)."""
    return patch_embedding(feats[0]).flatten(2).transpose(1, 2)


def _norm_map(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    ns, nt = s.norm(dim=1, keepdim=True), t.norm(dim=1, keepdim=True)
    return (ns - nt).abs() / (nt + 1e-6)


@torch.no_grad()
def extract(model, paths, batch: int = 8, teacher_only: bool = False):
    """cos and mag maps (N, 256, 256), embeddings (N, P, C) of teacher 0 at stride 8, original sizes."""
    cos, mag, emb, sizes = [], [], [], []
    for i in range(0, len(paths), batch):
        pil = [load_image(p) for p in paths[i : i + batch]]
        sizes += [im.size for im in pil]
        x = to_model_input(torch.stack([to_uint8_tensor(im, SIZE) for im in pil]))
        feats = model.teacher_features(x)
        if teacher_only:
            emb.append(embed(feats))
            continue
        preds = model.reconstruct(feats)
        cos.append(model.anomaly_map(feats, preds, (SIZE, SIZE))[:, 0])
        m = 0.0
        for tf, sf in zip(feats, preds, strict=True):
            for t, s in zip(tf, sf, strict=True):
                m = m + F.interpolate(
                    _norm_map(s, t), size=(SIZE, SIZE), mode="bilinear", align_corners=False
                )
        mag.append(model.blur(m)[:, 0])
        emb.append(embed(feats))
    if teacher_only:
        return None, None, torch.cat(emb), sizes
    return torch.cat(cos), torch.cat(mag), torch.cat(emb), sizes


def to_map(model, d: torch.Tensor, side: int) -> torch.Tensor:
    """(N, P) patch distances -> blurred (N, 256, 256) maps."""
    d = d.view(-1, 1, side, side)
    return model.blur(F.interpolate(d, size=(SIZE, SIZE), mode="bilinear", align_corners=False))[:, 0]


def mahalanobis(emb: torch.Tensor, mean: torch.Tensor, prec_chol: torch.Tensor) -> torch.Tensor:
    return ((emb - mean) @ prec_chol).pow(2).sum(-1).sqrt()


def knn(emb: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """(N, P, C) -> (N, P): the product's nearest-patch distance (MemoryBank.distance), per image."""
    mb = MemoryBank(bank.shape[1])
    mb.patches = bank
    return torch.cat([mb.distance(e.T.reshape(1, e.shape[1], e.shape[0], 1)).flatten(1) for e in emb])


def scores_of(maps: torch.Tensor, how: str) -> np.ndarray:
    flat = maps.flatten(1)
    if how == "max":
        return flat.amax(1).numpy()
    k = max(1, flat.shape[1] // 100)
    return flat.topk(k, dim=1).values.mean(1).numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--root", required=True)
    ap.add_argument("--category", default=".")
    ap.add_argument("--bank-images", type=int, default=150, help="training images for Gaussian/kNN (0: all)")
    ap.add_argument("--bank", type=int, default=16000, help="random training patches for kNN")
    ap.add_argument("--coreset", type=float, default=0.0, help="greedy coreset fraction instead of --bank")
    ap.add_argument("--no-mag-gauss", action="store_true", help="skip the mag and gauss terms")
    ap.add_argument("--test-every", type=int, default=1, help="score every k-th test image (CPU budget)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    torch.manual_seed(0)
    t0 = time.time()
    ckpt = Checkpoint.load(a.model)
    model = model_from(ckpt, "cpu", a.model)
    split = mvtec(a.root, a.category)
    rng = np.random.default_rng(0)
    train_files = list(ckpt.train_files)
    n_bank = min(a.bank_images or len(train_files), len(train_files))
    pick = sorted(rng.choice(len(train_files), n_bank, replace=False))
    _, _, emb_tr, _ = extract(model, [train_files[i] for i in pick], teacher_only=True)
    cos_v, mag_v, emb_v, _ = extract(model, list(ckpt.val_files))
    test = split.test[:: a.test_every]  # the test list is grouped by defect type: every k-th keeps each type
    cos_t, mag_t, emb_t, sizes = extract(model, [s.path for s in test])
    print(f"extracted in {time.time() - t0:.0f}s (epoch {ckpt.epoch}, {len(pick)} bank images)", flush=True)

    side = int(round(emb_t.shape[1] ** 0.5))
    x = emb_tr.reshape(-1, emb_tr.shape[-1]).double()
    mean = x.mean(0)
    cov = torch.cov(x.T) + 0.01 * torch.eye(x.shape[1], dtype=torch.float64)
    prec_chol = torch.linalg.cholesky(torch.linalg.inv(cov)).float()
    if a.coreset:
        t1 = time.time()
        mb = MemoryBank(x.shape[1])
        mb.fit(x.float(), a.coreset)  # the product's selection (random candidates above MAX_CANDIDATES)
        bank = mb.patches
        print(f"coreset of {len(bank)} of {len(x)} patches in {time.time() - t1:.0f}s", flush=True)
    else:
        bank = x.float()[torch.randperm(len(x))[: a.bank]]
    maps = {"cos": (cos_v, cos_t)}
    if not a.no_mag_gauss:
        maps["mag"] = (mag_v, mag_t)
        maps["gauss"] = tuple(
            to_map(model, mahalanobis(e, mean.float(), prec_chol), side) for e in (emb_v, emb_t)
        )
    if a.bank:  # --bank 0 skips kNN (its cost grows with bank size x test patches)
        maps["knn"] = tuple(to_map(model, knn(e, bank), side) for e in (emb_v, emb_t))
    print(f"distances in {time.time() - t0:.0f}s", flush=True)
    z = {}
    for k, (v, t) in maps.items():
        mu, sd = v.mean(), v.std()
        z[k] = ((v - mu) / sd, (t - mu) / sd)
    variants = {k: maps[k] for k in maps}
    for k in [k for k in ("mag", "gauss", "knn") if k in maps]:
        variants[f"cos+{k}"] = (z["cos"][0] + z[k][0], z["cos"][1] + z[k][1])
    if "knn" in maps:
        variants["cos|knn"] = tuple(torch.maximum(c, k) for c, k in zip(z["cos"], z["knn"], strict=True))

    masks = [
        load_mask(s.mask_path, wh) if s.mask_path else np.zeros(wh[::-1], dtype=bool)
        for s, wh in zip(test, sizes, strict=True)
    ]
    labels = np.array([s.label for s in test], dtype=bool)
    results = {
        "model": a.model,
        "epoch": ckpt.epoch,
        "n_val": len(ckpt.val_files),
        "n_test": len(test),
        "bank_images": len(pick),
        "bank": len(bank),
        "coreset": a.coreset,
    }
    for name, (v, t) in variants.items():
        for how in ("max", "top1%"):
            sv, st = scores_of(v, how), scores_of(t, how)
            rec = {"image_auroc": image_auroc(labels, st), "pixel_auroc": None, "au_pro": None}
            if how == "max":  # the map is the same for both aggregations: pixel metrics once
                ev = Evaluator()
                for i, s in enumerate(test):
                    ev.add(s.label, float(st[i]), resize_map(t[i].numpy(), sizes[i]), masks[i], s.defect_type)
                m = ev.compute()
                rec.update(pixel_auroc=m["pixel_auroc"], au_pro=m["au_pro"])
            types = np.array([s.defect_type for s in test])
            rec["per_defect"] = {
                d: image_auroc(labels[(types == d) | ~labels], st[(types == d) | ~labels])
                for d in sorted(set(types[labels]))
            }
            thr = {}
            for rule in ("mean+3std", "mean+2std", "quantile:0.95", "max"):
                th = threshold_from_scores(sv, rule)
                thr[rule] = {
                    "false_alarms": int((st[~labels] > th).sum()),
                    "good": int((~labels).sum()),
                    "misses": int((st[labels] <= th).sum()),
                    "defective": int(labels.sum()),
                }
            rec["thresholds"] = thr
            results[f"{name}/{how}"] = rec
            print(
                f"{name:10s} {how:6s} img {rec['image_auroc']:.4f} "
                f"px {rec['pixel_auroc'] or float('nan'):.4f} pro {rec['au_pro'] or float('nan'):.4f} "
                f"| m+3s FA {thr['mean+3std']['false_alarms']} "
                f"miss {thr['mean+3std']['misses']} | q.95 FA {thr['quantile:0.95']['false_alarms']} "
                f"miss {thr['quantile:0.95']['misses']}",
                flush=True,
            )
    # Cost of the extra terms per image (CPU, this machine, shared): distances on the test embeddings.
    t1 = time.time()
    if not a.no_mag_gauss:
        mahalanobis(emb_t[:32], mean.float(), prec_chol)
    t_gauss = (time.time() - t1) / 32
    t1 = time.time()
    if a.bank:
        knn(emb_t[:32], bank)
    results["ms_per_image"] = {
        "gauss": 1000 * t_gauss,
        "knn": 1000 * (time.time() - t1) / 32 if a.bank else None,
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(results, indent=1, default=float))
    print(f"done in {time.time() - t0:.0f}s -> {a.out}", flush=True)


if __name__ == "__main__":
    main()
