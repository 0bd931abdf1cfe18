"""End to end on real photos (hazelnut_toy, CC BY 4.0) from ../shared/data; skipped when absent."""

import pytest

from rd2t.config import preset
from rd2t.data import mvtec
from rd2t.evaluation.evaluate import evaluate
from rd2t.inference.predictor import Predictor
from rd2t.training.loop import train

from .conftest import real_data_root


@pytest.mark.slow
def test_hazelnut_toy_trains_and_detects_real_defects(tmp_path):
    root = real_data_root()
    if not (root / "hazelnut_toy").is_dir():
        pytest.skip(f"{root}/hazelnut_toy not present")
    split = mvtec(root, "hazelnut_toy")  # masks named NN.png, without MVTec's _mask suffix
    assert split.has_masks
    cfg = preset("offline", epochs=6, image_size=128, batch_size=8, device="cpu")
    result = train(cfg, [s.path for s in split.train], tmp_path, progress=False)
    ev = evaluate(Predictor.from_model(result.model, result.calibration), split, progress=False)
    # Measured here: 1.000 / 0.984 / 0.926, 2 misses, 0 false alarms; the bounds leave room for other CPUs.
    assert ev.metrics["image_auroc"] >= 0.9
    assert ev.metrics["pixel_auroc"] >= 0.95
    assert ev.metrics["au_pro"] >= 0.85
    assert ev.metrics["misses"] <= 4 and ev.metrics["false_alarms"] <= 2
