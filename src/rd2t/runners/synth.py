"""Synthetic industrial images with ground-truth defect masks, for the offline demo and the tests.

The demo must run with no download, so it draws its own small MVTec-AD-shaped dataset: three surface
textures (brushed metal, woven fabric, wood) and one object (a turned metal washer on a dark mat), each
with five defect types. Everything is numpy + scipy.ndimage + Pillow and is a pure function of the seed,
so the same seed writes byte-identical PNGs (for a given numpy/Pillow/zlib).

Design notes
------------
* "Good" is a distribution, not one picture: every image gets its own texture phase, a slight
  illumination gradient, sensor noise and (for the object) position/rotation jitter. A detector that
  memorised one image would flag every test image.
* Defects are alpha-composited onto a good image. The ground-truth mask is the region where the defect is
  visible: the painted footprint, widened by a pixel or two the way human annotators draw, united with every
  pixel the painting changed by more than a few gray levels, so it always covers what changed.
* Lengths are expressed as fractions of the image size, so a 64 px test image looks like a shrunken 256 px
  one instead of a different texture.
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from rd2t.errors import InputError

__all__ = ["CATEGORIES", "DEFECTS", "GENERATOR_VERSION", "render_good", "paint_defect", "make_dataset"]

CATEGORIES: tuple[str, ...] = ("brushed_metal", "woven_fabric", "wood", "washer")
DEFECTS: tuple[str, ...] = ("scratch", "crack", "hole", "stain", "missing")

# Bump whenever a change alters the pixels for a given seed: the stamp then no longer matches and
# make_dataset regenerates instead of reusing a stale folder.
GENERATOR_VERSION = "1"

STAMP_NAME = "synth_stamp.json"

# Categories that are a single object on a background (defects must land on the object, and "missing"
# cuts a chunk out of its outline); the rest are textures that fill the frame.
_OBJECTS = frozenset({"washer"})

# Light comes from the upper left in every scene, so rim highlights and shadows painted by the defects
# agree with the shading of the good images. Angle in image coordinates (y down), radians.
_LIGHT = float(np.deg2rad(-135.0))

# Mask bounds accepted for a painted defect (fraction of the image). Smaller is invisible at 256 px,
# larger stops looking like a local defect. A draw outside them is redrawn with the same generator.
_MIN_AREA, _MAX_AREA = 0.006, 0.15

# A pixel that changed by more than this many gray levels is part of the visible defect.
_VISIBLE_DELTA = 6.0

FloatImage = np.ndarray  # float32 HxWx3 in 0..255
Mask = np.ndarray  # bool HxW


# --------------------------------------------------------------------------------------------- helpers


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (y, x) as float32 arrays (cached, read-only)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    yy.setflags(write=False)
    xx.setflags(write=False)
    return yy, xx


def _normalised(a: np.ndarray) -> np.ndarray:
    """Zero mean, unit standard deviation (a flat field stays flat)."""
    a = a - a.mean()
    sd = float(a.std())
    return (a / sd if sd > 1e-8 else a).astype(np.float32)


@functools.lru_cache(maxsize=64)
def _bspline_taps(size: int, scale: float) -> tuple[int, np.ndarray, np.ndarray]:
    """Coarse-grid length, first tap index (size,) and the four cubic B-spline weights (4, size)."""
    n = int(np.ceil(size / scale)) + 4
    t = np.arange(size, dtype=np.float64) / scale + 1.0  # +1: one coarse cell of margin on the left
    first = np.floor(t).astype(np.intp) - 1
    d = t - np.floor(t)
    # Uniform cubic B-spline: C2-smooth, so the noise shows no grid.
    weights = np.stack(
        [(1 - d) ** 3 / 6, (3 * d**3 - 6 * d**2 + 4) / 6, (-3 * d**3 + 3 * d**2 + 3 * d + 1) / 6, d**3 / 6]
    ).astype(np.float32)
    first.setflags(write=False)
    weights.setflags(write=False)
    return n, first, weights


def _smooth_noise(rng: np.random.Generator, size: int, scale: float) -> np.ndarray:
    """Unit-variance noise whose blobs are about `scale` pixels wide.

    White noise on a coarse grid, upsampled separably with 4-tap B-spline weights: far cheaper than a
    wide Gaussian blur or ndimage.zoom at full size, and it avoids BLAS (whose thread pool behaves
    badly on a busy 2-core machine).
    """
    n, first, w = _bspline_taps(size, round(max(float(scale), 1.0), 3))
    coarse = rng.standard_normal((n, n), dtype=np.float32)
    rows = sum(w[k][:, None] * coarse[first + k] for k in range(4))  # (size, n)
    full = sum(w[k][None, :] * rows[:, first + k] for k in range(4))  # (size, size)
    return _normalised(full)


def _gray(img: np.ndarray) -> np.ndarray:
    """Luma (ITU-R 601) as float32, the same weights Pillow uses for mode "L"."""
    img = img.astype(np.float32)
    return img[..., 0] * 0.299 + img[..., 1] * 0.587 + img[..., 2] * 0.114


def _finish(
    rgb: FloatImage, rng: np.random.Generator, gradient: float = 0.07, noise: float = 2.2
) -> np.ndarray:
    """Camera step: slight illumination gradient, sensor noise, quantisation to uint8."""
    size = rgb.shape[0]
    yy, xx = _grid(size)
    phi = rng.uniform(0.0, 2.0 * np.pi)
    ramp = ((xx - size / 2) * math.cos(phi) + (yy - size / 2) * math.sin(phi)) / size  # -0.7..0.7
    light = 1.0 + rng.uniform(-gradient, gradient) * ramp * 2.0
    out = rgb * light[..., None] + rng.standard_normal(rgb.shape, dtype=np.float32) * noise
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _stroke(points: np.ndarray, widths: np.ndarray, strengths: np.ndarray, size: int) -> np.ndarray:
    """Anti-aliased coverage (0..1) of a polyline whose segments have their own width and strength.

    points is (N, 2) as (y, x); widths/strengths are per segment (N-1). Each segment only touches its
    bounding box, which keeps this cheap for the few hundred short segments a crack has.
    """
    alpha = np.zeros((size, size), np.float32)
    for i in range(len(points) - 1):
        (py, px), (qy, qx) = points[i], points[i + 1]
        half = widths[i] / 2.0
        reach = half + 1.5
        y0, y1 = int(max(min(py, qy) - reach, 0)), int(min(max(py, qy) + reach + 1, size))
        x0, x1 = int(max(min(px, qx) - reach, 0)), int(min(max(px, qx) + reach + 1, size))
        if y0 >= y1 or x0 >= x1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        dy, dx = qy - py, qx - px
        length2 = dy * dy + dx * dx
        t = np.clip(((yy - py) * dy + (xx - px) * dx) / length2, 0.0, 1.0) if length2 > 0 else 0.0
        dist = np.hypot(yy - (py + t * dy), xx - (px + t * dx))
        cov = np.clip(half + 0.5 - dist, 0.0, 1.0) * strengths[i]
        np.maximum(alpha[y0:y1, x0:x1], cov, out=alpha[y0:y1, x0:x1])
    return alpha


def _blob(
    rng: np.random.Generator,
    size: int,
    center: tuple[float, float],
    radius: float,
    elong: float = 1.0,
    angle: float = 0.0,
    rough: float = 0.12,
    fray: float = 0.0,
) -> np.ndarray:
    """Signed distance (px, negative inside) to an irregular closed outline around `center`.

    The outline radius is modulated by a few low angular harmonics (lumpy shape) and optionally by
    high-frequency wiggle (`fray`: torn fabric edges).
    """
    yy, xx = _grid(size)
    dy, dx = yy - center[0], xx - center[1]
    ca, sa = math.cos(angle), math.sin(angle)
    u = (dx * ca + dy * sa) / elong
    v = -dx * sa + dy * ca
    r = np.hypot(u, v)
    theta = np.arctan2(v, u)
    rad = np.ones_like(r)
    for k in range(2, 6):
        rad += rng.normal(0.0, rough / k) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    if fray > 0:
        for k in (11, 17, 23, 31):
            rad += rng.normal(0.0, fray) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    return (r - radius * np.maximum(rad, 0.4)).astype(np.float32)


def _composite(img: FloatImage, alpha: np.ndarray, target: FloatImage | np.ndarray) -> FloatImage:
    """Blend `target` over `img` with per-pixel alpha (0..1)."""
    a = alpha[..., None]
    return img * (1.0 - a) + np.asarray(target, np.float32) * a


# ---------------------------------------------------------------------------------------- good images


def _brushed_metal(rng: np.random.Generator, size: int) -> FloatImage:
    pad = int(size * 0.08) + 2
    n = size + 2 * pad
    # Brushing = abrasion along one direction: white noise averaged over a long window along x gives
    # fine parallel streaks; a light vertical blur keeps them from being single-pixel sharp.
    run = max(3, int(size * 0.22))
    fine = rng.standard_normal((n, n), dtype=np.float32)
    streaks = ndimage.uniform_filter1d(fine, run, axis=1, mode="wrap")
    streaks = ndimage.uniform_filter1d(streaks, run, axis=1, mode="wrap")
    streaks = ndimage.gaussian_filter1d(streaks, 0.5 + size / 512, axis=0)
    # Deeper grooves: sparse impulses smeared into segments of varying length (a stray grit particle).
    sparse = (rng.random((n, n)) < 0.004).astype(np.float32) * rng.normal(0.0, 1.0, (n, n)).astype(np.float32)
    grooves = ndimage.uniform_filter1d(sparse, max(3, int(size * 0.35)), axis=1, mode="wrap")
    grooves = ndimage.gaussian_filter1d(grooves, 0.6, axis=0)
    tex = _normalised(streaks) * 11.0 + _normalised(grooves) * 6.0
    # The brushing direction is never perfectly aligned with the camera.
    tex = ndimage.rotate(tex, rng.uniform(-2.0, 2.0), reshape=False, order=1, mode="reflect")
    tex = tex[pad : pad + size, pad : pad + size]
    # Broad sheen: brushed metal reflects unevenly at low spatial frequency.
    sheen = _smooth_noise(rng, size, size / 2.5) * 7.0
    gray = 148.0 + rng.normal(0.0, 2.0) + tex + sheen
    return gray[..., None] * np.array([0.96, 0.99, 1.04], np.float32)


def _woven_fabric(rng: np.random.Generator, size: int) -> FloatImage:
    yy, xx = _grid(size)
    period = size / 24.0
    # Threads wobble a little (loom tension), and the weave lies at a slight angle with random phase.
    wob = period * 0.09
    angle = float(np.deg2rad(rng.uniform(-1.5, 1.5)))
    u = (
        (xx * math.cos(angle) + yy * math.sin(angle)) / period
        + rng.uniform(0, 2)
        + _smooth_noise(rng, size, size / 5) * wob / period
    )
    v = (
        (-xx * math.sin(angle) + yy * math.cos(angle)) / period
        + rng.uniform(0, 2)
        + _smooth_noise(rng, size, size / 5) * wob / period
    )
    iu, iv = np.floor(u), np.floor(v)
    fu, fv = u - iu, v - iv
    # Plain weave: in each cell either the warp (running along v) or the weft (along u) is on top.
    warp_on_top = ((iu + iv) % 2) == 0
    # A round thread is bright along its middle and dark at its flanks; where it dives under the
    # crossing thread it darkens too.
    across_warp, across_weft = np.sin(np.pi * fu) ** 0.7, np.sin(np.pi * fv) ** 0.7
    dive_warp, dive_weft = np.sin(np.pi * fv) ** 0.35, np.sin(np.pi * fu) ** 0.35
    shade = np.where(warp_on_top, across_warp * dive_warp, across_weft * dive_weft)
    # Per-thread dye/thickness variation and fibre hairiness along each thread.
    n_threads = int(np.ceil(size / period)) + 8
    warp_gain = 1.0 + rng.normal(0.0, 0.04, n_threads + 8).astype(np.float32)
    weft_gain = 1.0 + rng.normal(0.0, 0.04, n_threads + 8).astype(np.float32)
    gain = np.where(
        warp_on_top, warp_gain[(iu.astype(int) % n_threads)], weft_gain[(iv.astype(int) % n_threads)]
    )
    fibre_x = ndimage.uniform_filter1d(rng.standard_normal((size, size), dtype=np.float32), 5, axis=0)
    fibre_y = ndimage.uniform_filter1d(rng.standard_normal((size, size), dtype=np.float32), 5, axis=1)
    fibre = np.where(warp_on_top, fibre_x, fibre_y) * 0.05
    warp_rgb = np.array([186.0, 168.0, 132.0], np.float32)
    weft_rgb = np.array([170.0, 150.0, 114.0], np.float32)
    base = np.where(warp_on_top[..., None], warp_rgb, weft_rgb)
    level = (0.35 + 0.65 * shade) * gain * (1.0 + fibre)
    return base * level[..., None] * np.float32(1.0 + rng.normal(0.0, 0.015))


def _wood(rng: np.random.Generator, size: int) -> FloatImage:
    yy, xx = _grid(size)
    # Flat-sawn plank: growth rings cut by a plane almost parallel to the trunk axis. The ring centre
    # lies well outside the frame, so inside it the rings are long, gently curved, near-parallel bands;
    # the x axis is squashed so the grain runs horizontally.
    cy = (1.0 if rng.random() < 0.5 else -1.0) * rng.uniform(1.2, 2.5) * size + size / 2
    cx = rng.uniform(-0.5, 1.5) * size
    squash = rng.uniform(0.3, 0.5)
    r = np.hypot(yy - cy, (xx - cx) * squash)
    # Growth varies from year to year and around the trunk: a smooth distortion of the ring radius,
    # kept below the ring spacing in slope so rings never close into islands.
    r = (
        r
        + _smooth_noise(rng, size, size / 2.5) * size * 0.03
        + _smooth_noise(rng, size, size / 8) * size * 0.006
    )
    period = size / rng.uniform(11.0, 14.0)
    t = (r / period) % 1.0
    # Early wood (light) turns gradually into late wood (dark), then an abrupt boundary to next year.
    late = np.clip((t - 0.45) / 0.5, 0.0, 1.0) ** 1.8
    # Fibres/pores: fine streaks along the grain.
    fib = rng.standard_normal((size, size), dtype=np.float32)
    fib = ndimage.uniform_filter1d(ndimage.uniform_filter1d(fib, max(3, size // 10), axis=1), 3, axis=1)
    fib = _normalised(ndimage.gaussian_filter1d(fib, 0.5, axis=0))
    early_rgb = np.array([214.0, 172.0, 122.0], np.float32)
    late_rgb = np.array([170.0, 118.0, 70.0], np.float32)
    rgb = early_rgb + (late_rgb - early_rgb) * late[..., None]
    tone = 1.0 + fib * 0.045 + _smooth_noise(rng, size, size / 2) * 0.03 + rng.normal(0.0, 0.02)
    return rgb * tone[..., None]


def _washer(rng: np.random.Generator, size: int) -> FloatImage:
    yy, xx = _grid(size)
    # Dark rubber conveyor mat: low-contrast mottling plus fine grain.
    mat = 40.0 + _smooth_noise(rng, size, size / 4) * 2.5 + _smooth_noise(rng, size, 3) * 2.0
    bg = mat[..., None] * np.array([0.96, 1.0, 1.06], np.float32)

    # The part is placed by a feeder: a few pixels of jitter and any rotation.
    c = [size / 2 + rng.uniform(-0.03, 0.03) * size for _ in range(2)]
    # Outer/inner radius with the part-to-part tolerance of a stamped washer.
    r_out = 0.36 * size * rng.uniform(0.985, 1.015)
    r_in = 0.16 * size * rng.uniform(0.985, 1.015)
    dy, dx = yy - c[0], xx - c[1]
    d = np.hypot(dy, dx)
    theta = np.arctan2(dy, dx)
    cover = np.clip(r_out - d + 0.5, 0, 1) * np.clip(d - r_in + 0.5, 0, 1)

    # Soft contact shadow towards the lower right (light from the upper left).
    sh = np.hypot(dy - 0.018 * size, dx - 0.018 * size)
    shadow = np.clip(r_out + 1 - sh, 0, 1) * np.clip(sh - r_in + 1, 0, 1)
    shadow = ndimage.gaussian_filter(shadow, size * 0.012)
    bg = bg * (1.0 - 0.45 * shadow[..., None])

    # Lathe-turned face: concentric tool marks (noise that only depends on the radius) and a weaker
    # angular component that rotates with the part.
    profile = _normalised(ndimage.gaussian_filter1d(rng.standard_normal(size + 1, dtype=np.float32), 0.8))
    i0 = np.minimum(d.astype(np.intp), size - 1)
    radial = profile[i0] + (profile[i0 + 1] - profile[i0]) * (d - i0.astype(np.float32))
    rot = rng.uniform(0, 2 * np.pi)
    angular = np.cos(3 * (theta + rot)) * 0.5 + np.cos(7 * (theta + rot) + 1.0) * 0.3
    light = np.cos(theta - _LIGHT)  # face tilted very slightly: brighter towards the light
    face = 168.0 + radial * 8.0 + angular * 4.0 + light * 14.0
    # Chamfers: the outer edge catches the light on the lit side, the inner bore edge on the far side.
    outer_band = np.exp(-((((r_out - d) - 2.0) / (0.007 * size + 0.6)) ** 2))
    inner_band = np.exp(-((((d - r_in) - 2.0) / (0.007 * size + 0.6)) ** 2))
    face = face + outer_band * light * 45.0 - inner_band * light * 45.0
    metal = face[..., None] * np.array([0.98, 0.99, 1.02], np.float32)
    return bg * (1.0 - cover[..., None]) + metal * cover[..., None]


_RENDERERS: dict[str, Callable[[np.random.Generator, int], FloatImage]] = {
    "brushed_metal": _brushed_metal,
    "woven_fabric": _woven_fabric,
    "wood": _wood,
    "washer": _washer,
}


def _check_category(category: str) -> None:
    if category not in _RENDERERS:
        raise InputError(f"unknown synthetic category {category!r}; choose from {', '.join(CATEGORIES)}")


def render_good(category: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """Draw one defect-free image of `category` as an HxWx3 uint8 array (H = W = size)."""
    _check_category(category)
    if size < 32:
        raise InputError(f"synthetic images need size >= 32 px, got {size}")
    return _finish(_RENDERERS[category](rng, size), rng)


# ---------------------------------------------------------------------------------------------- defects


def _object_region(image: np.ndarray) -> Mask:
    """Pixels of the object (bright part on the dark mat), estimated from the image alone."""
    gray = _gray(image)
    border = np.concatenate([gray[:4].ravel(), gray[-4:].ravel(), gray[:, :4].ravel(), gray[:, -4:].ravel()])
    obj = gray > float(np.median(border)) + 35.0
    return ndimage.binary_opening(obj, iterations=1)


def _inside_distance(allowed: Mask) -> np.ndarray:
    """Distance (px) from each allowed pixel to the nearest disallowed pixel or the image border."""
    return ndimage.distance_transform_edt(np.pad(allowed, 1))[1:-1, 1:-1]


def _pick_center(rng: np.random.Generator, allowed: Mask, margin: float) -> tuple[float, float]:
    """A random point at least `margin` px inside `allowed`, or as deep inside as the region allows."""
    depth = _inside_distance(allowed)
    ys, xs = np.nonzero(depth >= min(margin, 0.95 * float(depth.max())))
    k = int(rng.integers(len(ys)))
    return float(ys[k]) + rng.uniform(-0.5, 0.5), float(xs[k]) + rng.uniform(-0.5, 0.5)


def _walk(
    rng: np.random.Generator,
    start: tuple[float, float],
    heading: float,
    length: float,
    step: float,
    turn: float,
    jitter: float,
) -> np.ndarray:
    """Points of a path: smooth curvature `turn` (rad/px) plus per-step heading `jitter` (rad)."""
    n = max(int(length / step), 2)
    curvature = turn + rng.normal(0.0, abs(turn) * 0.3 + 1e-4, n)
    headings = heading + np.cumsum(curvature * step) + rng.normal(0.0, jitter, n)
    steps = np.stack([np.sin(headings), np.cos(headings)], axis=1) * step
    return np.vstack([np.array(start, np.float32)[None], np.array(start) + np.cumsum(steps, axis=0)]).astype(
        np.float32
    )


def _scratch(
    img: FloatImage, rng: np.random.Generator, allowed: Mask, category: str
) -> tuple[FloatImage, Mask]:
    size = img.shape[0]
    alpha_core = np.zeros((size, size), np.float32)
    for _ in range(int(rng.choice([1, 1, 2, 2, 3]))):
        start = _pick_center(rng, allowed, int(size * 0.08))
        length = rng.uniform(0.3, 0.55) * size
        turn = rng.normal(0.0, 0.6) / size  # gentle arc, radius of the order of the image size
        pts = _walk(rng, start, rng.uniform(0, 2 * np.pi), length, 1.5, turn, 0.01)
        n = len(pts) - 1
        s = np.linspace(0.0, 1.0, n)
        # Scratches start and end thin and vary in depth along their length.
        taper = np.sin(np.pi * s) ** 0.4
        widths = rng.uniform(1.4, 2.4) * (0.5 + 0.5 * taper) * max(size / 256, 0.6)
        strengths = np.clip(taper * (0.8 + 0.2 * np.cos(s * rng.uniform(3, 9) + rng.uniform(0, 6))), 0, 1)
        alpha_core = np.maximum(alpha_core, _stroke(pts, widths, strengths, size))
    alpha_core *= allowed
    # Bright (freshly exposed material catching the light) or dark (groove in shadow), with a faint
    # dark burr. Lightening towards white keeps the material's hue: a scratch in wood looks pale wood.
    # On fabric and wood a dark line drowns in the weave gaps and latewood bands; there a scratch is a
    # pulled thread or freshly exposed fibres, both lighter.
    bright = category in ("woven_fabric", "wood") or rng.random() < 0.6
    target = img + (255.0 - img) * 0.65 if bright else img * 0.35
    halo = ndimage.gaussian_filter(alpha_core, 1.2) * allowed
    out = _composite(img, np.clip(halo - alpha_core, 0, 1) * 0.35, img * 0.6)
    out = _composite(out, alpha_core, target)
    return out, ndimage.binary_dilation(alpha_core > 0.1, iterations=1)


def _crack(
    img: FloatImage, rng: np.random.Generator, allowed: Mask, category: str
) -> tuple[FloatImage, Mask]:
    size = img.shape[0]
    unit = max(size / 256, 0.5)
    start = _pick_center(rng, allowed, int(size * 0.12))
    length = rng.uniform(0.28, 0.45) * size
    heading = rng.uniform(0, 2 * np.pi)
    if category == "wood":
        # Wood checks split along the grain, which runs horizontally.
        heading = rng.normal(0.0, 0.12)
    # Jagged: large per-step heading jitter on a slowly drifting direction; grown both ways from the start.
    trunk_a = _walk(rng, start, heading, length / 2, 2.5 * unit, 0.0, 0.45)
    trunk_b = _walk(rng, start, heading + np.pi, length / 2, 2.5 * unit, 0.0, 0.45)
    trunk = np.vstack([trunk_b[::-1], trunk_a[1:]])
    n = len(trunk) - 1
    s = np.linspace(-1.0, 1.0, n)
    paths = [(trunk, (0.9 + 2.0 * (1 - np.abs(s)) ** 0.7) * unit)]
    # Side branches leave the trunk at a sharp angle and taper to nothing.
    for _ in range(int(rng.integers(1, 4))):
        k = int(rng.integers(n // 5, max(4 * n // 5, n // 5 + 1)))
        i = min(k + 1, n)
        trunk_dir = np.arctan2(trunk[i, 0] - trunk[k, 0], trunk[i, 1] - trunk[k, 1])
        b_head = trunk_dir + rng.choice([-1, 1]) * rng.uniform(0.4, 1.1)
        branch = _walk(rng, tuple(trunk[k]), b_head, length * rng.uniform(0.25, 0.5), 2.0 * unit, 0.0, 0.5)
        m = len(branch) - 1
        paths.append((branch, (0.6 + 1.2 * np.linspace(1.0, 0.0, m)) * unit))
    alpha = np.zeros((size, size), np.float32)
    for pts, widths in paths:
        alpha = np.maximum(alpha, _stroke(pts, widths, np.ones(len(widths), np.float32), size))
    alpha *= allowed
    # A crack is a dark gap with slightly darkened, chipped lips.
    lips = np.clip(ndimage.gaussian_filter(alpha, 1.5 * unit) * 1.6 - alpha, 0, 1) * allowed
    out = _composite(img, lips * 0.45, img * 0.55)
    out = _composite(out, alpha, img * 0.12)
    return out, ndimage.binary_dilation(alpha > 0.1, iterations=1)


def _hole(img: FloatImage, rng: np.random.Generator, allowed: Mask, category: str) -> tuple[FloatImage, Mask]:
    size = img.shape[0]
    radius = rng.uniform(0.04, 0.075) * size
    elong = rng.uniform(1.0, 1.35)
    rim_w = 1.0 + size / 256
    # On a narrow part (the washer's ring) the hole, rim included, must fit between the edges:
    # `reach` is how far the outline can extend from the centre (elongation, lumpiness, rim).
    room = 0.9 * float(_inside_distance(allowed).max())
    radius = min(radius, (room - 2 * rim_w - 1) / (elong * 1.2))
    reach = radius * elong * 1.2 + 2 * rim_w + 1
    center = _pick_center(rng, allowed, reach)
    sd = _blob(rng, size, center, radius, elong=elong, angle=rng.uniform(0, np.pi), rough=0.15)
    yy, xx = _grid(size)
    theta = np.arctan2(yy - center[0], xx - center[1])
    facing = np.cos(theta - _LIGHT)  # +1 on the side towards the light
    # Inside: near black; the far inner wall (facing the light) shows a little.
    inside = np.clip(0.5 - sd, 0, 1) * allowed
    wall = np.exp(np.minimum(sd, 0.0) / (0.35 * radius)) * np.clip(-facing, 0, 1)
    interior = (14.0 + 40.0 * wall)[..., None] * np.array([1.0, 1.0, 1.05], np.float32)
    # Raised burr around the rim: bright on the lit side, slightly dark on the other.
    ring = np.exp(-(((sd - rim_w) / rim_w) ** 2)) * allowed
    out = _composite(img, ring * np.clip(facing, 0, 1) * 0.75, np.full_like(img, 240.0))
    out = _composite(out, ring * np.clip(-facing, 0, 1) * 0.4, img * 0.5)
    out = _composite(out, inside, interior)
    return out, (sd <= 2.0 * rim_w + 1.0) & allowed


def _stain(
    img: FloatImage, rng: np.random.Generator, allowed: Mask, category: str
) -> tuple[FloatImage, Mask]:
    size = img.shape[0]
    radius = rng.uniform(0.06, 0.11) * size
    center = _pick_center(rng, allowed, int(radius))
    sd = _blob(
        rng, size, center, radius, elong=rng.uniform(1.0, 1.6), angle=rng.uniform(0, np.pi), rough=0.25
    )
    # Irregular inner structure: a liquid dried unevenly.
    sd = sd + _smooth_noise(rng, size, radius * 0.6) * radius * 0.15
    soft = np.clip(0.5 - sd / (0.22 * radius), 0, 1)
    soft = ndimage.gaussian_filter(soft, 0.08 * radius) * allowed
    # Coffee-ring effect: the pigment concentrates at the drying edge.
    edge = np.exp(-((sd / (0.12 * radius)) ** 2)) * allowed
    # Rust only forms on metal; oil and water marks go anywhere.
    kind = int(rng.integers(3)) if category in ("brushed_metal", "washer") else int(rng.choice([0, 2]))
    tint = [
        np.array([0.68, 0.60, 0.50], np.float32),  # oil / grease: darker, brownish
        np.array([0.95, 0.66, 0.42], np.float32),  # rust: orange-brown
        np.array([0.76, 0.76, 0.79], np.float32),  # water mark: grey, mostly the ring
    ][kind]
    strength = rng.uniform(0.75, 1.0)
    a = np.clip(soft * strength * (0.75 if kind == 2 else 1.0) + edge * 0.4, 0, 1)
    out = _composite(img, a, img * tint)
    return out, (soft > 0.3) | (edge > 0.5)


_HOLE_COLOURS: dict[str, np.ndarray] = {
    # What shows through where material is gone: dark backing behind sheet metal or cloth, the rough
    # torn-out fibres of a wood chip.
    "brushed_metal": np.array([26.0, 27.0, 30.0], np.float32),
    "woven_fabric": np.array([44.0, 40.0, 36.0], np.float32),
    "wood": np.array([118.0, 78.0, 44.0], np.float32),
}


def _missing(
    img: FloatImage, rng: np.random.Generator, allowed: Mask, category: str
) -> tuple[FloatImage, Mask]:
    size = img.shape[0]
    if category in _OBJECTS:
        return _missing_chunk(img, rng, allowed)
    radius = rng.uniform(0.06, 0.1) * size
    center = _pick_center(rng, allowed, int(radius))
    if category == "wood":
        # A chip splits along the grain: elongated horizontally.
        sd = _blob(rng, size, center, radius * 0.7, elong=2.2, angle=rng.normal(0, 0.1), rough=0.2, fray=0.01)
    elif category == "woven_fabric":
        sd = _blob(
            rng,
            size,
            center,
            radius,
            elong=rng.uniform(1.0, 1.4),
            angle=rng.uniform(0, np.pi),
            rough=0.2,
            fray=0.035,
        )  # frayed, torn threads
    else:
        sd = _blob(
            rng, size, center, radius, elong=rng.uniform(1.0, 1.5), angle=rng.uniform(0, np.pi), rough=0.18
        )
    inside = np.clip(0.5 - sd, 0, 1)
    grain = rng.standard_normal((size, size), dtype=np.float32)
    if category == "wood":
        # Torn fibres at the bottom of a chip run along the grain.
        grain = ndimage.uniform_filter1d(grain, max(3, size // 20), axis=1)
    fill = (
        _HOLE_COLOURS[category] * (1.0 + 0.07 * _normalised(ndimage.gaussian_filter(grain, 0.8)))[..., None]
    )
    # Depth: the edge on the lit side casts a shadow into the hole.
    yy, xx = _grid(size)
    facing = np.cos(np.arctan2(yy - center[0], xx - center[1]) - _LIGHT)
    shade = 1.0 - 0.45 * np.exp(np.minimum(sd, 0.0) / 3.0) * np.clip(facing, 0, 1)
    out = _composite(img, inside, fill * shade[..., None])
    return out, sd <= 1.0


def _missing_chunk(img: FloatImage, rng: np.random.Generator, obj: Mask) -> tuple[FloatImage, Mask]:
    """Cut a bite out of the object's outer edge and show the mat behind it."""
    size = img.shape[0]
    solid = ndimage.binary_fill_holes(obj)
    cy, cx = (float(v) for v in ndimage.center_of_mass(solid))
    r_out = float(np.sqrt(solid.sum() / np.pi))
    phi = rng.uniform(0, 2 * np.pi)
    bite = rng.uniform(0.09, 0.13) * size
    centre = (cy + np.sin(phi) * (r_out + bite * 0.25), cx + np.cos(phi) * (r_out + bite * 0.25))
    sd = _blob(rng, size, centre, bite, elong=rng.uniform(1.0, 1.4), angle=rng.uniform(0, np.pi), rough=0.2)
    cut = np.clip(0.5 - sd, 0, 1) * ndimage.binary_dilation(obj, iterations=1)
    # Mat colour sampled from the background around the bite, with the mat's own grain.
    yy, xx = _grid(size)
    near = (np.hypot(yy - centre[0], xx - centre[1]) < bite * 3) & ~ndimage.binary_dilation(
        solid, iterations=3
    )
    bg_pixels = img[near] if near.sum() > 20 else img[~solid]
    mat = np.median(bg_pixels, axis=0).astype(np.float32)
    fill = mat[None, None, :] * (1.0 + 0.05 * _smooth_noise(rng, size, 3))[..., None]
    # The freshly broken face is a bright sliver along the new edge.
    face = np.exp(-(((sd + 1.5) / 1.0) ** 2)) * obj * (1 - cut)
    out = _composite(img, face * 0.5, np.full_like(img, 225.0))
    out = _composite(out, cut, fill)
    return out, (cut > 0.5) | ((face > 0.3) & obj)


_PAINTERS: dict[str, Callable[[FloatImage, np.random.Generator, Mask, str], tuple[FloatImage, Mask]]] = {
    "scratch": _scratch,
    "crack": _crack,
    "hole": _hole,
    "stain": _stain,
    "missing": _missing,
}


def paint_defect(
    image: np.ndarray, defect: str, rng: np.random.Generator, category: str
) -> tuple[np.ndarray, np.ndarray]:
    """Paint one `defect` onto a good `image` of `category`.

    Returns (defective HxWx3 uint8 image, HxW bool mask). The mask marks where the defect is visible:
    every pixel whose gray level changed by more than a few levels is inside it, plus at most a
    one-to-two-pixel annotation margin. Its area is kept between about 0.6 % and 15 % of the image.
    """
    _check_category(category)
    if defect not in DEFECTS:
        raise InputError(f"unknown synthetic defect {defect!r}; choose from {', '.join(DEFECTS)}")
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or image.shape[0] != image.shape[1]:
        raise InputError(f"paint_defect needs a square HxWx3 uint8 image, got {image.shape} {image.dtype}")
    size = image.shape[0]
    base = image.astype(np.float32)
    allowed = _object_region(image) if category in _OBJECTS else np.ones((size, size), bool)
    if category in _OBJECTS and allowed.sum() < 0.02 * size * size:
        raise InputError(f"no {category} found in the image to paint a defect on")
    # Objects: the mask may not spill onto the background (fill_holes must not claim the washer's bore).
    near_object = ndimage.binary_dilation(allowed, iterations=2)
    for _ in range(12):
        painted, footprint = _PAINTERS[defect](base, rng, allowed, category)
        out = np.clip(np.rint(painted), 0, 255).astype(np.uint8)
        changed = np.abs(_gray(out) - _gray(image)) > _VISIBLE_DELTA
        # Footprint plus everything that visibly changed, closed into one solid region per defect.
        # Padding keeps the closing from eating into a defect that touches the image border.
        padded = np.pad(footprint | changed, 3, mode="edge")
        closed = ndimage.binary_closing(padded, iterations=2)[3:-3, 3:-3]
        mask = (ndimage.binary_fill_holes(closed) & near_object) | changed
        # A random draw can end up tiny (a scratch clipped by the object edge) or huge; redraw those.
        if _MIN_AREA <= float(mask.mean()) <= _MAX_AREA:
            break
    return out, mask


# ---------------------------------------------------------------------------------------------- dataset


def _image_rng(seed: int, category: str, split: str, index: int) -> np.random.Generator:
    """Independent stream per image: reproducible, and unaffected by which other images are made."""
    key = [seed, zlib.crc32(category.encode()), zlib.crc32(split.encode()), index]
    return np.random.default_rng(np.random.SeedSequence(key))


def _save_png(array: np.ndarray, path: Path) -> None:
    # Fixed compression level and no metadata: identical arrays give identical bytes.
    Image.fromarray(array).save(path, format="PNG", compress_level=3)


def _stamp(
    category: str, seed: int, size: int, n_train: int, n_test_good: int, n_test_per_defect: int
) -> dict:
    return {
        "generator": "rd2t.runners.synth",
        "version": GENERATOR_VERSION,
        "category": category,
        "seed": seed,
        "size": size,
        "n_train": n_train,
        "n_test_good": n_test_good,
        "n_test_per_defect": n_test_per_defect,
        "defects": list(DEFECTS),
    }


def _read_stamp(cat_dir: Path) -> dict | None:
    try:
        return json.loads((cat_dir / STAMP_NAME).read_text())
    except (OSError, ValueError):
        return None


def _write_one(job: tuple[Path, str, int, str, int, int, str]) -> None:
    """Render (and for a defect split, paint) one image and write it; runs on a worker thread."""
    out, category, seed, split, index, size, name = job
    rng = _image_rng(seed, category, split, index)
    image = render_good(category, rng, size)
    if split not in ("train/good", "test/good"):
        defect = split.split("/", 1)[1]
        image, mask = paint_defect(image, defect, rng, category)
        _save_png(mask.astype(np.uint8) * 255, out / "ground_truth" / defect / f"{name}_mask.png")
    _save_png(image, out / split / f"{name}.png")


def _write_category(
    out: Path, category: str, seed: int, size: int, n_train: int, n_test_good: int, n_test_per_defect: int
) -> None:
    width = max(3, len(str(max(n_train, n_test_good, n_test_per_defect) - 1)))
    counts = {"train/good": n_train, "test/good": n_test_good}
    counts.update({f"test/{d}": n_test_per_defect for d in DEFECTS})
    for split in counts:
        (out / split).mkdir(parents=True)
    for defect in DEFECTS:
        (out / "ground_truth" / defect).mkdir(parents=True)
    jobs = [
        (out, category, seed, split, i, size, f"{i:0{width}d}")
        for split, n in counts.items()
        for i in range(n)
    ]
    # Every image has its own seed and file, so the order of completion cannot change any byte. numpy's
    # array maths and Pillow's PNG encoder release the GIL, so two threads use both cores of the demo
    # machine without the fork hazards of a process pool inside a program that has torch loaded.
    with ThreadPoolExecutor(max_workers=min(2, os.cpu_count() or 1)) as pool:
        list(pool.map(_write_one, jobs))


def _readme(root: Path, seed: int, size: int, n_train: int, n_test_good: int, n_test_per_defect: int) -> str:
    present = sorted(p.name for p in root.iterdir() if (p / STAMP_NAME).is_file())
    return (
        "rd2t synthetic demo dataset\n"
        "===========================\n\n"
        "Every image here is SYNTHETIC: drawn by rd2t.runners.synth, not photographed. It exists so the\n"
        "demo runs offline; scores on it say nothing about performance on real parts.\n\n"
        f"generator: rd2t.runners.synth version {GENERATOR_VERSION}\n"
        f"seed: {seed}\n"
        f"image size: {size} x {size} px\n"
        f"categories: {', '.join(present)}\n"
        f"defects: {', '.join(DEFECTS)}\n"
        f"per category: {n_train} train/good, {n_test_good} test/good, {n_test_per_defect} test images per "
        "defect type\n\n"
        "Layout (as MVTec AD):\n"
        "  <category>/train/good/000.png\n"
        "  <category>/test/good/000.png\n"
        "  <category>/test/<defect>/000.png\n"
        "  <category>/ground_truth/<defect>/000_mask.png   (L-mode PNG, 255 = defect)\n"
        f"  <category>/{STAMP_NAME}                   (parameters; a match skips regeneration)\n"
    )


def make_dataset(
    root: str | os.PathLike[str],
    *,
    seed: int = 0,
    categories: Sequence[str] = CATEGORIES,
    size: int = 256,
    n_train: int = 60,
    n_test_good: int = 10,
    n_test_per_defect: int = 4,
) -> Path:
    """Write a synthetic MVTec-AD-layout dataset under `root` and return `root` as a Path.

    A category whose folder already holds a stamp with the same parameters is left untouched, so a
    second demo run starts at once. A folder with a different stamp is regenerated; a non-empty folder
    without a stamp is not ours and is never overwritten.
    """
    for category in categories:
        _check_category(category)
    if seed < 0:
        raise InputError(f"make_dataset needs a non-negative seed, got {seed}")
    if min(n_train, n_test_good, n_test_per_defect) < 0 or n_train < 1:
        raise InputError("make_dataset needs n_train >= 1 and non-negative test counts")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for category in categories:
        cat_dir = root / category
        stamp = _stamp(category, seed, size, n_train, n_test_good, n_test_per_defect)
        if _read_stamp(cat_dir) == stamp:
            continue
        if cat_dir.exists() and not (cat_dir / STAMP_NAME).exists() and any(cat_dir.iterdir()):
            raise InputError(
                f"{cat_dir} exists and was not made by rd2t.runners.synth; refusing to overwrite it"
            )
        # Build beside the target and swap in at the end: an interrupted run never leaves a half
        # category that a later run would mistake for a finished one.
        partial = root / f".{category}.partial"
        if partial.exists():
            shutil.rmtree(partial)
        _write_category(partial, category, seed, size, n_train, n_test_good, n_test_per_defect)
        (partial / STAMP_NAME).write_text(json.dumps(stamp, indent=2, sort_keys=True) + "\n")
        if cat_dir.exists():
            shutil.rmtree(cat_dir)
        os.replace(partial, cat_dir)
    readme = root / "README.txt"
    text = _readme(root, seed, size, n_train, n_test_good, n_test_per_defect)
    if not readme.is_file() or readme.read_text() != text:
        readme.write_text(text)
    return root
