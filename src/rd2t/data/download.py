"""Download and unpack the public benchmarks (MVTec AD, BTAD, VisA) from their official addresses.

A download resumes where it stopped (HTTP Range into ``<file>.part``), is checked against the archive's
published SHA-256 and unpacked with path-traversal protection. Without network access it fails at once
with a one-line message telling the user where to get the data by hand.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from rd2t.errors import InputError

# Short, so an offline machine fails in seconds instead of hanging on a connect; also the per-read
# timeout once connected, after which the partial file is kept for a resume.
TIMEOUT_S = 10.0
CHUNK_BYTES = 1 << 20
COMPLETE_MARKER = ".rd2t-complete"

# Called as opener(request, timeout=TIMEOUT_S) and returns a response like urllib's (read(), status,
# headers, context manager). Injectable so tests never touch the internet.
Opener = Callable[..., Any]


@dataclass(frozen=True)
class Source:
    url: str
    filename: str
    sha256: str | None  # None when no checksum is published: the archive is then used unchecked
    marker: str  # a folder the unpacked dataset root must contain, to find that root inside the archive
    licence: str


# The SHA-256 values are the ones anomalib pins for these exact archives (MVTecAD, BTech and Visa
# datamodules) and that many independent downloads report; none of the publishers print one themselves.
SOURCES: dict[str, Source] = {
    # MVTec rotates its mydrive.ch share links; this is the link of the full archive (about 4.9 GiB) that
    # the download page pointed to at the time of writing. The archive's content has not changed.
    "mvtec": Source(
        url="https://www.mydrive.ch/shares/150996/b52ecdcbf521176e9db9c731f2304b27/"
        "download/420938113-1629960298/mvtec_anomaly_detection.tar.xz",
        filename="mvtec_anomaly_detection.tar.xz",
        sha256="cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d",
        marker="bottle",
        licence="CC BY-NC-SA 4.0 (non-commercial), MVTec Software GmbH",
    ),
    # MVTec AD 2 (2025), all eight categories (about 32 GB). The link is the one MVTec's download page
    # gives after its licence form; MVTec publishes no checksum, so the archive is used unchecked.
    "mvtec_ad2": Source(
        url="https://www.mydrive.ch/shares/150997/701c90d3aea6588f404936e32a674602/"
        "download/466712769-1743429042/mvtec_ad_2.tar.gz",
        filename="mvtec_ad_2.tar.gz",
        sha256=None,
        marker="can",
        licence="CC BY-NC-SA 4.0 (non-commercial), MVTec Software GmbH",
    ),
    # The zip unpacks to BTech_Dataset_transformed/{01,02,03}.
    "btad": Source(
        url="https://avires.dimi.uniud.it/papers/btad/btad.zip",
        filename="btad.zip",
        sha256="461c9387e515bfed41ecaae07c50cf6b10def647b36c9e31d239ab2736b10d2a",
        marker="01",
        licence="CC BY-SA 4.0, beanTech srl",
    ),
    # Unpacks without an outer folder: the 12 categories plus split_csv/ side by side.
    "visa": Source(
        url="https://amazon-visual-anomaly.s3.us-west-2.amazonaws.com/VisA_20220922.tar",
        filename="VisA_20220922.tar",
        sha256="2eb8690c803ab37de0324772964100169ec8ba1fa3f7e94291c9ca673f40f362",
        marker="candle",
        licence="CC BY 4.0, Amazon",
    ),
}


def download(
    dataset: str, root: str | os.PathLike[str], *, opener: Opener | None = None, progress: bool = True
) -> Path:
    """Fetch, verify and unpack a benchmark under ``root``; return the folder to pass as ``--root``.

    ``dataset`` is "mvtec" (MVTec AD, the full mvtec_anomaly_detection.tar.xz), "mvtec_ad2" (MVTec AD 2,
    mvtec_ad_2.tar.gz, about 32 GB), "btad" (btad.zip) or
    "visa" (VisA_20220922.tar; it includes split_csv/1cls.csv, the official one-class split that
    ``rd2t.data.visa`` reads). The archive is saved as ``root/<file name>`` and unpacked into
    ``root/<dataset>/``; an archive downloaded by this call is deleted once unpacked (one already lying
    there is kept). Calling again after success returns at once; after an interruption it resumes.

    ``opener`` replaces ``urllib.request.urlopen`` (called as ``opener(request, timeout=...)``).
    Raises ``InputError`` with a one-line message when the host cannot be reached (within about 10 s),
    the server refuses, the checksum differs (the file is kept and named) or unpacking fails.
    """
    key = dataset.strip().lower()
    if key not in SOURCES:
        raise InputError(
            f"{dataset}: no download available (downloadable: {', '.join(SOURCES)}); "
            "fetch other datasets yourself and pass --root"
        )
    source = SOURCES[key]
    root = Path(root)
    target = root / key
    if (target / COMPLETE_MARKER).is_file():
        return _dataset_root(target, source, key)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"{root}: cannot create the download folder ({e.strerror or e})") from None

    archive = root / source.filename
    fetched = False
    if not archive.is_file():
        _fetch(source, key, archive, opener or urllib.request.urlopen, progress)
        fetched = True
    _verify(archive, source.sha256, progress)
    _extract(archive, target)
    dataset_root = _dataset_root(target, source, key)
    (target / COMPLETE_MARKER).write_text(f"{source.url}\n")
    if fetched:
        archive.unlink()
    return dataset_root


def _fail_reach(source: Source, key: str, reason: object) -> InputError:
    host = urllib.parse.urlsplit(source.url).hostname or source.url
    text = " ".join(str(reason).split()) or type(reason).__name__
    return InputError(
        f"cannot reach {host} to download {key}: {text}; "
        f"download it yourself from {source.url} and pass --root"
    )


def _content_range_start(response: Any) -> int | None:
    match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", "") or "")
    return int(match.group(1)) if match else None


def _fetch(source: Source, key: str, archive: Path, opener: Opener, progress: bool) -> None:
    """Download into ``<archive>.part`` (resuming it when present), then rename to ``archive``."""
    part = archive.with_name(archive.name + ".part")
    offset = part.stat().st_size if part.is_file() else 0
    headers = {"User-Agent": "rd2t"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(source.url, headers=headers)
    try:
        response = opener(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:
            # "Range not satisfiable" for a resume means the .part already holds the whole file; the
            # checksum that follows is the judge of that.
            part.replace(archive)
            return
        raise InputError(
            f"{source.url}: download of {key} refused (HTTP {e.code} {e.reason}); "
            f"download it yourself from {source.url} and pass --root"
        ) from None
    except urllib.error.URLError as e:
        raise _fail_reach(source, key, e.reason) from None
    except (OSError, http.client.HTTPException) as e:
        raise _fail_reach(source, key, e) from None

    with response:
        status = getattr(response, "status", None) or response.getcode()
        if offset and status == 206 and _content_range_start(response) != offset:
            raise InputError(
                f"{part}: server answered the resume request with another byte range; "
                "delete the .part file and run again"
            )
        if status != 206:
            # A server that ignores Range answers 200 with the whole file: start the .part over.
            offset = 0
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else None
        with (
            open(part, "ab" if offset else "wb") as out,
            tqdm(
                total=total,
                initial=offset,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=source.filename,
                disable=not progress,
            ) as bar,
        ):
            try:
                while chunk := response.read(CHUNK_BYTES):
                    out.write(chunk)
                    bar.update(len(chunk))
            except (OSError, http.client.HTTPException) as e:
                out.flush()
                reason = " ".join(str(e).split()) or type(e).__name__
                raise InputError(
                    f"{part}: download of {key} interrupted after {out.tell()} bytes ({reason}); "
                    "run the same command again to resume"
                ) from None
    size = part.stat().st_size
    if total is not None and size != total:
        raise InputError(
            f"{part}: download of {key} ended early ({size} of {total} bytes); "
            "run the same command again to resume"
        )
    part.replace(archive)


def _verify(archive: Path, sha256: str | None, progress: bool) -> None:
    if sha256 is None:
        return
    digest = hashlib.sha256()
    with (
        open(archive, "rb") as handle,
        tqdm(
            total=archive.stat().st_size,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=f"checking {archive.name}",
            disable=not progress,
        ) as bar,
    ):
        while block := handle.read(CHUNK_BYTES):
            digest.update(block)
            bar.update(len(block))
    actual = digest.hexdigest()
    if actual != sha256.lower():
        # The file is left in place so the user can inspect it; deleting it silently would hide the cause.
        raise InputError(
            f"{archive}: sha256 mismatch (expected {sha256}, got {actual}); the file was kept, "
            "delete it and run again to download it afresh"
        )


def _extract(archive: Path, target: Path) -> None:
    """Unpack into ``target``, refusing members that would land outside it."""
    target.mkdir(parents=True, exist_ok=True)
    try:
        if zipfile.is_zipfile(archive):
            # ZipFile.extractall already drops absolute paths and '..' components.
            with zipfile.ZipFile(archive) as zipped:
                zipped.extractall(target)
        else:
            with tarfile.open(archive, "r:*") as tarred:
                # The "data" filter rejects absolute paths, '..', links out of the target and device files.
                tarred.extractall(target, filter="data")
    except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError) as e:
        reason = " ".join(str(e).split()) or type(e).__name__
        raise InputError(f"{archive}: cannot unpack into {target} ({reason})") from None


def _dataset_root(target: Path, source: Source, key: str) -> Path:
    """The folder holding the category folders: ``target`` itself or its one wrapping folder."""
    if (target / source.marker).is_dir():
        return target
    for child in sorted(p for p in target.iterdir() if p.is_dir()):
        if (child / source.marker).is_dir():
            return child
    raise InputError(
        f"{target}: unpacked {key} archive has no {source.marker}/ folder (unexpected archive layout)"
    )
