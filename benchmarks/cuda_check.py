"""CUDA check: the same weights give the same maps on CPU and GPU; GPU inference and training-step speed.

python benchmarks/cuda_check.py
"""

import time

import torch

from rd2t.config import preset
from rd2t.model.network import RD2T


def timed(fn, n: int) -> float:
    fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / n


def main() -> None:
    assert torch.cuda.is_available(), "no CUDA device"
    print(torch.__version__, torch.cuda.get_device_name(0))
    for name in ("offline", "rd4ad-offline", "paper", "rd4ad"):
        check(name)


def check(name: str) -> None:
    torch.manual_seed(0)
    model = RD2T(preset(name, pretrained=name.endswith("offline") or name == "offline")).eval()
    x = torch.rand(4, 3, 256, 256)
    s_cpu, m_cpu = model.predict(x)
    model.cuda()
    s_gpu, m_gpu = model.predict(x.cuda())
    diff = (m_cpu - m_gpu.cpu()).abs().max().item()
    x1, x16 = torch.rand(1, 3, 256, 256, device="cuda"), torch.rand(16, 3, 256, 256, device="cuda")
    with torch.no_grad():
        b1 = timed(lambda: model(x1), 30)
        b16 = timed(lambda: model(x16), 10)
    model.train()
    opt = torch.optim.Adam(model.trainable_parameters(), lr=0.005, betas=(0.5, 0.999))
    feats = model.teacher_features(x16)

    def step():
        loss = model.loss(feats, model.reconstruct(feats))
        opt.zero_grad()
        loss.backward()
        opt.step()

    st = timed(step, 10)
    print(
        f"{name:14s} max|map cpu-gpu| {diff:.2e}  GPU b1 {b1 * 1e3:.1f} ms/img  "
        f"b16 {16 / b16:.0f} img/s  "
        f"train step (b16, cached features) {st * 1e3:.1f} ms"
    )


if __name__ == "__main__":
    main()
