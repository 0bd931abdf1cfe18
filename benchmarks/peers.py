"""Peer figures for the speed comparison: anomalib's Reverse Distillation and PatchCore torch models on CPU.

Same conditions as benchmarks/speed.py: one process, torch.set_num_threads(--threads), 256x256 inputs,
warm, torch.no_grad(), median of --runs timed calls at batch 1 and --runs16 at batch 16. Weights are
random (pre_trained=False: timing only, no hub download); the 209 "images" are smooth random tensors
(bottle's training-set size).

- rd_wrn50: anomalib ReverseDistillationModel, wide_resnet50_2, layers layer1-3, anomaly_map_mode "add"
  (anomalib's default); eval forward = anomaly map (cosine distance, upsampling, Gaussian blur) + score.
- patchcore_lite2: anomalib PatchcoreModel, tf_efficientnet_lite2, layers blocks.2/blocks.4 (= timm
  out_indices 2/3, strides 8/16, as layer2/layer3 for wide_resnet50_2), num_neighbors 9; memory bank filled
  from the 209 images (214,016 patches) then subsampled to --coreset-ratio of them (anomalib's default 0.1:
  21,401 x 168). Inference time depends on the bank's size only, so by default a random subset of that size
  is kept; `--coreset kcenter` runs anomalib's own k-center-greedy selection instead and its time lands in
  coreset_s (PatchCore's real fit cost; measured ~250 ms per selected patch from 214k on 2 busy cores:
  ~1.5 h at 0.1, ~9 min at 0.01).
- rd_train: one epoch of the RD torch model on the 209 images, batch 16, shuffled, ReverseDistillationLoss,
  Adam(decoder + bottleneck, lr 0.005, betas (0.5, 0.99)) as anomalib's configure_optimizers.

    bash benchmarks/peers_setup.sh
    .peer-venv/bin/python benchmarks/peers.py --threads 2 --json docs/measured/peers_cpu.json
    .peer-venv/bin/python benchmarks/peers.py --quick    # a check that it runs: 16 images, few repeats
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import warnings
from importlib.metadata import version
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # anomalib's coreset progress bar; read when torch imports tqdm
warnings.filterwarnings("ignore", category=FutureWarning)  # timm/anomalib deprecation notices on import
warnings.filterwarnings("ignore", category=DeprecationWarning)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from anomalib.models.image.patchcore.torch_model import PatchcoreModel  # noqa: E402
from anomalib.models.image.reverse_distillation.anomaly_map import AnomalyMapGenerationMode  # noqa: E402
from anomalib.models.image.reverse_distillation.loss import ReverseDistillationLoss  # noqa: E402
from anomalib.models.image.reverse_distillation.torch_model import ReverseDistillationModel  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

SIZE = 256
PATCHCORE_LAYERS = ("blocks.2", "blocks.4")


def median_seconds(fn, runs: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def conv_rate() -> float:
    """GFLOP/s of a large 3x3 convolution, as benchmarks/speed.py: is the machine the same and steady?"""
    conv = torch.nn.Conv2d(256, 256, 3, padding=1, bias=False).eval()
    x = torch.rand(8, 256, 64, 64)
    with torch.no_grad():
        s = median_seconds(lambda: conv(x), 10)
    return 2 * 8 * 256 * 256 * 9 * 64 * 64 / s / 1e9


def images(n: int) -> torch.Tensor:
    """Smooth random images: low-resolution noise upsampled, plus a little pixel noise."""
    g = torch.Generator().manual_seed(0)
    smooth = F.interpolate(torch.rand(n, 3, 16, 16, generator=g), size=(SIZE, SIZE), mode="bilinear")
    return smooth + 0.05 * torch.rand(n, 3, SIZE, SIZE, generator=g)


def rd_model() -> ReverseDistillationModel:
    return ReverseDistillationModel(
        backbone="wide_resnet50_2",
        input_size=(SIZE, SIZE),
        layers=["layer1", "layer2", "layer3"],
        anomaly_map_mode=AnomalyMapGenerationMode.ADD,
        pre_trained=False,
    )


def inference(model: torch.nn.Module, runs: int, runs16: int) -> dict:
    model.eval()
    x1, x16 = torch.rand(1, 3, SIZE, SIZE), torch.rand(16, 3, SIZE, SIZE)
    counter = FlopCounterMode(display=False)
    with torch.no_grad():
        with counter:
            out = model(x1)
        assert out.anomaly_map.shape[-2:] == (SIZE, SIZE) and out.pred_score.numel() == 1
        return {
            "gflops_per_image": counter.get_total_flops() / 1e9,
            "b1_ms": 1e3 * median_seconds(lambda: model(x1), runs),
            "b16_img_s": 16 / median_seconds(lambda: model(x16), runs16, warmup=1),
        }


def patchcore(data: torch.Tensor, ratio: float, coreset: str, runs: int, runs16: int) -> dict:
    torch.manual_seed(0)
    model = PatchcoreModel(layers=PATCHCORE_LAYERS, backbone="tf_efficientnet_lite2", pre_trained=False)
    assert model.feature_extractor.reductions == [8, 16], model.feature_extractor.reductions
    model.train()  # training mode: forward stores embeddings (the extractor itself stays in eval)
    t = time.perf_counter()
    with torch.no_grad():
        for batch in data.split(16):
            model(batch)
    extract_s = time.perf_counter() - t
    n_patches = sum(len(e) for e in model.embedding_store)
    t = time.perf_counter()
    if coreset == "kcenter":
        model.subsample_embedding(ratio)  # anomalib's own k-center-greedy, as Patchcore.fit() calls it
    else:
        bank = torch.vstack(model.embedding_store)
        model.embedding_store.clear()
        model.memory_bank = bank[torch.randperm(len(bank))[: int(len(bank) * ratio)]]
    row = {
        "layers": list(PATCHCORE_LAYERS),
        "patches": n_patches,
        "memory_bank": list(model.memory_bank.shape),
        "coreset": coreset,
        "coreset_ratio": ratio,
        "extract_s": extract_s,
        "coreset_s": time.perf_counter() - t,
    }
    return row | inference(model, runs, runs16)


def rd_train(data: torch.Tensor, epochs: int, batch: int = 16) -> dict:
    torch.manual_seed(0)
    model = rd_model().train()
    loss_fn = ReverseDistillationLoss()
    opt = torch.optim.Adam(
        list(model.decoder.parameters()) + list(model.bottleneck.parameters()), lr=0.005, betas=(0.5, 0.99)
    )

    def step(x: torch.Tensor) -> float:
        loss = loss_fn(*model(x))
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    step(data[:batch])  # warm-up step, not timed
    times = []
    for _ in range(epochs):
        t = time.perf_counter()
        for idx in torch.randperm(len(data)).split(batch):
            loss = step(data[idx])
        times.append(time.perf_counter() - t)
    return {
        "images": len(data),
        "batch": batch,
        "epochs": epochs,
        "epoch_s": statistics.median(times),
        "loss": loss,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=20, help="timed calls at batch 1")
    ap.add_argument("--runs16", type=int, default=5, help="timed calls at batch 16")
    ap.add_argument("--images", type=int, default=209, help="PatchCore memory-bank images and RD epoch size")
    ap.add_argument("--epochs", type=int, default=2, help="timed RD training epochs (median reported)")
    ap.add_argument("--coreset-ratio", type=float, default=0.1)
    ap.add_argument("--coreset", choices=["random", "kcenter"], default="random")
    ap.add_argument("--quick", action="store_true", help="check only: 16 images, 3/2 runs, 1 epoch")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    if a.quick:
        a.images, a.runs, a.runs16, a.epochs = 16, 3, 2, 1
    torch.set_num_threads(a.threads)
    data = images(a.images)
    result = {
        "threads": a.threads,
        "quick": a.quick,
        "versions": {p: version(p) for p in ("anomalib", "torch", "torchvision", "timm")},
        "conv_gflop_s": conv_rate(),
    }
    for name, fn in (
        ("rd_wrn50", lambda: inference(rd_model(), a.runs, a.runs16)),
        ("patchcore_lite2", lambda: patchcore(data, a.coreset_ratio, a.coreset, a.runs, a.runs16)),
        ("rd_train", lambda: rd_train(data, a.epochs)),
    ):
        result[name] = fn()
        print(f"{name}: {json.dumps(result[name])}", flush=True)
    result["conv_gflop_s_end"] = conv_rate()
    text = json.dumps(result, indent=1)
    print(text)
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
