"""Channel attention and iterative attention feature fusion of the two teachers (Dai et al., WACV 2021).

MS-CAM(X) = sigmoid(L(X) + G(X)): L a point-wise bottleneck (1x1 conv, BN, ReLU, 1x1 conv, BN) at full
resolution, G the same on the globally pooled input.
iAFF(X, Y): W1 = MS-CAM1(X + Y); Xi = X*W1 + Y*(1 - W1); W2 = MS-CAM2(Xi); Z = X*W2 + Y*(1 - W2),
with separate weights for the two stages (the public PyTorch port wrongly reuses the first global branch).
"""

from __future__ import annotations

import torch
from torch import nn


def _pointwise_bottleneck(channels: int, reduction: int) -> nn.Sequential:
    inner = max(channels // reduction, 1)
    return nn.Sequential(
        nn.Conv2d(channels, inner, 1),
        nn.BatchNorm2d(inner),
        nn.ReLU(inplace=True),
        nn.Conv2d(inner, channels, 1),
        nn.BatchNorm2d(channels),
    )


class MSCAM(nn.Module):
    """Multi-scale channel attention: per-pixel and global channel weights in (0, 1)."""

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        self.local_att = _pointwise_bottleneck(channels, reduction)
        # BN on a 1x1 pooled map needs batch > 1 in training; the trainer drops partial batches.
        self.global_att = nn.Sequential(nn.AdaptiveAvgPool2d(1), _pointwise_bottleneck(channels, reduction))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.local_att(x) + self.global_att(x))


class ChannelAttention(nn.Module):
    """X * MS-CAM(X): re-weights each channel of a teacher feature (identity when disabled)."""

    def __init__(self, channels: int, enabled: bool = True, reduction: int = 4):
        super().__init__()
        self.att = MSCAM(channels, reduction) if enabled else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.att is None else x * self.att(x)


class IAFF(nn.Module):
    """Iterative attentional feature fusion of two maps of equal shape."""

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        self.stage1 = MSCAM(channels, reduction)
        self.stage2 = MSCAM(channels, reduction)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        w1 = self.stage1(x + y)
        xi = x * w1 + y * (1 - w1)
        w2 = self.stage2(xi)
        return x * w2 + y * (1 - w2)


class SumFusion(nn.Module):
    """The ablation baseline: plain element-wise sum."""

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x + y


def align(in_channels: int, out_channels: int) -> nn.Module:
    """1x1 conv + BN to a common width where two teachers' channels differ."""
    if in_channels == out_channels:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))


class TeacherFusion(nn.Module):
    """Per teacher and scale: align + channel attention; per scale: iAFF (or sum) of the teachers.

    With one teacher this reduces to (optional) channel attention on its features.
    """

    def __init__(
        self, teacher_channels: list[list[int]], fusion: str = "iaff", channel_attention: bool = True
    ):
        super().__init__()
        n_scales = len(teacher_channels[0])
        self.out_channels = [max(ch[s] for ch in teacher_channels) for s in range(n_scales)]
        self.align = nn.ModuleList(
            nn.ModuleList(align(ch[s], self.out_channels[s]) for s in range(n_scales))
            for ch in teacher_channels
        )
        self.attention = nn.ModuleList(
            nn.ModuleList(ChannelAttention(c, channel_attention) for c in self.out_channels)
            for _ in teacher_channels
        )
        self.fuse = None
        if len(teacher_channels) == 2:
            self.fuse = nn.ModuleList(IAFF(c) if fusion == "iaff" else SumFusion() for c in self.out_channels)

    def forward(self, features: list[list[torch.Tensor]]) -> list[torch.Tensor]:
        per_teacher = [
            [att(al(f)) for f, al, att in zip(feats, aligns, atts, strict=True)]
            for feats, aligns, atts in zip(features, self.align, self.attention, strict=True)
        ]
        if self.fuse is None:
            return per_teacher[0]
        return [fuse(a, b) for fuse, a, b in zip(self.fuse, per_teacher[0], per_teacher[1], strict=True)]
