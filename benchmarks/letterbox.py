"""Issue 14's aspect-ratio hypothesis, letterbox variant: train on a letterboxed copy of a dataset, score it
at each image's original resolution, without touching rd2t's own preprocessing.

rd2t stretches every image to a square. Magnetic tile's images have aspect ratios from ~0.4 to ~2.5, so the
same texture reaches the model squeezed by a different factor in each image. A letterbox keeps the aspect
ratio: the long side becomes `--size`, the short side is padded to a square with the image's own mean colour
(a constant close to the content, so the padding's edge is as weak as a constant can make it).

    # 1. the copy: images (and masks) letterboxed to 256, boxes.json = content box + original size
    .venv/bin/python benchmarks/letterbox.py prepare ../shared/data/magnetic_tile runs/data/mt_letterbox
    # 2. train exactly as usual on the copy (its held-out good images calibrate the threshold as usual)
    rd2t train runs/data/mt_letterbox --dataset mvtec --category . --preset offline --epochs 20 --seed 0 \\
        --device cpu --out runs/lb_s0
    # 3. score: each map cropped to its content box, resized to the original size, rd2t's Evaluator
    .venv/bin/python benchmarks/letterbox.py evaluate runs/lb_s0/model.pt runs/data/mt_letterbox \\
        ../shared/data/magnetic_tile --json J

The image score is the maximum over the content box (the padding is never part of the part); the
false-alarm / miss counts use the stored threshold on the model's own score (the whole map's maximum, the
one its calibration used) and are given beside it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from peers_accuracy import report  # benchmarks/ is on the path when a script runs
from PIL import Image

from rd2t.api import Detector
from rd2t.data import load_image, load_mask, open_dataset
from rd2t.data.transforms import resize_map
from rd2t.errors import RD2TError
from rd2t.evaluation.metrics import Evaluator, image_auroc

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def letterbox(img: Image.Image, size: int, fill, resample=Image.BILINEAR) -> tuple[Image.Image, list[int]]:
    """The image resized so its long side is `size`, centred on a square of `fill`; the box (x0, y0, x1, y1)
    its content occupies. Bilinear is the filter rd2t's own resize uses; masks take nearest."""
    w, h = img.size
    scale = size / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    canvas = Image.new(img.mode, (size, size), fill)
    x0, y0 = (size - nw) // 2, (size - nh) // 2
    canvas.paste(img.resize((nw, nh), resample), (x0, y0))
    return canvas, [x0, y0, x0 + nw, y0 + nh]


def mean_colour(img: Image.Image) -> tuple[int, ...]:
    return tuple(int(round(c)) for c in np.asarray(img, dtype=np.float64).reshape(-1, 3).mean(0))


def prepare(src: Path, dst: Path, size: int) -> None:
    boxes = {}
    for p in sorted(src.rglob("*")):
        rel = p.relative_to(src)
        if p.is_dir() or p.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        out = dst / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        if rel.parts[0] == "ground_truth" or p.stem.endswith("_mask"):
            # letterboxed too (the reader checks each mask's aspect); evaluation reads the original's
            letterbox(Image.open(p).convert("L"), size, 0, Image.NEAREST)[0].save(out)
            continue
        img = load_image(p)
        canvas, box = letterbox(img, size, mean_colour(img))
        canvas.save(out.with_suffix(".png"))
        boxes[str(rel.with_suffix(".png"))] = box + list(img.size)
    (dst / "boxes.json").write_text(json.dumps(boxes))
    print(f"{len(boxes)} images -> {dst}")


def evaluate(model: Path, root: Path, original: Path, out: Path | None) -> dict:
    boxes = json.loads((root / "boxes.json").read_text())
    split = open_dataset("mvtec", root, ".")
    # the original masks, matched by defect type and file stem
    masks = {(s.defect_type, s.path.stem): s.mask_path for s in open_dataset("mvtec", original, ".").test}
    det = Detector.load(model)
    predictor = det.predictor
    by_path = {s.path: s for s in split.test}
    ev = Evaluator()
    labels, own_scores = [], []
    for p in predictor.predict([s.path for s in split.test], batch_size=16, threshold=None):
        if isinstance(p, RD2TError):
            print(f"skipped: {p}", file=sys.stderr)
            continue
        s = by_path[p.path]
        x0, y0, x1, y1, w, h = boxes[str(Path(p.path).relative_to(root))]
        crop = p.model_map[y0:y1, x0:x1]
        full = resize_map(crop, (w, h))
        mask_path = masks[(s.defect_type, s.path.stem)]
        mask = load_mask(mask_path, (w, h)) if mask_path else np.zeros((h, w), bool)
        ev.add(s.label, float(crop.max()), full, mask, s.defect_type)
        labels.append(s.label)
        own_scores.append(p.score)
    labels_a, own = np.array(labels, bool), np.array(own_scores)
    t = predictor.threshold
    result = {
        "model": str(model),
        "metrics": ev.compute(),
        "per_defect": ev.compute_by_defect(),
        "image_auroc_whole_map": image_auroc(labels_a, own),
        "threshold": t,
        "false_alarms": int(((own > t) & ~labels_a).sum()),
        "misses": int(((own <= t) & labels_a).sum()),
        "good": int((~labels_a).sum()),
        "defective": int(labels_a.sum()),
    }
    head = (
        f"{model} (whole-map image AUROC {result['image_auroc_whole_map']:.4f}; "
        f"{result['false_alarms']}/{result['good']} false alarms, "
        f"{result['misses']}/{result['defective']} misses)"
    )
    report(result, head, out)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path)
    p.add_argument("--size", type=int, default=256)
    e = sub.add_parser("evaluate")
    e.add_argument("model", type=Path)
    e.add_argument("root", type=Path, help="the letterboxed copy")
    e.add_argument("original", type=Path, help="the dataset it was made from (its masks are scored)")
    e.add_argument("--json", type=Path)
    a = ap.parse_args()
    if a.cmd == "prepare":
        prepare(a.src, a.dst, a.size)
    else:
        evaluate(a.model, a.root, a.original, a.json)


if __name__ == "__main__":
    main()
