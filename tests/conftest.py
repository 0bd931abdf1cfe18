"""Shared fixtures: small generated image sets (never copied data) and the real-data location."""

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def real_data_root() -> Path:
    """../shared/data beside the project (or RD2T_DATA); tests using it skip when it is absent."""
    return Path(os.environ.get("RD2T_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A striped, slightly noisy industrial-looking texture with a random phase."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi)
    base = 0.5 + 0.25 * np.sin(2 * np.pi * xx / 8 + phase) * np.cos(2 * np.pi * yy / 16)
    img = base[..., None] * np.array([0.9, 0.8, 0.7], np.float32) + rng.normal(0, 0.02, (size, size, 1))
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def paint_defect(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    size = img.shape[0]
    cy, cx = rng.integers(size // 4, 3 * size // 4, 2)
    r = size // 10
    yy, xx = np.mgrid[0:size, 0:size]
    mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    out = img.copy()
    out[mask] = np.array([200, 40, 30], np.uint8)  # a red stain
    return out, mask


@pytest.fixture(scope="session", autouse=True)
def _backend_choice_cache(tmp_path_factory):
    """`--backend auto` records its measurements in a user cache; tests keep theirs out of the home folder."""
    os.environ["RD2T_CACHE_DIR"] = str(tmp_path_factory.mktemp("rd2t-cache"))


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory) -> Path:
    """Where browser tests write their screenshots, to be looked at (RD2T_SCREENSHOTS, or a tmp folder)."""
    folder = Path(os.environ.get("RD2T_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="session")
def texture_set(tmp_path_factory):
    """MVTec-layout tree: 24 good train, 6 good test, 6 stained test images with masks (96 px)."""
    root = tmp_path_factory.mktemp("texture") / "stripes"
    rng = np.random.default_rng(0)
    for sub in ("train/good", "test/good", "test/stain", "ground_truth/stain"):
        (root / sub).mkdir(parents=True)
    for i in range(24):
        Image.fromarray(texture(rng, 96)).save(root / f"train/good/{i:03d}.png")
    for i in range(6):
        Image.fromarray(texture(rng, 96)).save(root / f"test/good/{i:03d}.png")
        bad, mask = paint_defect(texture(rng, 96), rng)
        Image.fromarray(bad).save(root / f"test/stain/{i:03d}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / f"ground_truth/stain/{i:03d}_mask.png")
    return root


@pytest.fixture(scope="session")
def trained_cli_model(texture_set, tmp_path_factory) -> Path:
    """A small model trained once per test session through `rd2t train` (2 epochs, 64 px, CPU)."""
    from rd2t.cli import main

    out = tmp_path_factory.mktemp("model") / "run"
    args = ["train", str(texture_set), "--out", str(out), "--epochs", "2", "--image-size", "64"]
    assert main([*args, "--batch-size", "4", "--device", "cpu"]) == 0
    return out / "model.pt"
