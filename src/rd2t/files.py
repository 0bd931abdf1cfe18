"""The one way rd2t writes a file: temp file beside it, fsync, rename, fsync of the folder.

A reader (a person, the review page, a second process) sees either the old file or the new one, never a
half-written one; after a power cut the rename is durable too. Every file rd2t writes goes through here.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from rd2t.errors import OutputError


def file_sha256(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """The file's SHA-256, read in 1 MB blocks (a model or an image need not fit memory twice)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike[str], data: bytes | str | Callable[[BinaryIO], None]) -> Path:
    """Write `data` (bytes, text, or a function writing to a binary file) to `path` atomically.

    Parent folders are created. Any failure (full disk, read-only folder) is an OutputError naming the
    file, and leaves no temp file behind.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise OutputError(f"{path}: cannot write ({e.strerror or type(e).__name__})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it owner-only; outputs are read by other users
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise OutputError(f"{path}: cannot write ({e.strerror or type(e).__name__})") from None
        if isinstance(e, RuntimeError) and "enforce fail" in str(e):  # torch.save on a full disk
            raise OutputError(f"{path}: cannot write (disk full or file system error)") from None
        raise
    return path


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some file systems (and Windows) cannot open a folder: the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def check_writable(folder: str | os.PathLike[str]) -> Path:
    """Create `folder` if needed and prove a file can be written there, before any work starts."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{folder}: exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".rd2t-write-check.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputError(f"{folder}: cannot write here ({e.strerror or type(e).__name__})") from None
    return folder
