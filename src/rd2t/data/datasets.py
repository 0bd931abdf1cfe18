"""Readers that turn a dataset folder into a train/test ``Split`` of image paths, labels and masks.

Supported layouts: MVTec AD, MPDD (same layout), BTAD, VisA (official 1cls split), MVTec 3D-AD (RGB
only) and a user's own folders. Readers only list files and read image headers; pixels are decoded later
by ``load_image``/``load_mask``. Anything that would silently produce wrong metrics (a mask without an
image, masks for only some defective images, a mask that cannot be resized onto its image) is an
``InputError`` with a one-line message naming the file or folder and what was expected.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from rd2t.data.images import list_images, mask_size_problem
from rd2t.errors import InputError

PathLike = str | os.PathLike[str]

DATASETS: dict[str, list[str]] = {
    "mvtec": [
        "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
        "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper",
    ],
    "btad": ["01", "02", "03"],
    "visa": [
        "candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1", "macaroni2",
        "pcb1", "pcb2", "pcb3", "pcb4", "pipe_fryum",
    ],
    "mpdd": ["bracket_black", "bracket_brown", "bracket_white", "connector", "metal_plate", "tubes"],
    "mvtec_ad2": ["can", "fabric", "fruit_jelly", "rice", "sheet_metal", "vial", "wallplugs", "walnuts"],
    "mvtec3d": [
        "bagel", "cable_gland", "carrot", "cookie", "dowel", "foam", "peach", "potato", "rope", "tire",
    ],
}  # fmt: skip


@dataclass(frozen=True)
class Sample:
    path: Path  # the image
    label: int  # 0 = good, 1 = defective
    defect_type: str  # "good" for good images, else the defect folder name
    mask_path: Path | None  # None for good images, or when no mask exists


@dataclass
class Split:
    train: list[Sample]  # good images only
    test: list[Sample]
    name: str  # e.g. "mvtec/bottle"
    has_masks: bool  # True when every defective test image has a mask
    validation: list[Sample] = field(default_factory=list)  # good images a dataset holds out (MVTec AD 2)


# --------------------------------------------------------------------------------------------- helpers


def _category_dir(root: PathLike, category: str, layout: str) -> Path:
    """``root/category``, or an error that lists what *is* there, since a typo is the usual cause."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(
            f"{root}: folder not found (expected the dataset root holding category folders, {layout})"
        )
    folder = root / category
    if not folder.is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        seen = f"folders there: {', '.join(found[:20])}" if found else "the root has no sub-folders"
        raise InputError(f"{folder}: folder not found (expected category '{category}', {layout}; {seen})")
    return folder


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _train_samples(
    images_dir: Path, base: Path, expected: str, layout: str, training: bool = True
) -> list[Sample]:
    """Good training images; when the split is only scored (``training=False``) they may be absent."""
    if not images_dir.is_dir():
        if not training:
            return []
        raise InputError(f"{base}: expected {expected} ({layout})")
    images = list_images(images_dir)
    if not images and training:
        raise InputError(
            f"{images_dir}: no training images (expected defect-free png/jpg/bmp/tif/webp files)"
        )
    return [Sample(p, 0, "good", None) for p in images]


def _good_samples(images: Iterable[Path]) -> list[Sample]:
    return [Sample(p, 0, "good", None) for p in images]


def _mask_index(folder: Path) -> dict[str, Path]:
    """Mask files of ``folder`` by stem; with two files of one stem (000.png, 000.bmp) prefer the PNG."""
    if not folder.is_dir():
        return {}
    index: dict[str, Path] = {}
    for path in sorted(list_images(folder), key=lambda p: (p.suffix.lower() != ".png", p.name)):
        index.setdefault(path.stem, path)
    return index


def _find_mask(stem: str, indexes: Sequence[dict[str, Path]]) -> Path | None:
    """The mask of an image stem: ``<stem>_mask.*`` (official MVTec naming) or ``<stem>.*``."""
    for index in indexes:
        for key in (f"{stem}_mask", stem):
            if key in index:
                return index[key]
    return None


def _image_stem_of_mask(mask: Path) -> str:
    return mask.stem[: -len("_mask")] if mask.stem.endswith("_mask") else mask.stem


def _usual_suffix(images: Sequence[Path]) -> str:
    """The extension most images of a folder use, to spell out the image a stray mask should belong to."""
    counts = Counter(p.suffix for p in images)
    return counts.most_common(1)[0][0] if counts else ".png"


def _check_orphan_masks(mask_dir: Path, image_dir: Path, image_stems: set[str], suffix: str) -> None:
    """Every mask in ``mask_dir`` must belong to an image of ``image_dir``: a stray mask usually means a
    renamed or deleted image, and silently ignoring it hides a broken ground truth."""
    if not mask_dir.is_dir():
        return
    for mask in list_images(mask_dir):
        if mask.stem not in image_stems and _image_stem_of_mask(mask) not in image_stems:
            expected = image_dir / f"{_image_stem_of_mask(mask)}{suffix}"
            raise InputError(f"{mask}: mask has no matching image (expected {expected})")


def _defect_samples(
    image_dir: Path, defect_type: str, mask_dirs: Sequence[Path], orphan_check: bool = True
) -> list[Sample]:
    """Defective samples of one folder, each paired with its mask from the first of ``mask_dirs`` that
    has one. ``orphan_check`` covers the mask folders that belong to this defect type only."""
    images = list_images(image_dir)
    indexes = [_mask_index(d) for d in mask_dirs]
    samples = [Sample(p, 1, defect_type, _find_mask(p.stem, indexes)) for p in images]
    if orphan_check:
        for mask_dir in mask_dirs:
            _check_orphan_masks(mask_dir, image_dir, {p.stem for p in images}, _usual_suffix(images))
    return samples


def _header_size(path: Path, what: str) -> tuple[int, int]:
    """(W, H) from the file header only; decoding every image here would make listing slow."""
    try:
        with Image.open(path) as im:
            return im.size
    except FileNotFoundError:
        raise InputError(f"{path}: cannot read {what} (file not found)") from None
    except UnidentifiedImageError:
        raise InputError(f"{path}: cannot read {what} (not an image format Pillow recognises)") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise InputError(f"{path}: cannot read {what} ({' '.join(str(e).split())})") from None


def _finish(train: list[Sample], test: list[Sample], name: str, mask_hint: Callable[[Sample], str]) -> Split:
    """Decide ``has_masks`` and refuse ground truths that would corrupt pixel metrics."""
    defective = [s for s in test if s.label == 1]
    masked = [s for s in defective if s.mask_path is not None]
    if masked and len(masked) < len(defective):
        missing = next(s for s in defective if s.mask_path is None)
        raise InputError(
            f"{missing.path}: defective image has no mask ({mask_hint(missing)}) although {len(masked)} of "
            f"{len(defective)} defective images have one; a partial ground truth would corrupt pixel metrics"
        )
    for sample in masked:
        assert sample.mask_path is not None
        problem = mask_size_problem(
            sample.mask_path,
            _header_size(sample.mask_path, "mask"),
            _header_size(sample.path, "image"),
            sample.path,
        )
        if problem:
            raise InputError(problem)
    # With no defective images there is nothing to segment, so pixel metrics are off as well.
    has_masks = bool(defective) and len(masked) == len(defective)
    return Split(train=train, test=test, name=name, has_masks=has_masks)


def _looked_for(*folders: Path) -> Callable[[Sample], str]:
    def hint(sample: Sample) -> str:
        where = " or ".join(str(f) for f in folders) or "no mask folder given"
        return f"looked for {sample.path.stem}_mask.* or {sample.path.stem}.* in {where}"

    return hint


# --------------------------------------------------------------------------------------------- readers


def _mvtec_layout(root: PathLike, category: str, dataset: str, layout: str, training: bool) -> Split:
    """root/category/{train/good, test/<defect>, ground_truth/<defect>/<stem>_mask.png}."""
    base = _category_dir(root, category, layout)
    train = _train_samples(base / "train" / "good", base, "train/good", layout, training)
    test_dir, gt_dir = base / "test", base / "ground_truth"
    if not test_dir.is_dir() or not _subdirs(test_dir):
        raise InputError(f"{base}: expected test/good and test/<defect type> folders ({layout})")
    loose = list_images(test_dir)
    if loose:
        raise InputError(f"{loose[0]}: image directly in test/ (expected test/good/ or test/<defect type>/)")
    test: list[Sample] = []
    for group in _subdirs(test_dir):
        if group.name == "good":
            test += _good_samples(list_images(group))
        else:
            test += _defect_samples(group, group.name, [gt_dir / group.name])
    # A ground_truth/<defect> folder whose test folder is missing holds masks of images that do not exist.
    # ground_truth/good is skipped: some users keep all-black masks there and they carry no information.
    if gt_dir.is_dir():
        for gt_group in _subdirs(gt_dir):
            if gt_group.name != "good" and not (test_dir / gt_group.name).is_dir():
                _check_orphan_masks(gt_group, test_dir / gt_group.name, set(), ".png")
    if not test:
        raise InputError(f"{test_dir}: no test images ({layout})")
    return _finish(train, test, f"{dataset}/{category}", lambda s: _looked_for(gt_dir / s.defect_type)(s))


def mvtec(root: PathLike, category: str, training: bool = True) -> Split:
    """MVTec AD: root/category/{train/good, test/<defect>, ground_truth/<defect>/<stem>_mask.png}.

    Masks named ``<stem>.png`` (as many re-packaged sets do) are accepted too. With ``training=False``
    (the split is only scored) train/good may be missing.
    """
    return _mvtec_layout(root, category, "mvtec", "MVTec AD layout", training)


def mpdd(root: PathLike, category: str, training: bool = True) -> Split:
    """MPDD, which uses the MVTec AD layout."""
    return _mvtec_layout(root, category, "mpdd", "MPDD layout, same as MVTec AD", training)


def btad(root: PathLike, product: str, training: bool = True) -> Split:
    """BTAD: root/product/{train/ok, test/ok, test/ko, ground_truth/ko}.

    The official release stores masks as PNG for products 01 and 02 and as BMP for 03; both are matched
    by the image's stem. Defective images get defect_type "ko".
    """
    layout = "BTAD layout"
    base = _category_dir(root, product, layout)
    train = _train_samples(base / "train" / "ok", base, "train/ok", layout, training)
    ok_dir, ko_dir, gt_dir = base / "test" / "ok", base / "test" / "ko", base / "ground_truth" / "ko"
    if not ok_dir.is_dir() and not ko_dir.is_dir():
        raise InputError(f"{base}: expected test/ok and test/ko ({layout})")
    test = _good_samples(list_images(ok_dir)) if ok_dir.is_dir() else []
    if ko_dir.is_dir():
        test += _defect_samples(ko_dir, "ko", [gt_dir])
    else:
        _check_orphan_masks(gt_dir, ko_dir, set(), ".bmp")
    if not test:
        raise InputError(f"{base / 'test'}: no test images ({layout})")
    return _finish(train, test, f"btad/{product}", _looked_for(gt_dir))


VISA_COLUMNS = ("object", "split", "label", "image", "mask")


def visa(root: PathLike, category: str, training: bool = True) -> Split:
    """VisA with its official one-class split, ``root/split_csv/1cls.csv``.

    The CSV (columns object,split,label,image,mask; label normal/anomaly; paths relative to root) decides
    train/test membership. Images live in <category>/Data/Images/{Normal,Anomaly}, masks in
    <category>/Data/Masks/Anomaly. Defective images get defect_type "anomaly" (VisA has no per-folder
    defect types).
    """
    layout = "official VisA layout"
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: folder not found (expected the VisA root with split_csv/1cls.csv)")
    csv_path = root / "split_csv" / "1cls.csv"
    if not csv_path.is_file():
        raise InputError(f"{root}: expected split_csv/1cls.csv ({layout}; it ships inside VisA_20220922.tar)")
    with open(csv_path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in VISA_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise InputError(
                f"{csv_path}: missing column(s) {', '.join(missing)} (expected {','.join(VISA_COLUMNS)})"
            )
        rows = [(line, row) for line, row in enumerate(reader, start=2)]

    objects = sorted({(row["object"] or "").strip() for _, row in rows})
    mine = [(line, row) for line, row in rows if (row["object"] or "").strip() == category]
    if not mine:
        raise InputError(
            f"{csv_path}: no rows for category '{category}' (categories in file: {', '.join(objects)})"
        )

    train: list[Sample] = []
    test: list[Sample] = []
    for line, row in mine:
        where = f"{csv_path}:{line}"
        split, label_name = (row["split"] or "").strip().lower(), (row["label"] or "").strip().lower()
        image = root / (row["image"] or "").strip()
        if label_name not in ("normal", "anomaly"):
            raise InputError(f"{where}: label '{row['label']}' is neither normal nor anomaly")
        if split not in ("train", "test"):
            raise InputError(f"{where}: split '{row['split']}' is neither train nor test")
        if not image.is_file():
            raise InputError(f"{image}: image listed in {where} not found")
        if split == "train":
            if label_name != "normal":
                raise InputError(
                    f"{where}: anomalous image {image} in the train split (training uses good images only)"
                )
            train.append(Sample(image, 0, "good", None))
        elif label_name == "normal":
            test.append(Sample(image, 0, "good", None))
        else:
            mask_field = (row["mask"] or "").strip()
            mask = root / mask_field if mask_field else None
            if mask is not None and not mask.is_file():
                raise InputError(f"{mask}: mask listed in {where} not found (for image {image})")
            test.append(Sample(image, 1, "anomaly", mask))
    if not train and training:
        raise InputError(f"{csv_path}: no train rows for category '{category}'")
    return _finish(train, test, f"visa/{category}", lambda s: f"its mask column in {csv_path} is empty")


def mvtec_ad2(root: PathLike, category: str, training: bool = True) -> Split:
    """MVTec AD 2: root/category/{train/good, validation/good, test_public/{good, bad},
    test_public/ground_truth/bad/<stem>_mask.png}.

    validation/good goes to ``Split.validation`` (the dataset's own held-out good images, for thresholds);
    test_public is the test set. test_private and test_private_mixed have no public ground truth (scored on
    MVTec's server) and are not read. The images are large (up to 3 MP): see docs/high-resolution.md.
    """
    layout = "MVTec AD 2 layout"
    base = _category_dir(root, category, layout)
    train = _train_samples(base / "train" / "good", base, "train/good", layout, training)
    val_dir = base / "validation" / "good"
    validation = _good_samples(list_images(val_dir)) if val_dir.is_dir() else []
    test_dir, gt_dir = base / "test_public", base / "test_public" / "ground_truth" / "bad"
    if not (test_dir / "good").is_dir() and not (test_dir / "bad").is_dir():
        raise InputError(f"{base}: expected test_public/good and test_public/bad ({layout})")
    test = _good_samples(list_images(test_dir / "good")) if (test_dir / "good").is_dir() else []
    if (test_dir / "bad").is_dir():
        test += _defect_samples(test_dir / "bad", "bad", [gt_dir])
    if not test:
        raise InputError(f"{test_dir}: no test images ({layout})")
    split = _finish(train, test, f"mvtec_ad2/{category}", _looked_for(gt_dir))
    split.validation = validation
    return split


def mvtec3d(root: PathLike, category: str, training: bool = True) -> Split:
    """MVTec 3D-AD, RGB only: train/good/rgb, test/<defect>/rgb, masks in test/<defect>/gt with the same
    file name. The xyz/ point clouds and the validation/ folder are not used."""
    layout = "MVTec 3D-AD layout"
    base = _category_dir(root, category, layout)
    train = _train_samples(base / "train" / "good" / "rgb", base, "train/good/rgb", layout, training)
    test_dir = base / "test"
    if not test_dir.is_dir() or not _subdirs(test_dir):
        raise InputError(f"{base}: expected test/<defect type>/rgb folders ({layout})")
    test: list[Sample] = []
    for group in _subdirs(test_dir):
        if not (group / "rgb").is_dir():
            raise InputError(f"{group}: expected rgb/ ({layout})")
        if group.name == "good":
            # test/good/gt holds all-black masks; good samples carry no mask by convention.
            test += _good_samples(list_images(group / "rgb"))
        else:
            test += _defect_samples(group / "rgb", group.name, [group / "gt"])
    if not test:
        raise InputError(f"{test_dir}: no test images ({layout})")
    return _finish(train, test, f"mvtec3d/{category}", lambda s: _looked_for(s.path.parent.parent / "gt")(s))


def _folder_name(train_dir: Path) -> str:
    """A readable split name: the dataset folder, not 'good' or 'train'."""
    parts = train_dir.resolve().parts
    if len(parts) >= 3 and parts[-1] == "good" and parts[-2] == "train":
        return parts[-3]
    if len(parts) >= 2 and parts[-1] == "train":
        return parts[-2]
    return train_dir.resolve().name


def folder(
    train_dir: PathLike | None,
    test_good_dir: PathLike | None = None,
    test_defect_dirs: Sequence[PathLike] = (),
    mask_dir: PathLike | None = None,
) -> Split:
    """A user's own data: a folder of good training images, optional good and defective test folders.

    Each defect folder's name becomes its defect_type. Masks are matched by image stem, as ``<stem>.*`` or
    ``<stem>_mask.*``, first in ``mask_dir/<defect_type>/`` then in ``mask_dir/``. Without any mask the
    split has ``has_masks=False`` and only image-level metrics are computed (not an error).
    ``train_dir=None`` gives a split that is only scored (no training images).
    """
    train: list[Sample] = []
    if train_dir is not None:
        train_dir = Path(train_dir)
        if not train_dir.is_dir():
            raise InputError(f"{train_dir}: training folder not found")
        train = _train_samples(train_dir, train_dir, "a folder of good images", "folder layout")

    test: list[Sample] = []
    test_stems: set[str] = set()
    if test_good_dir is not None:
        good_dir = Path(test_good_dir)
        if not good_dir.is_dir():
            raise InputError(f"{good_dir}: test folder of good images not found")
        good = list_images(good_dir)
        test += _good_samples(good)
        test_stems |= {p.stem for p in good}

    masks = Path(mask_dir) if mask_dir is not None else None
    if masks is not None and not masks.is_dir():
        raise InputError(f"{masks}: mask folder not found")
    claimed: dict[Path, Path] = {}  # mask -> image, to catch one flat mask claimed by two defect folders
    defect_dirs = [Path(d) for d in test_defect_dirs]
    for defect_dir in defect_dirs:
        if not defect_dir.is_dir():
            raise InputError(f"{defect_dir}: test folder of defective images not found")
        mask_dirs = [masks / defect_dir.name, masks] if masks is not None else []
        # Only the per-defect mask folder is checked for strays here; the flat one is shared, see below.
        samples = _defect_samples(defect_dir, defect_dir.name, mask_dirs, orphan_check=False)
        if masks is not None:
            _check_orphan_masks(
                masks / defect_dir.name,
                defect_dir,
                {s.path.stem for s in samples},
                _usual_suffix([s.path for s in samples]),
            )
        for sample in samples:
            if sample.mask_path is None:
                continue
            other = claimed.setdefault(sample.mask_path, sample.path)
            if other != sample.path:
                raise InputError(
                    f"{sample.mask_path}: mask matches two images, {other} and {sample.path} "
                    f"(put masks in {masks}/<defect folder name>/)"
                )
        test += samples
        test_stems |= {s.path.stem for s in samples}

    if masks is not None:
        # A flat mask must belong to some test image (masks of good images are tolerated and ignored).
        for mask in list_images(masks):
            if mask.stem not in test_stems and _image_stem_of_mask(mask) not in test_stems:
                stem = _image_stem_of_mask(mask)
                expected = " or ".join(str(d / f"{stem}.png") for d in defect_dirs) or f"test image {stem}.*"
                raise InputError(
                    f"{mask}: mask has no matching image (expected {expected}, any image extension)"
                )

    def mask_where(sample: Sample) -> str:
        if masks is None:
            return "no mask folder given"
        return _looked_for(masks / sample.defect_type, masks)(sample)

    if train_dir is not None:
        name = _folder_name(train_dir)
    else:  # only scored: the dataset folder above test/<group>/
        if not test:
            raise InputError("no test images given (a split without training images is only scored)")
        name = test[0].path.resolve().parent.parent.parent.name
    return _finish(train, test, f"folder/{name}", mask_where)


_GOOD_NAMES = ("good", "ok", "normal")
_MASK_DIR_NAMES = ("ground_truth", "masks", "mask")


def _detect_folder(base: Path, training: bool = True) -> Split:
    """Guess the layout of a user's dataset folder.

    Accepted: ``base/train/good`` or ``base/train`` for training images, ``base/test/<name>`` folders
    (good/ok/normal are good, anything else a defect type), masks in ``base/ground_truth`` (or masks/,
    mask/); or just a folder of good images, which gives a train-only split. A split that is only scored
    (``training=False``) may have test/ alone.
    """
    if not base.is_dir():
        raise InputError(f"{base}: folder not found")
    train_dir: Path | None
    if (base / "train" / "good").is_dir():
        train_dir = base / "train" / "good"
    elif (base / "train").is_dir():
        train_dir = base / "train"
    elif not training and (base / "test").is_dir():
        train_dir = None
    elif list_images(base):
        return folder(base)
    else:
        expected = "train/good/, train/ or image files" if training else "test/<good or defect type>/ folders"
        raise InputError(f"{base}: expected {expected} (folder layout)")

    test_dir = base / "test"
    good_dirs: list[Path] = []
    defect_dirs: list[Path] = []
    if test_dir.is_dir():
        loose = list_images(test_dir)
        if loose:
            raise InputError(
                f"{loose[0]}: image directly in test/ (expected test/good/ or test/<defect type>/)"
            )
        for group in _subdirs(test_dir):
            (good_dirs if group.name.lower() in _GOOD_NAMES else defect_dirs).append(group)
    if len(good_dirs) > 1:
        names = ", ".join(d.name for d in good_dirs)
        raise InputError(f"{test_dir}: several folders of good images ({names}); keep one")
    mask_dir = next((base / n for n in _MASK_DIR_NAMES if (base / n).is_dir()), None)
    return folder(train_dir, good_dirs[0] if good_dirs else None, defect_dirs, mask_dir)


def labelled_defects(root: PathLike) -> Split:
    """A few defective images of the user's own part, for training's choices (``rd2t train --val-defects``).

    ``root/<defect type>/`` folders of defective images (or the images directly in ``root``), masks in
    ``root/ground_truth/`` (or masks/, mask/) as ``<defect type>/<stem>_mask.*`` or ``<stem>.*``, for every
    image or for none (then only image labels are used). A good/ok/normal folder is refused: the good side
    of the choice is the held-out training images. Returned as a Split with no training images.
    """
    base = Path(root)
    if not base.is_dir():
        raise InputError(f"{base}: folder of labelled defects not found")
    mask_dir = next((base / n for n in _MASK_DIR_NAMES if (base / n).is_dir()), None)
    groups = [d for d in _subdirs(base) if d.name not in _MASK_DIR_NAMES]
    good = [d for d in groups if d.name.lower() in _GOOD_NAMES]
    if good:
        raise InputError(
            f"{good[0]}: good images among the labelled defects (only defective images belong here; the "
            "good ones the choice needs are held out from training, --val-fraction)"
        )
    if list_images(base):
        groups = [base, *groups]
    samples: list[Sample] = []
    for group in groups:
        mask_dirs = [] if mask_dir is None else [mask_dir / group.name, mask_dir]
        samples += _defect_samples(group, group.name, mask_dirs, orphan_check=False)
    if not samples:
        raise InputError(f"{base}: no images (expected <defect type>/ folders of defective images)")

    def hint(sample: Sample) -> str:
        folders = () if mask_dir is None else (mask_dir / sample.defect_type, mask_dir)
        return _looked_for(*folders)(sample)

    return _finish([], samples, f"labelled defects/{base.name}", hint)


_READERS: dict[str, Callable[[PathLike, str, bool], Split]] = {
    "mvtec": mvtec,
    "btad": btad,
    "visa": visa,
    "mpdd": mpdd,
    "mvtec3d": mvtec3d,
    "mvtec_ad2": mvtec_ad2,
}


def open_dataset(kind: str, root: PathLike, category: str | None, training: bool = True) -> Split:
    """Read a dataset of the given kind (mvtec, btad, visa, mpdd, mvtec3d, folder).

    For the benchmark kinds ``category`` is required. For "folder", ``root`` (or ``root/category`` when a
    category is given) is auto-detected: train/good or train plus test/*, or a plain folder of good images.
    ``training=False``: the split is only scored (``rd2t evaluate``), so its training images may be absent.
    """
    name = kind.strip().lower()
    if name in _READERS:
        if not category:
            choices = ", ".join(DATASETS[name])
            raise InputError(f"{root}: a category is required for {name} (one of: {choices})")
        return _READERS[name](root, category, training)
    if name == "folder":
        return _detect_folder(Path(root) / category if category else Path(root), training)
    kinds = ", ".join([*_READERS, "folder"])
    raise InputError(f"{root}: unknown dataset kind '{kind}' (expected one of: {kinds})")
