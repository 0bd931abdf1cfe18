"""The two-teacher reverse distillation network: teachers -> fusion -> OCBE -> student -> anomaly map.

Targets are the frozen teacher features themselves (DESIGN.md point 5); light 1x1 heads map the
student's features onto each teacher's channels. Fusion and attention sit on the input side and learn
through the student's loss only, so no trainable module ever shapes its own target.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rd2t.config import Config
from rd2t.model.fusion import TeacherFusion
from rd2t.model.memory_bank import MemoryBank, bank_channels, patch_embedding
from rd2t.model.student import OCBE, Decoder
from rd2t.model.teachers import Teacher

Features = list[list[torch.Tensor]]  # [teacher][scale] -> (B, C, H, W)


class GaussianBlur(nn.Module):
    """Fixed-weight separable Gaussian (scipy's default truncate=4) so the whole graph exports to ONNX."""

    def __init__(self, sigma: float):
        super().__init__()
        radius = int(4.0 * sigma + 0.5)
        x = torch.arange(-radius, radius + 1, dtype=torch.float32)
        k = torch.exp(-0.5 * (x / sigma) ** 2) if sigma > 0 else (x == 0).float()
        k = k / k.sum()
        self.radius = radius
        self.register_buffer("kernel_h", k.view(1, 1, 1, -1), persistent=False)
        self.register_buffer("kernel_v", k.view(1, 1, -1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.radius
        x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), self.kernel_h)
        return F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), self.kernel_v)


def distance(student: torch.Tensor, teacher: torch.Tensor, kind: str, dim: int = 1) -> torch.Tensor:
    """1 - cosine over `dim` (channels at each pixel, or a whole flattened map); with `kind` "dice"
    (config.distance) 1 - 2 s.t / (|s|^2 + |t|^2) instead: 1 - cosine where the norms agree, more where they
    do not, so a feature rebuilt in the right direction but at the wrong strength still counts."""
    if kind == "dice":
        norms = student.pow(2).sum(dim) + teacher.pow(2).sum(dim)
        return 1 - 2 * (student * teacher).sum(dim) / norms.clamp_min(1e-8)
    return 1 - F.cosine_similarity(student, teacher, dim=dim)


class RD2T(nn.Module):
    def __init__(self, config: Config, pretrained: bool | None = None):
        super().__init__()
        self.config = config
        pretrained = config.pretrained if pretrained is None else pretrained
        self.teachers = nn.ModuleList(
            Teacher(name, config.out_indices, weights, pretrained)
            for name, weights in zip(config.teachers, config.teacher_weights, strict=True)
        )
        teacher_channels = [t.channels for t in self.teachers]
        self.fusion = TeacherFusion(teacher_channels, config.fusion, config.channel_attention)
        widths = list(config.widths or teacher_channels[0])
        self.ocbe = OCBE(self.fusion.out_channels, widths)
        self.student = Decoder(config.student, self.ocbe.out_channels, widths, config.student_blocks)
        # One teacher whose widths the student already has needs no head (exactly RD4AD); otherwise a 1x1
        # head per teacher and scale, so that one student serves two teachers of any widths.
        identity = len(self.teachers) == 1 and widths == teacher_channels[0]
        self.heads = nn.ModuleList(
            nn.ModuleList(
                nn.Identity() if identity else nn.Conv2d(w, c, 1) for w, c in zip(widths, ch, strict=True)
            )
            for ch in teacher_channels
        )
        self.blur = GaussianBlur(config.sigma)
        # Optional nearest-neighbour term on teacher 1's patches at bank_stride (memory_bank.py). Stride 0
        # (chosen when training ends, use_bank_stride) starts as 8: an interrupted run's checkpoint loads so.
        channels = bank_channels(teacher_channels[0], config.bank_stride or 8)
        self.memory_bank = MemoryBank(channels) if config.memory_bank > 0 else None

    def use_bank_stride(self, stride: int) -> None:
        """A fresh, unfitted memory bank of stride-`stride` patches, recorded in config.bank_stride (training
        tries each stride when config.bank_stride is 0)."""
        self.config = self.config.replace(bank_stride=stride)
        device = next(self.parameters()).device
        self.memory_bank = MemoryBank(bank_channels(self.teachers[0].channels, stride)).to(device)

    # --- the pieces, usable separately by the trainer (which caches teacher features) ---
    @torch.no_grad()
    def teacher_features(self, images: torch.Tensor) -> Features:
        return [t(images) for t in self.teachers]

    def reconstruct(self, features: Features) -> Features:
        """Student predictions of every teacher feature, same nesting and shapes as `features`."""
        embedding = self.ocbe(self.fusion(features))
        decoded = self.student(embedding)
        return [[head(d) for head, d in zip(heads, decoded, strict=True)] for heads in self.heads]

    def loss(self, features: Features, predictions: Features) -> torch.Tensor:
        """Sum over teachers and scales of the distance (config.distance: 1 - cosine, or 1 - Dice), of each
        map flattened per sample (config.loss "flat") or per pixel."""
        total, kind = 0.0, self.config.distance
        for t_feats, s_feats in zip(features, predictions, strict=True):
            for t, s in zip(t_feats, s_feats, strict=True):
                if self.config.loss == "flat":
                    s, t = s.flatten(1), t.flatten(1)
                total = total + distance(s, t, kind).mean()
        return total

    def term_maps(
        self, features: Features, predictions: Features, size: tuple[int, int]
    ) -> list[torch.Tensor]:
        """The map's terms, each (B, 1, H, W) and blurred: the student's, then, once a memory bank is
        fitted, the distance to its nearest patch."""
        maps = [self.student_map(features, predictions, size)]
        if self.memory_bank is not None and self.memory_bank.fitted:
            maps.append(self.knn_map(features, self.memory_bank, self.config.bank_stride, size))
        return maps

    def student_map(self, features: Features, predictions: Features, size: tuple[int, int]) -> torch.Tensor:
        """(B, 1, H, W), blurred: the sum over teachers and scales of the upsampled per-pixel distance."""
        amap = 0.0
        for t_feats, s_feats in zip(features, predictions, strict=True):
            for t, s in zip(t_feats, s_feats, strict=True):
                d = distance(s, t, self.config.distance).unsqueeze(1)
                amap = amap + F.interpolate(d, size=size, mode="bilinear", align_corners=False)
        return self.blur(amap)

    def knn_map(
        self, features: Features, bank: MemoryBank, stride: int, size: tuple[int, int]
    ) -> torch.Tensor:
        """(B, 1, H, W), blurred: each stride-`stride` patch's distance to its nearest patch in `bank`
        (training scores several banks on the same features)."""
        d = bank.distance(patch_embedding(features[0], stride))
        return self.blur(F.interpolate(d, size=size, mode="bilinear", align_corners=False))

    def anomaly_map(self, features: Features, predictions: Features, size: tuple[int, int]) -> torch.Tensor:
        """(B, 1, H, W): the student's map, or with a fitted memory bank both terms scaled and combined
        (config.bank_combine: summed, or their per-pixel maximum)."""
        maps = self.term_maps(features, predictions, size)
        return maps[0] if len(maps) == 1 else self.memory_bank.combine(*maps, self.config.bank_combine)

    # --- inference ---
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (B, 3, H, W) RGB in [0, 1] -> (scores (B,), maps (B, H, W))."""
        features = self.teacher_features(images)
        amap = self.anomaly_map(features, self.reconstruct(features), tuple(images.shape[-2:]))[:, 0]
        return amap.flatten(1).amax(dim=1), amap

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        was_training = self.training
        self.eval()
        try:
            return self(images)
        finally:
            self.train(was_training)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]
