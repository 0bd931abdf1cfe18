"""Inference speed of every preset, torch and ONNX Runtime side by side, FLOPs, the machine's conv rate.

Measured in one process, same threads, 256 px, warm; median of --runs timed calls (batch 1) and of
--runs16 calls (batch 16). Weights: real offline weights for the Lite presets, random for the hub ones
(timing only). Results and the machine go into docs/performance.md.

    python benchmarks/speed.py --threads 2 --json docs/measured/speed_cpu.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from rd2t.config import preset
from rd2t.inference.export import export_onnx
from rd2t.inference.onnx_runtime import OnnxDetector
from rd2t.model.checkpoint import Checkpoint
from rd2t.model.network import RD2T


def median_seconds(fn, runs: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def conv_rate(threads: int) -> float:
    """GFLOP/s of a large 3x3 convolution: the machine's practical ceiling for these CNNs."""
    conv = torch.nn.Conv2d(256, 256, 3, padding=1, bias=False).eval()
    x = torch.rand(8, 256, 64, 64)
    flops = 2 * 8 * 256 * 256 * 9 * 64 * 64
    with torch.no_grad():
        s = median_seconds(lambda: conv(x), 10)
    return flops / s / 1e9


def flops_per_image(model: RD2T, size: int) -> float:
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.rand(1, 3, size, size))
    return counter.get_total_flops()


def bench_preset(name: str, runs: int, runs16: int, threads: int, tmp: Path) -> dict:
    torch.manual_seed(0)
    offline = name in ("offline", "rd4ad-offline")
    model = RD2T(preset(name, pretrained=offline)).eval()
    size = model.config.image_size
    x1, x16 = torch.rand(1, 3, size, size), torch.rand(16, 3, size, size)
    row = {"preset": name, "gflops_per_image": flops_per_image(model, size) / 1e9}
    with torch.no_grad():
        row["torch_b1_ms"] = 1e3 * median_seconds(lambda: model(x1), runs)
        row["torch_b16_img_s"] = 16 / median_seconds(lambda: model(x16), runs16, warmup=1)
        cl = model.to(memory_format=torch.channels_last)
        x1c, x16c = x1.to(memory_format=torch.channels_last), x16.to(memory_format=torch.channels_last)
        row["torch_cl_b1_ms"] = 1e3 * median_seconds(lambda: cl(x1c), runs)
        row["torch_cl_b16_img_s"] = 16 / median_seconds(lambda: cl(x16c), runs16, warmup=1)
        model = model.to(memory_format=torch.contiguous_format)
    ckpt = tmp / f"{name}.pt"
    Checkpoint(model.config, model.state_dict(), complete=True).save(ckpt)
    onnx_path = export_onnx(ckpt, tmp / f"{name}.onnx")
    ort = OnnxDetector(onnx_path, threads=threads)
    n1, n16 = x1.numpy(), x16.numpy()
    row["ort_b1_ms"] = 1e3 * median_seconds(lambda: ort.predict(n1), runs)
    row["ort_b16_img_s"] = 16 / median_seconds(lambda: ort.predict(n16), runs16, warmup=1)
    best_b1 = min(row["torch_b1_ms"], row["torch_cl_b1_ms"], row["ort_b1_ms"]) / 1e3
    row["best_b1_gflop_s"] = row["gflops_per_image"] / best_b1
    row["best_b16_gflop_s"] = row["gflops_per_image"] * max(
        row["torch_b16_img_s"], row["torch_cl_b16_img_s"], row["ort_b16_img_s"]
    )
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--runs16", type=int, default=5)
    ap.add_argument("--presets", nargs="*", default=["offline", "rd4ad-offline", "paper", "rd4ad"])
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    result = {
        "threads": a.threads,
        "torch": torch.__version__,
        "conv_gflop_s": conv_rate(a.threads),
        "rows": [],
    }
    print(f"machine conv rate: {result['conv_gflop_s']:.0f} GFLOP/s ({a.threads} threads)", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.presets:
            row = bench_preset(name, a.runs, a.runs16, a.threads, Path(tmp))
            result["rows"].append(row)
            print(
                json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}),
                flush=True,
            )
    result["conv_gflop_s_end"] = conv_rate(a.threads)  # the machine's rate again: was it steady?
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1))
    rate = result["conv_gflop_s"]
    print(
        "\n| preset | GFLOP/img | torch b1 ms | torch CL b1 ms | ORT b1 ms | torch b16 img/s | ORT b16 img/s "
        f"| best b16 % of conv rate ({rate:.0f} GFLOP/s) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in result["rows"]:
        print(
            f"| {r['preset']} | {r['gflops_per_image']:.1f} | {r['torch_b1_ms']:.1f} | "
            f"{r['torch_cl_b1_ms']:.1f} | "
            f"{r['ort_b1_ms']:.1f} | {r['torch_b16_img_s']:.1f} | {r['ort_b16_img_s']:.1f} | "
            f"{100 * r['best_b16_gflop_s'] / rate:.0f} % |"
        )


if __name__ == "__main__":
    main()
