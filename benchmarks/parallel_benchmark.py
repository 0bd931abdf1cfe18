"""Speed-up of `rd2t benchmark --workers N` over one process, on a small generated dataset (CPU).

Each measurement is a fresh interpreter running `rd2t.runners.benchmark.benchmark` on the same category x seed
jobs into an empty folder, timed from process start to exit (imports, teacher loading and, with N > 1,
spawning the workers included: what a user waits for). Three settings: one process with torch's default
threads (all cores), one process with one thread, and N workers with cores // N threads each (what
--workers N does). Best of --runs per setting, since the machine may be shared: on a loaded machine more
OpenMP threads than free cores can be far slower than one thread, which the second setting shows.

    .venv/bin/python benchmarks/parallel_benchmark.py                  # 4 jobs at 128 px, 1 vs 2 processes
    .venv/bin/python benchmarks/parallel_benchmark.py --size 64 --epochs 3 --workers 4
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def one(args: argparse.Namespace) -> None:
    """Child: run the jobs once (the parent times this whole process)."""
    import torch

    from rd2t.runners.benchmark import benchmark

    if args.threads:
        torch.set_num_threads(args.threads)
    from rd2t.config import preset

    bank = {} if args.memory_bank is None else {"memory_bank": args.memory_bank}
    cfg = preset("offline", image_size=args.size, epochs=args.epochs, batch_size=8, device="cpu", **bank)
    cats = args.categories.split(",")
    records = benchmark(
        "folder", args.data, cats, cfg, args.seeds, args.out, workers=args.workers, progress=False
    )
    assert len(records) == len(cats) * args.seeds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--categories", default="wood,woven_fabric")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--size", type=int, default=128, help="image size (data and model)")
    ap.add_argument("--n-train", type=int, default=24)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2, help="compared with 1")
    ap.add_argument("--runs", type=int, default=2, help="best of")
    ap.add_argument("--memory-bank", type=float, help="config.memory_bank (default: offline's; 0: plain)")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        return one(args)

    from rd2t.runners.synth import make_dataset

    work = Path(tempfile.mkdtemp(prefix="rd2t-parallel-"))
    cats = args.categories.split(",")
    data = make_dataset(
        work / "data",
        categories=cats,
        size=args.size,
        n_train=args.n_train,
        n_test_good=4,
        n_test_per_defect=1,
    )
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(
        f"{len(cats) * args.seeds} jobs ({args.categories} x {args.seeds} seeds), {args.size} px, "
        f"{args.n_train} training images, {args.epochs} epochs; {cores} cores",
        flush=True,
    )
    threads = max(1, cores // args.workers)
    settings = {  # name -> (workers, threads of the single process; 0 = torch's default)
        f"1 process, {cores} threads (torch default)": (1, 0),
        "1 process, 1 thread": (1, 1),
        f"{args.workers} processes, {threads} thread(s) each": (args.workers, 0),
    }
    times: dict[str, list[float]] = {name: [] for name in settings}
    for run in range(args.runs):
        for i, (name, (workers, n_threads)) in enumerate(
            settings.items()
        ):  # interleaved: load hits all alike
            out = work / f"run{run}_setting{i}"
            cmd = [sys.executable, __file__, "--one", "--data", str(data), "--out", str(out)]
            cmd += ["--workers", str(workers), "--threads", str(n_threads), "--categories", args.categories]
            cmd += ["--seeds", str(args.seeds), "--size", str(args.size), "--epochs", str(args.epochs)]
            cmd += ["--memory-bank", str(args.memory_bank)] if args.memory_bank is not None else []
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            times[name].append(time.perf_counter() - t0)
            print(f"run {run + 1}: {name}: {times[name][-1]:.1f} s", flush=True)
    best = {name: min(t) for name, t in times.items()}
    print(f"best of {args.runs}:")
    for name, t in best.items():
        print(f"  {name:40s} {t:7.1f} s")
    parallel = best[list(settings)[2]]
    for name in list(settings)[:2]:
        print(f"speed-up of {args.workers} processes over {name}: {best[name] / parallel:.2f}x")
    print(f"(generated data and runs in {work})")


if __name__ == "__main__":
    main()
