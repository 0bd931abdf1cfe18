"""Issue 14: give an already trained model a memory bank, exactly as training with --set memory_bank=F would.

The bank and its z-scores depend only on the frozen teachers, the trained student and the checkpoint's own
training / held-out files, so fitting them after training gives the model `rd2t train --set memory_bank=F`
would have given (same files, same steps as the end of training.loop.train), without retraining the student.
The result is an ordinary checkpoint: `rd2t evaluate` scores it through the usual inference path.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/memory_bank.py runs/mt/offline_s0/model.pt \
        --share 0.01 --out runs/mt/offline_s0_mb/model.pt
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from rd2t.model.checkpoint import Checkpoint
from rd2t.model.network import RD2T
from rd2t.training.loop import calibrate, fit_memory_bank, load_training_images


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--share", type=float, default=0.01, help="config.memory_bank")
    ap.add_argument("--bank-weight", type=float, default=-1.0, help="config.bank_weight (-1: pseudo-defects)")
    stride_help = "config.bank_stride: 8, 4 or 0 = chosen (default: the model's)"
    ap.add_argument("--bank-stride", type=int, default=None, help=stride_help)
    ap.add_argument("--bank-scale", choices=["std", "max"], help="config.bank_scale (default: the model's)")
    ap.add_argument("--bank-combine", choices=["sum", "max"], help="config.bank_combine (default: model's)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    t0 = time.time()
    ckpt = Checkpoint.load(a.model)
    stride = ckpt.config.bank_stride if a.bank_stride is None else a.bank_stride
    scale = a.bank_scale or ckpt.config.bank_scale
    combine = a.bank_combine or ckpt.config.bank_combine
    config = ckpt.config.replace(
        memory_bank=a.share,
        bank_weight=a.bank_weight,
        bank_stride=stride,
        bank_scale=scale,
        bank_combine=combine,
        device="cpu",
    )
    model = RD2T(config, pretrained=False)
    missing, unexpected = model.load_state_dict(ckpt.weights, strict=False)
    assert not unexpected and all(k.startswith("memory_bank.") for k in missing), (missing, unexpected)
    size = config.image_size
    images, _ = load_training_images([Path(p) for p in ckpt.train_files], size, False)
    held_out, _ = load_training_images([Path(p) for p in ckpt.val_files], size, False)
    t1 = time.time()
    with torch.no_grad():
        fit_memory_bank(model, images, held_out, None, config.batch_size)
    fit_s = time.time() - t1
    calibration = calibrate(model, held_out, config.threshold_rule, "validation", config.batch_size)
    Checkpoint(
        model.config,  # the stride chosen, with bank_stride 0
        model.state_dict(),
        ckpt.epoch,
        ckpt.history,
        ckpt.train_files,
        ckpt.val_files,
        True,
        calibration,
    ).save(a.out)
    print(
        f"{a.out}: {len(model.memory_bank.patches)} stride-{model.config.bank_stride} patches kept "
        f"({len(images) * (size // 8) ** 2} stride-8 patches in the training images), "
        f"fitted in {fit_s:.0f}s (total {time.time() - t0:.0f}s); z-scores "
        f"{[round(v, 4) for v in model.memory_bank.zscore.tolist()]}; weights "
        f"{[round(v, 2) for v in model.memory_bank.weights.tolist()]}; threshold {calibration.threshold:.3f}"
    )


if __name__ == "__main__":
    main()
