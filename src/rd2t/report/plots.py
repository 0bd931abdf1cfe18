"""Pictures for the HTML report: PNG data URIs, and the ROC, PRO and score-histogram plots (matplotlib)."""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Callable

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from PIL import Image

from rd2t.report.heatmap import colorize

# Lossless PNG unless a thumbnail would exceed this; then a 256-colour palette, which is about a third
# of the size and keeps a 100-image report near 10 MB even for noisy textures.
LOSSLESS_PNG_BYTES = 64 * 1024
# AU-PRO integrates the PRO curve up to this pixel false-positive rate (MVTec AD's definition).
PRO_FPR_LIMIT = 0.3
# Colours of good and defective images in the plots (colour-blind-safe blue / orange).
GOOD_COLOR = "#3b6fb6"
DEFECT_COLOR = "#e0702b"


def fmt_score(value: float) -> str:
    """Scores and thresholds: 4 significant digits whatever their scale, trailing zeros kept so that a
    column of scores lines up."""
    return f"{value:#.4g}"


def is_missing(value: object) -> bool:
    """None or NaN, whatever the number type (metrics may arrive as numpy scalars)."""
    if value is None:
        return True
    try:
        return math.isnan(value)  # type: ignore[arg-type]
    except TypeError:
        return False


# --------------------------------------------------------------------------------------------
# Pictures as data URIs
# --------------------------------------------------------------------------------------------


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    # zlib's default level: "optimize" saves ~4 % for twice the time on photo-like thumbnails.
    img.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def png_uri(img: Image.Image) -> str:
    """A PNG data URI; grey pictures stored as one channel, large ones with a 256-colour palette."""
    rgb = np.asarray(img.convert("RGB"))
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
        img = Image.fromarray(np.ascontiguousarray(rgb[..., 0]))
    data = png_bytes(img)
    if len(data) > LOSSLESS_PNG_BYTES and img.mode != "L":
        # No dithering: dither noise is incompressible and would undo most of the saving.
        palette = img.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        data = min(data, png_bytes(palette), key=len)
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def figure_uri(draw: Callable[[Axes], None], size: tuple[float, float] = (4.6, 3.5)) -> str:
    """Render one matplotlib axes to a PNG data URI (Figure directly: no pyplot, no global state)."""
    style = {
        "font.size": 9,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.grid": True,
        "grid.alpha": 0.3,
        "axes.titleweight": "bold",
    }
    with matplotlib.rc_context(style):
        fig = Figure(figsize=size, dpi=150)
        draw(fig.add_subplot())
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


# --------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------


def plot_roc(fpr: np.ndarray, tpr: np.ndarray, auroc: object, point: tuple[float, float] | None) -> str:
    def draw(ax: Axes) -> None:
        label = "ROC" if is_missing(auroc) else f"ROC (AUROC {float(auroc):.4f})"
        ax.plot(fpr, tpr, color=DEFECT_COLOR, lw=2, label=label)
        ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="chance")
        if point is not None:
            ax.plot(*point, "o", ms=7, mfc="white", mec="black", mew=1.5, label="at the threshold")
        ax.set(
            xlim=(-0.01, 1.01),
            ylim=(-0.01, 1.01),
            xlabel="false alarm rate (good images rejected)",
            ylabel="detection rate (defective images caught)",
            title="Image-level ROC",
        )
        ax.legend(loc="lower right", frameon=False)

    return figure_uri(draw)


def _decimate(x: np.ndarray, y: np.ndarray, n: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """At most ~2n points of a curve with increasing x (a PRO curve has one per distinct pixel score)."""
    if x.size <= 2 * n:
        return x, y
    idx = np.unique(
        np.concatenate(
            [
                np.searchsorted(x, np.linspace(0, 1, n)),
                np.linspace(0, x.size - 1, n).astype(int),
                [0, x.size - 1],
            ]
        )
    )
    idx = idx[idx < x.size]
    return x[idx], y[idx]


def plot_pro(fpr: np.ndarray, pro: np.ndarray, au_pro: object) -> str:
    fpr, pro = _decimate(fpr, pro)

    def draw(ax: Axes) -> None:
        label = "PRO" if is_missing(au_pro) else f"PRO (AU-PRO {float(au_pro):.4f})"
        ax.plot(fpr, pro, color=DEFECT_COLOR, lw=2, label=label)
        inside = fpr <= PRO_FPR_LIMIT
        # The shaded area is what AU-PRO integrates (then divides by the limit).
        x = np.append(fpr[inside], PRO_FPR_LIMIT)
        y = np.append(pro[inside], np.interp(PRO_FPR_LIMIT, fpr, pro))
        ax.fill_between(x, 0, y, color=DEFECT_COLOR, alpha=0.2, lw=0, label=f"area up to FPR {PRO_FPR_LIMIT}")
        ax.axvline(PRO_FPR_LIMIT, color="0.4", lw=1, ls="--")
        ax.set(
            xlim=(-0.01, 1.01),
            ylim=(-0.01, 1.01),
            xlabel="false positive rate (defect-free pixels)",
            ylabel="per-region overlap",
            title="Pixel-level PRO curve",
        )
        ax.legend(loc="lower right", frameon=False)

    return figure_uri(draw)


def plot_histogram(good: np.ndarray, bad: np.ndarray, threshold: float | None) -> str:
    def draw(ax: Axes) -> None:
        values = np.concatenate([good, bad])
        edges = np.histogram_bin_edges(values, bins=min(40, max(10, values.size // 4)))
        if good.size:
            ax.hist(good, bins=edges, color=GOOD_COLOR, alpha=0.65, label=f"good ({good.size})")
        if bad.size:
            ax.hist(bad, bins=edges, color=DEFECT_COLOR, alpha=0.65, label=f"defective ({bad.size})")
        if threshold is not None:
            ax.axvline(threshold, color="black", lw=1.5, ls="--", label=f"threshold {fmt_score(threshold)}")
        ax.set(xlabel="image anomaly score", ylabel="images", title="Score distribution")
        ax.legend(frameon=False)

    return figure_uri(draw)


def colorbar_uri(low: float, high: float) -> str:
    ramp = np.tile(np.linspace(low, high, 512, dtype=np.float32), (16, 1))
    return png_uri(Image.fromarray(colorize(ramp, low, high)))
