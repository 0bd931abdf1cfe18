"""What a trained model carries, as typed records, written and read in one place.

`Checkpoint` is the `.pt` file: config, weights, training state and the calibration. `ModelInfo` is what
any deployed form of the model (`.pt` or `.onnx`) tells about itself; the ONNX metadata is written from
and read back into the same record (`to_metadata` / `from_metadata`), so `Detector.load("x.onnx")`
knows the true config and calibration. Files are written atomically and read with weights_only=True.

The resumable `last.pt` of a training run leaves the frozen teachers out: they are written once per run
to `teachers.pt` beside it (`save_teachers`) and merged back by `Checkpoint.load`, checked by SHA-256.
`model.pt` always holds every weight, so it loads offline on its own.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rd2t import __version__
from rd2t.calibration import Calibration
from rd2t.config import Config
from rd2t.errors import CheckpointError, ConfigError
from rd2t.files import atomic_write

FORMAT = "rd2t-checkpoint"
FORMAT_VERSION = 1
TEACHER_PREFIX = "teachers."  # state_dict keys of the frozen teachers


def save_teachers(weights: dict, path: str | Path) -> str:
    """Write the teachers' tensors of a state_dict once; returns the file's SHA-256 (last.pt records it)."""
    buffer = io.BytesIO()
    teachers = {k: v for k, v in weights.items() if k.startswith(TEACHER_PREFIX)}
    torch.save({"format": "rd2t-teachers", "model": teachers}, buffer)
    atomic_write(path, buffer.getvalue())
    return hashlib.sha256(buffer.getvalue()).hexdigest()


def _read_teachers(checkpoint: Path, name: str, sha256: str) -> dict:
    path = checkpoint.parent / name
    if not path.is_file():
        raise CheckpointError(
            f"{checkpoint}: its frozen teacher weights {path} are missing (written once per run)"
        )
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != sha256:
        raise CheckpointError(
            f"{checkpoint}: {path} is not the teachers file this checkpoint was written with"
        )
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)["model"]


@dataclass
class Checkpoint:
    config: Config
    weights: dict  # the model's state_dict (teachers included: loading needs no download)
    epoch: int = 0
    history: list[float] = field(default_factory=list)
    train_files: list[str] = field(default_factory=list)
    val_files: list[str] = field(default_factory=list)
    complete: bool = False
    calibration: Calibration | None = None
    optimizer: dict | None = None
    rd2t_version: str = __version__
    # Mid-epoch state (written on a signal or a timer): the losses of the steps done in epoch `epoch`.
    epoch_losses: list[float] = field(default_factory=list)
    # (file beside this one, SHA-256): the teachers live there, not in `weights` (resumable last.pt only).
    teachers_file: tuple[str, str] | None = None

    def save(self, path: str | Path) -> Path:
        weights = self.weights
        if self.teachers_file is not None:
            weights = {k: v for k, v in weights.items() if not k.startswith(TEACHER_PREFIX)}
        payload = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "rd2t_version": __version__,
            "config": self.config.to_dict(),
            "model": weights,
            "teachers_file": list(self.teachers_file) if self.teachers_file else None,
            "epoch_losses": list(self.epoch_losses),
            "optimizer": self.optimizer,
            "epoch": self.epoch,
            "history": list(self.history),
            "train_files": [str(p) for p in self.train_files],
            "val_files": [str(p) for p in self.val_files],
            "complete": self.complete,
            "threshold": self.calibration.to_dict() if self.calibration else None,
        }
        return atomic_write(path, lambda f: torch.save(payload, f))

    @classmethod
    def load(cls, path: str | Path) -> Checkpoint:
        """The checkpoint, or CheckpointError naming the file and what is wrong with it."""
        path = Path(path)
        payload = read_payload(path)
        missing = [k for k in ("config", "model") if k not in payload]
        if missing:
            raise CheckpointError(f"{path}: incomplete rd2t checkpoint (no {' or '.join(missing)})")
        try:
            config = Config.from_dict(payload["config"])
        except (ConfigError, TypeError, ValueError) as e:
            raise CheckpointError(f"{path}: its config is not valid ({e})") from None
        weights, teachers_file = payload["model"], payload.get("teachers_file")
        if teachers_file:
            teachers_file = (str(teachers_file[0]), str(teachers_file[1]))
            weights = {**_read_teachers(path, *teachers_file), **weights}
        return cls(
            config=config,
            weights=weights,
            epoch=int(payload.get("epoch") or 0),
            history=list(payload.get("history") or []),
            train_files=list(payload.get("train_files") or []),
            val_files=list(payload.get("val_files") or []),
            complete=bool(payload.get("complete", False)),
            calibration=Calibration.from_dict(payload.get("threshold")),
            optimizer=payload.get("optimizer"),
            rd2t_version=str(payload.get("rd2t_version", "")),
            epoch_losses=list(payload.get("epoch_losses") or []),
            teachers_file=teachers_file or None,
        )

    def info(self, source: str | Path = "") -> ModelInfo:
        return ModelInfo(
            self.config, self.calibration, str(source), self.epoch, self.complete, self.rd2t_version
        )


def read_payload(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated zip, pickle error, foreign file: all unusable
        raise CheckpointError(
            f"{path}: not a readable rd2t checkpoint (truncated or corrupt: {type(e).__name__})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an rd2t checkpoint")
    if payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {payload.get('format_version')} "
            f"from rd2t {payload.get('rd2t_version')}, "
            f"this rd2t {__version__} reads format {FORMAT_VERSION}"
        )
    return payload


@dataclass
class ModelInfo:
    """What a deployed model is: the same for a `.pt` checkpoint and its ONNX export."""

    config: Config
    calibration: Calibration | None
    source: str = ""
    epoch: int = 0
    complete: bool = True
    rd2t_version: str = ""

    def to_metadata(self) -> dict[str, str]:
        """ONNX metadata_props (strings only); read back by `from_metadata`."""
        cal = self.calibration
        return {
            "config": json.dumps(self.config.to_dict(), sort_keys=True),
            "calibration": json.dumps(cal.to_dict() if cal else None),
            # Flat copies for tools that read one key (and for rd2t 0.1 readers).
            "threshold": "" if cal is None or cal.threshold is None else repr(float(cal.threshold)),
            "threshold_rule": cal.rule if cal else "",
            "threshold_source": cal.source if cal else "",
            "val_scores": json.dumps(cal.scores if cal else []),
            "image_size": str(self.config.image_size),
            "preset": self.config.preset,
            "teachers": ",".join(self.config.teachers),
            "checkpoint_rd2t_version": self.rd2t_version,
            "checkpoint_complete": str(bool(self.complete)).lower(),
            "checkpoint_epoch": str(self.epoch),
        }

    @classmethod
    def from_metadata(cls, meta: dict[str, str], source: str = "") -> ModelInfo:
        try:
            config = Config.from_dict(json.loads(meta["config"]))
        except (KeyError, ValueError, TypeError, ConfigError) as e:
            raise CheckpointError(f"{source}: no valid rd2t config in the model's metadata ({e})") from None
        raw = meta.get("calibration")
        cal = Calibration.from_dict(json.loads(raw)) if raw else None
        if cal is None and meta.get("threshold"):  # rd2t 0.1 exports: flat keys only
            cal = Calibration(
                float(meta["threshold"]),
                meta.get("threshold_rule", ""),
                meta.get("threshold_source", ""),
                json.loads(meta.get("val_scores") or "[]"),
            )
        return cls(
            config,
            cal,
            source,
            int(meta.get("checkpoint_epoch") or 0),
            meta.get("checkpoint_complete", "true") == "true",
            meta.get("checkpoint_rd2t_version", ""),
        )
