"""The plain model inside a model with a memory bank: the same student and teachers, the bank removed and the
threshold re-calibrated on the checkpoint's own held-out images (tiled when the model is tiled), so `rd2t
evaluate` tells what the bank adds without retraining. The counterpart of benchmarks/memory_bank.py, which
adds a bank to a plain model (and works on untiled models only).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/drop_bank.py runs/mt/tile256_s0/model.pt \
        --out runs/mt/tile256_s0_plain/model.pt
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rd2t.inference.tiling import Tiler
from rd2t.model.checkpoint import Checkpoint
from rd2t.model.network import RD2T
from rd2t.training.loop import calibrate, load_training_images


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="a checkpoint with a fitted memory bank")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    ckpt = Checkpoint.load(a.model)
    config = ckpt.config.replace(memory_bank=0.0, device="cpu")
    model = RD2T(config, pretrained=False)
    _, unexpected = model.load_state_dict(ckpt.weights, strict=False)
    assert all(k.startswith("memory_bank.") for k in unexpected), unexpected
    model.eval()
    val = [Path(p) for p in ckpt.val_files]
    held_out = val if Tiler.of(config) else load_training_images(val, config.image_size, False)[0]
    calibration = calibrate(model, held_out, config.threshold_rule, "validation", config.batch_size)
    files = (ckpt.train_files, ckpt.val_files)
    Checkpoint(config, model.state_dict(), ckpt.epoch, ckpt.history, *files, True, calibration).save(a.out)
    print(f"{a.out}: bank dropped ({len(unexpected)} tensors), threshold {calibration.threshold:.3f}")


if __name__ == "__main__":
    main()
