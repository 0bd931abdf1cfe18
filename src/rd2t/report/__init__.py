"""Reports for people: heat-map pictures and the self-contained HTML evaluation/prediction report.

Names are loaded on first use, so drawing an overlay (`rd2t predict --out`) never imports the HTML
report's plotting and metrics stack.
"""

from importlib import import_module

_WHERE = {
    "binary_mask": "heatmap",
    "colorize": "heatmap",
    "contour": "heatmap",
    "overlay": "heatmap",
    "resize_map": "heatmap",
    "ImageResult": "html",
    "default_map_range": "html",
    "write_report": "html",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'rd2t.report' has no attribute {name!r}")
    return getattr(import_module(f"rd2t.report.{_WHERE[name]}"), name)
