"""Reading images and ground-truth masks from disk, whatever mode or bit depth they were saved in.

Every failure is an ``InputError`` whose message is one line naming the file and the problem, so the
CLI can print it as is.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from rd2t.errors import InputError

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})

# Mask and image may be stored at different resolutions (e.g. masks drawn on a downscaled copy); we
# accept that as long as the shapes agree, and refuse when the aspect ratio says they cannot be the same
# picture.
ASPECT_TOLERANCE = 0.01

# The largest image rd2t decodes, in pixels (width x height); env RD2T_MAX_PIXELS changes it (0: no
# limit). It replaces Pillow's own decompression-bomb guard, whose raw two-line warning names no file.
DEFAULT_MAX_PIXELS = 250_000_000
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def max_pixels() -> int | None:
    """The pixel limit in force (None: no limit), read from RD2T_MAX_PIXELS on every call."""
    text = os.environ.get("RD2T_MAX_PIXELS", "").strip()
    if not text:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(float(text))
    except ValueError:
        raise InputError(f"RD2T_MAX_PIXELS={text!r}: expected a number of pixels (0: no limit)") from None
    return value if value > 0 else None


def _pixel_limit_error(path: Path, what: str, limit: int, size: tuple[int, int] | None) -> InputError:
    dims = f"{size[0]}x{size[1]} = {size[0] * size[1]} pixels" if size else "over twice as many pixels"
    return InputError(
        f"{path}: cannot read {what} ({dims}, above the limit of {limit}; "
        "raise it with the environment variable RD2T_MAX_PIXELS, 0 for none)"
    )


def _one_line(error: BaseException) -> str:
    """The exception text squeezed onto one line (Pillow messages sometimes span several)."""
    text = " ".join(str(error).split())
    return text or type(error).__name__


def list_images(folder: str | os.PathLike[str]) -> list[Path]:
    """The image files directly inside ``folder``, sorted by name.

    Extensions are matched case-insensitively (VisA ships ``.JPG``). Hidden files are skipped because
    macOS leaves ``._000.png`` companions next to real images and those are not images.
    Raises ``InputError`` when the folder does not exist.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: folder not found")
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def _open(path: Path, what: str) -> Image.Image:
    """Open and fully decode ``path`` so truncated files fail here rather than later in a worker."""
    limit = max_pixels()
    Image.MAX_IMAGE_PIXELS = limit  # Pillow refuses beyond twice this before we see the size
    try:
        with Image.open(path) as im:
            if limit is not None and im.size[0] * im.size[1] > limit:  # checked before any pixel is decoded
                raise _pixel_limit_error(path, what, limit, im.size)
            im.load()
            # copy() detaches the pixels from the file handle, which the context manager closes.
            return im.copy() if im.mode != "P" else _palette_copy(im)
    except FileNotFoundError:
        raise InputError(f"{path}: cannot read {what} (file not found)") from None
    except IsADirectoryError:
        raise InputError(f"{path}: cannot read {what} (it is a folder)") from None
    except UnidentifiedImageError:
        raise InputError(f"{path}: cannot read {what} (not an image format Pillow recognises)") from None
    except Image.DecompressionBombError:
        raise _pixel_limit_error(path, what, limit, None) from None
    except (OSError, ValueError, SyntaxError) as e:
        # SyntaxError is what some Pillow plugins raise on malformed headers.
        raise InputError(f"{path}: cannot read {what} ({_one_line(e)})") from None


def _palette_copy(im: Image.Image) -> Image.Image:
    # A palette image with a transparency entry must go through RGBA, otherwise Pillow warns and the
    # transparent colour is lost; copying first keeps ``info`` (where the transparency lives).
    return im.convert("RGBA") if "transparency" in im.info else im.copy()


def array_to_uint8(arr: np.ndarray, name: str) -> np.ndarray:
    """Pixel values by their real range, never clipped or stretched per image: uint8 as is; bool as
    0/255; uint16 (and other integers above 255, up to 65535) as 16-bit samples over 0..65535; integers
    within 0..255 as 8-bit values; floats within [0, 1] as fractions, within [0, 255] as 8-bit values.
    NaN/inf, negative values and anything wider are refused with a one-line InputError."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.integer):
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 65535:
            raise InputError(f"{name}: integer pixel values {lo}..{hi} are outside 0..65535")
        if (arr.dtype.kind == "u" and arr.dtype.itemsize == 2) or hi > 255:  # 16-bit: 0..65535 onto 0..255
            return ((arr.astype(np.int64) * 255 + 32767) // 65535).astype(np.uint8)
        return arr.astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        a = arr.astype(np.float64)
        if not np.isfinite(a).all():
            raise InputError(f"{name}: image holds NaN or infinite values")
        lo, hi = float(a.min()), float(a.max())
        if lo < 0 or hi > 255:
            raise InputError(f"{name}: float pixel values {lo:.4g}..{hi:.4g} are outside [0, 1] and [0, 255]")
        scale = 255.0 if hi <= 1.0 else 1.0  # floats in [0, 1] are fractions; above 1, 8-bit values
        return np.round(a * scale).astype(np.uint8)
    raise InputError(f"{name}: unsupported pixel type {arr.dtype}")


def load_image(path: str | os.PathLike[str]) -> Image.Image:
    """Read an image as 8-bit RGB.

    Accepts any mode Pillow decodes (1, L, LA, RGB, RGBA, P, CMYK, YCbCr, I;16, I, F ...). 16-bit and
    32-bit samples are scaled to 8 bits; alpha is dropped (defect images are opaque in practice and
    compositing over a colour would invent pixels). EXIF orientation is deliberately not applied: masks
    are drawn on the stored pixels, so rotating the image alone would misalign them.
    Raises ``InputError("<path>: cannot read image (<reason>)")`` for missing, corrupt or non-image files.
    """
    path = Path(path)
    return to_rgb(_open(path, "image"), str(path))


def to_rgb(im: Image.Image, name: str = "image") -> Image.Image:
    """Any Pillow mode as 8-bit RGB, high bit depths scaled by their real range (never clipped)."""
    if im.mode == "RGB":
        return im
    if im.mode.startswith("I") or im.mode == "F":
        return Image.fromarray(array_to_uint8(np.asarray(im), name)).convert("RGB")
    try:
        return im.convert("RGB")
    except (ValueError, OSError) as e:
        raise InputError(
            f"{name}: cannot read image (mode {im.mode} cannot be converted to RGB: {_one_line(e)})"
        ) from None


def resize_mask(mask: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    """A bool mask at (W, H). Shrinking keeps any covered pixel, so a 1-px scratch never vanishes;
    enlarging uses NEAREST, so the mask stays binary."""
    m = np.asarray(mask) != 0
    if m.shape == (size_wh[1], size_wh[0]):
        return m
    im = Image.fromarray(m.astype(np.uint8) * 255)
    if size_wh[0] * size_wh[1] < m.size:
        return np.asarray(im.resize(size_wh, Image.Resampling.BOX)) > 0
    return np.asarray(im.resize(size_wh, Image.Resampling.NEAREST)) > 0


def _mask_array(im: Image.Image) -> np.ndarray:
    """Foreground (> 0) of a mask in any mode, as a bool (H, W) array."""
    if im.mode == "P":
        # Palette index 0 is not necessarily black, so look at the colours, not the indices.
        im = im.convert("RGB")
    if im.mode in ("RGBA", "LA", "PA"):
        # Alpha says nothing about the defect; the colour channels do.
        im = im.convert("RGB" if im.mode == "RGBA" else "L")
    if im.mode == "CMYK":
        im = im.convert("RGB")
    array = np.asarray(im)
    if array.ndim == 3:
        return (array > 0).any(axis=2)
    return array > 0


def _aspect_matches(mask_size: tuple[int, int], image_size: tuple[int, int]) -> bool:
    mw, mh = mask_size
    w, h = image_size
    if min(mw, mh, w, h) <= 0:
        return False
    return abs((mw / mh) / (w / h) - 1.0) <= ASPECT_TOLERANCE


def mask_size_problem(
    mask_path: Path, mask_size: tuple[int, int], image_size: tuple[int, int], image_path: Path | None = None
) -> str | None:
    """The one-line complaint when a mask cannot be brought to the image size, else None."""
    if mask_size == image_size or _aspect_matches(mask_size, image_size):
        return None
    image = f"image {image_path}" if image_path is not None else "the image"
    return (
        f"{mask_path}: mask is {mask_size[0]}x{mask_size[1]} but {image} is {image_size[0]}x{image_size[1]}"
        " (aspect ratios differ, so the mask cannot be resized onto it)"
    )


def load_mask(
    path: str | os.PathLike[str], size: tuple[int, int], *, image_path: str | os.PathLike[str] | None = None
) -> np.ndarray:
    """Read a ground-truth mask as a bool array of shape (H, W) for an image whose PIL size is (W, H).

    Pixels > 0 (in any colour channel) are defective. A mask at another resolution with the same aspect
    ratio (within 1 %) is resized with ``resize_mask``; a different aspect ratio raises an
    ``InputError`` naming the mask, its size and the image size (and ``image_path`` when given).
    """
    path = Path(path)
    width, height = int(size[0]), int(size[1])
    im = _open(path, "mask")
    problem = mask_size_problem(path, im.size, (width, height), Path(image_path) if image_path else None)
    if problem:
        raise InputError(problem)
    return resize_mask(_mask_array(im), (width, height))
