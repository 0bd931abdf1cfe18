"""`rd2t watch IN_DIR MODEL`: inspect each new image a camera writes into a folder, exactly once.

Each file is recorded through Station.inspect (the HTTP service's code path) with its identity
`path|size|mtime_ns` as the row's `source`, which the database keeps unique: after a restart the file
is found recorded and skipped, and when two watchers race for one file only one row is committed (the
loser's files are the same content-addressed files, so nothing is left over). A file is taken only
once it has kept its size and time over two scans, so a half-written image is not read.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from sqlalchemy.exc import IntegrityError

from rd2t.data.images import IMAGE_EXTENSIONS
from rd2t.errors import InputError, RD2TError
from rd2t.service.settings import StationSettings
from rd2t.service.station import Station, reload_on_sighup

log = logging.getLogger("rd2t.service")


def identity(path: Path, st: os.stat_result) -> str:
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def candidates(folder: Path) -> dict[Path, tuple[int, int]]:
    """Image files directly in `folder` -> (size, mtime_ns); hidden and temp files are not images yet."""
    found = {}
    for entry in os.scandir(folder):
        p = Path(entry.path)
        if entry.name.startswith(".") or p.suffix.lower() not in IMAGE_EXTENSIONS or not entry.is_file():
            continue
        try:
            st = entry.stat()
        except FileNotFoundError:  # taken by another watcher meanwhile
            continue
        found[p] = (st.st_size, st.st_mtime_ns)
    return found


def move_to(path: Path, folder: Path) -> None:
    """Move a handled file into `folder` (same file system: a rename); another watcher may have done it."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / path.name
    if target.exists():  # a camera reusing names: keep both
        target = folder / f"{path.stem}-{time.time_ns()}{path.suffix}"
    try:
        os.replace(path, target)
    except FileNotFoundError:
        pass


class Watcher:
    def __init__(self, station: Station, folder: Path, done_dir: Path | None = None):
        self.station, self.folder, self.done_dir = station, Path(folder), done_dir
        if not self.folder.is_dir():
            raise InputError(f"{self.folder}: folder not found")
        self.seen: dict[Path, tuple[int, int]] = {}  # last scan's (size, mtime) of each file
        self.failed: set[str] = set()  # unreadable files, not retried until they change
        self.done: set[str] = set()  # recorded files left in place: no query per file per scan

    def scan(self) -> int:
        """One pass over the folder; returns how many new inspections this process recorded."""
        self.station.refresh_threshold()  # the service on the same database may have moved it
        now = candidates(self.folder)
        stable = [p for p, stat in now.items() if self.seen.get(p) == stat]
        self.seen = now
        n = 0
        for path in sorted(stable):
            try:
                n += self.handle(path)
            except FileNotFoundError:
                continue
        return n

    def handle(self, path: Path) -> int:
        st = path.stat()
        source = identity(path, st)
        if source in self.failed or source in self.done:
            return 0
        if self.station.has_source(source):  # recorded before a restart, or by another watcher
            self.done.add(source)
            if self.done_dir:
                move_to(path, self.done_dir)
            return 0
        data = path.read_bytes()
        try:
            record = self.station.inspect(data, str(path), source=source)
        except IntegrityError:  # another watcher committed this file first
            self.done.add(source)
            return 0
        except RD2TError as e:
            log.error("%s", e)
            self.failed.add(source)
            if self.done_dir:
                move_to(path, self.done_dir / "unreadable")
            return 0
        log.info("%s: %s %.4f (id %s)", path.name, record["decision"], record["score"], record["id"])
        self.done.add(source)
        if self.done_dir:
            move_to(path, self.done_dir)
        return 1


def watch(
    settings: StationSettings, folder: Path, done_dir: Path | None = None, interval: float = 1.0
) -> None:
    """Scan `folder` every `interval` seconds until interrupted."""
    if not Path(folder).is_dir():  # before the model and the database are opened
        raise InputError(f"{folder}: folder not found")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    station = Station(settings)
    station.start_retention()
    reload_on_sighup(station)
    watcher = Watcher(station, folder, done_dir)
    log.info("watching %s with %s (database %s)", folder, settings.model, settings.db_url.split("@")[-1])
    try:
        while True:
            watcher.scan()
            time.sleep(interval)
    finally:
        station.close()
