"""Anomaly-detection metrics: image AUROC / F1-max, pixel AUROC / AP and MVTec AD's AU-PRO.

Image metrics go through scikit-learn. Pixel metrics run over every pixel of every test image
(157 M pixels for 150 images at 1024x1024), so they are computed here from ONE sort of all pixels
that AUROC, AP and the PRO curve share, walked in fixed-size chunks so temporaries stay small:

* AUROC is the trapezoid of the ROC through the (FP, TP) counts at every distinct score, summed as
  an exact integer (ties handled exactly: a tie group enters at one threshold, i.e. counts 1/2).
* AP is scikit-learn's step sum  sum_k (R_k - R_{k-1}) * P_k  over the distinct scores.
* AU-PRO reproduces MVTec AD's official evaluation (``pro_curve_util.compute_pro`` and
  ``generic_util.trapezoid``): 8-connected ground-truth regions per image, every distinct score a
  threshold, FPR over all defect-free pixels of the whole test set, PRO = mean over all regions of
  the covered fraction, trapezoid up to ``fpr_limit`` with linear interpolation at the limit,
  divided by ``fpr_limit``. The only deliberate difference: FPRs are exact integer counts divided
  in float64, where MVTec's code rounds them to float32.

Each pixel is packed into one uint64: the float32 score mapped to an order-preserving uint32 in the
high half, its global region id (0 = defect-free) in the low half. An in-place ``ndarray.sort`` of
that array is the whole sort: 8 B per pixel, no int64 argsort indices, no float64 copies. Maps that
float32 cannot hold exactly (genuine float64 scores) take an exact but larger argsort path instead.
Nothing is ever binned or rounded, so results are exact up to float64 summation.

Degenerate inputs never raise: a metric whose two classes are not both present returns nan.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
from scipy import ndimage
from sklearn.metrics import precision_recall_curve, roc_auc_score, roc_curve

__all__ = [
    "Evaluator",
    "au_pro",
    "image_auroc",
    "image_f1_max",
    "pixel_ap",
    "pixel_auroc",
    "pixel_metrics",
    "pro_curve",
    "roc_curve_points",
]

# Ground-truth regions are 8-connected components, as in MVTec's pro_curve_util.py.
_STRUCTURE = np.ones((3, 3), dtype=int)
# Pixels handled per step of the walk over the sorted scores; ~100 B of temporaries per pixel,
# so about 100 MiB whatever the test-set size. Module-level so tests can shrink it.
_CHUNK = 1 << 20
# Counts and the integer ROC area stay exact in int64 below this many pixels (N_neg * N_pos * 2).
_MAX_PIXELS = 1 << 31


# --------------------------------------------------------------------------------------------
# Image level
# --------------------------------------------------------------------------------------------


def _image_inputs(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray):
    y = np.asarray(labels).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels ({y.size}) and scores ({s.size}) differ in length")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("image labels must be 0 (good) or 1 (defective)")
    return y.astype(bool), s


def image_auroc(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC of image scores (label 1 = defective); nan unless both classes occur."""
    y, s = _image_inputs(labels, scores)
    if y.all() or not y.any():
        return math.nan
    return float(roc_auc_score(y, s))


def image_f1_max(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Best F1 over all thresholds of the image scores; nan unless both classes occur."""
    y, s = _image_inputs(labels, scores)
    if y.all() or not y.any():
        return math.nan
    precision, recall, _ = precision_recall_curve(y, s)
    denom = precision + recall
    # The appended (P=1, R=0) point and any 0/0 point have F1 = 0.
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    return float(f1.max())


def roc_curve_points(
    labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) points of the image-level ROC for plotting; two empty arrays with one class only."""
    y, s = _image_inputs(labels, scores)
    if y.all() or not y.any():
        return np.empty(0), np.empty(0)
    fpr, tpr, _ = roc_curve(y, s)
    return fpr, tpr


# --------------------------------------------------------------------------------------------
# Pixel level: preparing maps and masks
# --------------------------------------------------------------------------------------------


def _score_dtype(anomaly_map: np.ndarray) -> type[np.floating]:
    """float32 when it holds the map exactly (the compact sort), else float64 (never round scores)."""
    a = np.asarray(anomaly_map)
    if a.dtype == np.float32:
        return np.float32
    a64 = a.astype(np.float64)
    # NaN compares unequal, so a NaN map falls through to float64 and is rejected by _clean_map.
    return np.float32 if np.array_equal(a64.astype(np.float32), a64) else np.float64


def _clean_map(anomaly_map: np.ndarray, dtype: type[np.floating]) -> np.ndarray:
    """A fresh copy in ``dtype`` with -0.0 folded into +0.0 (equal scores must get equal sort keys)."""
    a = np.asarray(anomaly_map, dtype=dtype) + dtype(0)  # -0.0 + 0.0 == +0.0; also copies
    if a.ndim != 2:
        raise ValueError(f"anomaly maps must be 2-D, got shape {a.shape}")
    if np.isnan(a).any():
        raise ValueError("anomaly map contains NaN")
    return a


def _check_pairs(masks: Sequence[np.ndarray], maps: Sequence[np.ndarray]) -> None:
    if len(masks) != len(maps):
        raise ValueError(f"{len(masks)} masks but {len(maps)} anomaly maps")
    for i, (mask, amap) in enumerate(zip(masks, maps, strict=True)):
        if np.shape(mask) != np.shape(amap) or np.ndim(amap) != 2:
            raise ValueError(
                f"image {i}: mask {np.shape(mask)} and anomaly map {np.shape(amap)} must share one 2-D shape"
            )


def _label_regions(mask: np.ndarray | None, first_id: int) -> tuple[np.ndarray | None, np.ndarray]:
    """Global region id per pixel (0 = defect-free; None when the image has no region) and sizes."""
    if mask is None:
        return None, np.empty(0, dtype=np.int64)
    labeled, n = ndimage.label(np.asarray(mask) != 0, structure=_STRUCTURE)
    if n == 0:
        return None, np.empty(0, dtype=np.int64)
    sizes = np.bincount(labeled.ravel(), minlength=n + 1)[1:]
    ids = labeled.astype(np.uint32)
    np.add(ids, np.uint32(first_id - 1), out=ids, where=labeled > 0)
    return ids, sizes


def _f32_order_key(scores: np.ndarray) -> np.ndarray:
    """uint32 keys that sort like the float32 scores: flip all bits of negatives, the sign of the rest."""
    bits = scores.view(np.uint32)
    return np.where(bits >= np.uint32(0x80000000), ~bits, bits | np.uint32(0x80000000))


# A chunk of the walk: sort keys in descending-score order (equal keys <=> equal scores), their region
# ids, and the key that follows the chunk (None at the end) so a tie group split across chunks is
# closed only once.
_Chunk = tuple[np.ndarray, np.ndarray, object]


class _SortedPixels:
    """All pixels of a test set sorted once by DEScending score; iterate to walk them in chunks."""

    def __init__(self, masks: Sequence[np.ndarray | None], maps: Sequence[np.ndarray]) -> None:
        total = sum(int(np.size(m)) for m in maps)
        if total >= _MAX_PIXELS:
            raise ValueError(f"{total} pixels exceed the supported {_MAX_PIXELS}")
        self.total = total
        dtype = np.float32 if all(_score_dtype(m) is np.float32 for m in maps) else np.float64
        self._packed = dtype is np.float32
        if self._packed:
            # ~score key (high 32 bits) | region id (low 32 bits): one uint64 per pixel whose
            # ascending sort is the descending score order (forward, contiguous chunks later).
            self._data = np.empty(total, dtype=np.uint64)
        else:
            self._scores = np.empty(total, dtype=np.float64)  # negated: ascending = descending score
            self._ids = np.zeros(total, dtype=np.uint32)

        region_sizes = [np.zeros(1, dtype=np.int64)]  # slot 0: defect-free pixels, weight 0
        next_id, pos, self.n_pos = 1, 0, 0
        for mask, amap in zip(masks, maps, strict=True):
            scores = _clean_map(amap, dtype).ravel()
            ids, sizes = _label_regions(mask, next_id)
            if next_id + sizes.size >= 1 << 32:
                raise ValueError("more than 2**32 - 2 ground-truth regions")
            next_id += sizes.size
            self.n_pos += int(sizes.sum())
            region_sizes.append(sizes)
            seg = slice(pos, pos + scores.size)
            if self._packed:
                out = self._data[seg]
                out[...] = ~_f32_order_key(scores)
                out <<= np.uint64(32)
                if ids is not None:
                    out |= ids.ravel()
            else:
                np.negative(scores, out=self._scores[seg])
                if ids is not None:
                    self._ids[seg] = ids.ravel()
            pos += scores.size
            del scores, ids

        self.n_neg = total - self.n_pos
        self.n_regions = next_id - 1
        # PRO increment of a pixel = 1 / size of its region (0 for defect-free pixels).
        all_sizes = np.concatenate(region_sizes).astype(np.float64)
        self.weight = np.divide(1.0, all_sizes, out=np.zeros_like(all_sizes), where=all_sizes > 0)

        if self._packed:
            self._data.sort()  # in place: no index array, no copy
        else:
            self._order = np.argsort(self._scores, kind="stable")

    def __iter__(self) -> Iterator[_Chunk]:
        for lo in range(0, self.total, _CHUNK):
            hi = min(lo + _CHUNK, self.total)
            if self._packed:
                c = self._data[lo:hi]
                keys = c >> np.uint64(32)
                ids = (c & np.uint64(0xFFFFFFFF)).view(np.int64)  # < 2**32: same value, fast take
                nxt = self._data[hi] >> np.uint64(32) if hi < self.total else None
            else:
                idx = self._order[lo:hi]
                keys, ids = self._scores[idx], self._ids[idx].astype(np.int64)
                nxt = self._scores[self._order[hi]] if hi < self.total else None
            yield keys, ids, nxt


def _curve_points(pixels: _SortedPixels) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per chunk, (FP count, TP count, sum of region overlaps) at each distinct score, high to low.

    A point is emitted only at the LAST pixel of each run of equal scores, so all tied pixels
    enter at the same threshold (MVTec's keep_mask over np.diff of the sorted scores).
    """
    seen, tp0, pro0 = 0, 0, 0.0
    for keys, ids, nxt in pixels:
        n = keys.size
        group_end = np.empty(n, dtype=bool)
        np.not_equal(keys[:-1], keys[1:], out=group_end[:-1])
        group_end[-1] = nxt is None or keys[-1] != nxt
        tp = np.cumsum(ids != 0, dtype=np.int64)
        tp += tp0
        fp = np.arange(seen + 1, seen + n + 1, dtype=np.int64)
        fp -= tp
        pro = np.cumsum(np.take(pixels.weight, ids))
        pro += pro0
        seen, tp0, pro0 = seen + n, int(tp[-1]), float(pro[-1])
        if group_end.all():  # common with float maps: every score distinct, nothing to merge
            yield fp, tp, pro
        elif group_end.any():
            ends = np.flatnonzero(group_end)
            yield fp.take(ends), tp.take(ends), pro.take(ends)


class _Integrator:
    """Streams the curve points into ROC area, AP and the PRO area up to ``fpr_limit``."""

    def __init__(self, pixels: _SortedPixels, fpr_limit: float, keep_pro_curve: bool = False) -> None:
        self.n_neg, self.n_pos, self.n_regions = pixels.n_neg, pixels.n_pos, pixels.n_regions
        self.fpr_limit = fpr_limit
        self.fp, self.tp = 0, 0  # previous point, as counts
        self.x, self.y = 0.0, 0.0  # previous PRO-curve point; MVTec's curve starts at (0, 0)
        self.roc_area2 = 0  # 2 * N_neg * N_pos * AUROC, an exact Python int
        self.ap = 0.0
        self.pro_area = 0.0
        self.pro_open = True  # False once the PRO curve has passed fpr_limit
        self.curve: list[tuple[np.ndarray, np.ndarray]] | None = [] if keep_pro_curve else None

    def update(self, fp: np.ndarray, tp: np.ndarray, pro: np.ndarray) -> None:
        fp_prev = np.concatenate(([self.fp], fp[:-1]))
        tp_prev = np.concatenate(([self.tp], tp[:-1]))
        # ROC trapezoids in integer units: sum dFP * (TP + TP_prev) fits int64 (see _MAX_PIXELS).
        self.roc_area2 += int(np.dot(fp - fp_prev, tp + tp_prev))
        # AP as scikit-learn: recall gain times precision at each distinct threshold.
        self.ap += float(np.dot(tp - tp_prev, tp / (tp + fp))) / self.n_pos
        self.fp, self.tp = int(fp[-1]), int(tp[-1])
        if not self.pro_open and self.curve is None:
            return  # past fpr_limit only ROC and AP still need the points

        x = fp / self.n_neg
        y = np.minimum(pro / self.n_regions, 1.0)  # MVTec clips cumsum round-off above 1
        if self.curve is not None:
            self.curve.append((x, y))
        if self.pro_open:
            self._integrate_pro(x, y)
        self.x, self.y = float(x[-1]), float(y[-1])

    def _integrate_pro(self, x: np.ndarray, y: np.ndarray) -> None:
        xs = np.concatenate(([self.x], x))
        ys = np.concatenate(([self.y], y))
        beyond = np.flatnonzero(x > self.fpr_limit)
        k = beyond[0] if beyond.size else x.size  # xs[: k + 1] are the points with x <= limit
        self.pro_area += float(np.sum(0.5 * (ys[1 : k + 1] + ys[:k]) * np.diff(xs[: k + 1])))
        if beyond.size:
            # generic_util.trapezoid: interpolate y at the limit between the last point inside and
            # the first point beyond, and add that partial trapezoid (zero if x == limit exactly).
            x0, y0, x1, y1 = xs[k], ys[k], xs[k + 1], ys[k + 1]
            y_lim = y0 + (y1 - y0) * (self.fpr_limit - x0) / (x1 - x0)
            self.pro_area += 0.5 * (y_lim + y0) * (self.fpr_limit - x0)
            self.pro_open = False

    def finish(self) -> dict[str, float]:
        # MVTec appends (1, 1); it only matters for fpr_limit = 1, where it adds a zero-width step.
        if self.pro_open:
            self._integrate_pro(np.array([1.0]), np.array([1.0]))
        return {
            "pixel_auroc": self.roc_area2 / (2 * self.n_neg * self.n_pos),
            "pixel_ap": self.ap,
            "au_pro": self.pro_area / self.fpr_limit,
        }


_NAN_PIXEL = {"pixel_auroc": math.nan, "pixel_ap": math.nan, "au_pro": math.nan}


def _check_limit(fpr_limit: float) -> None:
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")


def _pixel_metrics(
    masks: Sequence[np.ndarray | None], maps: Sequence[np.ndarray], fpr_limit: float
) -> dict[str, float]:
    """Pixel AUROC, AP and AU-PRO from one sort; a mask of None means an all defect-free image."""
    _check_limit(fpr_limit)
    if not maps:
        return dict(_NAN_PIXEL)
    pixels = _SortedPixels(masks, maps)
    if pixels.n_pos == 0 or pixels.n_neg == 0:
        return dict(_NAN_PIXEL)
    integrator = _Integrator(pixels, fpr_limit)
    for points in _curve_points(pixels):
        integrator.update(*points)
    del pixels
    return integrator.finish()


# --------------------------------------------------------------------------------------------
# Pixel level: public functions (masks: nonzero = defect; maps: same shape as their mask)
# --------------------------------------------------------------------------------------------


def pixel_metrics(
    masks: Sequence[np.ndarray], maps: Sequence[np.ndarray], fpr_limit: float = 0.3
) -> dict[str, float]:
    """``pixel_auroc``, ``pixel_ap`` and ``au_pro`` sharing one sort of all pixels of all images."""
    _check_pairs(masks, maps)
    return _pixel_metrics(masks, maps, fpr_limit)


def pixel_auroc(masks: Sequence[np.ndarray], maps: Sequence[np.ndarray]) -> float:
    """AUROC over all pixels of all images (exact with ties); nan when masks hold one class only."""
    return pixel_metrics(masks, maps)["pixel_auroc"]


def pixel_ap(masks: Sequence[np.ndarray], maps: Sequence[np.ndarray]) -> float:
    """Average precision over all pixels (scikit-learn's definition); nan with one class only."""
    return pixel_metrics(masks, maps)["pixel_ap"]


def au_pro(masks: Sequence[np.ndarray], maps: Sequence[np.ndarray], fpr_limit: float = 0.3) -> float:
    """MVTec AD's normalised area under the PRO curve up to ``fpr_limit``; nan without any region."""
    return pixel_metrics(masks, maps, fpr_limit)["au_pro"]


def pro_curve(masks: Sequence[np.ndarray], maps: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """MVTec's full PRO curve (FPR, PRO), from (0, 0) to (1, 1), one point per distinct score.

    Holds 16 B per distinct score: for plots of small sets; use au_pro or Evaluator for the area.
    Returns two empty arrays when there is no region or no defect-free pixel.
    """
    _check_pairs(masks, maps)
    if not maps:
        return np.empty(0), np.empty(0)
    pixels = _SortedPixels(masks, maps)
    if pixels.n_pos == 0 or pixels.n_neg == 0:
        return np.empty(0), np.empty(0)
    integrator = _Integrator(pixels, 1.0, keep_pro_curve=True)
    for points in _curve_points(pixels):
        integrator.update(*points)
    xs, ys = zip(*integrator.curve, strict=True) if integrator.curve else ((), ())
    fpr = np.concatenate(([0.0], *xs, [1.0]))
    pro = np.concatenate(([0.0], *ys, [1.0]))
    return fpr, pro


# --------------------------------------------------------------------------------------------
# Streaming evaluator
# --------------------------------------------------------------------------------------------


class Evaluator:
    """Collects a test set one image at a time, then computes every metric.

    Pixel metrics cover the images added with an ``anomaly_map``; a good image (label 0) without a
    mask counts as all defect-free. They are nan when no map was given, when a defective image with
    a map has no mask (its ground truth is unknown), or when the masks hold one class only.

    Memory: each map is kept as its own float32 copy (4 B/pixel; float64 only if float32 would
    round it) and each mask as bool (1 B/pixel). ``compute`` adds 8 B per evaluated pixel for the
    packed sort keys plus ~100 MiB of chunk temporaries, all freed on return: about 13 B/pixel at
    peak, ~2 GiB for 150 images at 1024x1024.
    """

    def __init__(self, fpr_limit: float = 0.3) -> None:
        _check_limit(fpr_limit)
        self.fpr_limit = fpr_limit
        self._labels: list[int] = []
        self._scores: list[float] = []
        self._defect_types: list[str] = []
        self._maps: list[np.ndarray | None] = []
        self._masks: list[np.ndarray | None] = []

    def __len__(self) -> int:
        return len(self._labels)

    def add(
        self,
        label: int,
        score: float,
        anomaly_map: np.ndarray | None = None,
        mask: np.ndarray | None = None,
        defect_type: str = "",
    ) -> None:
        """Record one test image: label 1 = defective, its image score, map and mask (nonzero = defect)."""
        if label not in (0, 1):
            raise ValueError(f"label must be 0 or 1, got {label!r}")
        if mask is not None and anomaly_map is None:
            raise ValueError("a mask was given without an anomaly map")
        if anomaly_map is not None:
            # Copies: callers often reuse one output buffer for every image.
            anomaly_map = _clean_map(anomaly_map, _score_dtype(anomaly_map))
            if mask is not None:
                mask = np.asarray(mask) != 0
                if mask.shape != anomaly_map.shape:
                    raise ValueError(f"mask {mask.shape} and anomaly map {anomaly_map.shape} differ in shape")
        self._labels.append(int(label))
        self._scores.append(float(score))
        self._defect_types.append(defect_type)
        self._maps.append(anomaly_map)
        self._masks.append(mask)

    def compute(self) -> dict[str, float]:
        """``image_auroc``, ``image_f1_max``, ``pixel_auroc``, ``pixel_ap``, ``au_pro`` over all images."""
        return self._compute(range(len(self)))

    def compute_by_defect(self) -> dict[str, dict[str, float]]:
        """Per defect type: the ``compute`` metrics on all good images plus that type's images."""
        good = [i for i, lab in enumerate(self._labels) if lab == 0]
        types = sorted({d for d, lab in zip(self._defect_types, self._labels, strict=True) if lab == 1})
        return {
            t: self._compute(
                good + [i for i, lab in enumerate(self._labels) if lab == 1 and self._defect_types[i] == t]
            )
            for t in types
        }

    def _compute(self, indices: Sequence[int]) -> dict[str, float]:
        labels = [self._labels[i] for i in indices]
        scores = [self._scores[i] for i in indices]
        result = {"image_auroc": image_auroc(labels, scores), "image_f1_max": image_f1_max(labels, scores)}
        with_map = [i for i in indices if self._maps[i] is not None]
        if any(self._labels[i] == 1 and self._masks[i] is None for i in with_map):
            result.update(_NAN_PIXEL)
        else:
            maps = [self._maps[i] for i in with_map]
            masks = [self._masks[i] for i in with_map]
            result.update(_pixel_metrics(masks, maps, self.fpr_limit))
        return result
