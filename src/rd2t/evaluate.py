"""Evaluate a trained model on a test split: metrics at each image's original resolution.

Maps come out of the model at `image_size`; they are upsampled (bilinear) to the original image size
before any pixel metric, as MVTec's official evaluation requires. Nothing here is tuned on the test set.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from rd2t.data import Sample, Split, load_image, load_mask
from rd2t.errors import InputError
from rd2t.metrics import Evaluator, pro_curve, roc_curve_points
from rd2t.model import RD2T
from rd2t.transforms import to_model_input, to_uint8_tensor


@dataclass
class Scored:
    sample: Sample
    score: float
    anomaly_map: np.ndarray  # float32 at the model's image_size
    original_size: tuple[int, int]  # (W, H) as PIL reports it


def score_samples(
    model: RD2T,
    samples: Sequence[Sample],
    *,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    progress: bool = True,
    size_of: Callable[[Sample, tuple[int, int]], tuple[int, int]] | None = None,
) -> Iterator[Scored]:
    """Score images batch by batch; an unreadable image is reported on stderr and skipped."""
    size = model.config.image_size
    model.eval()
    bar = tqdm(total=len(samples), desc="scoring", disable=not progress, leave=False)
    for start in range(0, len(samples), batch_size):
        batch, kept, sizes = [], [], []
        for s in samples[start : start + batch_size]:
            try:
                img = load_image(s.path)
            except InputError as e:
                print(f"skipped: {e}", file=sys.stderr)
                continue
            batch.append(to_uint8_tensor(img, size))
            kept.append(s)
            sizes.append(size_of(s, img.size) if size_of else img.size)
        bar.update(len(samples[start : start + batch_size]))
        if not batch:
            continue
        with torch.no_grad():
            scores, maps = model(to_model_input(torch.stack(batch).to(device)))
        for s, sc, m, wh in zip(kept, scores.cpu().numpy(), maps.cpu().numpy(), sizes, strict=True):
            yield Scored(s, float(sc), m.astype(np.float32), wh)
    bar.close()


def upsample(anomaly_map: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a map to (W, H) = an image's original size."""
    w, h = size_wh
    if anomaly_map.shape == (h, w):
        return anomaly_map
    t = torch.from_numpy(anomaly_map)[None, None]
    return F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)[0, 0].numpy()


@dataclass
class EvalResult:
    metrics: dict[str, float]
    per_defect: dict[str, dict[str, float]]
    scored: list[Scored]
    has_masks: bool
    threshold: float | None = None
    curves: dict = field(default_factory=dict)
    skipped: int = 0

    def decisions(self) -> np.ndarray | None:
        if self.threshold is None:
            return None
        return np.array([s.score > self.threshold for s in self.scored])


def evaluate(
    model: RD2T,
    split: Split,
    *,
    threshold: float | None = None,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    progress: bool = True,
    curves: bool = False,
    size_of: Callable[[Sample, tuple[int, int]], tuple[int, int]] | None = None,
) -> EvalResult:
    """Image and pixel metrics (AUROC, F1-max, AP, AU-PRO) plus the per-defect-type breakdown.

    `size_of(sample, loaded_size)` overrides the original size (used when scoring pre-resized copies).
    """
    ev = Evaluator()
    scored: list[Scored] = []
    masks, maps = [], []
    for item in score_samples(
        model, split.test, batch_size=batch_size, device=device, progress=progress, size_of=size_of
    ):
        s = item.sample
        full_map = upsample(item.anomaly_map, item.original_size)
        mask = None
        if split.has_masks:
            mask = (
                load_mask(s.mask_path, item.original_size)
                if s.mask_path
                else np.zeros(full_map.shape, dtype=bool)
            )
        ev.add(s.label, item.score, full_map if split.has_masks else None, mask, s.defect_type)
        if curves and split.has_masks:
            masks.append(mask)
            maps.append(full_map)
        scored.append(item)
    result = EvalResult(
        ev.compute(),
        ev.compute_by_defect(),
        scored,
        split.has_masks,
        threshold,
        skipped=len(split.test) - len(scored),
    )
    if threshold is not None:
        labels = np.array([s.sample.label for s in scored], dtype=bool)
        dec = result.decisions()
        result.metrics["false_alarms"] = int((dec & ~labels).sum())
        result.metrics["misses"] = int((~dec & labels).sum())
    if curves:
        labels = [s.sample.label for s in scored]
        result.curves["roc"] = roc_curve_points(labels, [s.score for s in scored])
        if masks:
            result.curves["pro"] = pro_curve(masks, maps)
    return result


def metrics_markdown(result: EvalResult, title: str) -> str:
    """A Markdown table of the overall and per-defect metrics."""
    keys = ["image_auroc", "pixel_auroc", "au_pro", "image_f1_max", "pixel_ap"]

    def fmt(v) -> str:
        return "—" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.4f}"

    lines = [f"### {title}", "", "| subset | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    lines.append("| all | " + " | ".join(fmt(result.metrics.get(k)) for k in keys) + " |")
    for defect, m in sorted(result.per_defect.items()):
        lines.append(f"| {defect} | " + " | ".join(fmt(m.get(k)) for k in keys) + " |")
    if not result.has_masks:
        lines.append("\nNo ground-truth masks: image-level metrics only.")
    return "\n".join(lines) + "\n"
