"""What a model reload costs the line: inspection times before, during and after Station.reload_model.

A station scores a part every --interval seconds (one thread, as a camera sends them) with MODEL; after
--before parts, another thread points the station's --model link at OTHER and reloads (hash, load, one
warm-up image), while the parts keep coming; --after parts follow. Prints, per phase, the median, 95th
percentile and maximum of each inspection's time (decode, model, files and database, as the API's
`total_ms` plus the commit) and the reload's own duration. The two files may be one model and a copy
that differs only in its calibration: loading is what is timed.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/reload.py runs/hz/model.onnx runs/hz_b/model.onnx
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

from rd2t.service.settings import StationSettings
from rd2t.service.station import Station


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("other")
    ap.add_argument("--size", type=int, default=900, help="the parts' side in pixels")
    ap.add_argument("--interval", type=float, default=0.25, help="seconds between parts")
    ap.add_argument("--before", type=int, default=20)
    ap.add_argument("--after", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (a.size, a.size, 3), dtype=np.uint8)).save(buf, "PNG")
    part = buf.getvalue()
    with tempfile.TemporaryDirectory() as tmp:
        live = Path(tmp) / "current"
        live.symlink_to(Path(a.model).resolve())
        station = Station(StationSettings(live, images=Path(tmp) / "st", threads=a.threads, overlay="eager"))
        times: dict[str, list[float]] = {"before": [], "during": [], "after": []}
        phase, reload_s = "before", [0.0]

        def reload() -> None:
            (Path(tmp) / "next").symlink_to(Path(a.other).resolve())
            os.replace(Path(tmp) / "next", live)
            t = time.perf_counter()
            assert station.reload_model()["changed"]
            reload_s[0] = time.perf_counter() - t

        try:
            station.inspect(part, "warm.png")  # the first call of the backend, as a station's first part
            reloader = threading.Thread(target=reload)
            i = 0
            while phase != "done":
                t = time.perf_counter()
                station.inspect(part, f"{i}.png")
                times[phase].append((time.perf_counter() - t) * 1000)
                i += 1
                if phase == "before" and len(times["before"]) == a.before:
                    reloader.start()
                    phase = "during"
                elif phase == "during" and not reloader.is_alive():
                    phase = "after"
                elif phase == "after" and len(times["after"]) == a.after:
                    phase = "done"
                time.sleep(max(0.0, a.interval - (time.perf_counter() - t)))
        finally:
            station.close()
    print(f"{a.size} px parts every {a.interval} s, {a.threads} threads; reload took {reload_s[0]:.2f} s")
    for name, ms in times.items():
        x = np.array(ms)
        p50, p95 = np.percentile(x, [50, 95])
        print(f"{name:6s} {len(x):3d} parts: median {p50:6.1f} ms, p95 {p95:6.1f} ms, max {x.max():6.1f} ms")


if __name__ == "__main__":
    main()
