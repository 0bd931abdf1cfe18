"""How long the retention policy holds the images folder's exclusive lock (inspections wait for it).

A station is filled with N distinct inspections (random images of SIZE px, PNG), all aged past
--keep-images-days, and --extra rows written straight into the database (half of them pruned long ago, half
recent: a station months in), then Station.prune_images removes the N inspections' files in batches;
each batch's time under the lock is timed from outside (Storage.removing wrapped). Prints the batches'
median and maximum and the whole run's files per second. Needs any rd2t model (its scoring is not timed).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/retention.py runs/line3/model.pt --n 1000 --extra 500000
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import sqlalchemy as sa
from PIL import Image

from rd2t.service import db
from rd2t.service.settings import StationSettings
from rd2t.service.station import Station


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--extra", type=int, default=0, help="rows of a station months in (no files)")
    ap.add_argument("--db", help="database URL (default SQLite in a temporary folder)")
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        station = Station(
            StationSettings(
                Path(a.model), db=a.db, images=Path(tmp), threads=1, keep_images_days=1, overlay="eager"
            )
        )
        t0 = time.time()
        for i in range(a.n):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (a.size, a.size, 3), dtype=np.uint8)).save(buf, "PNG")
            station.inspect(buf.getvalue(), f"p{i}.png")
        print(f"{a.n} inspections in {time.time() - t0:.0f} s")
        t = db.inspections
        long_ago = db.utcnow().replace(year=2000)
        with station.engine.begin() as conn:
            conn.execute(t.update().values(time=long_ago))  # all past the age
            like = dict(conn.execute(sa.select(t).where(t.c.id == 1)).mappings().one())
            for start in range(0, a.extra, 10_000):
                rows = []
                for i in range(start, min(start + 10_000, a.extra)):
                    sha = f"{i:064x}"
                    names = station.storage.names(sha, "PNG", station.model_id)
                    old = {"time": long_ago, "pruned_at": long_ago} if i % 2 else {"time": db.utcnow()}
                    rows.append({**like, "id": None, "image_sha256": sha, "image_path": names[0],
                                 "overlay_path": names[1], "thumb_path": names[2], **old})  # fmt: skip
                conn.execute(t.insert(), rows)
        print(f"+ {a.extra} rows (half pruned long ago, half recent)")
        held = []
        removing = station.storage.removing

        @contextmanager
        def timed():
            with removing():
                start = time.perf_counter()
                yield
                held.append(time.perf_counter() - start)

        station.storage.removing = timed
        t0 = time.perf_counter()
        done = station.prune_images()
        total = time.perf_counter() - t0
        station.close()
    ms = np.array(held[:-1]) * 1000  # the last call found nothing left
    print(f"removed {done['files']} files of {done['inspections']} inspections in {total:.2f} s "
          f"({done['files'] / total:.0f} files/s); lock held per batch of 50: median {np.median(ms):.1f} ms, "
          f"max {ms.max():.1f} ms over {len(ms)} batches")  # fmt: skip


if __name__ == "__main__":
    main()
