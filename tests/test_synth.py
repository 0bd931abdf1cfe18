"""Tests for the synthetic demo dataset (rd2t.runners.synth): determinism, layout, masks, variation, reuse."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from rd2t.errors import InputError
from rd2t.runners import synth

SMALL = {"size": 64, "n_train": 3, "n_test_good": 2, "n_test_per_defect": 1}


def _gray(img: np.ndarray) -> np.ndarray:
    return img.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synth.make_dataset(tmp_path_factory.mktemp("synth") / "ds", seed=3, **SMALL)


def test_catalogue_has_textures_an_object_and_all_defects() -> None:
    assert set(synth.DEFECTS) == {"scratch", "crack", "hole", "stain", "missing"}
    assert len(synth.CATEGORIES) >= 3
    assert len(set(synth.CATEGORIES)) == len(synth.CATEGORIES)
    assert any(c in synth._OBJECTS for c in synth.CATEGORIES)
    assert sum(c not in synth._OBJECTS for c in synth.CATEGORIES) >= 2


@pytest.mark.parametrize("category", synth.CATEGORIES)
def test_render_good_is_an_rgb_image_reproducible_from_the_generator(category: str) -> None:
    a = synth.render_good(category, np.random.default_rng(5), 96)
    b = synth.render_good(category, np.random.default_rng(5), 96)
    c = synth.render_good(category, np.random.default_rng(6), 96)
    assert a.shape == (96, 96, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert np.abs(a.astype(int) - c.astype(int)).mean() > 2.0
    # Not a flat or saturated picture: real texture within the sensor range.
    gray = _gray(a)
    assert 40.0 < gray.mean() < 210.0
    assert gray.std() > 5.0
    assert (a == 255).mean() < 0.01


@pytest.mark.parametrize("category", synth.CATEGORIES)
def test_good_images_vary_but_share_statistics(category: str) -> None:
    imgs = [synth.render_good(category, np.random.default_rng(100 + i), 128) for i in range(6)]
    grays = [_gray(im) for im in imgs]
    # Variation: no two good images are (nearly) the same picture.
    for i in range(len(grays)):
        for j in range(i + 1, len(grays)):
            assert np.abs(grays[i] - grays[j]).mean() > 3.0, (i, j)
    # ...but they come from one distribution: similar brightness, contrast and colour.
    means = np.array([g.mean() for g in grays])
    stds = np.array([g.std() for g in grays])
    colours = np.array([im.reshape(-1, 3).mean(0) for im in imgs])
    assert means.max() - means.min() < 15.0
    assert stds.max() / stds.min() < 1.6
    assert np.abs(colours - colours.mean(0)).max() < 15.0


def test_object_is_jittered_in_position() -> None:
    centres = []
    for i in range(5):
        img = synth.render_good("washer", np.random.default_rng(i), 128)
        centres.append(ndimage.center_of_mass(_gray(img) > 100))
    spread = np.ptp(np.array(centres), axis=0)
    assert spread.max() > 1.0  # the feeder does not place the part on the same pixel every time
    assert spread.max() < 128 * 0.1  # ...but it stays centred


@pytest.mark.parametrize("category", synth.CATEGORIES)
@pytest.mark.parametrize("defect", synth.DEFECTS)
def test_mask_covers_exactly_the_visible_defect(category: str, defect: str) -> None:
    for seed in range(3):
        rng = np.random.default_rng([seed, 17])
        good = synth.render_good(category, rng, 128)
        bad, mask = synth.paint_defect(good, defect, rng, category)
        assert bad.shape == good.shape and bad.dtype == np.uint8
        assert mask.shape == good.shape[:2] and mask.dtype == bool
        area = mask.mean()
        assert 0.005 <= area <= 0.20, (seed, area)
        delta = np.abs(_gray(bad) - _gray(good))
        changed = delta > 10.0
        assert changed.sum() >= 0.2 * mask.sum(), "defect is not visible"
        # Recall: the mask covers what changed.
        assert (changed & mask).sum() >= 0.9 * changed.sum(), (seed, (changed & mask).sum(), changed.sum())
        # Precision: the mask is the defect plus at most an annotation fringe, not a box around it.
        assert (delta[mask] > 3.0).mean() > 0.4, seed
        # One defect (a scratch may be a few strokes, cut by the washer's bore), not scattered specks.
        _, n_parts = ndimage.label(mask)
        assert n_parts <= (6 if defect == "scratch" else 2), seed


@pytest.mark.parametrize("defect", synth.DEFECTS)
def test_object_defects_stay_on_the_object(defect: str) -> None:
    for seed in range(3):
        rng = np.random.default_rng([seed, 23])
        good = synth.render_good("washer", rng, 128)
        _, mask = synth.paint_defect(good, defect, rng, "washer")
        part = ndimage.binary_dilation(_gray(good) > 90, iterations=3)
        assert (mask & part).sum() >= 0.9 * mask.sum(), seed


def test_missing_on_object_exposes_background() -> None:
    rng = np.random.default_rng(4)
    good = synth.render_good("washer", rng, 128)
    bad, mask = synth.paint_defect(good, "missing", rng, "washer")
    background = np.median(_gray(good)[:6, :6])
    # Most of the removed chunk now looks like the mat, not like metal.
    assert np.median(_gray(bad)[mask]) < background + 30
    assert np.median(_gray(good)[mask]) > background + 60


def test_paint_defect_rejects_unknown_names() -> None:
    good = synth.render_good("wood", np.random.default_rng(0), 64)
    with pytest.raises(InputError):
        synth.paint_defect(good, "dent", np.random.default_rng(0), "wood")
    with pytest.raises(InputError):
        synth.render_good("marble", np.random.default_rng(0), 64)


def test_layout_is_mvtec(small_dataset: Path) -> None:
    root = small_dataset
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == sorted(synth.CATEGORIES)
    readme = (root / "README.txt").read_text()
    assert "SYNTHETIC" in readme and "seed: 3" in readme and f"version {synth.GENERATOR_VERSION}" in readme
    for category in synth.CATEGORIES:
        cat = root / category
        train = sorted((cat / "train" / "good").glob("*.png"))
        assert [p.name for p in train] == ["000.png", "001.png", "002.png"]
        assert len(list((cat / "test" / "good").glob("*.png"))) == 2
        assert sorted(p.name for p in (cat / "test").iterdir()) == sorted(("good", *synth.DEFECTS))
        for defect in synth.DEFECTS:
            images = sorted((cat / "test" / defect).glob("*.png"))
            masks = sorted((cat / "ground_truth" / defect).glob("*.png"))
            assert [p.stem + "_mask.png" for p in images] == [p.name for p in masks] == ["000_mask.png"]
            with Image.open(images[0]) as im:
                assert im.mode == "RGB" and im.size == (64, 64)
            with Image.open(masks[0]) as m:
                assert m.mode == "L" and m.size == (64, 64)
                values = np.asarray(m)
            assert set(np.unique(values)) <= {0, 255}
            assert 0.005 <= (values == 255).mean() <= 0.20
        with Image.open(train[0]) as im:
            assert im.mode == "RGB"
        stamp = json.loads((cat / synth.STAMP_NAME).read_text())
        assert stamp["seed"] == 3 and stamp["size"] == 64 and stamp["version"] == synth.GENERATOR_VERSION


def test_same_seed_gives_identical_bytes_and_other_seed_differs(small_dataset: Path, tmp_path: Path) -> None:
    again = synth.make_dataset(tmp_path / "again", seed=3, **SMALL)
    assert _digests(again) == _digests(small_dataset)
    other = _digests(synth.make_dataset(tmp_path / "other", seed=4, **SMALL))
    first = _digests(small_dataset)
    assert other.keys() == first.keys()
    pngs = [k for k in first if k.endswith(".png") and "ground_truth" not in k]
    assert all(other[k] != first[k] for k in pngs)


def test_second_call_reuses_the_stamped_dataset(tmp_path: Path) -> None:
    params = {**SMALL, "categories": ("wood", "washer")}
    root = synth.make_dataset(tmp_path / "ds", seed=1, **params)
    files = sorted(p for p in root.rglob("*") if p.is_file())
    before = {p: p.stat().st_mtime_ns for p in files}
    assert synth.make_dataset(root, seed=1, **params) == root
    assert {p: p.stat().st_mtime_ns for p in sorted(p for p in root.rglob("*") if p.is_file())} == before
    # A different parameter is a different dataset: that category is regenerated.
    synth.make_dataset(root, seed=1, **{**params, "n_train": 4})
    assert len(list((root / "wood" / "train" / "good").glob("*.png"))) == 4
    assert json.loads((root / "wood" / synth.STAMP_NAME).read_text())["n_train"] == 4
    assert not list(root.glob(".*.partial"))


def test_refuses_to_overwrite_a_folder_it_did_not_make(tmp_path: Path) -> None:
    foreign = tmp_path / "ds" / "wood" / "train" / "good"
    foreign.mkdir(parents=True)
    (foreign / "real_photo.png").write_bytes(b"not ours")
    with pytest.raises(InputError, match="not made by rd2t.runners.synth"):
        synth.make_dataset(tmp_path / "ds", categories=("wood",), **SMALL)
    assert (foreign / "real_photo.png").read_bytes() == b"not ours"
