"""Training loop: RD4AD's recipe (Adam 0.005, betas (0.5, 0.999), batch 16, no augmentation).

Frozen teachers and no augmentation mean every teacher feature is a fixed function of its image, so
features are computed once and cached (memory or disk, fp16); each epoch then runs only the trainable
part. The resumable `last.pt` is written atomically at most every `checkpoint_every_s` seconds, at the end,
and on SIGINT/SIGTERM (the current step finishes first); it leaves the frozen teachers out (they go to
`teachers.pt` once per run). `resume=True` continues from it, mid-epoch if need be, and gives the same weights
as an uninterrupted run (the per-epoch shuffle is seeded by (seed, epoch)).

Under torchrun the same loop runs on every rank (see rd2t.training.distributed): each rank takes its slice
of every global batch, teacher features are computed shard by shard and exchanged once, BatchNorm and
gradients are synchronised, and only rank 0 writes checkpoints, shows progress and calibrates the threshold.
"""

from __future__ import annotations

import random
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from rd2t.calibration import Calibration, map_range_from, parse_rule, threshold_from_scores, youden
from rd2t.config import CHOSEN_BY_TRAINING, Config
from rd2t.data.datasets import Sample
from rd2t.data.pseudo_defects import paint_pseudo_defects
from rd2t.data.transforms import to_model_input, to_uint8_tensor
from rd2t.errors import CheckpointError, ConfigError, InputError, RD2TError
from rd2t.files import check_writable
from rd2t.inference.predictor import Predictor
from rd2t.inference.tiling import Tiler
from rd2t.model.checkpoint import Checkpoint, save_teachers
from rd2t.model.loading import resolve_device
from rd2t.model.memory_bank import (
    MAX_CANDIDATES,
    MemoryBank,
    between_image_share,
    combine_terms,
    good_peaks,
    patch_embedding,
)
from rd2t.model.network import RD2T, Features
from rd2t.training import distributed as ddp
from rd2t.training.cache import FeatureCache
from rd2t.training.tiles import load_training_tiles


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_training_images(
    paths: list[Path], size: int, progress: bool = True, what: str = "training"
) -> tuple[torch.Tensor, list[Path]]:
    """Read and resize every image once; an unreadable one is reported and skipped, not fatal."""
    from rd2t.data import load_image

    tensors, kept = [], []
    for p in tqdm(paths, desc="reading images", disable=not progress, leave=False):
        try:
            tensors.append(to_uint8_tensor(load_image(p), size))
            kept.append(Path(p))
        except InputError as e:
            print(f"skipped: {e}", file=sys.stderr)
    if not tensors:
        raise InputError(f"none of the {len(paths)} {what} image(s) could be read")
    return torch.stack(tensors), kept


@dataclass
class LabelledDefects:
    """The user's own defective images (`--val-defects`) as the model sees them: resized, or for a tiled model
    the tiles that hold defect pixels."""

    images: torch.Tensor  # (N, 3, S, S) uint8
    masks: torch.Tensor | None  # (N, S, S) bool, None when the folder has image labels only
    paths: list[Path] = field(default_factory=list)  # the files read (a tiled model scores them whole)


def load_labelled_defects(samples: list[Sample], size: int) -> LabelledDefects | None:
    """Read each image and its mask (a mask covering any part of a shrunk pixel marks it); an unreadable
    one is reported and skipped, not fatal. None when none could be read."""
    from rd2t.data import load_image, load_mask
    from rd2t.data.images import resize_mask

    images, masks, paths = [], [], []
    for sample in samples:
        try:
            image = load_image(sample.path)
            mask = None
            if sample.mask_path is not None:
                mask = load_mask(sample.mask_path, image.size, image_path=sample.path)
                mask = torch.from_numpy(resize_mask(mask, (size, size)))
            images.append(to_uint8_tensor(image, size))
            masks += [] if mask is None else [mask]
            paths.append(Path(sample.path))
        except InputError as e:
            print(f"skipped: {e}", file=sys.stderr)
    if not images:
        print(f"warning: none of the {len(samples)} labelled defect image(s) could be read", file=sys.stderr)
        return None
    return LabelledDefects(torch.stack(images), torch.stack(masks) if masks else None, paths)


def load_labelled_tiles(samples: list[Sample], tiler: Tiler) -> LabelledDefects | None:
    """Tiled models: the tiles of each labelled image (with its mask, which the caller has checked) that
    hold defect pixels, and their mask crops. The other tiles are good regions of a defective part, neither
    defect nor held-out good. An unreadable image is reported and skipped; None when no tile holds one."""
    from rd2t.data import load_image, load_mask
    from rd2t.data.images import resize_mask

    tiles, masks, paths = [], [], []
    for sample in samples:
        try:
            image = load_image(sample.path)
            mask = load_mask(sample.mask_path, image.size, image_path=sample.path)
        except InputError as e:
            print(f"skipped: {e}", file=sys.stderr)
            continue
        scaled = tiler.prepare(image)
        mask = torch.from_numpy(resize_mask(mask, tuple(scaled.shape[:0:-1])))  # (W', H') as the image
        mask = tiler.pad(mask[None].to(torch.uint8))[0].bool()  # an image under one tile is padded alike
        t = tiler.tile
        for positions, batch in tiler.tiles(scaled, 256):
            for (y, x), tile in zip(positions, batch, strict=True):
                crop = mask[y : y + t, x : x + t]
                if crop.any():
                    tiles.append(tile)
                    masks.append(crop)
        paths.append(Path(sample.path))
    if not tiles:
        print(f"warning: no tile of the {len(samples)} labelled image(s) holds a defect", file=sys.stderr)
        return None
    return LabelledDefects(torch.stack(tiles), torch.stack(masks), paths)


def split_validation(paths: list[Path], fraction: float, seed: int) -> tuple[list[Path], list[Path]]:
    """Hold out a seeded share of the good images for threshold calibration (at least 2 stay for training)."""
    paths = sorted(paths)
    n_val = min(int(round(fraction * len(paths))), max(len(paths) - 2, 0))
    order = np.random.default_rng(seed).permutation(len(paths))
    val = sorted(paths[i] for i in order[:n_val])
    train = sorted(paths[i] for i in order[n_val:])
    return train, val


# ---- calibration -----------------------------------------------------------------------------------


# Below this many held-out images mean + k std (or a quantile) is a guess: measured, 1 image flagged 4 of 4
# and 5 of 6 good tiled test images (docs/high-resolution.md), 3 images missed 17 of 17 (docs/ablations.md).
FEW_CALIBRATION_IMAGES = 10


def calibrate_threshold(scores: np.ndarray, rule: str, defect_scores=()) -> float:
    """Pass/fail threshold from defect-free validation scores (`youden`: and the labelled defects' scores
    given at training), never from test anomalies."""
    return threshold_from_scores(scores, rule, defect_scores)


def score_images(
    model: RD2T, images: torch.Tensor | list[Path], batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each image's score and map median, through the inference path. `images`: resized uint8 images, or
    (tiled models) image paths, scored whole and tiled as `rd2t predict` would; unreadable ones skipped."""
    predictor = Predictor.from_model(model)
    scores, medians = [], []
    if isinstance(images, list):
        for p in predictor.predict(images, batch_size=batch_size):
            if isinstance(p, RD2TError):
                print(f"skipped: {p}", file=sys.stderr)
                continue
            scores.append(np.array([p.score], np.float32))
            medians.append(np.array([np.median(p.model_map)]))
    else:
        for start in range(0, len(images), batch_size):
            sc, maps = predictor.score_tensors(images[start : start + batch_size])
            scores.append(sc)
            medians.append(np.median(maps.reshape(len(maps), -1), axis=1))
    if not scores:
        return np.zeros(0, np.float32), np.zeros(0)
    return np.concatenate(scores), np.concatenate(medians)


def calibrate(
    model: RD2T,
    images: torch.Tensor | list[Path],
    rule: str,
    source: str,
    batch_size: int = 16,
    defect_scores: list[float] | None = None,
) -> Calibration:
    """Score held-out good images (as `score_images` takes them) and derive the threshold and colour scale.
    `defect_scores`, the labelled defects' (`score_images`), are kept with it; `youden` uses them (without
    any, it falls back to mean+3std with a warning, so a finished training is not lost here)."""
    scores, medians = score_images(model, images, batch_size)
    if not len(scores) or not np.isfinite(scores).all():
        raise RD2TError(
            "calibration: the trained model gives non-finite scores on the held-out good images "
            "(diverged training? try a lower --lr)"
        )
    if parse_rule(rule)[0] == "youden" and not defect_scores:  # none could be read: keep the training
        print(
            "warning: --threshold-rule youden: no labelled defect could be scored; the threshold is "
            "mean+3std of the held-out good images",
            file=sys.stderr,
        )
        rule = "mean+3std"
    threshold = calibrate_threshold(scores, rule, defect_scores or ())
    if len(scores) < FEW_CALIBRATION_IMAGES:
        print(
            f"warning: the threshold comes from only {len(scores)} held-out good image(s); expect false "
            "alarms or misses until more are held out (--val-fraction, or more good images)",
            file=sys.stderr,
        )
    return Calibration(
        threshold,
        rule,
        source,
        scores.tolist(),
        map_range_from(float(np.median(medians)), threshold),
        list(defect_scores or []),
    )


def report_labelled_defects(calibration: Calibration) -> None:
    """Say how many labelled defects the stored threshold catches (what a line would miss) and, when it misses
    some, what catching them all would cost on the held-out good images."""
    scores, threshold = np.asarray(calibration.defect_scores), calibration.threshold
    caught, lowest = int((scores > threshold).sum()), float(np.min(scores))
    line = (
        f"labelled defects: {caught} of {len(scores)} above the threshold {threshold:.4f} "
        f"({calibration.rule}; their scores {lowest:.4f} to {np.max(scores):.4f})"
    )
    if caught < len(scores) and calibration.scores:
        flagged, n = calibration.false_alarm_rate(np.nextafter(lowest, -np.inf))
        line += f"; a threshold just below {lowest:.4f} catches all and flags {flagged} of {n} held-out good"
        if calibration.rule != "youden":  # the best split of the two, one flag away
            best = youden(calibration.scores, scores)
            flagged, n = calibration.false_alarm_rate(best)
            caught = int((scores > best).sum())
            line += (
                f"\n--threshold-rule youden would set {best:.4f}: {caught} of {len(scores)} caught, "
                f"{flagged} of {n} held-out good flagged"
            )
    print(line, file=sys.stderr)


# ---- memory bank (config.memory_bank > 0) -------------------------------------------------------------


@torch.no_grad()
def fit_memory_bank(
    model: RD2T,
    images: torch.Tensor,
    held_out: torch.Tensor,
    cache: FeatureCache | None,
    batch_size: int,
    tiled: bool = False,
    defects: LabelledDefects | None = None,
) -> None:
    """Keep a coreset of the training patches, z-score both map terms on held-out good images, then weigh
    them (config.bank_weight, or chosen on pseudo-defects painted on the held-out images). bank_stride 0
    fits a bank at each of BANK_STRIDES and keeps the one whose map tells the painted images best. Tiled
    models pass tiles for images and held_out: each tile is what the model scores.

    `defects`, the user's own labelled defective images (`--val-defects`), take the painted images' place in
    every choice, and bank_combine "chosen" then also chooses between the sum and the maximum on them
    (round 12); without them "chosen" is the sum, which painted images cannot tell from the maximum
    (rounds 10-11). The config keeps what was chosen."""
    model.eval()
    device = next(model.parameters()).device
    config = model.config
    strides = BANK_STRIDES if config.bank_stride == 0 else (config.bank_stride,)

    banks = {}  # stride -> its bank; every stride's coreset first, so that one pass scores them all
    for stride in strides:
        model.use_bank_stride(stride)
        _fit_patches(model, images, cache, batch_size)
        banks[stride] = model.memory_bank

    def terms_of(batches: torch.Tensor) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """The student's term and, per stride, the kNN term, each (N, 1, H, W) on the CPU. The teachers and
        the student run once for all strides: they cost most of the time."""
        size, student, knn = tuple(batches.shape[-2:]), [], {s: [] for s in strides}
        for start in range(0, len(batches), batch_size):
            feats = model.teacher_features(to_model_input(batches[start : start + batch_size].to(device)))
            student.append(model.student_map(feats, model.reconstruct(feats), size).cpu())
            for s in strides:
                knn[s].append(model.knn_map(feats, banks[s], s, size).cpu())
        return torch.cat(student), {s: torch.cat(maps) for s, maps in knn.items()}

    def at(terms: tuple[torch.Tensor, dict[int, torch.Tensor]], stride: int) -> torch.Tensor:
        return torch.cat([terms[0], terms[1][stride]], 1)  # (N, 2, H, W), as model.term_maps gives them

    def zscored(terms: torch.Tensor, bank: MemoryBank) -> torch.Tensor:
        return torch.cat(bank.standardise(terms[:, :1], terms[:, 1:]), 1)

    if defects is not None and defects.masks is None and len(held_out) < FEW_CALIBRATION_IMAGES:
        print(
            f"warning: labelled defects without masks are told apart by image AUROC only, which needs at "
            f"least {FEW_CALIBRATION_IMAGES} held-out good images ({len(held_out)} here); painted "
            "pseudo-defects choose instead",
            file=sys.stderr,
        )
        defects = None
    combines = ("sum", "max") if config.bank_combine == "chosen" and defects is not None else None
    choose = config.bank_weight < 0 or len(strides) > 1 or combines is not None
    if choose:  # with labelled defects the painted images only break their ties
        painted, paint = paint_pseudo_defects(
            held_out, max(1, -(-PSEUDO_DEFECTS // len(held_out))), seed=config.seed
        )
    combines = combines or (config.bank_combine if config.bank_combine != "chosen" else "sum",)
    unit = "tiles" if tiled else "images"
    fitted = {}  # (stride, combine) -> (criteria, share, bank)
    good_terms = terms_of(held_out)
    if len(good_terms[0]) > 1:  # a variance between images needs two
        between = between_image_share(good_terms[0])
        print(
            f"memory bank: {between:.3f} of the student term's pixel variance lies between held-out good "
            f"{unit}",
            file=sys.stderr,
        )
    painted_terms = terms_of(painted) if choose else None
    labelled_terms = terms_of(defects.images) if choose and defects is not None else None
    for stride, bank in banks.items():
        good = at(good_terms, stride)
        # Pixel mean and std of each term over the held-out images (in float64: millions of pixels).
        mean, std = (f(good.double().transpose(0, 1).flatten(1), 1) for f in (torch.mean, torch.std))
        bank.zscore.copy_(torch.stack([mean[0], std[0], mean[1], std[1]]).float())
        if config.bank_scale == "max":
            # The image score and the threshold live in each map's tail, not its pixel spread: a term with
            # high peaks on good images (the student on a varied texture) then weighs less.
            bank.zscore[1::2] *= good_peaks(zscored(good, bank))
        if not choose:
            fitted[stride, combines[0]] = ((0.0,), config.bank_weight, bank)
            break
        shares = BANK_SHARES if config.bank_weight < 0 else (config.bank_weight,)
        good_z, painted_z = zscored(good, bank), zscored(at(painted_terms, stride), bank)
        labelled_z = zscored(at(labelled_terms, stride), bank) if defects is not None else None
        for combine in combines:
            if defects is None:
                share, table, value = choose_bank_share(good_z, painted_z, paint, shares, combine)
                criteria, on = (value,), f"{len(painted)} pseudo-defects painted"
            else:
                share, table, value = choose_bank_share(good_z, labelled_z, defects.masks, shares, combine)
                # the stride's painted criterion on the sum, as without labelled defects: painted images
                # do not tell the sum from the maximum (rounds 10-11)
                tie = choose_bank_share(good_z, painted_z, paint, (share,))[2]
                what = "labelled defect tiles" if tiled else "labelled defects"
                criteria, on = (value, tie), f"{len(defects.images)} {what}"
            print(
                f"memory bank, stride {stride}, {combine}: kNN share {share:.1f} of the map, criterion "
                f"{value:.4f}, on {on} and {len(good)} held-out good {unit} (image AUROC / pixel AUROC / "
                "AU-PRO: "
                + ", ".join(f"{w:.1f}: {i:.3f}/{p:.3f}/{a:.3f}" for w, i, p, a in table)
                + (")" if len(criteria) == 1 else f"); on the painted images {criteria[1]:.4f}"),
                file=sys.stderr,
            )
            fitted[stride, combine] = (criteria, share, bank)
    stride, combine = best_choice({k: v[0] for k, v in fitted.items()})
    _, share, model.memory_bank = fitted[stride, combine]
    model.config = model.config.replace(bank_stride=stride, bank_combine=combine)
    if len(fitted) > 1:
        print(f"memory bank: stride {stride}, {combine} chosen", file=sys.stderr)
    model.memory_bank.set_share(share)


def _fit_patches(model: RD2T, images: torch.Tensor, cache: FeatureCache | None, batch_size: int) -> None:
    """The coreset of the training images' patches at config.bank_stride. Only the MAX_CANDIDATES patches
    the coreset will choose from are kept while reading: thousands of tiles of high-resolution parts hold
    tens of millions of patches (gigabytes), of which the coreset sees a random 100k anyway."""
    device, stride = next(model.parameters()).device, model.config.bank_stride
    per_image = (images.shape[-2] // stride) * (images.shape[-1] // stride)
    total = len(images) * per_image
    # MemoryBank.fit's own subset (same generator, same order), drawn before reading instead of after
    wanted = torch.randperm(total, generator=torch.Generator().manual_seed(model.config.seed))
    wanted = wanted[:MAX_CANDIDATES] if total > MAX_CANDIDATES else torch.arange(total)
    ordered, order = wanted.sort()
    chunks = []
    for start in range(0, len(images), batch_size):
        idx = torch.arange(start, min(start + batch_size, len(images)))
        if cache is not None:
            feats = cache.get(idx)
        else:
            feats = model.teacher_features(to_model_input(images[idx].to(device)))
        e = patch_embedding(feats[0], stride)
        rows = e.flatten(2).transpose(1, 2).reshape(-1, e.shape[1])
        first = start * per_image
        mine = ordered[(ordered >= first) & (ordered < first + len(rows))] - first
        chunks.append(rows[mine.to(rows.device)].float().cpu())
    candidates = torch.empty(len(wanted), chunks[0].shape[1])
    candidates[order] = torch.cat(chunks)
    # memory_bank counts kept patches against the stride-8 grid (PatchCore's 1 %) whatever the bank's stride:
    # a stride-4 bank keeps as many patches, from 4x the candidates, so its queries cost 4x, not 16x.
    kept = model.config.memory_bank * (stride / 8) ** 2
    model.memory_bank.fit(candidates, kept, model.config.seed, total=total)


BANK_SHARES = tuple(i / 10 for i in range(11))
BANK_STRIDES = (8, 4)  # what bank_stride 0 chooses from, PatchCore's first
PSEUDO_DEFECTS = 48  # painted images at least, however few the held-out images


def choose_bank_share(
    good: torch.Tensor,
    bad: torch.Tensor,
    masks: torch.Tensor | None,
    shares: tuple[float, ...] = BANK_SHARES,
    combine: str = "sum",
) -> tuple[float, list[tuple[float, float, float, float]], float]:
    """The kNN term's share w of the map (1 - w for the student's), among `shares`, that best tells the
    painted images from the good ones. good (G, 2, H, W) and bad (B, 2, H, W) are the z-scored term maps
    (MemoryBank.standardise); masks (B, H, W) the paint, or the labelled defects' masks (None: image labels
    only, the criterion is image AUROC alone); combine: "sum" or "max", as the model does.

    The criterion mirrors the three figures a user is shown: the mean of image AUROC (map maximum), pixel
    AUROC and AU-PRO, all on the maps at 1/4 resolution (ranks need no more); image AUROC is left out under
    FEW_CALIBRATION_IMAGES good images (3 good maxima are too coarse to choose with). On ties the smaller
    share: at 0 the bank is dropped, and its cost with it. Returns the share, per share (w, image AUROC,
    pixel AUROC, AU-PRO), and the chosen share's criterion."""
    # The metric functions are evaluation's, pure numpy/scipy/sklearn; evaluation never imports training.
    from rd2t.evaluation.metrics import image_auroc, pixel_metrics

    maps = F.avg_pool2d(torch.cat([good, bad]).float(), 4)
    labels = [0] * len(good) + [1] * len(bad)
    truth = None
    if masks is not None:
        truth = torch.cat([torch.zeros(len(good), *masks.shape[1:]), masks.float()])[:, None]
        truth = list((F.avg_pool2d(truth, 4) > 0.5)[:, 0].numpy())
    table = []
    for w in shares:
        amap = combine_terms((1 - w) * maps[:, 0], w * maps[:, 1], combine).numpy()
        pixel = pixel_metrics(truth, list(amap)) if truth is not None else {}
        image = image_auroc(labels, amap.reshape(len(amap), -1).max(1))
        table.append(
            (w, float(image), float(pixel.get("pixel_auroc", "nan")), float(pixel.get("au_pro", "nan")))
        )
    first, last = (1 if len(good) >= FEW_CALIBRATION_IMAGES else 2), (2 if truth is None else None)
    share = best_share(table, first, last)
    return share, table, criterion(next(r for r in table if r[0] == share), first, last)


def jitter(features: Features, scale: float, seed: int) -> Features:
    """UniAD's feature jitter (You et al., NeurIPS 2022): each feature plus Gaussian noise of standard
    deviation scale * |f| / sqrt(C) at its position, |f| the norm over its C channels, so the noise's norm is
    about scale * |f| whatever C is (UniAD writes alpha * |f| / C, alpha = 20 on C = 272: scale 1.2 here).
    The student must then rebuild the clean feature from a disturbed one, so it cannot pass an anomaly's
    features through unchanged (the issue's "student reconstructs anomalies too well"; RD++ does this with
    image noise, which would need a teacher pass per step instead of the cached features)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for t_feats in features:
        row = []
        for f in t_feats:
            noise = torch.randn(f.shape, generator=g).to(f.device, f.dtype)
            row.append(f + noise * f.norm(dim=1, keepdim=True) * (scale / f.shape[1] ** 0.5))
        out.append(row)
    return out


def criterion(row: tuple[float, ...], first: int, last: int | None = None) -> float:
    """The mean over columns first..last (exclusive) of a (w, image AUROC, pixel AUROC, AU-PRO) row, rounded
    to 4 digits so noise does not decide."""
    return round(float(np.mean(row[first:last])), 4)


def best_share(table: list[tuple[float, ...]], first: int, last: int | None = None) -> float:
    """The share of the row with the best criterion; ties go to the smaller share."""
    return max(table, key=lambda r: (criterion(r, first, last), -r[0]))[0]


def best_choice(criteria: dict[tuple[int, str], tuple[float, ...]]) -> tuple[int, str]:
    """The (stride, combine) with the best criteria, compared in order (the labelled defects', then the
    painted images'); ties go to the earlier of BANK_STRIDES (8: PatchCore's and the cheaper), then to the
    sum."""
    return max(criteria, key=lambda k: (criteria[k], -BANK_STRIDES.index(k[0]), k[1] == "sum"))


def best_stride(criteria: dict[int, float]) -> int:
    """The bank stride with the best criterion (best_choice with the sum)."""
    return best_choice({(s, "sum"): (v,) for s, v in criteria.items()})[0]


# ---- the loop ---------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    model: RD2T
    checkpoint: Path
    history: list[float] = field(default_factory=list)
    calibration: Calibration | None = None
    epoch_seconds: list[float] = field(default_factory=list)  # this call's epochs, for benchmarks
    cache_seconds: float = 0.0


class StopOnSignal:
    """SIGINT/SIGTERM during the epochs only ask the loop to stop after the current step (a second one stops
    at once). Handlers are installed while `epochs(...)` is iterated, in the main thread only."""

    def __init__(self) -> None:
        self.requested = 0

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = signum

    def epochs(self, iterable):
        if threading.current_thread() is not threading.main_thread():
            yield from iterable
            return
        previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield from iterable
        finally:  # also when the loop returns early or raises (the generator is closed)
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def check(self) -> None:
        if self.requested:
            raise KeyboardInterrupt(f"stopped by signal {signal.Signals(self.requested).name}")


def _checkpoint(
    model: RD2T,
    optimizer,
    epoch: int,
    history,
    files,
    complete: bool,
    calibration: Calibration | None = None,
    epoch_losses: list[float] | None = None,
    teachers: tuple[str, str] | None = None,
) -> Checkpoint:
    return Checkpoint(
        model.config,
        model.state_dict(),
        epoch,
        list(history),
        [str(p) for p in files["train"]],
        [str(p) for p in files["val"]],
        complete,
        calibration,
        optimizer.state_dict() if optimizer is not None else None,
        epoch_losses=list(epoch_losses or []),
        teachers_file=teachers,
    )


def train(
    config: Config,
    good_images: list[Path],
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
    held_out: list[Path] | None = None,
    val_defects: list[Sample] | None = None,
) -> TrainResult:
    """Train on defect-free images; writes out_dir/last.pt every epoch and out_dir/model.pt at the end.

    The threshold comes from `held_out` good images when given (a dataset's own validation/good, as MVTec
    AD 2 has); otherwise `config.val_fraction` of `good_images` is held out for it. `val_defects`, a few
    labelled defective images of the same part (data.labelled_defects), make the memory bank's choices
    (fit_memory_bank) and are reported against the threshold; no epoch trains on them.

    `stop_after` ends the run after that many epochs *of this call* (as an interruption would); the
    checkpoint then says incomplete and `resume=True` continues it.
    Inside a process group (train_distributed) every rank calls this; see the module docstring.
    """
    out_dir = Path(out_dir)
    last_path, final_path = out_dir / "last.pt", out_dir / "model.pt"
    rank, world = ddp.rank_and_world()
    progress = progress and rank == 0
    device = resolve_device(config.device)
    if rank == 0:
        check_writable(out_dir)  # before any image is read or any epoch runs
    start_epoch, history, state = 0, [], None
    if resume:  # rank 0 reads the checkpoint and sends it to the others: only its out_dir must hold it
        state = ddp.from_rank0(lambda: Checkpoint.load(last_path) if last_path.exists() else None)
    if state is not None:
        # a finished run's last.pt records the bank stride and combination it chose; a request to choose
        # (stride 0, "chosen") matches it
        asked = {k: v for k, v in CHOSEN_BY_TRAINING.items() if getattr(config, k) == v}
        stored = state.config.replace(**asked)
        # the threshold rule acts only once the epochs are done, so a resumed run may take another (the
        # station's loop: a finished run resumed with --val-defects and youden)
        conflicts = stored.conflicts(config, allowed=("epochs", "threshold_rule"))
        if conflicts:
            raise ConfigError(
                f"{last_path}: --resume with settings that differ from the checkpoint "
                f"({'; '.join(conflicts)}); use another --out to train anew"
            )
        config = stored.replace(
            device=config.device,
            epochs=config.epochs,
            threshold_rule=config.threshold_rule,
            cache=config.cache,
            checkpoint_every_s=config.checkpoint_every_s,
        )
        start_epoch, history = state.epoch, list(state.history)
        train_paths, val_paths = [Path(p) for p in state.train_files], [Path(p) for p in state.val_files]
    elif held_out:
        train_paths, val_paths = list(good_images), list(held_out)
    else:
        train_paths, val_paths = split_validation(list(good_images), config.val_fraction, config.seed)

    seed_everything(config.seed)
    model = RD2T(config, pretrained=config.pretrained if state is None else False).to(device)
    if world > 1:
        ddp.sync_batchnorm(model, device)  # BatchNorm statistics over the global batch, as in one process
    optimizer = torch.optim.Adam(model.trainable_parameters(), lr=config.lr, betas=config.betas)
    if state is not None:
        model.load_state_dict(state.weights)
        if state.optimizer is None:
            raise CheckpointError(f"{last_path}: holds no optimizer state, cannot resume from it")
        optimizer.load_state_dict(state.optimizer)

    tiler = Tiler.of(config)
    if parse_rule(config.threshold_rule)[0] == "youden" and not val_defects:
        raise ConfigError(
            "--threshold-rule youden: places the threshold between the held-out good images and labelled "
            "defective ones; give them with --val-defects DIR"
        )
    # Masks come all or none. Without them a tiled model cannot tell which tiles hold the defect: painted
    # tiles choose its bank, and the labelled images are only scored whole (the station's zip of defects).
    scored_only = bool(val_defects) and tiler is not None and val_defects[0].mask_path is None
    if scored_only and rank == 0:  # said once, not by every DDP rank
        print(
            "--val-defects without masks on a tiled model: image labels cannot say which tiles hold the "
            "defects, so painted tiles choose the memory bank; the labelled images are scored whole",
            file=sys.stderr,
        )
    if tiler is not None:  # training rows are tiles; calibration scores whole images, tiled, from their files
        images, train_paths = load_training_tiles(train_paths, tiler, progress, "training")
    else:
        images, train_paths = load_training_images(train_paths, config.image_size, progress, "training")
    val_images, val_paths = torch.zeros(0, 3, 1, 1, dtype=torch.uint8), list(val_paths)
    if val_paths and tiler is not None:
        val_images = list(val_paths)
    elif val_paths:
        try:
            val_images, val_paths = load_training_images(val_paths, config.image_size, progress, "validation")
        except InputError as e:  # the threshold then comes from training images (said in its source)
            print(f"warning: {e}; the threshold will come from the training images", file=sys.stderr)
            val_paths = []
    files = {"train": train_paths, "val": val_paths}
    n = len(images)
    if n < 2:
        raise InputError(f"{len(train_paths)} training image(s): at least 2 are needed")
    # Tiled: a seeded random share of the tiles each epoch (tile_fraction < 1), drawn anew every epoch.
    n_used = max(2, round(n * config.tile_fraction)) if tiler is not None else n
    batch_size = min(config.batch_size, n_used)  # partial batches are dropped: BN needs > 1 sample
    local_batch = ddp.local_batch_size(n_used, batch_size)  # batch_size // world; fails on all ranks if not
    steps = n_used // batch_size

    cache, t_cache = None, time.perf_counter()
    if config.cache != "none":
        cache = FeatureCache(
            model, images, config.cache, out_dir / "cache", device, config.batch_size, progress
        )
    cache_seconds, epoch_seconds = time.perf_counter() - t_cache, []

    # Frozen teachers: written once per run, referred to by every last.pt (kept from the resumed run).
    teachers = state.teachers_file if state is not None else None
    if rank == 0 and teachers is None:
        teachers = ("teachers.pt", save_teachers(model.state_dict(), out_dir / "teachers.pt"))
    resumed_losses = list(state.epoch_losses) if state is not None else []  # a mid-epoch checkpoint's steps
    saved_at, stop = time.perf_counter(), StopOnSignal()

    def write_last(done_epochs: int, epoch_losses: list[float]) -> None:
        nonlocal saved_at
        if rank == 0:
            ckpt = _checkpoint(
                model, optimizer, done_epochs, history, files, False, None, epoch_losses, teachers
            )
            ckpt.save(last_path)
        saved_at = time.perf_counter()

    def due() -> bool:
        return time.perf_counter() - saved_at >= config.checkpoint_every_s

    reconstruct = ddp.data_parallel(model, device) if world > 1 else model.reconstruct
    epochs_run = 0
    bar = tqdm(
        range(start_epoch, config.epochs),
        desc="training",
        disable=not progress,
        initial=start_epoch,
        total=config.epochs,
    )
    for epoch in stop.epochs(bar):
        t_epoch = time.perf_counter()
        model.train()
        order = torch.randperm(n, generator=torch.Generator().manual_seed(config.seed * 100_003 + epoch))
        # This rank's share, DistributedSampler's layout: every world-th index of the permutation (all of it
        # with one process). Its k-th batch of local_batch and the other ranks' k-th batches together are
        # order[k * batch_size : (k + 1) * batch_size], the k-th batch of a single-process run.
        mine = order[: steps * batch_size][rank::world]
        losses, resumed_losses = resumed_losses, []
        for start in range(len(losses) * local_batch, steps * local_batch, local_batch):
            idx = mine[start : start + local_batch]
            if cache is not None:
                features = cache.get(idx)
            else:
                features = model.teacher_features(to_model_input(images[idx].to(device)))
            student_input = features
            if config.feature_jitter > 0:  # seeded by the step, so a resumed run draws the same noise
                step_seed = (config.seed * 100_003 + epoch) * 1_000_003 + start * world + rank
                student_input = jitter(features, config.feature_jitter, step_seed)
            loss = model.loss(features, reconstruct(student_input))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            if len(losses) < steps and (stop.requested or (config.checkpoint_every_s > 0 and due())):
                write_last(epoch, losses)  # mid-epoch: resume skips the steps done
                stop.check()
        history.append(ddp.mean_over_ranks(float(np.mean(losses)), device))
        epoch_seconds.append(time.perf_counter() - t_epoch)
        bar.set_postfix(loss=f"{history[-1]:.4f}")
        epochs_run += 1
        stopping = stop_after is not None and epochs_run >= stop_after and epoch + 1 < config.epochs
        if stop.requested or (epoch + 1 < config.epochs and (stopping or due())):
            write_last(epoch + 1, [])
            stop.check()
        if stopping:
            return TrainResult(
                model, last_path, history, epoch_seconds=epoch_seconds, cache_seconds=cache_seconds
            )

    # Threshold from held-out good images; without any, the training images' scores (biased low: more alarms).
    # Rank 0 only (the weights are the same everywhere); the other ranks wait until model.pt is written.
    calibration = None
    if rank == 0:
        source = "validation" if len(val_images) else "training images (no readable validation images)"
        held_out = val_images if len(val_images) else train_paths if tiler is not None else images
        defects = None
        if val_defects and not scored_only:
            defects = (
                load_labelled_defects(val_defects, config.image_size)
                if tiler is None
                else load_labelled_tiles(val_defects, tiler)
            )
        if model.memory_bank is not None:  # tiled: bank, z-scores and share are per tile, as the model scores
            bank_held_out = held_out if tiler is None else load_training_tiles(held_out, tiler, False)[0]
            fit_memory_bank(
                model, images, bank_held_out, cache, config.batch_size, tiler is not None, defects
            )
        # Kept with the threshold (the review page draws them beside the good ones); `youden` sets it on them.
        # Whole images, as `rd2t predict` scores them (tiled: tiled); resized ones as read for the choice.
        labelled: torch.Tensor | list[Path] = []
        if scored_only:
            labelled = [Path(s.path) for s in val_defects]
        elif defects is not None:
            labelled = defects.paths if tiler is not None else defects.images
        defect_scores = score_images(model, labelled, config.batch_size)[0].tolist()  # [] without any
        calibration = calibrate(
            model, held_out, config.threshold_rule, source, config.batch_size, defect_scores
        )
        if defect_scores:
            report_labelled_defects(calibration)
        final = _checkpoint(
            model, None, config.epochs, history, files, complete=True, calibration=calibration
        )
        final.save(final_path)
        final.optimizer, final.teachers_file = optimizer.state_dict(), teachers
        final.save(last_path)
    ddp.barrier()
    return TrainResult(model, final_path, history, calibration, epoch_seconds, cache_seconds)
