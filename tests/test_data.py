"""Dataset readers and image/mask loading, on tiny trees generated in tmp_path (plus real data if present)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rd2t.data import (
    DATASETS,
    Sample,
    btad,
    folder,
    labelled_defects,
    list_images,
    load_image,
    load_mask,
    mpdd,
    mvtec,
    mvtec3d,
    open_dataset,
    visa,
)
from rd2t.errors import InputError

# ------------------------------------------------------------------------------------------ tree makers


def write_image(path: Path, size: tuple[int, int] = (16, 16), value: int = 128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, value // 2, 255 - value)).save(path)
    return path


def write_mask(
    path: Path, size: tuple[int, int] = (16, 16), box: tuple[int, int, int, int] = (2, 2, 6, 6)
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.zeros((size[1], size[0]), np.uint8)
    array[box[1] : box[3], box[0] : box[2]] = 255
    Image.fromarray(array).save(path)
    return path


def make_mvtec(
    root: Path, category: str = "widget", mask_style: str = "official", n_train: int = 3, ext: str = ".png"
) -> Path:
    """root/category in MVTec AD layout: 2 good test images, crack (2) and scratch (1) with masks."""
    base = root / category
    for i in range(n_train):
        write_image(base / "train" / "good" / f"{i:03d}{ext}")
    for i in range(2):
        write_image(base / "test" / "good" / f"{i:03d}{ext}")
    for defect, count in (("crack", 2), ("scratch", 1)):
        for i in range(count):
            write_image(base / "test" / defect / f"{i:03d}{ext}")
            if mask_style is not None:
                name = f"{i:03d}_mask.png" if mask_style == "official" else f"{i:03d}.png"
                write_mask(base / "ground_truth" / defect / name)
    return base


def one_line(error: pytest.ExceptionInfo[InputError]) -> str:
    text = str(error.value)
    assert "\n" not in text
    return text


# ------------------------------------------------------------------------------------------ list_images


def test_list_images_sorted_case_insensitive_non_recursive(tmp_path: Path) -> None:
    for name in ("b.PNG", "a.jpg", "c.JpEg", "d.bmp", "e.tif", "f.TIFF", "g.webp"):
        write_image(tmp_path / name)
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "._a.png").write_bytes(b"macOS resource fork")
    write_image(tmp_path / "sub" / "h.png")
    assert [p.name for p in list_images(tmp_path)] == [
        "a.jpg",
        "b.PNG",
        "c.JpEg",
        "d.bmp",
        "e.tif",
        "f.TIFF",
        "g.webp",
    ]


def test_list_images_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="nope: folder not found"):
        list_images(tmp_path / "nope")


# ------------------------------------------------------------------------------------------ load_image


def test_load_image_modes_become_rgb(tmp_path: Path) -> None:
    gray = Image.new("L", (8, 8), 77)
    gray.save(tmp_path / "l.png")
    Image.new("RGBA", (8, 8), (10, 20, 30, 0)).save(tmp_path / "rgba.png")
    palette = Image.new("P", (8, 8), 1)
    palette.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    palette.save(tmp_path / "p.png")
    Image.new("CMYK", (8, 8), (0, 0, 0, 0)).save(tmp_path / "cmyk.jpg")
    Image.new("1", (8, 8), 1).save(tmp_path / "bw.bmp")
    expected = {
        "l.png": (77, 77, 77),
        "rgba.png": (10, 20, 30),
        "p.png": (200, 100, 50),
        "cmyk.jpg": (255, 255, 255),
        "bw.bmp": (255, 255, 255),
    }
    for name, rgb in expected.items():
        im = load_image(tmp_path / name)
        assert im.mode == "RGB" and im.size == (8, 8), name
        assert np.abs(np.asarray(im)[4, 4].astype(int) - rgb).max() <= 2, name


def test_load_image_palette_with_transparency(tmp_path: Path) -> None:
    palette = Image.new("P", (8, 8), 1)
    palette.putpalette([0, 0, 0, 90, 180, 30] + [0] * 762)
    palette.info["transparency"] = 0
    palette.save(tmp_path / "pt.png", transparency=0)
    assert tuple(np.asarray(load_image(tmp_path / "pt.png"))[0, 0]) == (90, 180, 30)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_load_image_16bit_scaled_not_truncated(tmp_path: Path, suffix: str) -> None:
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / f"deep{suffix}")
    assert Image.open(tmp_path / f"deep{suffix}").mode.startswith("I;16")
    im = load_image(tmp_path / f"deep{suffix}")
    assert im.mode == "RGB"
    # Linear 0..65535 -> 0..255; truncating to the low byte would give 0, 1, 0, 255.
    assert np.asarray(im)[0, :, 0].tolist() == [0, 1, 128, 255]


def test_load_image_float_tiff(tmp_path: Path) -> None:
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32)).save(tmp_path / "f.tif")
    assert np.asarray(load_image(tmp_path / "f.tif"))[0, :, 0].tolist() == [0, 128, 255]


def test_load_image_corrupt_missing_and_truncated(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8).tobytes())
    with pytest.raises(InputError) as error:
        load_image(corrupt)
    assert one_line(error).startswith(f"{corrupt}: cannot read image (")

    with pytest.raises(InputError) as error:
        load_image(tmp_path / "missing.png")
    assert one_line(error) == f"{tmp_path / 'missing.png'}: cannot read image (file not found)"

    whole = write_image(tmp_path / "whole.png", (32, 32))
    data = whole.read_bytes()
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as error:
        load_image(truncated)
    assert one_line(error).startswith(f"{truncated}: cannot read image (")

    text = tmp_path / "notes.jpg"
    text.write_text("not an image\nat all\n")
    with pytest.raises(InputError) as error:
        load_image(text)
    assert one_line(error).startswith(f"{text}: cannot read image")


# ------------------------------------------------------------------------------------------ load_mask


def test_load_mask_binarised_above_zero(tmp_path: Path) -> None:
    array = np.array([[0, 1, 128, 255]], dtype=np.uint8)
    Image.fromarray(array).save(tmp_path / "m.png")
    mask = load_mask(tmp_path / "m.png", (4, 1))
    assert mask.dtype == bool and mask.shape == (1, 4)
    assert mask.tolist() == [[False, True, True, True]]


def test_load_mask_rgb_and_16bit(tmp_path: Path) -> None:
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[0, 1, 2] = 1  # a faint blue pixel still counts
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    assert load_mask(tmp_path / "rgb.png", (2, 2)).tolist() == [[False, True], [False, False]]
    Image.fromarray(np.array([[0, 1000]], dtype=np.uint16)).save(tmp_path / "deep.png")
    assert load_mask(tmp_path / "deep.png", (2, 1)).tolist() == [[False, True]]


def test_load_mask_nearest_resize(tmp_path: Path) -> None:
    small = np.zeros((4, 4), np.uint8)
    small[1, 2] = 255
    Image.fromarray(small).save(tmp_path / "small.png")
    mask = load_mask(tmp_path / "small.png", (8, 8))
    expected = np.zeros((8, 8), bool)
    expected[2:4, 4:6] = True
    assert mask.shape == (8, 8)
    assert np.array_equal(mask, expected)  # NEAREST: a crisp 2x2 block, no blurred fringe


def test_load_mask_aspect_tolerance(tmp_path: Path) -> None:
    write_mask(tmp_path / "m.png", (100, 100))
    assert load_mask(tmp_path / "m.png", (200, 201)).shape == (201, 200)  # 0.5 % off: accepted


def test_load_mask_aspect_mismatch_names_mask_and_size(tmp_path: Path) -> None:
    write_mask(tmp_path / "m.png", (16, 8))
    with pytest.raises(InputError) as error:
        load_mask(tmp_path / "m.png", (16, 16))
    text = one_line(error)
    assert str(tmp_path / "m.png") in text and "16x8" in text and "16x16" in text
    with pytest.raises(InputError) as error:
        load_mask(tmp_path / "m.png", (16, 16), image_path=tmp_path / "img.png")
    assert str(tmp_path / "img.png") in one_line(error)


# ------------------------------------------------------------------------------------------ MVTec / MPDD


@pytest.mark.parametrize("style", ["official", "plain"])
def test_mvtec_reader(tmp_path: Path, style: str) -> None:
    base = make_mvtec(tmp_path, mask_style=style)
    split = mvtec(tmp_path, "widget")
    assert split.name == "mvtec/widget" and split.has_masks
    assert len(split.train) == 3 and all(s.label == 0 and s.defect_type == "good" for s in split.train)
    assert all(s.mask_path is None for s in split.train)
    assert len(split.test) == 5
    assert [s.label for s in split.test].count(1) == 3
    assert sorted({s.defect_type for s in split.test}) == ["crack", "good", "scratch"]
    for s in split.test:
        if s.label == 0:
            assert s.mask_path is None
        else:
            assert s.mask_path is not None and s.mask_path.parent == base / "ground_truth" / s.defect_type
            assert s.mask_path.name.startswith(s.path.stem)
    assert isinstance(split.test[0], Sample)


def test_mvtec_jpg_images_png_masks(tmp_path: Path) -> None:
    make_mvtec(tmp_path, mask_style="plain", ext=".jpg")  # hazelnut_toy style
    split = mvtec(tmp_path, "widget")
    assert split.has_masks and sum(s.mask_path is not None for s in split.test) == 3


def test_mpdd_reader(tmp_path: Path) -> None:
    make_mvtec(tmp_path, "tubes")
    split = mpdd(tmp_path, "tubes")
    assert split.name == "mpdd/tubes" and split.has_masks and len(split.test) == 5


def test_mvtec_without_ground_truth_has_no_masks(tmp_path: Path) -> None:
    make_mvtec(tmp_path, mask_style=None)
    split = mvtec(tmp_path, "widget")
    assert not split.has_masks and all(s.mask_path is None for s in split.test)


def test_mvtec_partial_masks_is_an_error(tmp_path: Path) -> None:
    base = make_mvtec(tmp_path)
    (base / "ground_truth" / "crack" / "001_mask.png").unlink()
    with pytest.raises(InputError) as error:
        mvtec(tmp_path, "widget")
    text = one_line(error)
    assert text.startswith(f"{base / 'test' / 'crack' / '001.png'}: defective image has no mask")
    assert "2 of 3" in text


def test_mask_without_image_names_both(tmp_path: Path) -> None:
    base = make_mvtec(tmp_path)
    stray = write_mask(base / "ground_truth" / "crack" / "007_mask.png")
    with pytest.raises(InputError) as error:
        mvtec(tmp_path, "widget")
    text = one_line(error)
    assert text.startswith(f"{stray}: mask has no matching image")
    assert str(base / "test" / "crack" / "007.png") in text


def test_ground_truth_folder_without_test_folder(tmp_path: Path) -> None:
    base = make_mvtec(tmp_path)
    stray = write_mask(base / "ground_truth" / "dent" / "000_mask.png")
    with pytest.raises(InputError) as error:
        mvtec(tmp_path, "widget")
    assert one_line(error).startswith(
        f"{stray}: mask has no matching image (expected {base / 'test' / 'dent'}"
    )


def test_reader_mask_aspect_mismatch_names_both_files(tmp_path: Path) -> None:
    base = make_mvtec(tmp_path)
    mask = write_mask(base / "ground_truth" / "scratch" / "000_mask.png", size=(16, 8))
    with pytest.raises(InputError) as error:
        mvtec(tmp_path, "widget")
    text = one_line(error)
    assert text.startswith(f"{mask}: mask is 16x8") and str(base / "test" / "scratch" / "000.png") in text


def test_mask_at_other_resolution_same_aspect_is_fine(tmp_path: Path) -> None:
    base = make_mvtec(tmp_path)
    write_mask(base / "ground_truth" / "scratch" / "000_mask.png", size=(32, 32))
    assert mvtec(tmp_path, "widget").has_masks


def test_mvtec_layout_errors(tmp_path: Path) -> None:
    make_mvtec(tmp_path, "bottle")
    with pytest.raises(InputError) as error:
        mvtec(tmp_path, "bottel")
    text = one_line(error)
    assert text.startswith(f"{tmp_path / 'bottel'}: folder not found") and "bottle" in text

    with pytest.raises(InputError, match="folder not found"):
        mvtec(tmp_path / "absent", "bottle")

    (tmp_path / "flat" / "train").mkdir(parents=True)
    with pytest.raises(InputError) as error:
        mvtec(tmp_path, "flat")
    assert one_line(error) == f"{tmp_path / 'flat'}: expected train/good (MVTec AD layout)"

    (tmp_path / "empty" / "train" / "good").mkdir(parents=True)
    with pytest.raises(InputError) as error:
        mvtec(tmp_path, "empty")
    assert one_line(error).startswith(f"{tmp_path / 'empty' / 'train' / 'good'}: no training images")

    write_image(tmp_path / "notest" / "train" / "good" / "000.png")
    with pytest.raises(InputError) as error:
        mvtec(tmp_path, "notest")
    assert one_line(error).startswith(f"{tmp_path / 'notest'}: expected test/good and test/<defect type>")


def test_a_split_that_is_only_scored_needs_no_training_images(tmp_path: Path) -> None:
    """`rd2t evaluate` scores test/ only, so a folder without train/ is read for it, in every layout that
    names its training folder, and still refused for training."""
    make_mvtec(tmp_path, "bottle")
    full = mvtec(tmp_path, "bottle")
    shutil.rmtree(tmp_path / "bottle" / "train")
    with pytest.raises(InputError, match="expected train/good"):
        mvtec(tmp_path, "bottle")
    scored = open_dataset("mvtec", tmp_path, "bottle", training=False)
    assert scored.train == [] and scored.test == full.test and scored.has_masks == full.has_masks
    assert scored.name == full.name

    # the auto-detected folder layout: test/<group>/ alone
    folder_root = tmp_path / "part"
    write_image(folder_root / "test" / "good" / "1.png")
    write_image(folder_root / "test" / "scratch" / "2.png")
    with pytest.raises(InputError, match="expected train/good/, train/ or image files"):
        open_dataset("folder", folder_root, None)
    scored = open_dataset("folder", folder_root, None, training=False)
    assert scored.train == [] and scored.name == "folder/part"
    assert [(s.label, s.defect_type) for s in scored.test] == [(0, "good"), (1, "scratch")]

    (tmp_path / "nothing").mkdir()
    with pytest.raises(InputError) as error:
        open_dataset("folder", tmp_path / "nothing", None, training=False)
    expected = "expected test/<good or defect type>/ folders (folder layout)"
    assert one_line(error) == f"{tmp_path / 'nothing'}: {expected}"


def test_corrupt_mask_reported_by_reader(tmp_path: Path) -> None:
    base = make_mvtec(tmp_path)
    bad = base / "ground_truth" / "crack" / "000_mask.png"
    bad.write_bytes(b"\x89PNG garbage")
    with pytest.raises(InputError) as error:
        mvtec(tmp_path, "widget")
    assert one_line(error).startswith(f"{bad}: cannot read mask")


# ------------------------------------------------------------------------------------------ BTAD


def make_btad(root: Path, product: str, mask_ext: str) -> Path:
    base = root / product
    for i in range(4):
        write_image(base / "train" / "ok" / f"{i:04d}.bmp")
    for i in range(2):
        write_image(base / "test" / "ok" / f"{i:04d}.bmp")
    for i in range(3):
        write_image(base / "test" / "ko" / f"{i:04d}.bmp")
        write_mask(base / "ground_truth" / "ko" / f"{i:04d}{mask_ext}")
    return base


@pytest.mark.parametrize(("product", "mask_ext"), [("01", ".png"), ("03", ".bmp")])
def test_btad_reader(tmp_path: Path, product: str, mask_ext: str) -> None:
    base = make_btad(tmp_path, product, mask_ext)
    split = btad(tmp_path, product)
    assert split.name == f"btad/{product}" and split.has_masks
    assert len(split.train) == 4 and len(split.test) == 5
    defective = [s for s in split.test if s.label == 1]
    assert len(defective) == 3 and {s.defect_type for s in defective} == {"ko"}
    assert all(s.mask_path == base / "ground_truth" / "ko" / f"{s.path.stem}{mask_ext}" for s in defective)
    assert {s.defect_type for s in split.test if s.label == 0} == {"good"}


def test_btad_wrong_layout(tmp_path: Path) -> None:
    make_mvtec(tmp_path, "01")
    with pytest.raises(InputError) as error:
        btad(tmp_path, "01")
    assert one_line(error) == f"{tmp_path / '01'}: expected train/ok (BTAD layout)"


# ------------------------------------------------------------------------------------------ VisA


def make_visa(root: Path) -> Path:
    rows = ["object,split,label,image,mask"]
    for category in ("candle", "pcb1"):
        data = root / category / "Data"
        for i in range(5):
            write_image(data / "Images" / "Normal" / f"{i:04d}.JPG")
            split = "train" if i < 3 else "test"
            rows.append(f"{category},{split},normal,{category}/Data/Images/Normal/{i:04d}.JPG,")
        for i in range(2):
            write_image(data / "Images" / "Anomaly" / f"{i:03d}.JPG")
            write_mask(data / "Masks" / "Anomaly" / f"{i:03d}.png")
            rows.append(
                f"{category},test,anomaly,{category}/Data/Images/Anomaly/{i:03d}.JPG,"
                f"{category}/Data/Masks/Anomaly/{i:03d}.png"
            )
    (root / "split_csv").mkdir(parents=True)
    (root / "split_csv" / "1cls.csv").write_text("\n".join(rows) + "\n")
    return root


def test_visa_reader(tmp_path: Path) -> None:
    make_visa(tmp_path)
    split = visa(tmp_path, "pcb1")
    assert split.name == "visa/pcb1" and split.has_masks
    assert len(split.train) == 3 and len(split.test) == 4
    assert all("pcb1" in s.path.parts for s in split.train + split.test)
    defective = [s for s in split.test if s.label == 1]
    assert len(defective) == 2 and {s.defect_type for s in defective} == {"anomaly"}
    assert all(s.mask_path == tmp_path / "pcb1/Data/Masks/Anomaly" / f"{s.path.stem}.png" for s in defective)


def test_visa_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError) as error:
        visa(tmp_path, "pcb1")
    assert one_line(error).startswith(f"{tmp_path}: expected split_csv/1cls.csv")

    make_visa(tmp_path)
    with pytest.raises(InputError) as error:
        visa(tmp_path, "pcb9")
    assert "candle, pcb1" in one_line(error)

    csv_path = tmp_path / "split_csv" / "1cls.csv"
    csv_path.write_text(csv_path.read_text().replace("pcb1,test,anomaly", "pcb1,test,broken", 1))
    with pytest.raises(InputError) as error:
        visa(tmp_path, "pcb1")
    assert one_line(error).startswith(f"{csv_path}:") and "broken" in str(error.value)

    (tmp_path / "candle/Data/Images/Normal/0000.JPG").unlink()
    with pytest.raises(InputError) as error:
        visa(tmp_path, "candle")
    assert one_line(error).startswith(f"{tmp_path / 'candle/Data/Images/Normal/0000.JPG'}: image listed in")

    csv_path.write_text("object,split,image\n")
    with pytest.raises(InputError, match="missing column"):
        visa(tmp_path, "candle")


# ------------------------------------------------------------------------------------------ MVTec 3D-AD


def test_mvtec3d_reader(tmp_path: Path) -> None:
    base = tmp_path / "bagel"
    for i in range(3):
        write_image(base / "train" / "good" / "rgb" / f"{i:03d}.png")
        (base / "train" / "good" / "xyz").mkdir(parents=True, exist_ok=True)
        (base / "train" / "good" / "xyz" / f"{i:03d}.tiff").write_bytes(b"not read")
    write_image(base / "test" / "good" / "rgb" / "000.png")
    write_mask(base / "test" / "good" / "gt" / "000.png", box=(0, 0, 0, 0))
    for i in range(2):
        write_image(base / "test" / "hole" / "rgb" / f"{i:03d}.png")
        write_mask(base / "test" / "hole" / "gt" / f"{i:03d}.png")
    split = mvtec3d(tmp_path, "bagel")
    assert split.name == "mvtec3d/bagel" and split.has_masks
    assert len(split.train) == 3 and len(split.test) == 3
    good = [s for s in split.test if s.label == 0]
    assert len(good) == 1 and good[0].mask_path is None
    assert all(s.mask_path == base / "test/hole/gt" / s.path.name for s in split.test if s.label == 1)


# ------------------------------------------------------------------------------------------ folder


def test_folder_with_masks_in_subfolders_and_flat(tmp_path: Path) -> None:
    write_image(tmp_path / "ok" / "a.png")
    write_image(tmp_path / "ok" / "b.png")
    write_image(tmp_path / "good_test" / "c.png")
    write_image(tmp_path / "dent" / "d1.png")
    write_image(tmp_path / "scuff" / "s1.jpg")
    write_mask(tmp_path / "masks" / "dent" / "d1_mask.png")
    write_mask(tmp_path / "masks" / "s1.bmp")
    split = folder(
        tmp_path / "ok", tmp_path / "good_test", [tmp_path / "dent", tmp_path / "scuff"], tmp_path / "masks"
    )
    assert split.has_masks and len(split.train) == 2 and len(split.test) == 3
    by_type = {s.defect_type: s for s in split.test}
    assert by_type["dent"].mask_path == tmp_path / "masks" / "dent" / "d1_mask.png"
    assert by_type["scuff"].mask_path == tmp_path / "masks" / "s1.bmp"
    assert by_type["good"].label == 0


def test_folder_without_masks_is_image_level_only(tmp_path: Path) -> None:
    write_image(tmp_path / "train" / "a.png")
    write_image(tmp_path / "bad" / "x.png")
    split = folder(tmp_path / "train", test_defect_dirs=[tmp_path / "bad"])
    assert not split.has_masks and [s.label for s in split.test] == [1]


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError) as error:
        folder(tmp_path / "missing")
    assert one_line(error) == f"{tmp_path / 'missing'}: training folder not found"
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError) as error:
        folder(tmp_path / "empty")
    assert one_line(error).startswith(f"{tmp_path / 'empty'}: no training images")
    write_image(tmp_path / "train" / "a.png")
    with pytest.raises(InputError, match="defective images not found"):
        folder(tmp_path / "train", test_defect_dirs=[tmp_path / "nope"])
    write_image(tmp_path / "bad" / "x.png")
    stray = write_mask(tmp_path / "masks" / "y.png")
    with pytest.raises(InputError) as error:
        folder(tmp_path / "train", test_defect_dirs=[tmp_path / "bad"], mask_dir=tmp_path / "masks")
    text = one_line(error)
    assert text.startswith(f"{stray}: mask has no matching image") and str(tmp_path / "bad" / "y.png") in text


def test_labelled_defects_by_type_with_masks_or_image_labels_only(tmp_path: Path) -> None:
    """`rd2t train --val-defects DIR`: <type>/ folders (or loose images), masks in ground_truth/."""
    root = tmp_path / "val"
    write_image(root / "dent" / "d1.png")
    write_image(root / "dent" / "d2.png")
    write_image(root / "loose.png")
    write_mask(root / "ground_truth" / "dent" / "d1_mask.png")
    write_mask(root / "ground_truth" / "d2.png")  # flat, <stem>.*
    write_mask(root / "ground_truth" / "loose_mask.png")
    split = labelled_defects(root)
    assert split.has_masks and not split.train and [s.label for s in split.test] == [1, 1, 1]
    by_name = {s.path.name: s for s in split.test}
    assert by_name["d1.png"].mask_path == root / "ground_truth" / "dent" / "d1_mask.png"
    assert by_name["d2.png"].mask_path == root / "ground_truth" / "d2.png"
    assert by_name["loose.png"].defect_type == "val" and by_name["d1.png"].defect_type == "dent"
    bare = tmp_path / "bare"
    write_image(bare / "scuff" / "s.jpg")
    assert not labelled_defects(bare).has_masks  # image labels only: not an error


def test_labelled_defects_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(InputError) as error:
        labelled_defects(tmp_path / "missing")
    assert one_line(error) == f"{tmp_path / 'missing'}: folder of labelled defects not found"
    (tmp_path / "empty" / "ground_truth").mkdir(parents=True)
    with pytest.raises(InputError) as error:
        labelled_defects(tmp_path / "empty")
    assert one_line(error).startswith(f"{tmp_path / 'empty'}: no images")
    good = write_image(tmp_path / "withgood" / "good" / "g.png").parent
    write_image(tmp_path / "withgood" / "dent" / "d.png")
    with pytest.raises(InputError) as error:
        labelled_defects(tmp_path / "withgood")
    assert one_line(error).startswith(f"{good}: good images among the labelled defects")
    root = tmp_path / "partial"
    write_image(root / "dent" / "a.png")
    missing = write_image(root / "dent" / "b.png")
    write_mask(root / "ground_truth" / "dent" / "a_mask.png")
    with pytest.raises(InputError) as error:
        labelled_defects(root)
    assert one_line(error).startswith(f"{missing}: defective image has no mask")


# ------------------------------------------------------------------------------------------ open_dataset


def test_open_dataset_kinds(tmp_path: Path) -> None:
    make_mvtec(tmp_path, "bottle")
    assert open_dataset("mvtec", tmp_path, "bottle").name == "mvtec/bottle"
    assert open_dataset("MPDD", tmp_path, "bottle").name == "mpdd/bottle"
    with pytest.raises(InputError, match="category is required"):
        open_dataset("mvtec", tmp_path, None)
    with pytest.raises(InputError, match="unknown dataset kind 'kaggle'"):
        open_dataset("kaggle", tmp_path, "bottle")


def test_open_dataset_folder_autodetect(tmp_path: Path) -> None:
    make_mvtec(tmp_path, "bottle")
    split = open_dataset("folder", tmp_path / "bottle", None)
    assert split.name == "folder/bottle" and split.has_masks and (len(split.train), len(split.test)) == (3, 5)
    assert open_dataset("folder", tmp_path, "bottle").has_masks

    plain = tmp_path / "mine"
    write_image(plain / "train" / "0.png")
    write_image(plain / "test" / "ok" / "1.png")
    write_image(plain / "test" / "ko" / "2.png")
    split = open_dataset("folder", plain, None)
    assert [(s.label, s.defect_type) for s in split.test] == [(0, "good"), (1, "ko")] and not split.has_masks

    only_good = tmp_path / "goods"
    write_image(only_good / "0.png")
    write_image(only_good / "1.png")
    split = open_dataset("folder", only_good, None)
    assert len(split.train) == 2 and split.test == [] and not split.has_masks

    (tmp_path / "nothing").mkdir()
    with pytest.raises(InputError) as error:
        open_dataset("folder", tmp_path / "nothing", None)
    assert one_line(error).startswith(f"{tmp_path / 'nothing'}: expected train/good/, train/ or image files")


def test_dataset_category_lists() -> None:
    assert {k: len(v) for k, v in DATASETS.items()} == {
        "mvtec": 15,
        "btad": 3,
        "visa": 12,
        "mpdd": 6,
        "mvtec_ad2": 8,
        "mvtec3d": 10,
    }
    assert (
        "metal_nut" in DATASETS["mvtec"]
        and "pipe_fryum" in DATASETS["visa"]
        and "cable_gland" in DATASETS["mvtec3d"]
    )


# ------------------------------------------------------------------------------------------ real data


def real_data_dir() -> Path:
    env = os.environ.get("RD2T_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


def test_real_data_splits() -> None:
    data = real_data_dir()
    if not (data / "mvtec_ad" / "bottle").is_dir() or not (data / "hazelnut_toy").is_dir():
        pytest.skip(f"real data not found under {data} (set RD2T_DATA)")
    for split, counts in (
        (mvtec(data / "mvtec_ad", "bottle"), (209, 83, 63)),
        (mvtec(data, "hazelnut_toy"), (28, 23, 17)),
        (open_dataset("folder", data / "hazelnut_toy", None), (28, 23, 17)),
    ):
        masked = sum(s.mask_path is not None for s in split.test)
        assert (len(split.train), len(split.test), masked) == counts, split.name
        assert split.has_masks
        defective = next(s for s in split.test if s.label == 1)
        image = load_image(defective.path)
        assert defective.mask_path is not None
        mask = load_mask(defective.mask_path, image.size, image_path=defective.path)
        assert mask.shape == (image.size[1], image.size[0]) and 0 < mask.mean() < 0.5
