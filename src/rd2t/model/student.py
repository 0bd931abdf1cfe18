"""One-class bottleneck (OCBE, RD4AD) and the student decoders.

Widths: `widths = (w0, w1, w2)` are the internal widths at strides 4/8/16; the embedding has 2*w2
channels at stride 32. With WideResNet-50-2 and widths (256, 512, 1024) this is exactly RD4AD's OCBE.

Decoders (deep to shallow, the first block of every stage upsamples x2 with a transposed 2x2 conv):
- "bottleneck": RD4AD's reversed wide Bottleneck (1x1, 3x3, 1x1; inner width out/2) -- consistent with
  ResNet teachers, the RD4AD baseline;
- "basic": reversed ResNet-18/34 BasicBlocks (two 3x3 convs) -- the default, inconsistent with both
  ResNet-50 (Bottleneck) and EfficientNet (MBConv) teachers, as the paper asks;
- "mbconv": inverted residual (expand 1x1, depthwise 3x3, project 1x1) -- consistent with EfficientNet
  teachers, kept for the consistent-vs-inconsistent ablation.
"""

from __future__ import annotations

import torch
from torch import nn


def conv_bn_relu(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, padding=k // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def _shortcut(cin: int, cout: int, stride: int, up: bool) -> nn.Module:
    if up:
        return nn.Sequential(nn.ConvTranspose2d(cin, cout, 2, 2, bias=False), nn.BatchNorm2d(cout))
    if stride != 1 or cin != cout:
        return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
    return nn.Identity()


class Bottleneck(nn.Module):
    """ResNet bottleneck; `up` swaps the 3x3 for a transposed 2x2 stride-2 conv (RD4AD's DeBottleneck)."""

    def __init__(self, cin: int, cout: int, mid: int | None = None, stride: int = 1, up: bool = False):
        super().__init__()
        mid = mid or cout // 2
        middle = (
            nn.ConvTranspose2d(mid, mid, 2, 2, bias=False)
            if up
            else nn.Conv2d(mid, mid, 3, stride, 1, bias=False)
        )
        self.body = nn.Sequential(
            nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            middle, nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout),
        )  # fmt: skip
        self.shortcut = _shortcut(cin, cout, stride, up)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


class BasicBlock(nn.Module):
    """ResNet-18 block; `up` makes the first conv a transposed 2x2 stride-2 conv."""

    def __init__(self, cin: int, cout: int, up: bool = False):
        super().__init__()
        first = (
            nn.ConvTranspose2d(cin, cout, 2, 2, bias=False)
            if up
            else nn.Conv2d(cin, cout, 3, 1, 1, bias=False)
        )
        self.body = nn.Sequential(
            first, nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout),
        )  # fmt: skip
        self.shortcut = _shortcut(cin, cout, 1, up)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


class MBConv(nn.Module):
    """EfficientNet's inverted residual; `up` prefixes a transposed 2x2 stride-2 conv."""

    def __init__(self, cin: int, cout: int, up: bool = False, expand: int = 4):
        super().__init__()
        if up:
            self.up = nn.Sequential(
                nn.ConvTranspose2d(cin, cout, 2, 2, bias=False), nn.BatchNorm2d(cout), nn.SiLU()
            )
        else:
            self.up = conv_bn_relu(cin, cout, 1) if cin != cout else nn.Identity()
        mid = cout * expand
        self.body = nn.Sequential(
            nn.Conv2d(cout, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.SiLU(inplace=True),
            nn.Conv2d(mid, mid, 3, 1, 1, groups=mid, bias=False), nn.BatchNorm2d(mid), nn.SiLU(inplace=True),
            nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        return x + self.body(x)


class OCBE(nn.Module):
    """One-class bottleneck embedding: fuse 3 scales into one compact map at stride 32."""

    def __init__(self, in_channels: list[int], widths: list[int], blocks: int = 3):
        super().__init__()
        c0, c1, c2 = in_channels
        _, w1, w2 = widths
        self.down0 = nn.Sequential(conv_bn_relu(c0, w1, 3, 2), conv_bn_relu(w1, w2, 3, 2))
        self.down1 = conv_bn_relu(c1, w2, 3, 2)
        self.proj2 = nn.Identity() if c2 == w2 else conv_bn_relu(c2, w2, 1)
        layers = [Bottleneck(3 * w2, 2 * w2, mid=w2, stride=2)]
        layers += [Bottleneck(2 * w2, 2 * w2, mid=w2) for _ in range(blocks - 1)]
        self.blocks = nn.Sequential(*layers)
        self.out_channels = 2 * w2

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat([self.down0(feats[0]), self.down1(feats[1]), self.proj2(feats[2])], dim=1)
        return self.blocks(x)


def _stage(kind: str, cin: int, cout: int, n: int) -> nn.Sequential:
    if kind == "bottleneck":
        blocks = [Bottleneck(cin, cout, up=True)] + [Bottleneck(cout, cout) for _ in range(n - 1)]
    elif kind == "basic":
        blocks = [BasicBlock(cin, cout, up=True)] + [BasicBlock(cout, cout) for _ in range(n - 1)]
    elif kind == "mbconv":
        blocks = [MBConv(cin, cout, up=True)] + [MBConv(cout, cout) for _ in range(n - 1)]
    else:
        raise ValueError(f"unknown student block {kind!r}")
    return nn.Sequential(*blocks)


class Decoder(nn.Module):
    """Student: embedding at stride 32 -> features at strides 16, 8, 4 (returned shallow to deep)."""

    def __init__(self, kind: str, in_channels: int, widths: list[int], blocks: tuple[int, ...] = (2, 2, 2)):
        super().__init__()
        w0, w1, w2 = widths
        self.stages = nn.ModuleList(
            [
                _stage(kind, in_channels, w2, blocks[0]),
                _stage(kind, w2, w1, blocks[1]),
                _stage(kind, w1, w0, blocks[2]),
            ]
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs[::-1]
