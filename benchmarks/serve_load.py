"""Load test of `rd2t serve` beside the bare model (`rd2t predict`'s Predictor) on the same files.

    python benchmarks/serve_load.py MODEL [--images 64] [--size 900] [--clients 1,4,16] [--requests 64]
        [--workers 2] [--threads 2] [--overlay eager|lazy] [--memory-runs 0] [--out runs/serve_load]

Writes N PNGs (generated textures, like MVTec's 900x900 parts), then measures:
  - bare model: Predictor.predict over the files in one process at batch 1 and batch 8 (the code
    `rd2t predict` runs; batch 8 is what micro-batching could gain at best),
  - the service: a `rd2t serve` subprocess (SQLite, overlays, thumbnails, fsync'd commits), each client
    a thread sending raw PNG bodies one after another: images/s and p50/p99 latency per client count,
  - memory: the server's RSS after each client level, and after --memory-runs more inspections.
Prints one JSON object (also written to OUT/serve_load.json) with the machine's load average.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image


def texture(rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    base = 0.5 + 0.25 * np.sin(2 * np.pi * xx / 24 + rng.uniform(0, 6.3)) * np.cos(2 * np.pi * yy / 48)
    img = base[..., None] * np.array([0.9, 0.8, 0.7], np.float32) + rng.normal(0, 0.02, (size, size, 1))
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def bare_model(model: Path, files: list[Path], threads: int) -> dict:
    from rd2t.inference.predictor import Predictor

    predictor = Predictor.open(model, threads=threads)
    out = {}
    for batch in (1, 8):
        list(predictor.predict(files[:8], batch_size=batch))  # warm-up
        t0 = time.perf_counter()
        n = sum(1 for _ in predictor.predict(files, batch_size=batch))
        out[f"batch_{batch}_images_per_s"] = round(n / (time.perf_counter() - t0), 2)
    return out


def load(base: str, bodies: list[bytes], clients: int, requests: int) -> dict:
    latencies: list[float] = []
    errors = [0]

    def client(k: int):
        with httpx.Client(base_url=base, timeout=120) as c:
            for i in range(k, requests, clients):
                t0 = time.perf_counter()
                r = c.post(
                    "/v1/inspect", content=bodies[i % len(bodies)], headers={"Content-Type": "image/png"}
                )
                if r.status_code == 200:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors[0] += 1

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat = np.asarray(latencies) * 1000
    return {
        "clients": clients,
        "images_per_s": round(len(latencies) / wall, 2),
        "p50_ms": round(float(np.percentile(lat, 50)), 1),
        "p99_ms": round(float(np.percentile(lat, 99)), 1),
        "errors": errors[0],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--size", type=int, default=900)
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--requests", type=int, default=64, help="inspections per client level")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2, help="model threads (bare model and server)")
    ap.add_argument("--memory-runs", type=int, default=0, help="extra inspections before the last RSS")
    ap.add_argument("--overlay", default="eager", help="the server's --overlay: eager|lazy")
    ap.add_argument("--db", default=None, help="database URL for the server (default SQLite)")
    ap.add_argument("--out", type=Path, default=Path("runs/serve_load"))
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="rd2t-serve-load-"))
    rng = np.random.default_rng(0)
    files = []
    for i in range(args.images):
        p = work / "images" / f"{i:04d}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(texture(rng, args.size)).save(p)
        files.append(p)
    bodies = [p.read_bytes() for p in files]
    result = {"model": str(args.model), "size": args.size, "images": args.images, "cpus": os.cpu_count()}
    result["workers"], result["threads"], result["overlay"] = args.workers, args.threads, args.overlay
    result["load_before"] = os.getloadavg()
    result["bare_model"] = bare_model(args.model, files, args.threads)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "rd2t",
        "serve",
        str(args.model),
        "--port",
        str(port),
        "--images",
        str(work / "st"),
    ]
    cmd += ["--workers", str(args.workers), "--threads", str(args.threads), "--queue", "64"]
    cmd += ["--overlay", args.overlay] + (["--db", args.db] if args.db else [])
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                if httpx.get(base + "/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        load(base, bodies, 1, 4)  # warm-up
        result["rss_mb_start"] = round(rss_mb(server.pid), 1)
        result["service"] = []
        for clients in (int(c) for c in args.clients.split(",")):
            level = load(base, bodies, clients, args.requests)
            level["rss_mb"] = round(rss_mb(server.pid), 1)
            result["service"].append(level)
            print(json.dumps(level), flush=True)
        if args.memory_runs:
            rss = []
            for _ in range(10):
                load(base, bodies, 4, args.memory_runs // 10)
                rss.append(round(rss_mb(server.pid), 1))
            result["memory"] = {"inspections": args.memory_runs, "rss_mb_every_tenth": rss}
    finally:
        server.terminate()
        server.wait(30)
    result["load_after"] = os.getloadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serve_load.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
