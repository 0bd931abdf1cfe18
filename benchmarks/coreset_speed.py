"""The memory bank's greedy k-center coreset: milliseconds per pick, today's code against the version before
21aa0fa (a fresh candidate-sized temporary per step), on random candidates shaped like magnetic tile's
(100,000 candidates, already projected to 128 dimensions), and whether both pick the same patches.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/coreset_speed.py
"""

from __future__ import annotations

import time

import torch

from rd2t.model.memory_bank import PROJECTION_DIMS, greedy_coreset

CANDIDATES, PICKS = 100_000, 1_000


def before(x: torch.Tensor, n: int, first: int) -> list[int]:
    """greedy_coreset's loop as it was, on already projected `x`, from row `first`."""
    sq = x.pow(2).sum(1)
    dist, picks = sq - 2 * x @ x[first] + sq[first], [first]
    for _ in range(1, n):
        j = int(dist.argmax())
        picks.append(j)
        torch.minimum(dist, sq - 2 * x @ x[j] + sq[j], out=dist)
    return picks


def main() -> None:
    x = torch.randn(CANDIDATES, PROJECTION_DIMS, generator=torch.Generator().manual_seed(0))
    # greedy_coreset's first pick (seed 0; no projection at 128 dimensions), so both runs pick alike
    first = int(torch.randint(CANDIDATES, (1,), generator=torch.Generator().manual_seed(0)))
    for name, run in (
        ("before", lambda: before(x, PICKS, first)),
        ("today", lambda: greedy_coreset(x, PICKS)),
    ):
        t0 = time.perf_counter()
        run()
        print(f"{name}: {1000 * (time.perf_counter() - t0) / PICKS:.1f} ms per pick")
    print("same picks:", before(x, 300, first) == greedy_coreset(x, 300).tolist())


if __name__ == "__main__":
    main()
