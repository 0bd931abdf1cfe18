"""How redundant are two teachers? Linear CKA (Kornblith et al. 2019) between teacher feature maps.

For each dataset's training images (at most 64, 256 px) every teacher gives three feature maps (strides
4/8/16). Per level, each map becomes an (N*H*W, C) matrix; the same random pixels (20k rows, fixed seed)
are taken for both teachers, columns are centred and

    CKA(X, Y) = ||Y^T X||_F^2 / (||X^T X||_F * ||Y^T Y||_F)

1 means the two representations are the same up to rotation and isotropic scale. Controls: a randomly
initialised Lite2 (different features, same architecture), a fresh pixel subsample (the estimate's noise),
and unpaired pixels (the floor that an unrelated pair of representations reaches at this sample size).

Anomaly-relevant behaviour (rows "anomaly maps"): on up to 32 images of the dataset's test/ folder (good and
defective), each teacher scores every pixel by its feature's distance to the nearest of 4096 training
pixels of the same level (a PatchCore-style map). The CKA of two such 1-D maps is Pearson r squared.

    .venv/bin/python benchmarks/teacher_similarity.py \
        --data ../shared/data/mvtec_ad/bottle/train/good ../shared/data/hazelnut_toy/train/good
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from rd2t.data import list_images, load_image
from rd2t.data.transforms import to_model_input, to_uint8_tensor
from rd2t.model.teachers import Teacher

L0, L1, L2 = (f"tf_efficientnet_lite{i}" for i in range(3))
TEACHERS = {  # key -> (timm name, pretrained)
    "Lite2": (L2, True),
    "Lite1": (L1, True),
    "Lite0": (L0, True),
    "Lite2 random": (L2, False),
    "ResNet18 random": ("resnet18", False),
}
# row label -> (teacher a, teacher b, pixels): None = the same random pixels for both; "new" = another
# random subsample, still the same for both; "unpaired" = b's pixels are a's shuffled.
PAIRS = {
    "Lite2 vs Lite0 (offline pair)": ("Lite2", "Lite0", None),
    "Lite2 vs Lite1": ("Lite2", "Lite1", None),
    "Lite2 vs Lite2 random-init (control, low)": ("Lite2", "Lite2 random", None),
    "ResNet18 random vs Lite2 random": ("ResNet18 random", "Lite2 random", None),
    "Lite2 vs Lite2, new pixel subsample (control, 1)": ("Lite2", "Lite2", "new"),
    "Lite2 vs Lite0, new pixel subsample (estimate noise)": ("Lite2", "Lite0", "new"),
    "Lite2 vs Lite0, unpaired pixels (floor)": ("Lite2", "Lite0", "unpaired"),
}
ANOMALY_PAIRS = {
    "anomaly maps: Lite2 vs Lite0": ("Lite2", "Lite0"),
    "anomaly maps: Lite2 vs Lite2 random-init": ("Lite2", "Lite2 random"),
}


def extract(teacher: Teacher, batch: torch.Tensor) -> list[np.ndarray]:
    with torch.inference_mode():
        per_batch = [teacher(b) for b in batch.split(16)]
    return pixel_rows([torch.cat(level) for level in zip(*per_batch, strict=True)])


def knn_distance(queries: np.ndarray, bank: np.ndarray) -> np.ndarray:
    bank_t = torch.from_numpy(bank)
    return np.concatenate(
        [torch.cdist(q, bank_t).min(1).values.numpy() for q in torch.from_numpy(queries).split(8192)]
    )


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    x = x - x.mean(0)
    y = y - y.mean(0)
    return float(np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))


def load_batch(folder: Path, max_images: int, size: int) -> torch.Tensor:
    """At most max_images evenly spaced images of folder and its subfolders (test/<defect type>/)."""
    paths = [p for d in [folder, *sorted(x for x in folder.iterdir() if x.is_dir())] for p in list_images(d)]
    keep = np.linspace(0, len(paths) - 1, min(max_images, len(paths))).round().astype(int)
    return to_model_input(torch.stack([to_uint8_tensor(load_image(paths[i]), size) for i in keep]))


def pixel_rows(feats: list[torch.Tensor]) -> list[np.ndarray]:
    """Per level: (N*H*W, C) float64."""
    return [f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]).double().numpy() for f in feats]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = [Path("../shared/data/mvtec_ad/bottle/train/good")]
    ap.add_argument("--data", nargs="+", type=Path, default=default, help="train/good folders")
    ap.add_argument("--max-images", type=int, default=64)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--rows", type=int, default=20_000, help="pixels subsampled per level")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--test-images", type=int, default=32, help="for the anomaly maps; 0 skips them")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    t0 = time.time()

    teachers = {}
    for key, (name, pretrained) in TEACHERS.items():
        torch.manual_seed(args.seed)  # random-init teachers are reproducible
        teachers[key] = Teacher(name, pretrained=pretrained)
    cols, table = [], {label: [] for label in PAIRS | ANOMALY_PAIRS}
    for folder in args.data:
        batch = load_batch(folder, args.max_images, args.size)
        feats = {key: extract(t, batch) for key, t in teachers.items()}
        test_dir = folder.parent.parent / "test"
        test = None
        if args.test_images and test_dir.is_dir():
            test = load_batch(test_dir, args.test_images, args.size)
            test_feats = {
                k: extract(teachers[k], test) for k in {k for pair in ANOMALY_PAIRS.values() for k in pair}
            }
        dataset = folder.parent.parent.name if folder.name == "good" else folder.name
        for level in range(3):
            strides = {teachers[k].strides[level] for k in teachers}
            assert len(strides) == 1, f"level {level + 1}: teachers disagree on stride {strides}"
            cols.append(f"{dataset} L{level + 1} (s{strides.pop()})")
            n = feats["Lite2"][level].shape[0]
            rng = np.random.default_rng(args.seed)
            rows_a = rng.choice(n, size=min(args.rows, n), replace=False)
            rows_new = rng.choice(n, size=len(rows_a), replace=False)
            for label, (a, b, mode) in PAIRS.items():
                ra = rows_new if mode == "new" else rows_a
                rb = {"unpaired": rng.permutation(rows_a)}.get(mode, ra)
                table[label].append(linear_cka(feats[a][level][ra], feats[b][level][rb]))
            for label, (a, b) in ANOMALY_PAIRS.items():
                if test is None:
                    table[label].append(float("nan"))
                    continue
                bank = rng.choice(n, size=min(4096, n), replace=False)
                maps = [knn_distance(test_feats[k][level], feats[k][level][bank])[:, None] for k in (a, b)]
                table[label].append(linear_cka(*maps))
        print(
            f"{dataset}: {len(batch)} train, {0 if test is None else len(test)} test images, channels "
            + ", ".join(f"{k} {teachers[k].channels}" for k in teachers),
            file=sys.stderr,
        )

    print("| pair | " + " | ".join(cols) + " |")
    print("|---|" + "---:|" * len(cols))
    for label, vals in table.items():
        print(f"| {label} | " + " | ".join(f"{v:.3f}" for v in vals) + " |")
    data = " ".join(map(str, args.data))
    print(
        f"\nCommand: .venv/bin/python benchmarks/teacher_similarity.py --data {data} --max-images "
        f"{args.max_images} --size {args.size} --rows {args.rows} --seed {args.seed} --test-images "
        f"{args.test_images}  ({time.time() - t0:.0f} s)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
