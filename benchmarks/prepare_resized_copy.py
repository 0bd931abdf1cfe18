"""Copy an MVTec-layout dataset with every image pre-resized to the model's input size.

Used to ship real data to a remote GPU under a size limit: the copy is resized with the very call rd2t
uses (Pillow bilinear, see rd2t.data.transforms), so the model sees identical pixels; masks stay at full
resolution and `sizes.json` records each image's original (W, H) so metrics remain at original size.

    python benchmarks/prepare_resized_copy.py ../shared/data/mvtec_ad/bottle .devdata/bottle --size 256
"""

import argparse
import json
import shutil
from pathlib import Path

from PIL import Image

from rd2t.data import load_image
from rd2t.data.transforms import to_uint8_tensor


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("src", type=Path)
    ap.add_argument("dst", type=Path)
    ap.add_argument("--size", type=int, default=256)
    a = ap.parse_args()
    sizes = {}
    for p in sorted(a.src.rglob("*")):
        rel = p.relative_to(a.src)
        out = a.dst / rel
        if p.is_dir() or p.suffix.lower() not in (".png", ".jpg", ".jpeg", ".bmp"):
            continue
        out.parent.mkdir(parents=True, exist_ok=True)
        if rel.parts[0] == "ground_truth":
            shutil.copy2(p, out)
            continue
        img = load_image(p)
        sizes[str(rel.with_suffix(".png"))] = list(img.size)
        arr = to_uint8_tensor(img, a.size).permute(1, 2, 0).numpy()
        Image.fromarray(arr).save(out.with_suffix(".png"), optimize=True)
    (a.dst / "sizes.json").write_text(json.dumps(sizes))
    print(f"{len(sizes)} images -> {a.dst}")


if __name__ == "__main__":
    main()
