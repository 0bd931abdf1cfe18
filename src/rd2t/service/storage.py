"""Image files of the station, content-addressed: `<images>/<kind>/<sha[:2]>/<sha>...`.

Paths are made here from a SHA-256 and stored relative in the database; no path ever comes from a
request. Every file is written through rd2t.files.atomic_write BEFORE its row is committed, so a row
never points at a missing or half-written file. The retention policy removes files under an exclusive
lock that inspections take shared while they write theirs and commit the row (across processes: `serve`
and `watch` may share a folder), so a file a new row counts on is never removed under it.
"""

from __future__ import annotations

import fcntl
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rd2t.errors import InputError
from rd2t.files import atomic_write, check_writable

FORMATS = {  # Pillow format -> (content type, extension): the formats a station accepts
    "PNG": ("image/png", "png"),
    "JPEG": ("image/jpeg", "jpg"),
    "BMP": ("image/bmp", "bmp"),
    "TIFF": ("image/tiff", "tif"),
    "WEBP": ("image/webp", "webp"),
}


class Storage:
    def __init__(self, root: Path):
        self.root = check_writable(Path(root)).resolve()
        self.id = self._folder_id()

    def _folder_id(self) -> str:
        """This images folder's own id (IMAGES/.folder-id, made once): rows record it, so a station sharing a
        database with others (each with its own folder) removes only its own files' rows."""
        path = self.root / ".folder-id"
        with self._locked(fcntl.LOCK_EX):  # two processes starting on one folder make one id
            if not path.is_file():
                atomic_write(path, uuid.uuid4().hex.encode())
            return path.read_text().strip()

    def put(self, relative: str, data) -> str:
        """Write `data` (bytes or a writer function) at `relative` unless it is there already (same
        name = same content). Returns `relative`."""
        path = self.root / relative
        if not path.exists():
            atomic_write(path, data)
        return relative

    @contextmanager
    def _locked(self, how: int) -> Iterator[None]:
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)  # its own fd: flock is per open file
        try:
            fcntl.flock(fd, how)
            yield
        finally:
            os.close(fd)  # releases the lock

    def writing(self):
        """Held (shared) while an inspection writes its files and commits its row."""
        return self._locked(fcntl.LOCK_SH)

    def removing(self):
        """Held (exclusive) while the retention policy picks the files no kept row needs and removes them."""
        return self._locked(fcntl.LOCK_EX)

    def remove(self, relative: str) -> int:
        """Delete a stored file; returns the bytes freed (0: it was not there)."""
        path = self.path(relative)
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return 0
        return size

    def path(self, relative: str) -> Path:
        """The file of a stored row; refuses anything that would leave the images folder."""
        path = (self.root / relative).resolve()
        if not path.is_relative_to(self.root):
            raise InputError(f"{relative}: not a station file")
        return path

    @staticmethod
    def names(sha: str, fmt: str, model_id: str) -> tuple[str, str, str]:
        """(original, overlay, thumbnail) relative names for an image's hash and the model."""
        ext = FORMATS[fmt][1]
        return (
            f"originals/{sha[:2]}/{sha}.{ext}",
            f"overlays/{sha[:2]}/{sha}-{model_id}.png",  # the overlay depends on the model, not the threshold
            f"thumbs/{sha[:2]}/{sha}.jpg",
        )

    @staticmethod
    def map_name(overlay_name: str) -> str:
        """The stored anomaly map (model resolution, float32 .npy) an overlay is drawn from."""
        return "maps/" + overlay_name.removeprefix("overlays/").removesuffix(".png") + ".npy"

    @staticmethod
    def view_names(image_name: str, overlay_name: str) -> tuple[str, str]:
        """The review page's JPEG renditions of a large part, drawn on first view: the image and its heat
        map, at most station.VIEW_PX on their longest side."""
        image = "views/" + image_name.removeprefix("originals/").rsplit(".", 1)[0] + ".jpg"
        heat = "views/" + overlay_name.removeprefix("overlays/").removesuffix(".png") + ".jpg"
        return image, heat

    def sweep_temp_files(self, older_than_s: float = 60.0) -> int:
        """Remove temp files left by a process killed mid-write (atomic_write's `.<name>.*.tmp`)."""
        n, now = 0, time.time()
        for p in self.root.glob("*/*/.*.tmp"):
            try:
                if now - p.stat().st_mtime > older_than_s:
                    p.unlink()
                    n += 1
            except OSError:
                pass
        return n
