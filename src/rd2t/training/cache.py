"""Teacher features of every training image, computed once (frozen teachers, no augmentation)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from rd2t.data.transforms import to_model_input
from rd2t.errors import RD2TError
from rd2t.model.network import RD2T, Features
from rd2t.training import distributed as ddp


class FeatureCache:
    """Teacher features of every training image, fp16, in memory or in memmapped files on disk.

    In a distributed run each rank computes the features of its own contiguous shard of the images only;
    the memory cache then exchanges the shards once (all_gather), the disk cache has every rank write its
    rows into the same files (one folder shared by all ranks: always so on one machine).
    """

    def __init__(
        self,
        model: RD2T,
        images: torch.Tensor,
        kind: str,
        folder: Path | None,
        device: torch.device,
        batch_size: int = 16,
        progress: bool = True,
    ):
        self.kind, self.device, self.arrays = kind, device, []
        key = self._key(model, images)
        lo, hi = ddp.shard_bounds(len(images))  # (0, n) with one process
        if kind == "disk":
            assert folder is not None
            folder.mkdir(parents=True, exist_ok=True)
        shapes = None
        bar = tqdm(total=hi - lo, desc="caching teacher features", disable=not progress, leave=False)
        done_marker = folder / f"{key}.done" if folder is not None else None
        reuse = kind == "disk" and done_marker.exists()
        for start in range(lo, hi, batch_size):
            if reuse and shapes is not None:
                break
            batch = images[start : min(start + batch_size, hi)]
            feats = model.teacher_features(to_model_input(batch.to(device)))
            if shapes is None:
                shapes = [[(len(images), *f.shape[1:]) for f in tf] for tf in feats]
                self.arrays = self._alloc_all(folder, key, shapes, reuse)
                if reuse:
                    break
            for t, tf in enumerate(feats):
                for s, f in enumerate(tf):
                    arr = self.arrays[t][s]
                    chunk = f.half().cpu()
                    arr[start : start + len(f)] = chunk if kind == "memory" else chunk.numpy()
            bar.update(len(feats[0][0]))
        bar.close()
        if kind == "memory":
            for ts in self.arrays:
                for a in ts:
                    ddp.gather_rows(a, device)  # the other ranks' shards (nothing to do with one process)
        if kind == "disk" and not reuse:
            for ts in self.arrays:
                for a in ts:
                    a.flush()
            ddp.barrier()  # every rank's rows are on disk
            rank, world = ddp.rank_and_world()
            if rank == 0:
                done_marker.touch()
            if world > 1:  # reopen read-only what the other ranks wrote (a fresh view on a network FS)
                self.arrays = self._alloc_all(folder, key, shapes, reuse=True)

    @staticmethod
    def _key(model: RD2T, images: torch.Tensor) -> str:
        h = hashlib.sha1()
        h.update(
            repr((model.config.teachers, model.config.teacher_weights, model.config.out_indices)).encode()
        )
        h.update(images.numpy().tobytes())
        return h.hexdigest()[:16]

    def _alloc_all(self, folder, key, shapes, reuse):
        # New disk files are created by rank 0; the other ranks open them once they exist.
        rank, world = ddp.rank_and_world()
        create = self.kind == "disk" and not reuse and world > 1
        if create and rank > 0:
            ddp.barrier()
        arrays = [
            [self._alloc(folder, key, t, s, shape, reuse, rank) for s, shape in enumerate(ts)]
            for t, ts in enumerate(shapes)
        ]
        if create and rank == 0:
            ddp.barrier()
        return arrays

    def _alloc(self, folder, key, t, s, shape, reuse, rank=0):
        if self.kind == "memory":
            return torch.empty(shape, dtype=torch.float16)
        mode = "r" if reuse else "w+" if rank == 0 else "r+"
        path = folder / f"{key}_t{t}_s{s}.npy"
        if mode != "w+" and not path.exists():
            raise RD2TError(
                f"{path}: not visible from rank {rank}; a distributed disk cache needs an output folder "
                "shared by all ranks (or use --cache memory)"
            )
        return np.lib.format.open_memmap(path, mode=mode, dtype=np.float16, shape=shape)

    def get(self, index: torch.Tensor) -> Features:
        idx = index.numpy()
        out = []
        for ts in self.arrays:
            row = []
            for a in ts:
                t = (
                    a[index]
                    if self.kind == "memory"
                    else torch.from_numpy(np.ascontiguousarray(a[np.sort(idx)]))
                )
                row.append(t.to(self.device).float())
            out.append(row)
        if self.kind == "disk":  # memmap gathers need sorted indices; restore the shuffled order
            inv = torch.from_numpy(np.argsort(np.argsort(idx)))
            out = [[f[inv.to(f.device)] for f in ts] for ts in out]
        return out
