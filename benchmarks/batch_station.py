"""Micro-batching measured in process (no HTTP): 8 threads each inspect 8 parts of 900x900 px through one
Station with --workers 8, once with --batch 1 and once with --batch 8; prints images/s and the number of
model calls and images the batcher made.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/batch_station.py runs/mvtec/model.onnx openvino
"""

from __future__ import annotations

import io
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from rd2t.service.settings import StationSettings
from rd2t.service.station import Station


def run(model: Path, backend: str, batch: int, bodies: list[bytes]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        settings = StationSettings(
            model, images=Path(tmp), threads=2, workers=8, batch=batch, backend=backend
        )
        station = Station(settings)
        station.inspect(bodies[0], "warm.png")

        def camera(k: int) -> None:
            for i in range(8):
                station.inspect(bodies[(k + i) % len(bodies)], f"{k}-{i}.png")

        t = time.perf_counter()
        with ThreadPoolExecutor(8) as cameras:
            list(cameras.map(camera, range(8)))
        seconds = time.perf_counter() - t
        sizes = next(m for m in station.metrics.registry.collect() if m.name == "rd2t_model_batch_size")
        calls = {
            s.name.rsplit("_", 1)[1]: s.value for s in sizes.samples if s.name.endswith(("_count", "_sum"))
        }
        print(f"{backend} --batch {batch}: {64 / seconds:.1f} images/s, model calls {calls}", flush=True)
        station.close()


def main() -> None:
    model, backend = Path(sys.argv[1]), sys.argv[2]
    rng = np.random.default_rng(0)
    bodies = []
    for _ in range(16):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (900, 900, 3), dtype=np.uint8)).save(buf, "PNG")
        bodies.append(buf.getvalue())
    for batch in (1, 8):
        run(model, backend, batch, bodies)


if __name__ == "__main__":
    main()
