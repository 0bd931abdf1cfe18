"""A nearest-neighbour term on the first teacher's features, added to the student's map (issue 14).

Reverse distillation scores a pixel by how badly the student rebuilds the teacher there: a large,
low-contrast change that the student rebuilds well (magnetic tile's "uneven") stays invisible. The frozen
teacher's features themselves still differ from every defect-free training patch; PatchCore scores exactly
that. `memory_bank > 0` keeps that share of the training patches (greedy k-center coreset, PatchCore's
selection) and adds the distance to the nearest kept patch to the map. PatchCore's patches (the default)
are stride 8 (+ 16); `bank_stride = 4` takes strides 4 + 8: a map twice as fine, which stops the term from
blurring sharp defects on bottle, but sees less of magnetic tile's large ones (docs/ablations.md, round 4).
Both terms are z-scored by their pixel mean and spread on held-out good images (nothing from defective
images) and summed with weights that training chooses on pseudo-defects painted on those images
(training/loop.py, choose_bank_share).

Everything stays inside `RD2T.forward`: torch, ONNX Runtime and OpenVINO score it the same way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Above this many training patches the coreset is chosen from a random subset of them: its cost is
# candidates x kept (100k x 7k takes ~1 min on one CPU core).
MAX_CANDIDATES = 100_000
# At most this many kept patches, whatever the share: every scored patch is compared with each of them, so
# the bank's cost would otherwise grow with the training set. 1 % of a tiled set's patches outgrows it fast
# (12 images of 2048 px kept 13.6k stride-4 patches and cost 4.5x the network per tile); magnetic tile's
# 685 resized images keep 7k, the most of any resized development set, so no resized figure changes.
MAX_KEPT = 10_000
# Bank patches compared per step: bounds the (B, patches, chunk) distance matrix that scoring holds
# (B = 8 tiles of 4096 stride-4 patches against 13.6k kept ones held 4.5 GB at once; chunks of 1024, 270 MB).
DISTANCE_CHUNK = 1024
PROJECTION_DIMS = 128  # PatchCore's random projection for the k-center distances


LEVEL_OF_STRIDE = {4: 0, 8: 1}  # a teacher's feature list starts at stride 4


def patch_embedding(features: list[torch.Tensor], stride: int = 8, pool: int = 3) -> torch.Tensor:
    """(B, C + C', H/stride, W/stride): one teacher's features at `stride` and the next level up, upsampled,
    each pool x pool-averaged (PatchCore's recipe: 3 x 3, levels at strides 8 + 16; `stride=4` takes 4 + 8;
    a wider `pool` only in benchmarks/teacher_terms.py, round 14)."""
    level = LEVEL_OF_STRIDE[stride]
    fine, coarse = (F.avg_pool2d(f.float(), pool, 1, pool // 2) for f in features[level : level + 2])
    coarse = F.interpolate(coarse, size=fine.shape[-2:], mode="bilinear", align_corners=False)
    return torch.cat([fine, coarse], 1)


def bank_channels(teacher_channels: list[int], stride: int) -> int:
    """Channels of patch_embedding(features, stride) for a teacher with these per-level channels."""
    level = LEVEL_OF_STRIDE[stride]
    return sum(teacher_channels[level : level + 2])


def greedy_coreset(x: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """Indices of `n` rows of `x` chosen by greedy k-center: each pick is the row farthest from all picks."""
    g = torch.Generator().manual_seed(seed)
    if x.shape[1] > PROJECTION_DIMS:
        x = x @ (torch.randn(x.shape[1], PROJECTION_DIMS, generator=g) / PROJECTION_DIMS**0.5)
    sq = x.pow(2).sum(1)
    first = int(torch.randint(len(x), (1,), generator=g))
    picks = torch.empty(n, dtype=torch.long)
    picks[0] = first
    dist = sq - 2 * x @ x[first] + sq[first]  # squared distances as one matrix-vector product
    # One buffer for every pick, updated in place: fresh candidate-sized temporaries per pick cost 3x the
    # time (mostly page faults; benchmarks/coreset_speed.py, docs/performance.md), same picks.
    step = torch.empty_like(dist)
    for i in range(1, n):
        j = int(dist.argmax())
        picks[i] = j
        torch.mv(x, x[j], out=step)
        torch.minimum(dist, step.mul_(-2).add_(sq).add_(sq[j]), out=dist)
    return picks


def combine_terms(student: torch.Tensor, knn: torch.Tensor, how: str = "sum") -> torch.Tensor:
    """The two weighted terms as one map: their sum, or (`how="max"`, config.bank_combine) their per-pixel
    maximum. One place for the model's map and the share's choice on painted defects."""
    return torch.maximum(student, knn) if how == "max" else student + knn


def between_image_share(maps: torch.Tensor) -> float:
    """(N, ...) maps of good images -> the share of their pixel variance that lies between images: the
    variance of the per-image medians over the variance of all pixels. A term whose level moves from one
    good image to the next (the student's on magnetic tile, 0.23; bottle 0.009) ranks pixels of different
    images by their image, not by what is there (docs/ablations.md, rounds 14 and 16)."""
    x = maps.flatten(1).double()
    return float(x.median(1).values.var() / x.flatten().var().clamp_min(1e-12))


def good_peaks(terms: torch.Tensor) -> torch.Tensor:
    """(N, 2, H, W) standardised term maps of good images -> (2,): each term's mean per-image maximum, the
    divisor of `bank_scale = max` (the image score and the threshold live in a map's peaks)."""
    return terms.flatten(2).amax(2).mean(0).clamp_min(1e-6)


class MemoryBank(nn.Module):
    """Kept training patches and the z-scores that put their distance on the student map's scale."""

    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer("patches", torch.zeros(0, channels))
        # (student mean, student std, knn mean, knn std) over good held-out pixels
        self.register_buffer("zscore", torch.tensor([0.0, 1.0, 0.0, 1.0]))
        # (student weight, knn weight): 2(1 - w), 2w for the kNN share w, so w = 0.5 is the plain sum
        self.register_buffer("weights", torch.tensor([1.0, 1.0]))
        self.fitted = False  # a plain flag, not a tensor test: the ONNX trace keeps it as a constant

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # The bank's size is what training kept; take it from the checkpoint instead of failing on the shape.
        stored = state_dict.get(prefix + "patches")
        if stored is not None:
            self.patches = torch.zeros_like(stored, device=self.patches.device)
            self.fitted = stored.shape[0] > 0
        state_dict.setdefault(prefix + "weights", torch.ones(2))  # saved before the weights: the plain sum
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def fit(self, embeddings: torch.Tensor, share: float, seed: int = 0, total: int | None = None) -> None:
        """Keep `share` of the (N, C) training patches, at least one and at most MAX_KEPT. `total`: how many
        patches there were when `embeddings` is already the random subset of them that this method would
        draw."""
        x = embeddings.float()
        if len(x) > MAX_CANDIDATES:
            g = torch.Generator().manual_seed(seed)
            x = x[torch.randperm(len(x), generator=g)[:MAX_CANDIDATES]]
        n = max(1, min(len(x), MAX_KEPT, round(share * (total or len(embeddings)))))
        self.patches = x[greedy_coreset(x, n, seed)].contiguous().to(self.patches.device)
        self.fitted = True

    def distance(self, embedding: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B, 1, h, w): Euclidean distance to the nearest kept patch."""
        b, c, h, w = embedding.shape
        e = embedding.flatten(2).transpose(1, 2)  # (B, P, C)
        # min over m of |e|^2 + |m|^2 - 2 e.m, |e|^2 added after the min; a matmul per DISTANCE_CHUNK bank
        # patches (the bank's size is fixed, so the loop exports to ONNX as a few MatMul/ReduceMin/Min)
        nearest = None
        for start in range(0, self.patches.shape[0], DISTANCE_CHUNK):
            m = self.patches[start : start + DISTANCE_CHUNK]
            d2 = (m.pow(2).sum(-1) - 2 * e @ m.T).amin(-1)
            nearest = d2 if nearest is None else torch.minimum(nearest, d2)
        d2 = nearest + e.pow(2).sum(-1)
        return d2.clamp_min(0).sqrt().view(b, 1, h, w)

    def standardise(self, student_map: torch.Tensor, knn_map: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Both terms z-scored by their pixel mean and std on the held-out good images."""
        z = self.zscore
        return (student_map - z[0]) / z[1], (knn_map - z[2]) / z[3]

    def combine(self, student_map: torch.Tensor, knn_map: torch.Tensor, how: str = "sum") -> torch.Tensor:
        """The weighted standardised terms as one map (combine_terms)."""
        student, knn = self.standardise(student_map, knn_map)
        return combine_terms(self.weights[0] * student, self.weights[1] * knn, how)

    def set_share(self, knn_share: float) -> None:
        """Weigh the kNN term by `knn_share`, the student's by the rest; 0 drops the bank (saves its time)."""
        self.weights.copy_(torch.tensor([2 * (1 - knn_share), 2 * knn_share]))
        if knn_share == 0:
            self.patches = self.patches[:0]
            self.fitted = False
