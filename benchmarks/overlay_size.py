"""What a 20-megapixel part's heat map costs the review page: the full-size overlay as PNG (what
/overlay.png serves) and as JPEG, against the page's view (station.VIEW_PX: the part shrunk, the map drawn
at that size, JPEG). Seconds and megabytes; a generated 5000 x 4000 photo-like image, a random 256 px map.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/overlay_size.py
"""

from __future__ import annotations

import io
import time

import numpy as np
from PIL import Image

from rd2t.report.heatmap import overlay
from rd2t.service.station import VIEW_PX


def timed(step) -> tuple[float, object]:
    t = time.perf_counter()
    out = step()
    return time.perf_counter() - t, out


def encoded(image: Image.Image, fmt: str, **options) -> tuple[float, int]:
    buf = io.BytesIO()
    seconds, _ = timed(lambda: image.save(buf, fmt, **options))
    return seconds, len(buf.getvalue())


def main() -> None:
    rng = np.random.default_rng(0)
    h, w = 4000, 5000
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    grey = 128 + 60 * np.sin(xx / 40) * np.cos(yy / 70) + rng.normal(0, 6, (h, w))
    image = Image.fromarray(np.repeat(grey.clip(0, 255).astype(np.uint8)[..., None], 3, 2))
    heat_map = rng.random((256, 256)).astype(np.float32)
    draw_s, full = timed(lambda: overlay(image, heat_map, 0.2, 0.9))
    png_s, png_bytes = encoded(full, "PNG", compress_level=1)  # as the station writes it
    jpg_s, jpg_bytes = encoded(full, "JPEG", quality=90)
    print(f"full-size overlay {w}x{h}: draw {draw_s:.2f} s; PNG {png_s:.2f} s, {png_bytes / 1e6:.1f} MB; "
          f"JPEG {jpg_s:.2f} s, {jpg_bytes / 1e6:.1f} MB")  # fmt: skip

    def view() -> Image.Image:
        small = image.copy()
        small.thumbnail((VIEW_PX, VIEW_PX), Image.Resampling.LANCZOS, reducing_gap=3.0)
        return overlay(small, heat_map, 0.2, 0.9)

    view_s, small = timed(view)
    view_jpg_s, view_bytes = encoded(small, "JPEG", quality=90)
    print(f"view {small.size[0]}x{small.size[1]}: shrink and draw {view_s:.2f} s; JPEG {view_jpg_s:.2f} s, "
          f"{view_bytes / 1e6:.1f} MB")  # fmt: skip


if __name__ == "__main__":
    main()
