"""One self-contained HTML report of an evaluation or a prediction run.

The file has no external reference at all (no URL, no script, no web font): images are base64 PNG
data URIs, plots are matplotlib PNGs (rd2t.report.plots), the CSS (style.css beside this file) is
inlined. It can be mailed, archived or opened on an
air-gapped shop-floor PC and looks the same everywhere.

Heat maps share ONE colour scale across the whole report (see ``default_map_range``) so that red
means the same anomaly score on every image.
"""

from __future__ import annotations

import datetime
import html
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from rd2t import __version__
from rd2t.calibration import map_range_from
from rd2t.data import load_image
from rd2t.errors import InputError
from rd2t.evaluation.metrics import roc_curve_points
from rd2t.files import atomic_write
from rd2t.report.heatmap import binary_mask, contour, overlay, resize_map
from rd2t.report.plots import (
    PRO_FPR_LIMIT,
    colorbar_uri,
    fmt_score,
    is_missing,
    plot_histogram,
    plot_pro,
    plot_roc,
    png_uri,
)

__all__ = ["ImageResult", "default_map_range", "write_report"]

# Gallery thumbnails: at most this many pixels on their longer side.
THUMB_SIZE = 256
# Examples shown per defect type, spread over that type's score range.
EXAMPLES_PER_TYPE = 4
# Strongest blend of the heat map over the part (at the top of the scale): jet's dark red at 0.5 looks
# muddy on grey metal, 0.7 reads as red while the surface texture still shows through.
OVERLAY_ALPHA = 0.7
GT_COLOR = (0, 255, 0)
PRED_COLOR = (255, 0, 255)

# Known metrics in display order: (name, what it tells a reader who is not an ML engineer).
METRICS: dict[str, tuple[str, str]] = {
    "image_auroc": (
        "Image AUROC",
        "How well image scores separate good from defective parts (1 = perfect, 0.5 = chance)",
    ),
    "image_f1_max": ("Image F1-max", "Best balance of precision and recall over all possible thresholds"),
    "pixel_auroc": ("Pixel AUROC", "How well heat-map pixels separate defect from defect-free area"),
    "au_pro": (
        "AU-PRO",
        "Share of each defect region covered by the heat map, up to 30 % pixel false positives",
    ),
    "pixel_ap": ("Pixel AP", "Average precision of defect pixels (sensitive to small defects)"),
    "false_alarms": ("False alarms", "Good images rejected at the threshold"),
    "misses": ("Misses", "Defective images accepted at the threshold"),
}
# Metrics that are fractions in [0, 1]: shown with 4 decimals, like the evaluation's Markdown table.
UNIT_METRICS = {"image_auroc", "image_f1_max", "pixel_auroc", "au_pro", "pixel_ap"}
PIXEL_METRICS = ("pixel_auroc", "au_pro", "pixel_ap")


@dataclass(eq=False)  # numpy fields: == would compare arrays element-wise and raise
class ImageResult:
    """One scored image as the report shows it."""

    path: Path
    label: int | None  # 0 good, 1 defective, None unknown (plain prediction)
    defect_type: str
    score: float
    anomaly_map: np.ndarray  # float32 (h, w) at the model's working resolution
    mask: np.ndarray | None  # bool ground truth at the image's original resolution, or None
    decision: bool | None = None  # True = defective (score > threshold)


# --------------------------------------------------------------------------------------------
# Formatting
# --------------------------------------------------------------------------------------------


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _fmt_metric(key: str, value: object) -> str:
    if is_missing(value):
        return "—"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if key in UNIT_METRICS:
        return f"{float(value):.4f}"
    return f"{float(value):.4g}"


def _metric_name(key: str) -> str:
    return METRICS[key][0] if key in METRICS else key.replace("_", " ").capitalize()


def _ordered_keys(keys: Sequence[str]) -> list[str]:
    """Known metrics first in their usual order, then any others as given."""
    known = [k for k in METRICS if k in keys]
    return known + [k for k in keys if k not in METRICS]


def _fmt_info(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_fmt_info(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt_info(v) for v in value)
    return str(value)


def _pct(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.1f} %" if whole else "—"


def _short_path(path: Path) -> str:
    """parent/name: enough to find the file among a dataset's per-defect folders."""
    p = Path(path)
    return f"{p.parent.name}/{p.name}" if p.parent.name else p.name


# --------------------------------------------------------------------------------------------
# Colour scale shared by all heat maps
# --------------------------------------------------------------------------------------------


def _pooled(maps: Sequence[np.ndarray], limit: int = 4_000_000) -> np.ndarray:
    """All pixels of the maps, evenly subsampled to ``limit`` (percentiles need no more)."""
    flat = np.concatenate([np.asarray(m, dtype=np.float32).ravel() for m in maps])
    flat = flat[np.isfinite(flat)]
    step = max(1, flat.size // limit)
    return flat[::step]


def _threshold_on_map_scale(results: Sequence[ImageResult], threshold: float | None) -> bool:
    """True when each score lies within its map's range, i.e. the score is a statistic of the map
    (rd2t: its maximum) and the image threshold can be read on the maps' scale too."""
    if threshold is None or not results:
        return False
    for r in results:
        lo, hi = float(np.nanmin(r.anomaly_map)), float(np.nanmax(r.anomaly_map))
        tol = 1e-3 * max(1.0, hi - lo)
        if not lo - tol <= r.score <= hi + tol:
            return False
    return True


def default_map_range(results: Sequence[ImageResult], threshold: float | None = None) -> tuple[float, float]:
    """The (low, high) colour scale shared by every heat map of a report.

    * low = median of all map pixels of the good images (of all images if none is labelled good): the
      typical defect-free level, which the overlay leaves fully transparent;
    * high, when the threshold is on the maps' scale: the value that puts the threshold at 3/4 of the
      scale, so everything above the pass/fail threshold is yellow to red and everything below is
      blue to green, faint;
    * high otherwise: the 99th percentile of the maps' maxima, so only the most anomalous images
      saturate.
    """
    if not results:
        return 0.0, 1.0
    good = [r.anomaly_map for r in results if r.label == 0]
    low = float(np.median(_pooled(good or [r.anomaly_map for r in results])))
    if threshold is not None and threshold > low and _threshold_on_map_scale(results, threshold):
        return map_range_from(low, threshold)
    high = float(np.percentile([np.nanmax(r.anomaly_map) for r in results], 99))
    return low, high if high > low else low + 1.0


# --------------------------------------------------------------------------------------------
# Gallery
# --------------------------------------------------------------------------------------------


def _thumbnail(path: Path, map_shape: tuple[int, ...]) -> tuple[Image.Image, bool]:
    """The image shrunk to THUMB_SIZE, or a grey stand-in of the map's shape when it cannot be read."""
    try:
        img = load_image(path)
    except InputError:
        h, w = map_shape[:2]
        scale = THUMB_SIZE / max(h, w)
        return Image.new("RGB", (max(1, round(w * scale)), max(1, round(h * scale))), (128, 128, 128)), False
    img.thumbnail((THUMB_SIZE, THUMB_SIZE), Image.Resampling.LANCZOS)
    return img, True


def _outcome(r: ImageResult) -> tuple[str, str]:
    """(css class, text) for the card: a miss or a false alarm is what a reader looks for first."""
    if r.label is None or r.decision is None:
        return "", ""
    if r.label == 1 and not r.decision:
        return "miss", "missed defect"
    if r.label == 0 and r.decision:
        return "alarm", "false alarm"
    return "ok", "correct"


class _Gallery:
    """Renders result cards, each thumbnail computed and encoded once even if shown twice."""

    def __init__(self, low: float, high: float, region_threshold: float | None) -> None:
        self.low, self.high = low, high
        self.region_threshold = region_threshold  # None: no predicted-region outline
        self._panels: dict[int, list[tuple[str, str]]] = {}
        self._readable: dict[int, bool] = {}

    def _make_panels(self, r: ImageResult) -> list[tuple[str, str]]:
        img, readable = _thumbnail(r.path, np.shape(r.anomaly_map))
        self._readable[id(r)] = readable
        amap = resize_map(r.anomaly_map, img.size)
        panels = [
            ("image", png_uri(img)),
            ("heat map", png_uri(overlay(img, amap, self.low, self.high, OVERLAY_ALPHA))),
        ]
        if r.mask is not None or self.region_threshold is not None:
            marked = img
            if r.mask is not None:
                marked = contour(marked, r.mask, GT_COLOR, width=2)
            if self.region_threshold is not None:
                marked = contour(marked, binary_mask(amap, self.region_threshold), PRED_COLOR, width=2)
            panels.append(("regions", png_uri(marked)))
        return panels

    def card(self, r: ImageResult) -> str:
        if id(r) not in self._panels:
            self._panels[id(r)] = self._make_panels(r)
        css, outcome = _outcome(r)
        panels = "".join(
            f'<div class="panel"><img src="{uri}" alt="{_esc(name)}"><span>{_esc(name)}</span></div>'
            for name, uri in self._panels[id(r)]
        )
        badge = ""
        if r.decision is not None:
            badge = (
                '<span class="badge ng">DEFECT</span>' if r.decision else '<span class="badge ok">OK</span>'
            )
        outcome_html = f'<span class="outcome {css}">{_esc(outcome)}</span>' if outcome else ""
        missing = "" if self._readable[id(r)] else '<div class="warn">image file could not be read</div>'
        kind = {0: "good", 1: "defective"}.get(r.label, "")
        type_text = r.defect_type if r.label is None or r.defect_type == kind else f"{kind} · {r.defect_type}"
        return (
            f'<figure class="card {css}">'
            f'<div class="panels">{panels}</div>{missing}'
            f'<figcaption><div class="name" title="{_esc(r.path)}">{_esc(_short_path(r.path))}</div>'
            f'<div class="meta">{f"<span class=type>{_esc(type_text)}</span>" if type_text else ""}'
            f'<span class="score">score <b>{fmt_score(r.score)}</b></span>{badge}{outcome_html}</div>'
            "</figcaption></figure>"
        )

    def cards(self, results: Sequence[ImageResult]) -> str:
        return '<div class="cards">' + "".join(self.card(r) for r in results) + "</div>"


def _spread(results: list[ImageResult], n: int) -> list[ImageResult]:
    """n results evenly spread over the score ranking (highest and lowest included), highest first."""
    ranked = sorted(results, key=lambda r: r.score, reverse=True)
    if len(ranked) <= n:
        return ranked
    if n <= 1:
        return ranked[:n]
    picks = sorted({round(i * (len(ranked) - 1) / (n - 1)) for i in range(n)})
    return [ranked[i] for i in picks]


# --------------------------------------------------------------------------------------------
# HTML sections
# --------------------------------------------------------------------------------------------


def _info_table(info: dict[str, Any] | None) -> str:
    if not info:
        return ""
    rows = "".join(
        f"<tr><th>{_esc(str(k).replace('_', ' ').capitalize())}</th><td>{_esc(_fmt_info(v))}</td></tr>"
        for k, v in info.items()
    )
    return f'<table class="info">{rows}</table>'


def _tile(label: str, value: str, sub: str = "", css: str = "") -> str:
    sub_html = f'<div class="sub">{_esc(sub)}</div>' if sub else ""
    return (
        f'<div class="tile {css}"><div class="label">{_esc(label)}</div>'
        f'<div class="value">{_esc(value)}</div>{sub_html}</div>'
    )


def _metrics_section(
    metrics: dict[str, float], per_defect: dict[str, dict[str, float]] | None, labelled: list[ImageResult]
) -> str:
    parts = ["<section><h2>Metrics</h2>"]
    if metrics:
        rows = "".join(
            f'<tr><th>{_esc(_metric_name(k))}</th><td class="num">{_fmt_metric(k, metrics[k])}</td>'
            f'<td class="desc">{_esc(METRICS[k][1] if k in METRICS else "")}</td></tr>'
            for k in _ordered_keys(list(metrics))
        )
        parts.append(
            '<table class="metrics"><tr><th>Metric</th><th class="num">Value</th><th></th></tr>'
            f"{rows}</table>"
        )
    present = [k for k in PIXEL_METRICS if k in metrics]
    if present and all(is_missing(metrics[k]) for k in present):
        parts.append(
            '<p class="note">No masks: image-level metrics only (the test set has no ground-truth '
            "masks, so pixel AUROC, AU-PRO and pixel AP cannot be computed).</p>"
        )
    if per_defect:
        keys = _ordered_keys(list(dict.fromkeys(k for m in per_defect.values() for k in m)))
        head = "".join(f'<th class="num">{_esc(_metric_name(k))}</th>' for k in keys)
        body = []
        for defect, m in per_defect.items():
            of_type = [r for r in labelled if r.defect_type == defect and r.label == 1]
            missed = sum(1 for r in of_type if r.decision is False)
            decided = any(r.decision is not None for r in of_type)
            cells = "".join(f'<td class="num">{_fmt_metric(k, m.get(k))}</td>' for k in keys)
            body.append(
                f'<tr><th>{_esc(defect)}</th><td class="num">{len(of_type)}</td>'
                f'<td class="num">{missed if decided else "—"}</td>{cells}</tr>'
            )
        parts.append(
            '<h3>Per defect type</h3><p class="hint">Each row: all good test images plus the '
            "images of that defect type.</p>"
            '<table class="perdefect"><tr><th>Defect type</th><th class="num">Images</th>'
            f'<th class="num">Missed</th>{head}</tr>' + "".join(body) + "</table>"
        )
    parts.append("</section>")
    return "".join(parts)


def _counts(labelled: list[ImageResult]) -> dict[str, int]:
    good = [r for r in labelled if r.label == 0]
    bad = [r for r in labelled if r.label == 1]
    return {
        "good": len(good),
        "bad": len(bad),
        "alarms": sum(1 for r in good if r.decision),
        "misses": sum(1 for r in bad if r.decision is False),
    }


def _curves_section(
    labelled: list[ImageResult], metrics: dict[str, float], curves: dict | None, threshold: float | None
) -> str:
    curves = dict(curves or {})
    labels = np.array([r.label for r in labelled], dtype=int)
    scores = np.array([r.score for r in labelled], dtype=float)
    if "roc" not in curves and labelled:
        curves["roc"] = roc_curve_points(labels, scores)
    figs = []
    fpr, tpr = (np.asarray(a, dtype=float) for a in curves.get("roc", (np.empty(0), np.empty(0))))
    if fpr.size:
        point = None
        if threshold is not None and (labels == 0).any() and (labels == 1).any():
            point = (
                float(np.mean(scores[labels == 0] > threshold)),
                float(np.mean(scores[labels == 1] > threshold)),
            )
        figs.append(plot_roc(fpr, tpr, metrics.get("image_auroc"), point))
    else:
        figs.append(None)
    fpr, pro = (np.asarray(a, dtype=float) for a in curves.get("pro", (np.empty(0), np.empty(0))))
    figs.append(plot_pro(fpr, pro, metrics.get("au_pro")) if fpr.size else None)
    figs.append(plot_histogram(scores[labels == 0], scores[labels == 1], threshold) if labelled else None)

    missing = [
        "The ROC needs both good and defective test images.",
        "No PRO curve: it needs ground-truth masks.",
        "",
    ]
    cells = "".join(
        f'<div class="plot"><img src="{uri}" alt="plot"></div>'
        if uri
        else f'<div class="plot empty">{_esc(text)}</div>'
        for uri, text in zip(figs, missing, strict=True)
    )
    notes = []
    if threshold is not None and labelled:
        c = _counts(labelled)
        notes.append(
            f"At the threshold {fmt_score(threshold)}: <b>{c['alarms']}</b> false "
            f"alarm{'s' if c['alarms'] != 1 else ''} among {c['good']} good images and "
            f"<b>{c['misses']}</b> miss{'es' if c['misses'] != 1 else ''} among {c['bad']} defective images."
        )
    if fpr.size:
        notes.append(f"The shaded PRO area (FPR ≤ {PRO_FPR_LIMIT}) is what AU-PRO measures.")
    caption = f'<p class="hint">{" ".join(notes)}</p>' if notes else ""
    return f'<section><h2>Curves</h2><div class="plots">{cells}</div>{caption}</section>'


def _scale_section(
    low: float, high: float, threshold: float | None, region_threshold: float | None, has_masks: bool
) -> str:
    marker = ""
    if threshold is not None and low < threshold < high:
        pos = 100.0 * (threshold - low) / (high - low)
        marker = (
            f'<div class="thr" style="left:{pos:.2f}%"></div>'
            f'<div class="thrlabel" style="left:{pos:.2f}%">threshold {fmt_score(threshold)}</div>'
        )
    legend = []
    if has_masks:
        legend.append('<span class="swatch" style="background:rgb(0,255,0)"></span> ground-truth defect')
    if region_threshold is not None:
        legend.append(
            '<span class="swatch" style="background:rgb(255,0,255)"></span> '
            "predicted region (heat map above the threshold)"
        )
    legend_html = f'<div class="legend">Outlines: {" &nbsp; ".join(legend)}</div>' if legend else ""
    return (
        '<div class="scale"><div class="scaletext">Heat-map colour scale, the same for every image: '
        "transparent at and below the typical defect-free level, red at the top.</div>"
        f'<div class="bar"><img src="{colorbar_uri(low, high)}" alt="colour scale">{marker}</div>'
        f'<div class="ends"><span>{fmt_score(low)}</span><span>{fmt_score(high)}</span></div>'
        f"{legend_html}</div>"
    )


def _table_of_all(results: list[ImageResult], labelled: bool) -> str:
    """Every image by descending score, full path included; open by default for plain predictions,
    where this list (not the metrics) is what the reader came for."""
    head = [
        "#",
        "File",
        *(["Type", "Label"] if labelled else []),
        "Score",
        "Decision",
        *([""] if labelled else []),
    ]
    rows = []
    for i, r in enumerate(sorted(results, key=lambda r: r.score, reverse=True), 1):
        css, outcome = _outcome(r)
        decision = "—"
        if r.decision is not None:
            decision = (
                '<span class="badge ng">DEFECT</span>' if r.decision else '<span class="badge ok">OK</span>'
            )
        cells = [f'<td class="num">{i}</td>', f'<td class="path">{_esc(r.path)}</td>']
        if labelled:
            label = {0: "good", 1: "defective"}.get(r.label, "—")
            cells += [f"<td>{_esc(r.defect_type)}</td>", f"<td>{label}</td>"]
        cells += [f'<td class="num">{fmt_score(r.score)}</td>', f"<td>{decision}</td>"]
        if labelled:
            cells.append(f'<td class="outcome {css}">{_esc(outcome)}</td>')
        rows.append(f'<tr class="{css}">{"".join(cells)}</tr>')
    header = "".join(f'<th class="num">{h}</th>' if h in ("#", "Score") else f"<th>{h}</th>" for h in head)
    return (
        f"<details{'' if labelled else ' open'}><summary>All {len(results)} images, by score</summary>"
        f'<table class="all"><tr>{header}</tr>{"".join(rows)}</table></details>'
    )


def _tiles(
    results: list[ImageResult],
    labelled: list[ImageResult],
    metrics: dict[str, float],
    threshold: float | None,
) -> str:
    c = _counts(labelled)
    parts = []
    if labelled:
        plain = len(results) - len(labelled)
        sub = f"{c['good']} good, {c['bad']} defective" + (f", {plain} unlabelled" if plain else "")
        parts.append(_tile("Test images", str(len(results)), sub, "info"))
    else:
        flagged = sum(1 for r in results if r.decision)
        parts.append(_tile("Images", str(len(results)), "no labels: plain predictions", "info"))
        if threshold is not None:
            parts.append(
                _tile(
                    "Flagged defective",
                    str(flagged),
                    _pct(flagged, len(results)) + " of the images",
                    "bad" if flagged else "good",
                )
            )
    if "image_auroc" in metrics:
        parts.append(
            _tile("Image AUROC", _fmt_metric("image_auroc", metrics["image_auroc"]), "1.0000 = perfect")
        )
    if "au_pro" in metrics and not is_missing(metrics["au_pro"]):
        parts.append(_tile("AU-PRO", _fmt_metric("au_pro", metrics["au_pro"]), "defect localisation"))
    if threshold is not None:
        parts.append(_tile("Threshold", fmt_score(threshold), "score above it = defective"))
        if labelled:
            parts.append(
                _tile(
                    "False alarms",
                    str(c["alarms"]),
                    f"of {c['good']} good ({_pct(c['alarms'], c['good'])})",
                    "bad" if c["alarms"] else "good",
                )
            )
            parts.append(
                _tile(
                    "Misses",
                    str(c["misses"]),
                    f"of {c['bad']} defective ({_pct(c['misses'], c['bad'])})",
                    "bad" if c["misses"] else "good",
                )
            )
    return '<div class="tiles">' + "".join(parts) + "</div>"


def _hard_cases_section(labelled: list[ImageResult], gallery: _Gallery, scale: str, max_gallery: int) -> str:
    bad = sorted((r for r in labelled if r.label == 1), key=lambda r: r.score)
    good = sorted((r for r in labelled if r.label == 0), key=lambda r: r.score, reverse=True)
    n_bad = min(len(bad), max(max_gallery // 2, max_gallery - len(good)))
    n_good = min(len(good), max_gallery - n_bad)
    parts = [f"<section><h2>Hardest cases</h2>{scale}"]
    if n_bad:
        parts.append(
            f"<h3>Defective images with the lowest scores ({n_bad} of {len(bad)})</h3>"
            + gallery.cards(bad[:n_bad])
        )
    if n_good:
        parts.append(
            f"<h3>Good images with the highest scores ({n_good} of {len(good)})</h3>"
            + gallery.cards(good[:n_good])
        )
    parts.append("</section>")
    return "".join(parts)


def _per_type_section(labelled: list[ImageResult], gallery: _Gallery, per_type: int) -> str:
    if per_type <= 0:
        return ""
    types: dict[str, list[ImageResult]] = {}
    # Good images first (the reference), then the defect types alphabetically.
    for r in sorted(labelled, key=lambda r: (r.label != 0, r.defect_type)):
        types.setdefault(r.defect_type, []).append(r)
    parts = [
        '<section><h2>Examples per type</h2><p class="hint">Up to '
        f"{per_type} images per type, spread from the highest to the lowest score.</p>"
    ]
    for name, group in types.items():
        c = _counts(group)
        decided = any(r.decision is not None for r in group)
        extra = ""
        if decided and c["bad"]:
            extra = f" · {c['misses']} missed"
        elif decided:
            extra = f" · {c['alarms']} false alarm{'s' if c['alarms'] != 1 else ''}"
        parts.append(
            f'<h3>{_esc(name)} <span class="hint">{len(group)} images{extra}</span></h3>'
            + gallery.cards(_spread(group, per_type))
        )
    parts.append("</section>")
    return "".join(parts)


# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------


def _css() -> str:
    return (Path(__file__).with_name("style.css")).read_text(encoding="utf-8")


def write_report(
    path: str | os.PathLike[str],
    results: list[ImageResult],
    *,
    metrics: dict[str, float],
    per_defect: dict[str, dict[str, float]] | None = None,
    threshold: float | None = None,
    curves: dict | None = None,
    title: str = "rd2t report",
    info: dict | None = None,
    map_range: tuple[float, float] | None = None,
    max_gallery: int = 12,
) -> Path:
    """Write the HTML report to ``path`` (parent folders created) and return its path.

    ``curves`` may hold ``"roc": (fpr, tpr)`` and ``"pro": (fpr, pro)``; the ROC is computed from the
    labelled results when absent. ``map_range`` overrides ``default_map_range``. Results with
    ``decision`` None get ``score > threshold`` when a threshold is given (the objects are not
    modified). ``max_gallery`` caps the hardest-cases and the plain-prediction galleries; each defect
    type shows up to min(4, max_gallery) examples, and every image is listed in a table.
    """
    path = Path(path)
    if threshold is not None:
        results = [
            r if r.decision is not None else replace(r, decision=bool(r.score > threshold)) for r in results
        ]
    labelled = [r for r in results if r.label is not None]
    plain = [r for r in results if r.label is None]
    low, high = map_range if map_range is not None else default_map_range(results, threshold)
    # The predicted region is "map above the threshold" only if the threshold is on the maps' scale.
    region_threshold = threshold if _threshold_on_map_scale(results, threshold) else None
    gallery = _Gallery(low, high, region_threshold)
    now = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")

    body = [
        f'<header><div class="wrap"><div><h1>{_esc(title)}</h1>'
        f'<div class="subtitle">rd2t {_esc(__version__)} · generated {now}</div></div>'
        f"{_info_table(info)}</div></header>",
        '<main class="wrap">',
        _tiles(results, labelled, metrics, threshold),
    ]
    if labelled or metrics:
        body.append(_metrics_section(metrics, per_defect, labelled))
    if labelled:
        body.append(_curves_section(labelled, metrics, curves, threshold))
    has_masks = any(r.mask is not None for r in results)
    scale = _scale_section(low, high, threshold, region_threshold, has_masks)
    if labelled and max_gallery > 0:
        body.append(_hard_cases_section(labelled, gallery, scale, max_gallery))
        body.append(_per_type_section(labelled, gallery, min(EXAMPLES_PER_TYPE, max_gallery)))
    if plain and max_gallery > 0:
        shown = sorted(plain, key=lambda r: r.score, reverse=True)[:max_gallery]
        rest = (
            f" The other {len(plain) - len(shown)} are in the table below." if len(plain) > len(shown) else ""
        )
        body.append(
            f'<section><h2>Predictions</h2>{scale}<p class="hint">The {len(shown)} highest-scoring of '
            f"{len(plain)} images, most anomalous first.{rest}</p>{gallery.cards(shown)}</section>"
        )
    if results:
        body.append(
            f"<section><h2>All images</h2>{_table_of_all(results, labelled=bool(labelled))}</section>"
        )
    body.append(
        f"</main><footer>Generated by rd2t {_esc(__version__)}. Self-contained file: no network "
        "access needed to view it.</footer>"
    )

    document = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{_esc(title)}</title><style>{_css()}</style></head><body>"
        + "\n".join(body)
        + "</body></html>\n"
    )
    return atomic_write(path, document)
