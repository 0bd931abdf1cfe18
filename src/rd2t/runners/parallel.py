"""`rd2t benchmark --workers N`: category/seed jobs spread over N worker processes, one job per worker.

Workers are spawned (never forked: CUDA and thread pools do not survive a fork), each pinned to one device
and a share of the CPU: on a machine with G GPUs worker i trains on cuda:(i % G), and every worker gets
cores // N intra-op threads so that N workers do not oversubscribe the CPU. A job is `run_job`, which
writes its metrics.json and resumes an interrupted training from its last.pt, so re-running the same
command after a crash (or Ctrl-C) finishes only what is missing; jobs already finished are read back here
without starting a worker. Results come back in job order and go into the one table as with one process.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

from rd2t.config import Config
from rd2t.errors import RD2TError
from rd2t.runners.jobs import run_job

_worker_device: str | None = None  # set in each worker by _init_worker


def _init_worker(slots, device: str, threads: int) -> None:
    """Runs once in each new worker: take a worker index, pick its GPU, limit its CPU threads."""
    global _worker_device
    import torch

    index = slots.get()
    torch.set_num_threads(threads)
    _worker_device = device
    if device in ("auto", "cuda") and torch.cuda.is_available():
        _worker_device = f"cuda:{index % torch.cuda.device_count()}"


def _run(job, config: Config) -> dict:
    cfg = config.replace(device=_worker_device or config.device)
    return run_job(job, cfg, progress=False)


def run_parallel(jobs: list, config: Config, workers: int, progress: bool = True) -> list[dict]:
    """Run `rd2t.runners.jobs.run_job` for every job on `workers` processes; the records in job order.

    A job that fails does not stop the others; once all have run, one RD2TError names the failed ones
    (their finished neighbours are on disk, so the same command afterwards retries only those).
    """
    records: list[dict | None] = [job.finished() for job in jobs]
    todo = [i for i, r in enumerate(records) if r is None]
    workers = max(1, min(workers, len(todo)))
    if todo:
        ctx = multiprocessing.get_context("spawn")
        slots = ctx.Queue()
        for i in range(workers):
            slots.put(i)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        threads = max(1, cores // workers)
        failed: list[str] = []
        pool = ProcessPoolExecutor(
            workers, mp_context=ctx, initializer=_init_worker, initargs=(slots, config.device, threads)
        )
        try:
            pending = {pool.submit(_run, jobs[i], config): i for i in todo}
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    i = pending.pop(future)
                    name = f"{jobs[i].category} seed {jobs[i].seed}"
                    try:
                        records[i] = future.result()
                    except BrokenProcessPool:
                        raise RD2TError(
                            f"a worker process died (out of memory?) while running {name}; "
                            "rerun the same command to resume"
                        ) from None
                    except Exception as e:  # noqa: BLE001 - reported below, the other jobs go on
                        failed.append(f"{name}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
                        continue
                    if progress:
                        done = sum(r is not None for r in records)
                        print(f"{name} done ({done}/{len(jobs)})", flush=True)
        finally:  # on Ctrl-C or a dead worker, start nothing more (finished jobs are on disk)
            pool.shutdown(wait=True, cancel_futures=True)
        if failed:
            raise RD2TError(
                f"{len(failed)} of {len(jobs)} jobs failed ({'; '.join(failed)}); "
                "rerun the same command to retry them"
            )
    return [r for r in records if r is not None]
