"""Tiled high-resolution mode: the grid, the stitching, training and inference through `rd2t train --tile`,
the ONNX export. One tiny tiled model (64 px tiles, 1 epoch) is trained once for the module."""

from __future__ import annotations

import io
import json
import tarfile
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from rd2t.cli import main
from rd2t.config import Config, resolve
from rd2t.errors import ConfigError
from rd2t.inference.predictor import Predictor
from rd2t.inference.tiling import Stitcher, Tiler, starts


@pytest.mark.parametrize("length", [1, 63, 64, 65, 100, 113, 127, 128, 200, 1000])
@pytest.mark.parametrize("tile,stride", [(64, 48), (64, 64), (64, 17), (32, 32)])
def test_grid_covers_every_pixel_with_real_crops(length, tile, stride):
    s = starts(length, tile, stride)
    assert s[0] == 0 and s == sorted(set(s))
    if length <= tile:
        assert s == [0]  # one (padded) tile
        return
    assert s[-1] == length - tile  # the last tile is flush with the border: no padding
    assert all(b - a <= stride for a, b in zip(s, s[1:], strict=False))
    cover = np.zeros(length, int)
    for a in s:
        cover[a : a + tile] += 1
    assert cover.min() >= 1


def stitch(tiler: Tiler, image_hw: tuple[int, int], tile_map, max_pixels: int = 10**9) -> np.ndarray:
    """Stitch the tile maps that `tile_map(y, x)` gives for every grid position of an (h, w) image."""
    h, w = image_hw
    stitcher = Stitcher(h, w, tiler, max_pixels)
    for positions, tiles in tiler.tiles(torch.zeros(3, h, w, dtype=torch.uint8), 7):
        assert tiles.shape[1:] == (3, tiler.tile, tiler.tile)
        stitcher.add(positions, np.stack([tile_map(y, x) for y, x in positions]))
    return stitcher.result()


@pytest.mark.parametrize("hw", [(100, 150), (64, 64), (30, 20), (257, 129)])
def test_stitching_a_constant_gives_the_constant_without_seams(hw):
    out = stitch(Tiler(64, 48), hw, lambda y, x: np.full((64, 64), 2.5, np.float32))
    assert out.shape == hw
    np.testing.assert_allclose(out, 2.5, rtol=1e-5)


def test_stitching_crops_of_one_map_gives_that_map_back():
    """Tiles that agree where they overlap (crops of one global map) stitch into exactly that map."""
    rng = np.random.default_rng(0)
    full = rng.random((150, 190)).astype(np.float32)
    out = stitch(Tiler(64, 40), full.shape, lambda y, x: full[y : y + 64, x : x + 64])
    np.testing.assert_allclose(out, full, rtol=1e-5, atol=1e-6)


def test_huge_images_get_a_reduced_map_of_bounded_size():
    stitcher = Stitcher(20_000, 30_000, Tiler(256, 192), max_pixels=4_000_000)  # 600 megapixels
    assert stitcher.factor == 16 and stitcher.sum.size <= 4_000_000
    out = stitch(
        Tiler(64, 48), (700, 500), lambda y, x: np.full((64, 64), 1.5, np.float32), max_pixels=100_000
    )
    assert out.shape == (350, 250)  # factor 2
    np.testing.assert_allclose(out, 1.5, rtol=1e-5)


def test_config_validates_tiling_and_cli_style_settings():
    c = resolve("offline", assignments=["tile=128", "scale=0.5"])
    assert (c.tile, c.image_size, c.stride, c.scale) == (128, 128, 96, 0.5)
    assert Config().tile == 0
    for bad in (["tile=100"], ["tile=64", "stride=65"], ["tile=64", "scale=0"], ["scale=1.5"]):
        with pytest.raises(ConfigError):
            resolve("offline", assignments=bad)
    with pytest.raises(ConfigError, match="image_size"):
        resolve("offline", assignments=["tile=64", "image_size=96"])


@pytest.fixture(scope="module")
def tiled_model(texture_set, tmp_path_factory):
    out = tmp_path_factory.mktemp("tiled")
    args = ["train", str(texture_set), "--out", str(out), "--epochs", "1", "--batch-size", "8"]
    args += ["--tile", "64", "--stride", "48", "--scale", "0.9", "--device", "cpu", "--val-fraction", "0.2"]
    assert main(args) == 0
    return out / "model.pt"


def test_tiled_training_calibrates_on_tiled_held_out_images(tiled_model):
    from rd2t.model.checkpoint import Checkpoint

    ckpt = Checkpoint.load(tiled_model)
    c = ckpt.config
    assert (c.tile, c.stride, c.scale, c.image_size) == (64, 48, 0.9, 64)
    assert len(ckpt.val_files) == 5 and len(ckpt.calibration.scores) == 5
    # The calibration scores are what `predict` gives those images: the same tiled path.
    predictor = Predictor.open(tiled_model)
    again = [p.score for p in predictor.predict(ckpt.val_files)]
    np.testing.assert_allclose(again, ckpt.calibration.scores, rtol=1e-5)


def test_tiled_prediction_has_maps_at_the_image_size(tiled_model, texture_set):
    predictor = Predictor.open(tiled_model)
    path = sorted((texture_set / "test" / "stain").glob("*.png"))[0]
    p = predictor.predict_one(path)
    assert p.model_map.shape == (86, 86)  # 96 px * scale 0.9
    assert p.anomaly_map.shape == (96, 96) and p.score == pytest.approx(float(p.model_map.max()))
    rng = np.random.default_rng(1)
    wide = predictor.predict_one(rng.integers(0, 255, (70, 203, 3), dtype=np.uint8))  # not multiples
    assert wide.anomaly_map.shape == (70, 203) and np.isfinite(wide.anomaly_map).all()
    small = predictor.predict_one(Image.new("RGB", (20, 12), (120, 110, 100)))  # smaller than one tile
    assert small.anomaly_map.shape == (12, 20) and np.isfinite(small.score)


def test_tiled_onnx_export_gives_the_torch_maps_and_keeps_threshold(tiled_model, tmp_path):
    from rd2t.inference.export import EXPORT_TOLERANCE

    onnx_path = tmp_path / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["export", str(tiled_model), "--out", str(onnx_path)]) == 0
    torch_p, onnx_p = Predictor.open(tiled_model), Predictor.open(onnx_path)
    assert onnx_p.config.tile == 64 and onnx_p.config.stride == 48 and onnx_p.config.scale == 0.9
    assert onnx_p.threshold == torch_p.threshold and onnx_p.calibration.scores == torch_p.calibration.scores
    sidecar = json.loads(onnx_path.with_suffix(".json").read_text())
    assert sidecar["config"]["tile"] == 64 and "64x64 tiles every 48 px" in sidecar["tiling"]
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 255, (150, 110, 3), dtype=np.uint8), np.full((40, 40, 3), 90, np.uint8)]
    for a, b in zip(torch_p.predict(images), onnx_p.predict(images), strict=True):
        scale = max(1.0, float(np.abs(a.model_map).max()))
        assert a.model_map.shape == b.model_map.shape
        assert np.abs(a.model_map - b.model_map).max() <= EXPORT_TOLERANCE * scale
        assert abs(a.score - b.score) <= EXPORT_TOLERANCE * scale


def _png(size: tuple[int, int], value: int = 128, mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, value if mode == "L" else (value,) * 3).save(buffer, format="PNG")
    return buffer.getvalue()


def test_mvtec_ad2_download_and_reader_on_a_generated_archive(tmp_path):
    """`rd2t download mvtec_ad2` unpacks the archive's layout and the reader gives train, validation, test
    (test_public) and masks; test_private is ignored. Served by a stub opener, never the internet."""
    from rd2t.data.datasets import open_dataset
    from rd2t.data.download import SOURCES, download

    files = {
        "mvtec_ad_2/can/train/good/000_regular.png": _png((96, 64)),
        "mvtec_ad_2/can/train/good/001_regular.png": _png((96, 64)),
        "mvtec_ad_2/can/validation/good/000_regular.png": _png((96, 64)),
        "mvtec_ad_2/can/test_public/good/000_regular.png": _png((96, 64)),
        "mvtec_ad_2/can/test_public/bad/000_regular.png": _png((96, 64), 30),
        "mvtec_ad_2/can/test_public/bad/001_overexposed.png": _png((96, 64), 30),
        "mvtec_ad_2/can/test_public/ground_truth/bad/000_regular_mask.png": _png((96, 64), 255, "L"),
        "mvtec_ad_2/can/test_public/ground_truth/bad/001_overexposed_mask.png": _png((96, 64), 255, "L"),
        "mvtec_ad_2/can/test_private/000_regular.png": _png((96, 64)),
    }
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    archive = buffer.getvalue()
    requested = []

    class Response(io.BytesIO):
        status = 200
        headers = {"Content-Length": str(len(archive))}

    def opener(request, timeout=0):
        requested.append(request.full_url)
        return Response(archive)

    root = download("mvtec_ad2", tmp_path, opener=opener, progress=False)
    assert requested == [SOURCES["mvtec_ad2"].url] and (root / "can").is_dir()
    split = open_dataset("mvtec_ad2", root, "can")
    assert split.name == "mvtec_ad2/can" and split.has_masks
    assert [s.path.name for s in split.train] == ["000_regular.png", "001_regular.png"]
    assert [s.path.parent.name for s in split.validation] == ["good"]
    assert sorted((s.label, s.path.name) for s in split.test) == [
        (0, "000_regular.png"),
        (1, "000_regular.png"),
        (1, "001_overexposed.png"),
    ]
    assert all(s.mask_path.name == s.path.stem + "_mask.png" for s in split.test if s.label)
