"""The Python API in one class; every CLI command and the service call its methods.

from rd2t import Detector
det = Detector("offline", epochs=40).fit("my_good_images/", out_dir="runs/line3")
pred = det.predict("part_0042.png")          # or a PIL image, an HxWx3 numpy array, or a list
pred.score, pred.is_defective, pred.anomaly_map
det = Detector.load("runs/line3/model.pt")   # or the exported model.onnx
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rd2t.calibration import Calibration
from rd2t.config import Config, preset
from rd2t.data import Split, labelled_defects, open_dataset
from rd2t.errors import ConfigError, InputError, OutputError, RD2TError
from rd2t.files import atomic_write, check_writable
from rd2t.inference.predictor import Prediction, Predictor, expand_paths


def training_images(data) -> list[Path]:
    """Good training images from a folder (plain or dataset layout), a Split, or a list of paths."""
    if isinstance(data, Split):
        return [s.path for s in data.train]
    if isinstance(data, (list, tuple)):
        return [Path(p) for p in data]
    root = Path(data)
    if not root.exists():
        raise InputError(f"{root}: no such folder")
    return [s.path for s in open_dataset("folder", root, None).train]  # a plain folder or a dataset layout


def open_split(
    data: str | Path, dataset: str = "auto", category: str | None = None, training: bool = True
) -> Split:
    """A dataset split from a root folder: `auto` reads MVTec-like layouts and plain folders. A split
    that is only scored (`training=False`) may lack training images."""
    data = Path(data)
    if not data.exists():
        raise InputError(f"{data}: no such file or folder")
    if dataset == "auto":
        kind, category = ("mvtec", category) if category else ("folder", None)
        return open_dataset(kind, data, category, training)
    return open_dataset(dataset, data, category, training)


@dataclass
class PredictRecord:
    """One scored file as `rd2t predict` and the service report it."""

    path: str
    score: float
    defective: bool | None
    threshold: float | None
    overlay: str | None = None
    mask: str | None = None

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "score": round(self.score, 6),
            "defective": self.defective,
            "threshold": self.threshold,
            "overlay": self.overlay,
            "mask": self.mask,
        }


class Detector:
    def __init__(self, config: Config | str = "offline", **overrides):
        self.config = preset(config, **overrides) if isinstance(config, str) else config.replace(**overrides)
        self.predictor: Predictor | None = None
        self.checkpoint_path: Path | None = None

    # ---- train ----------------------------------------------------------------------------------------

    def fit(
        self,
        data,
        out_dir: str | Path | None = None,
        *,
        resume: bool = False,
        progress: bool = True,
        val_defects: str | Path | None = None,
    ) -> Detector:
        """Train on good images (folder, dataset root, Split or list of paths); under torchrun, with DDP.
        A Split's own held-out good images (MVTec AD 2's validation/good) calibrate the threshold.
        `val_defects`: a folder of a few labelled defective images of the part (data.labelled_defects) on
        which the memory bank's settings are chosen (docs/model.md); read before any epoch runs."""
        from rd2t.training.launcher import maybe_distributed_train

        out = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="rd2t-"))
        check_writable(out)
        held_out = [s.path for s in data.validation] if isinstance(data, Split) else None
        defects = labelled_defects(val_defects).test if val_defects is not None else None
        result = maybe_distributed_train(
            self.config,
            training_images(data),
            out,
            resume=resume,
            progress=progress,
            held_out=held_out,
            val_defects=defects,
        )
        if result is None:  # a non-zero rank of a distributed run
            return self
        self.config = result.model.config
        self.checkpoint_path = result.checkpoint
        self.predictor = Predictor.from_model(result.model, result.calibration)
        self.predictor.info.source = str(result.checkpoint)
        return self

    # ---- load / save ----------------------------------------------------------------------------------

    @classmethod
    def load(
        cls, path: str | Path, device: str = "cpu", backend: str = "auto", threads: int | None = None
    ) -> Detector:
        """A trained model from its `.pt` checkpoint or `.onnx` export, with its true config."""
        predictor = Predictor.open(path, backend=backend, device=device, threads=threads)
        det = cls(predictor.config)
        det.predictor, det.checkpoint_path = predictor, Path(path)
        return det

    @property
    def threshold(self) -> float | None:
        return self._require().threshold

    @threshold.setter
    def threshold(self, value: float) -> None:
        self._require().threshold = value

    @property
    def calibration(self) -> Calibration | None:
        return self._require().calibration

    def save(self, path: str | Path) -> Path:
        """Copy of the trained model (config, weights, threshold) to `path`, written atomically."""
        from rd2t.model.checkpoint import Checkpoint

        ckpt = Checkpoint.load(self._require_checkpoint())
        if ckpt.calibration is not None:
            ckpt.calibration.threshold = self.threshold
        return ckpt.save(path)

    def export(self, out: str | Path | None = None, *, opset: int = 17) -> Path:
        """One ONNX file with the whole graph and this model's config and calibration in its metadata."""
        from rd2t.inference.export import export_onnx

        src = self._require_checkpoint()
        return export_onnx(src, Path(out) if out else src.with_suffix(".onnx"), opset=opset)

    # ---- predict --------------------------------------------------------------------------------------

    def predict(self, x, *, batch_size: int = 16) -> Prediction | list[Prediction]:
        """Score one image (path, PIL image, HxW[x3] array) or many (a list, or an NxHxWx3 array)."""
        single = not isinstance(x, (list, tuple)) and not (isinstance(x, np.ndarray) and x.ndim == 4)
        items = [x] if single else list(x)
        out = []
        for p in self._require().predict(items, batch_size=batch_size):
            if isinstance(p, RD2TError):
                raise p
            out.append(p)
        return out[0] if single else out

    def predict_files(
        self,
        inputs: Iterable[str | Path],
        *,
        out: str | Path | None = None,
        masks: bool = False,
        threshold: float | None = None,
        batch_size: int = 8,
        overlay_format: str = "png",
    ) -> Iterator[PredictRecord | RD2TError]:
        """Score files, folders and globs; with `out`, write each overlay (and mask) atomically.

        Output names keep each input's path relative to the inputs' common folder, so files of the same
        name in two folders never collide; `a.jpg` and `a.png` side by side keep their extensions. The
        `out` folder is locked for the run: a second process writing there is refused. Pictures are drawn
        and written in a thread while the model scores the next batch; each record is yielded, in input
        order, only once its files are complete.
        """
        if overlay_format not in OVERLAY_FORMATS:
            formats = ", ".join(OVERLAY_FORMATS)
            raise ConfigError(f"overlay format {overlay_format!r}: expected one of {formats}")
        predictor = self._require()
        thr = predictor.threshold if threshold is None else threshold
        files, errors = expand_paths(inputs)
        for e in errors:
            yield InputError(e)
        lock = _lock_folder(check_writable(out)) if out else None
        try:
            names = _output_names(files)
            low, high = predictor.colour_range()
            with ThreadPoolExecutor(1, thread_name_prefix="rd2t-write") as writer:
                window: deque = deque()  # (record | error, pictures future | None), in input order
                scored = predictor.predict(files, batch_size=batch_size, threshold=thr, keep_images=bool(out))
                for p in scored:
                    if isinstance(p, RD2TError):
                        window.append((p, None))
                    else:
                        rec = PredictRecord(str(p.path), p.score, p.is_defective, thr)
                        pictures = None
                        if out:
                            stem = Path(out) / names[p.path]
                            mask_thr = thr if masks else None
                            pictures = writer.submit(
                                self._write_pictures, p, stem, low, high, mask_thr, overlay_format
                            )
                        window.append((rec, pictures))
                    # Bounded: at most a batch of decoded images waits for its pictures.
                    while window and (len(window) > batch_size or _ready(window[0][1])):
                        yield _finished(*window.popleft())
                while window:
                    yield _finished(*window.popleft())
        finally:
            if lock is not None:
                os.close(lock)

    @staticmethod
    def _write_pictures(
        p: Prediction, stem: Path, low: float, high: float, mask_threshold: float | None, fmt: str = "png"
    ) -> tuple[str, str | None]:
        from rd2t.report.heatmap import mask_image, overlay

        # From the model's map, band by band: a large image's full-size float map is never held.
        pic = overlay(p.image, p.model_map, low, high)
        p.image = None  # the decoded image is not needed any more
        over_path = stem.with_name(f"{stem.name}_heatmap.{fmt}")
        over = atomic_write(over_path, lambda f: _save_picture(pic, f, fmt))
        mask = None
        if mask_threshold is not None:
            m = mask_image(p.model_map, p.size, mask_threshold)
            mask = atomic_write(stem.with_name(stem.name + "_mask.png"), lambda f: _save_picture(m, f, "png"))
        return str(over), str(mask) if mask else None

    # ---- evaluate -------------------------------------------------------------------------------------

    def evaluate(
        self,
        data: str | Path | Split,
        *,
        dataset: str = "auto",
        category: str | None = None,
        out: str | Path | None = None,
        report: bool = True,
        progress: bool = True,
        title: str | None = None,
    ):
        """Metrics at the images' original resolution; with `out`, metrics.json/.md, scores.csv (one row per
        test image: what a threshold study needs) and report.html."""
        from rd2t.evaluation.evaluate import evaluate, metrics_markdown, scores_csv

        if out is not None:
            check_writable(out)
        split = data if isinstance(data, Split) else open_split(data, dataset, category, training=False)
        predictor = self._require()
        res = evaluate(predictor, split, threshold=predictor.threshold, progress=progress, curves=report)
        if out is None:
            return res
        out = Path(out)
        record = {
            "dataset": split.name,
            "checkpoint": str(self.checkpoint_path),
            "metrics": res.metrics,
            "per_defect": res.per_defect,
            "threshold": res.threshold,
            "threshold_rules": res.trade,
            "skipped": res.skipped,
        }
        atomic_write(out / "metrics.json", json.dumps(record, indent=1, default=float))
        atomic_write(out / "metrics.md", metrics_markdown(res, split.name))
        atomic_write(out / "scores.csv", scores_csv(res))
        if report:
            res.report_path = self.write_report(out / "report.html", res, title or split.name)
        return res

    def write_report(self, path: str | Path, res, title: str) -> Path:
        """The HTML report of an evaluation, on this model's colour scale."""
        from rd2t.data import load_mask
        from rd2t.report import ImageResult, write_report

        results = [
            ImageResult(
                s.sample.path,
                s.sample.label,
                s.sample.defect_type,
                s.score,
                s.anomaly_map,
                load_mask(s.sample.mask_path, s.original_size) if s.sample.mask_path else None,
                None if res.threshold is None else s.score > res.threshold,
            )
            for s in res.scored
        ]
        cfg = self.config
        info = {
            "dataset": title,
            "preset": cfg.preset,
            "teachers": ", ".join(cfg.teachers),
            "epochs": cfg.epochs,
            "image size": cfg.image_size,
            "model": str(self.checkpoint_path),
        }
        cal = self._require().calibration
        return write_report(
            path,
            results,
            metrics=res.metrics,
            per_defect=res.per_defect,
            threshold=res.threshold,
            curves=res.curves,
            title=f"rd2t — {title}",
            info=info,
            map_range=cal.colour_range() if cal else None,
        )

    # ---- helpers --------------------------------------------------------------------------------------

    def _require(self) -> Predictor:
        if self.predictor is None:
            raise InputError("detector is not trained: call fit() or Detector.load()")
        return self.predictor

    def _require_checkpoint(self) -> Path:
        self._require()
        if self.checkpoint_path is None or self.checkpoint_path.suffix == ".onnx":
            raise InputError("only a torch checkpoint can be saved or exported; this model is an ONNX file")
        return self.checkpoint_path


OVERLAY_FORMATS = ("png", "jpg")


def _save_picture(picture, f, fmt: str) -> None:
    # PNG at zlib level 1: lossless, 2x faster than Pillow's default level 6 for files ~20 % larger; a
    # 900x900 overlay still takes ~90 ms there against ~3 ms as JPEG (docs/performance.md).
    if fmt == "jpg":
        picture.save(f, format="JPEG", quality=90)
    else:
        picture.save(f, format="PNG", compress_level=1)


def _ready(pictures) -> bool:
    return pictures is None or pictures.done()


def _finished(record, pictures):
    if pictures is not None:
        record.overlay, record.mask = pictures.result()
    return record


def _output_names(files: list[Path]) -> dict[Path, Path]:
    """Each input's output stem: its path relative to the inputs' common folder, extension kept where
    two inputs would otherwise share a name."""
    if not files:
        return {}
    absolute = [f.resolve() for f in files]
    common = Path(os.path.commonpath([a.parent for a in absolute]))
    stems = [a.relative_to(common).with_suffix("") for a in absolute]
    taken: dict[Path, int] = {}
    for s in stems:
        taken[s] = taken.get(s, 0) + 1
    return {
        f: (s.with_name(f"{s.name}_{a.suffix.lstrip('.').lower()}") if taken[s] > 1 else s)
        for f, a, s in zip(files, absolute, stems, strict=True)
    }


def _lock_folder(folder: Path) -> int:
    """An exclusive lock on `folder` for this process's run (released when the fd closes or it dies)."""
    fd = os.open(folder / ".rd2t-predict.lock", os.O_CREAT | os.O_RDWR, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise OutputError(
            f"{folder}: another rd2t predict is writing to this folder; use another --out"
        ) from None
    return fd
