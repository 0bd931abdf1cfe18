"""Reports for people: heat-map pictures and the self-contained HTML evaluation/prediction report."""

from rd2t.report.heatmap import binary_mask, colorize, contour, overlay, resize_map
from rd2t.report.html import ImageResult, default_map_range, write_report

__all__ = [
    "ImageResult",
    "binary_mask",
    "colorize",
    "contour",
    "default_map_range",
    "overlay",
    "resize_map",
    "write_report",
]
