"""Metrics against hand-computed cases, scikit-learn and a brute-force MVTec AU-PRO reference."""

from __future__ import annotations

import math
from collections import deque

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from rd2t.evaluation import metrics
from rd2t.evaluation.metrics import (
    Evaluator,
    au_pro,
    image_auroc,
    image_f1_max,
    pixel_ap,
    pixel_auroc,
    pixel_metrics,
    pro_curve,
    roc_curve_points,
)


def row(values, dtype=np.float32) -> np.ndarray:
    """A one-row image: adjacency is then only left/right, so regions are easy to read."""
    return np.array([values], dtype=dtype)


# ----------------------------------------------------------------------------------------------
# Brute-force reference, independent of rd2t: own 8-connected flood fill, loop over thresholds
# ----------------------------------------------------------------------------------------------


def regions_8(mask: np.ndarray) -> list[np.ndarray]:
    """Boolean masks of the 8-connected components of ``mask`` (BFS flood fill)."""
    mask = np.asarray(mask, dtype=bool)
    seen = np.zeros_like(mask)
    out = []
    for start in zip(*np.nonzero(mask), strict=True):
        if seen[start]:
            continue
        comp = np.zeros_like(mask)
        queue = deque([start])
        seen[start] = True
        while queue:
            r, c = queue.popleft()
            comp[r, c] = True
            for dr in (-1, 0, 1):
                for dc in (-1, 0, 1):
                    rr, cc = r + dr, c + dc
                    inside = 0 <= rr < mask.shape[0] and 0 <= cc < mask.shape[1]
                    if inside and mask[rr, cc] and not seen[rr, cc]:
                        seen[rr, cc] = True
                        queue.append((rr, cc))
        out.append(comp)
    return out


def reference_curve(masks, maps) -> tuple[np.ndarray, np.ndarray]:
    region_scores = [amap[reg] for mask, amap in zip(masks, maps, strict=True) for reg in regions_8(mask)]
    normal = np.concatenate([amap[~np.asarray(mask, bool)] for mask, amap in zip(masks, maps, strict=True)])
    thresholds = np.unique(np.concatenate([m.ravel() for m in maps]))[::-1]
    xs, ys = [0.0], [0.0]
    for t in thresholds:
        xs.append(np.mean(normal >= t))
        ys.append(np.mean([np.mean(s >= t) for s in region_scores]))
    return np.array(xs + [1.0]), np.array(ys + [1.0])


def reference_au_pro(masks, maps, limit: float = 0.3) -> float:
    xs, ys = reference_curve(masks, maps)
    area = 0.0
    for x0, y0, x1, y1 in zip(xs[:-1], ys[:-1], xs[1:], ys[1:], strict=True):
        if x1 <= limit:
            area += (x1 - x0) * (y0 + y1) / 2
            continue
        y_at_limit = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
        area += (limit - x0) * (y0 + y_at_limit) / 2
        break
    return area / limit


def random_set(rng, dtype, decimals=None, n_normal=2):
    """Images of varied sizes with random rectangle/disk blobs, plus defect-free images."""
    shapes = [(17, 23), (32, 32), (20, 41), (9, 50), (25, 19)]
    masks, maps = [], []
    for k, (h, w) in enumerate(shapes):
        mask = np.zeros((h, w), bool)
        if k >= n_normal:
            yy, xx = np.mgrid[:h, :w]
            for _ in range(rng.integers(1, 4)):
                cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(1, 5)
                if rng.random() < 0.5:
                    mask |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
                else:
                    mask[cy : cy + r, cx : cx + 2 * r] = True
        scores = rng.random((h, w)) + 0.6 * mask  # defects score higher, with overlap
        if decimals is not None:
            scores = np.round(scores, decimals)  # many ties
        masks.append(mask)
        maps.append(scores.astype(dtype))
    return masks, maps


# ----------------------------------------------------------------------------------------------
# Image level
# ----------------------------------------------------------------------------------------------


def test_image_metrics_hand_computed():
    labels, scores = [0, 0, 1, 1], [0.1, 0.6, 0.4, 0.8]
    # Pairs (pos > neg): 0.4>0.1, 0.8>0.1, 0.8>0.6 -> 3 of 4.
    assert image_auroc(labels, scores) == pytest.approx(0.75)
    # Threshold 0.4: P = 2/3, R = 1 -> F1 = 0.8, the best of all thresholds.
    assert image_f1_max(labels, scores) == pytest.approx(0.8)
    fpr, tpr = roc_curve_points(labels, scores)
    assert fpr[0] == 0 and tpr[-1] == 1 and np.all(np.diff(fpr) >= 0)


def test_image_metrics_one_class_is_nan():
    assert math.isnan(image_auroc([0, 0], [0.1, 0.2]))
    assert math.isnan(image_f1_max([1, 1], [0.1, 0.2]))
    assert roc_curve_points([0, 0], [0.1, 0.2])[0].size == 0


# ----------------------------------------------------------------------------------------------
# AU-PRO, hand-computed
# ----------------------------------------------------------------------------------------------


def test_au_pro_one_region():
    mask, amap = row([1, 1, 0, 0]), row([0.9, 0.5, 0.7, 0.1])
    # Curve: (0,0) (0,.5) (.5,.5) (.5,1) (1,1) + MVTec's closing (1,1).
    fpr, pro = pro_curve([mask], [amap])
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 0.5, 1, 1])
    np.testing.assert_allclose(pro, [0, 0.5, 0.5, 1, 1, 1])
    assert au_pro([mask], [amap]) == pytest.approx(0.5)  # flat 0.5 up to FPR 0.3
    assert au_pro([mask], [amap], fpr_limit=1.0) == pytest.approx(0.5 * 0.5 + 0.5 * 1)


def test_au_pro_averages_regions_not_pixels():
    # Region A = pixel 0 (size 1), region B = pixels 2..4 (size 3); 8 defect-free pixels at 0.5/0.4.
    mask = row([1, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0])
    small_first = row([0.9, 0.5, 0.2, 0.2, 0.2, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4])
    big_first = row([0.2, 0.5, 0.9, 0.9, 0.9, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4])
    # Either way one of two regions is fully found before any false positive: PRO = 0.5 up to FPR 1.
    # Per-pixel overlap would give 0.25 and 0.75.
    assert au_pro([mask], [small_first]) == pytest.approx(0.5)
    assert au_pro([mask], [big_first]) == pytest.approx(0.5)


def test_regions_are_8_connected():
    mask = np.zeros((3, 4))
    mask[0, 0] = mask[1, 1] = 1  # diagonal neighbours: one region of 2 pixels
    mask[2, 3] = 1  # a separate region of 1 pixel
    amap = np.full((3, 4), 0.5, np.float32)
    amap[0, 0], amap[1, 1], amap[2, 3] = 1.0, 0.0, 0.0
    # 8-connected: PRO = (1/2 + 0) / 2 = 0.25 until every normal pixel is in; 4-connected would be 1/3.
    assert au_pro([mask], [amap]) == pytest.approx(0.25)


def test_normal_image_false_positives_lower_au_pro():
    mask, amap = row([1, 1, 0, 0]), row([0.9, 0.8, 0.1, 0.1])
    assert au_pro([mask], [amap]) == pytest.approx(1.0)
    # A good image whose pixel 0.95 beats every defect: FPR jumps to 1/4 before any PRO,
    # then PRO = 1 from 0.25 to 0.3 -> 0.05 / 0.3.
    good_mask, good_map = row([0, 0]), row([0.95, 0.05])
    assert au_pro([mask, good_mask], [amap, good_map]) == pytest.approx(0.05 / 0.3)


def test_ties_enter_at_one_threshold():
    # 2 defect pixels and 2 of 10 normal pixels share 0.5: one diagonal step (0,0)->(.2,1).
    mask = row([1, 1] + [0] * 10)
    amap = row([0.5, 0.5, 0.5, 0.5] + [0.1] * 8)
    expected = (0.5 * 0.2 * 1.0 + 0.1 * 1.0) / 0.3  # 2/3; a staircase would give 1/3 or 1
    assert au_pro([mask], [amap]) == pytest.approx(expected)
    assert au_pro([mask[:, ::-1]], [amap[:, ::-1]]) == pytest.approx(expected)  # order-free


def test_fpr_limit_interpolates_inside_a_step():
    # One region of 4 pixels, 10 normal pixels. Curve: (0,0) (0,.25) (.1,.25) (.1,.5) (.2,.5)
    # then a tie at 0.5 (2 normal + 2 defect pixels) to (.4, 1), then (1, 1).
    mask = row([1, 1, 1, 1] + [0] * 10)
    amap = row([0.95, 0.85, 0.5, 0.5, 0.9, 0.8, 0.5, 0.5] + [0.0] * 6)
    # Up to 0.3: 0.025 + 0.05 + trapezoid from (.2,.5) to (.3,.75) = 0.0625.
    assert au_pro([mask], [amap], fpr_limit=0.3) == pytest.approx(0.1375 / 0.3)
    # 0.4 is a curve point: no interpolation needed.
    assert au_pro([mask], [amap], fpr_limit=0.4) == pytest.approx(0.225 / 0.4)
    assert au_pro([mask], [amap], fpr_limit=1.0) == pytest.approx(0.825)


def test_degenerate_inputs_give_nan_not_errors():
    amap = row([0.1, 0.2, 0.3])
    r = pixel_metrics([row([0, 0, 0])], [amap])
    assert all(math.isnan(v) for v in r.values())
    assert math.isnan(au_pro([row([1, 1, 1])], [amap]))  # no defect-free pixel: FPR undefined
    assert pro_curve([row([0, 0, 0])], [amap])[0].size == 0
    assert math.isnan(pixel_auroc([], []))


def test_bad_inputs_raise():
    with pytest.raises(ValueError):
        au_pro([row([1, 0])], [row([0.1, 0.2])], fpr_limit=0.0)
    with pytest.raises(ValueError):
        pixel_auroc([row([1, 0])], [row([0.1, 0.2, 0.3])])
    with pytest.raises(ValueError):
        pixel_auroc([row([1, 0])], [row([np.nan, 0.2])])


# ----------------------------------------------------------------------------------------------
# AU-PRO and pixel metrics against independent references on random data
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1 << 20, 5])  # 5: tie groups straddle many chunks
@pytest.mark.parametrize(
    "dtype,decimals,seed",
    [(np.float32, 2, 0), (np.float32, None, 1), (np.float64, None, 2), (np.float64, 1, 3)],
)
def test_au_pro_matches_brute_force(monkeypatch, chunk, dtype, decimals, seed):
    monkeypatch.setattr(metrics, "_CHUNK", chunk)
    masks, maps = random_set(np.random.default_rng(seed), dtype, decimals)
    ref_fpr, ref_pro = reference_curve(masks, maps)
    fpr, pro = pro_curve(masks, maps)
    assert fpr.shape == ref_fpr.shape
    np.testing.assert_allclose(fpr, ref_fpr, atol=1e-12)
    np.testing.assert_allclose(pro, ref_pro, atol=1e-12)
    for limit in (0.3, 0.05, 1.0):
        assert au_pro(masks, maps, fpr_limit=limit) == pytest.approx(
            reference_au_pro(masks, maps, limit), abs=1e-6
        )


@pytest.mark.parametrize("chunk", [1 << 20, 3])
@pytest.mark.parametrize(
    "dtype,decimals,seed", [(np.float32, 2, 4), (np.float64, None, 5), (np.float32, 1, 6)]
)
def test_pixel_auroc_ap_match_sklearn(monkeypatch, chunk, dtype, decimals, seed):
    monkeypatch.setattr(metrics, "_CHUNK", chunk)
    masks, maps = random_set(np.random.default_rng(seed), dtype, decimals)
    y = np.concatenate([m.ravel() for m in masks])
    s = np.concatenate([m.ravel() for m in maps])
    assert pixel_auroc(masks, maps) == pytest.approx(roc_auc_score(y, s), abs=1e-9)
    assert pixel_ap(masks, maps) == pytest.approx(average_precision_score(y, s), abs=1e-9)


def test_negative_scores_and_signed_zero():
    # -0.0 == 0.0 must tie; negatives must sort below positives (the packed float32 key).
    rng = np.random.default_rng(7)
    amap = rng.choice(np.array([-2.5, -1.0, -0.0, 0.0, 0.25, 3.0], np.float32), size=(30, 30))
    mask = rng.random((30, 30)) < 0.3
    y, s = mask.ravel(), amap.ravel().astype(np.float64)
    assert pixel_auroc([mask], [amap]) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert pixel_ap([mask], [amap]) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert au_pro([mask], [amap]) == pytest.approx(reference_au_pro([mask], [amap]), abs=1e-9)


def test_float64_scores_are_not_rounded_to_float32():
    # In float32 these two scores would tie (AUROC 0.5); the exact answer is 0.
    mask = row([1, 0], dtype=np.float64)
    amap = row([0.1, 0.1 + 1e-12], dtype=np.float64)
    assert pixel_auroc([mask], [amap]) == 0.0


# ----------------------------------------------------------------------------------------------
# Evaluator
# ----------------------------------------------------------------------------------------------


def fill(ev: Evaluator, masks, maps, labels, types, scores):
    buffer = np.empty((64, 64), np.float32)  # one reused output buffer, as an inference loop would
    for mask, amap, label, kind, score in zip(masks, maps, labels, types, scores, strict=True):
        view = buffer[: amap.shape[0], : amap.shape[1]]
        view[...] = amap
        ev.add(label, score, view, mask if mask.any() else None, kind)
        buffer[...] = -1.0


def test_evaluator_equals_function_api_and_breaks_down_by_defect():
    rng = np.random.default_rng(8)
    masks, maps = random_set(rng, np.float32, 2, n_normal=2)
    more_masks, more_maps = random_set(rng, np.float32, None, n_normal=1)
    masks, maps = masks + more_masks, maps + more_maps
    labels = [int(m.any()) for m in masks]
    types = ["" if lab == 0 else ("crack" if i % 2 else "scratch") for i, lab in enumerate(labels)]
    scores = [float(a.max()) for a in maps]
    ev = Evaluator()
    fill(ev, masks, maps, labels, types, scores)
    assert len(ev) == len(masks)

    result = ev.compute()
    assert set(result) == {"image_auroc", "image_f1_max", "pixel_auroc", "pixel_ap", "au_pro"}
    assert result["image_auroc"] == pytest.approx(image_auroc(labels, scores), abs=1e-12)
    assert result["image_f1_max"] == pytest.approx(image_f1_max(labels, scores), abs=1e-12)
    expected = pixel_metrics(masks, maps)
    for key, value in expected.items():
        assert result[key] == pytest.approx(value, abs=1e-12)

    by_defect = ev.compute_by_defect()
    assert sorted(by_defect) == ["crack", "scratch"]
    for kind, got in by_defect.items():
        keep = [i for i, (lab, t) in enumerate(zip(labels, types, strict=True)) if lab == 0 or t == kind]
        sub_masks, sub_maps = [masks[i] for i in keep], [maps[i] for i in keep]
        assert got["au_pro"] == pytest.approx(au_pro(sub_masks, sub_maps), abs=1e-12)
        assert got["pixel_auroc"] == pytest.approx(pixel_auroc(sub_masks, sub_maps), abs=1e-12)
        sub_labels, sub_scores = [labels[i] for i in keep], [scores[i] for i in keep]
        assert got["image_auroc"] == pytest.approx(image_auroc(sub_labels, sub_scores), abs=1e-12)
        assert got["au_pro"] != pytest.approx(result["au_pro"], abs=1e-6)  # really a subset


def test_evaluator_without_masks_gives_nan_pixel_metrics():
    ev = Evaluator()
    for label, score in [(0, 0.1), (0, 0.3), (1, 0.2), (1, 0.9)]:
        ev.add(label, score)
    result = ev.compute()
    assert result["image_auroc"] == pytest.approx(0.75)
    assert all(math.isnan(result[k]) for k in ("pixel_auroc", "pixel_ap", "au_pro"))

    # A defective image with a map but no ground truth makes pixel metrics undefined, not wrong.
    ev = Evaluator()
    ev.add(0, 0.1, row([0.1, 0.2]))
    ev.add(1, 0.9, row([0.9, 0.2]), row([1, 0]))
    ev.add(1, 0.8, row([0.8, 0.2]))
    assert math.isnan(ev.compute()["au_pro"])
    assert not math.isnan(ev.compute()["image_auroc"])


def test_evaluator_rejects_mask_without_map():
    with pytest.raises(ValueError):
        Evaluator().add(1, 0.5, None, row([1, 0]))
