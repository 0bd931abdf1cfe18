"""Dataset readers, image/mask loading and dataset download."""

from rd2t.data.datasets import (
    DATASETS,
    Sample,
    Split,
    btad,
    folder,
    labelled_defects,
    mpdd,
    mvtec,
    mvtec3d,
    open_dataset,
    visa,
)
from rd2t.data.download import download
from rd2t.data.images import IMAGE_EXTENSIONS, list_images, load_image, load_mask

__all__ = [
    "DATASETS",
    "IMAGE_EXTENSIONS",
    "Sample",
    "Split",
    "btad",
    "download",
    "folder",
    "labelled_defects",
    "list_images",
    "load_image",
    "load_mask",
    "mpdd",
    "mvtec",
    "mvtec3d",
    "open_dataset",
    "visa",
]
