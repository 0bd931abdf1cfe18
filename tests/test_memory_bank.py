"""The optional nearest-neighbour term (config.memory_bank): coreset, distances, training, save/load, ONNX."""

import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from rd2t.api import Detector
from rd2t.calibration import Calibration, youden
from rd2t.config import preset
from rd2t.data import labelled_defects, load_image, load_mask
from rd2t.data.transforms import to_model_input, to_uint8_tensor
from rd2t.errors import ConfigError
from rd2t.inference.export import export_onnx
from rd2t.inference.onnx_runtime import OnnxDetector
from rd2t.inference.predictor import Predictor
from rd2t.model.loading import load_model
from rd2t.model.memory_bank import MemoryBank, between_image_share, greedy_coreset, patch_embedding
from rd2t.model.network import RD2T
from rd2t.training.loop import (
    choose_bank_share,
    load_labelled_defects,
    report_labelled_defects,
    score_images,
)
from tests.conftest import paint_defect, texture

SIZE = 64


def test_greedy_coreset_covers_every_cluster_before_repeating_one():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0] * 8, [50.0] * 8, [-50.0] * 8, [50.0] * 4 + [-50.0] * 4])
    x = torch.cat([c + torch.randn(200, 8, generator=g) for c in centres])
    picks = greedy_coreset(x, 4)
    assert sorted((picks // 200).tolist()) == [0, 1, 2, 3]  # one pick in each of the four clusters
    # so every point's nearest kept patch is one of its own cluster
    nearest = torch.cdist(x, x[picks]).argmin(1)
    assert torch.equal(picks[nearest] // 200, torch.arange(800) // 200)


@pytest.mark.parametrize("chunk", [1024, 8, 5])
def test_distance_is_the_nearest_patch_distance(chunk, monkeypatch):
    """The whole bank at once (1024 > 37 patches) or in chunks, one short: the nearest patch distance."""
    import rd2t.model.memory_bank as memory_bank_module

    monkeypatch.setattr(memory_bank_module, "DISTANCE_CHUNK", chunk)
    g = torch.Generator().manual_seed(1)
    bank = MemoryBank(5)
    bank.patches = torch.randn(37, 5, generator=g)
    emb = torch.randn(2, 5, 3, 4, generator=g)
    got = bank.distance(emb)
    want = torch.cdist(emb.flatten(2).transpose(1, 2), bank.patches).min(-1).values.view(2, 1, 3, 4)
    assert got.shape == (2, 1, 3, 4)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_bank_keeps_at_most_max_kept_patches(monkeypatch):
    """1 % of a large tiled set would outgrow MAX_KEPT: the coreset stops there (greedy k-center's first
    picks, so they still spread over the clusters) and scoring's cost stays bounded."""
    import rd2t.model.memory_bank as memory_bank_module

    monkeypatch.setattr(memory_bank_module, "MAX_KEPT", 4)
    g = torch.Generator().manual_seed(2)
    centres = torch.tensor([[0.0] * 8, [50.0] * 8, [-50.0] * 8, [50.0] * 4 + [-50.0] * 4])
    x = torch.cat([c + torch.randn(200, 8, generator=g) for c in centres])
    bank = MemoryBank(8)
    bank.fit(x, 0.1)  # 80 wanted
    assert bank.patches.shape == (4, 8)
    assert sorted(torch.cdist(bank.patches, centres).argmin(1).tolist()) == [0, 1, 2, 3]
    bank.fit(x, 0.005)  # 4 wanted: the share decides below the cap
    assert bank.patches.shape == (4, 8)
    bank.fit(x, 0.0025)
    assert bank.patches.shape == (2, 8)


def test_between_image_share_is_the_part_of_the_variance_carried_by_each_images_level():
    g = torch.Generator().manual_seed(0)
    pixels = torch.randn(40, 1, 16, 16, generator=g)
    levels = 3 * torch.randn(40, 1, 1, 1, generator=g)
    steady, moving = between_image_share(pixels), between_image_share(pixels + levels)
    assert steady < 0.02  # the medians of 256 unit-variance pixels vary by ~1/256 of the pixel variance
    assert 0.85 < moving < 0.95  # levels of variance 9 over pixels of variance 1: 9 / 10
    # a z-score (what the bank applies) does not change it: it is a ratio of variances
    assert between_image_share(5 * (pixels + levels) - 2) == pytest.approx(moving, rel=1e-6)


def test_config_refuses_bad_shares():
    for bad in (-0.1, 1.5):
        with pytest.raises(ConfigError, match="memory_bank"):
            preset("offline", memory_bank=bad)
    for bad in (-0.5, 1.1):
        with pytest.raises(ConfigError, match="bank_weight"):
            preset("offline", memory_bank=0.01, bank_weight=bad)
    for bad in (2, 16):
        with pytest.raises(ConfigError, match="bank_stride"):
            preset("offline", memory_bank=0.01, bank_stride=bad)


@pytest.fixture(scope="module")
def bank_run(texture_set, tmp_path_factory):
    """`rd2t train --memory-bank 0.05`, plain sum of z-scores, on the small texture set: (model, checkpoint,
    folder)."""
    from rd2t.cli import main

    out = tmp_path_factory.mktemp("bank") / "run"
    args = ["train", str(texture_set), "--out", str(out), "--epochs", "2", "--image-size", str(SIZE)]
    args += ["--batch-size", "4", "--device", "cpu", "--memory-bank", "0.05", "--set", "bank_weight=0.5"]
    args += ["--set", "bank_stride=8"]  # PatchCore's patches; the stride's choice is tested below
    args += ["--set", "bank_scale=std"]  # the plain z-score, checked below; max has its own test
    assert main(args) == 0
    model, ckpt = load_model(out / "model.pt")
    return model, ckpt, out


def _inputs(paths) -> torch.Tensor:
    return to_model_input(torch.stack([to_uint8_tensor(load_image(p), SIZE) for p in paths]))


def test_training_keeps_the_share_and_zscores_the_held_out_maps(bank_run):
    model, ckpt, _ = bank_run
    bank = model.memory_bank
    n_train = 24 - 2  # val_fraction 0.1 of 24 good images holds out 2
    patches = n_train * (SIZE // 8) ** 2  # the share counts stride-8 patches, whatever the bank's stride
    assert len(bank.patches) == round(0.05 * patches)
    assert model.config.bank_stride == 8  # the default: PatchCore's stride-8 + stride-16 features
    assert bank.patches.shape[1] == sum(model.teachers[0].channels[1:3])
    # On the held-out images each z-scored term has pixel mean 0 and std 1: what the training step promised.
    with torch.no_grad():
        x = _inputs(ckpt.val_files)
        feats = model.teacher_features(x)
        maps = model.term_maps(feats, model.reconstruct(feats), (SIZE, SIZE))
    assert len(maps) == 2
    m_s, s_s, m_k, s_k = bank.zscore.tolist()
    for m, mean, std in ((maps[0], m_s, s_s), (maps[1], m_k, s_k)):
        z = (m.double() - mean) / std
        assert abs(float(z.mean())) < 1e-3 and abs(float(z.std(unbiased=False)) - 1) < 1e-3
    # The model's map is their sum, and the threshold was calibrated on that map.
    with torch.no_grad():
        scores, amap = model(x)
    torch.testing.assert_close(amap, bank.combine(*maps)[:, 0])
    assert ckpt.calibration.scores == pytest.approx(scores.tolist(), rel=1e-4, abs=1e-4)


def test_knn_term_is_higher_on_a_defect_than_on_good_texture(bank_run, texture_set):
    model = bank_run[0]
    x = _inputs(sorted((texture_set / "test/stain").glob("*.png")))
    masks = [
        torch.from_numpy(load_mask(p, (SIZE, SIZE)))
        for p in sorted((texture_set / "ground_truth/stain").glob("*.png"))
    ]
    with torch.no_grad():
        feats = model.teacher_features(x)
        knn = model.term_maps(feats, model.reconstruct(feats), (SIZE, SIZE))[1][:, 0]
    inside = torch.cat([k[m] for k, m in zip(knn, masks, strict=True)]).mean()
    outside = torch.cat([k[~m] for k, m in zip(knn, masks, strict=True)]).mean()
    assert inside > outside


def test_bank_survives_save_load_and_onnx_export(bank_run, tmp_path):
    model, ckpt, out = bank_run
    assert model.config.memory_bank == 0.05 and model.memory_bank.fitted
    # a fresh model of the same config starts with an empty bank; loading gives it the stored one
    fresh = RD2T(ckpt.config, pretrained=False)
    assert not fresh.memory_bank.fitted
    fresh.load_state_dict(ckpt.weights)
    torch.testing.assert_close(fresh.memory_bank.patches, model.memory_bank.patches)
    x = _inputs(ckpt.val_files)
    with torch.no_grad():
        want_s, want_m = model(x)
        got_s, got_m = fresh.eval()(x)
    torch.testing.assert_close(got_m, want_m)
    onnx_path = export_onnx(out / "model.pt", tmp_path / "bank.onnx")
    o_scores, o_maps = OnnxDetector(onnx_path).predict(x.numpy())
    assert np.abs(o_maps - want_m.numpy()).max() <= 1e-3
    assert np.abs(o_scores - want_s.numpy()).max() <= 1e-3


def test_patch_embedding_takes_its_stride_and_the_next_level_up():
    f = [torch.zeros(1, 4, 16, 16), torch.ones(1, 6, 8, 8), torch.ones(1, 10, 4, 4)]
    assert patch_embedding(f, stride=8).shape == (1, 16, 8, 8)
    e = patch_embedding(f, stride=4)
    assert e.shape == (1, 10, 16, 16)
    # stride-4 channels first, then the stride-8 ones upsampled (3x3 means, so 1 away from the zero padding)
    assert float(e[:, :4].abs().max()) == 0 and torch.allclose(e[:, 4:, 4:-4, 4:-4], torch.ones(1, 6, 8, 8))


def test_bank_saved_before_bank_stride_existed_loads_as_stride_8(bank_run, tmp_path):
    """Checkpoints written before `bank_stride` hold a stride-8 bank: they must load and score as one (this
    fails if the field's default changes without a migration)."""
    from rd2t.model.checkpoint import Checkpoint

    _, ckpt, _ = bank_run
    old_config = ckpt.config.replace(bank_stride=8)  # what every bank before bank_stride was
    model8 = RD2T(old_config, pretrained=False).eval()
    state = {k: v for k, v in ckpt.weights.items() if not k.startswith("memory_bank.")}
    model8.load_state_dict(state, strict=False)
    g = torch.Generator().manual_seed(5)
    model8.memory_bank.fit(torch.randn(300, model8.memory_bank.patches.shape[1], generator=g), 0.1)
    path = tmp_path / "old.pt"
    Checkpoint(old_config, model8.state_dict(), 2, [], [], [], True, ckpt.calibration).save(path)
    payload = torch.load(path, weights_only=True)
    del payload["config"]["bank_stride"]  # as an older rd2t wrote it
    torch.save(payload, path)
    loaded, _ = load_model(path)
    assert loaded.config.bank_stride == 8
    x = _inputs(ckpt.val_files)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)[1], model8(x)[1])


def _terms(signal_in_knn: bool, n: int = 12, size: int = 32) -> tuple[torch.Tensor, ...]:
    """Z-scored term maps of n good and n painted images where only one term sees the paint."""
    g = torch.Generator().manual_seed(3)
    good = torch.randn(n, 2, size, size, generator=g)
    bad = torch.randn(n, 2, size, size, generator=g)
    masks = torch.zeros(n, size, size, dtype=torch.bool)
    masks[:, 8:16, 8:16] = True
    bad[:, 1 if signal_in_knn else 0][masks] += 1.5  # mixing in the other term's noise only blurs it
    return good, bad, masks


@pytest.mark.parametrize("signal_in_knn", [True, False])
def test_share_follows_the_term_that_sees_the_pseudo_defects(signal_in_knn):
    good, bad, masks = _terms(signal_in_knn)
    share, table, _ = choose_bank_share(good, bad, masks)
    assert [row[0] for row in table] == pytest.approx([i / 10 for i in range(11)])
    assert (share >= 0.8) if signal_in_knn else (share <= 0.2)
    best = max(np.mean(row[1:]) for row in table)
    blind = table[0] if signal_in_knn else table[-1]  # the term that does not see the paint, alone
    assert best > np.mean(blind[1:]) + 0.1


def test_share_zero_drops_the_bank_and_scores_the_students_map(bank_run):
    model, ckpt, _ = bank_run
    fresh = RD2T(ckpt.config, pretrained=False).eval()
    fresh.load_state_dict(ckpt.weights)
    x = _inputs(ckpt.val_files)
    with torch.no_grad():
        feats = fresh.teacher_features(x)
        student = fresh.term_maps(feats, fresh.reconstruct(feats), (SIZE, SIZE))[0]
        fresh.memory_bank.set_share(0.0)
        _, amap = fresh(x)
    assert not fresh.memory_bank.fitted and len(fresh.memory_bank.patches) == 0
    torch.testing.assert_close(amap, student[:, 0])
    # and the checkpoint of such a model loads as one without a bank
    again = RD2T(ckpt.config, pretrained=False)
    again.load_state_dict(fresh.state_dict())
    assert not again.memory_bank.fitted


def test_bank_saved_before_weights_existed_loads_as_the_plain_sum(bank_run):
    model, ckpt, _ = bank_run
    old = {k: v for k, v in ckpt.weights.items() if k != "memory_bank.weights"}
    fresh = RD2T(ckpt.config, pretrained=False)
    fresh.memory_bank.set_share(0.9)
    fresh.load_state_dict(old)
    assert fresh.memory_bank.weights.tolist() == [1.0, 1.0]


CHOICE = re.compile(
    r"memory bank, stride (\d+), (sum|max): kNN share ([\d.]+) of the map, criterion ([\d.]+), "
    r"on (.+ held-out good (?:images|tiles)) \("
)


def choice_lines(err: str) -> list[tuple[int, str, float, float, str]]:
    """(stride, combine, share, criterion, what it was chosen on) of each line training prints per try."""
    found = [CHOICE.match(line) for line in err.splitlines() if line.startswith("memory bank, stride")]
    assert all(found), err
    return [(int(m[1]), m[2], float(m[3]), float(m[4]), m[5]) for m in found]


@pytest.mark.parametrize("stride, weight", [(8, -1.0), (0, -1.0), (0, 0.5)])
def test_training_chooses_share_and_stride_on_pseudo_defects(texture_set, tmp_path, capfd, stride, weight):
    """bank_weight -1 chooses the share, bank_stride 0 the stride (8 or 4), on the painted held-out images;
    the saved model is the chosen one and its threshold comes from its own scores."""
    from rd2t.cli import main

    out = tmp_path / "run"
    args = ["train", str(texture_set), "--out", str(out), "--epochs", "2", "--image-size", str(SIZE)]
    args += ["--batch-size", "4", "--device", "cpu", "--memory-bank", "0.05"]
    assert main([*args, "--set", f"bank_stride={stride}", "--set", f"bank_weight={weight}"]) == 0
    tried = {}  # stride -> (share, criterion)
    for stride_tried, combine, share, value, on in choice_lines(capfd.readouterr().err):
        assert combine == "sum" and on == "48 pseudo-defects painted and 2 held-out good images"
        tried[stride_tried] = (share, value)
    assert sorted(tried) == ([4, 8] if stride == 0 else [stride])
    # the stride with the better criterion, ties to 8
    chosen = 8 if stride == 8 else max(tried, key=lambda s: (tried[s][1], s == 8))
    share = tried[chosen][0]
    if weight >= 0:
        assert share == weight
    model, ckpt = load_model(out / "model.pt")
    assert model.config.bank_stride == chosen and model.config.bank_weight == weight  # the request stays
    assert model.config.bank_combine == "sum"  # offline's "chosen" without labelled defects: today's sum
    assert model.memory_bank.weights.tolist() == pytest.approx([2 * (1 - share), 2 * share])
    assert model.memory_bank.fitted == (share > 0)
    if share > 0:
        level = {4: 0, 8: 1}[chosen]
        assert model.memory_bank.patches.shape[1] == sum(model.teachers[0].channels[level : level + 2])
    with torch.no_grad():
        scores, _ = model(_inputs(ckpt.val_files))
    assert ckpt.calibration.scores == pytest.approx(scores.tolist(), rel=1e-4, abs=1e-4)


@pytest.mark.parametrize("scale", ["std", "max"])
def test_bank_scale_puts_each_term_on_its_own_good_spread_or_peaks(texture_set, scale):
    """std: each standardised term has pixel mean 0 and std 1 on the held-out good images; max: their mean
    per-image maximum is 1 instead (the z-score divided by it), so a term that peaks high on good images
    weighs less in the sum."""
    from rd2t.data import list_images
    from rd2t.training.loop import fit_memory_bank, load_training_images

    config = preset("offline", memory_bank=0.05, bank_stride=8, bank_weight=0.5, image_size=SIZE)
    torch.manual_seed(0)
    model = RD2T(config.replace(bank_scale=scale), pretrained=False).eval()
    paths = list_images(texture_set / "train/good")
    images, _ = load_training_images(paths[:-3], SIZE, False)
    held_out, _ = load_training_images(paths[-3:], SIZE, False)
    with torch.no_grad():
        fit_memory_bank(model, images, held_out, None, batch_size=4)
        feats = model.teacher_features(to_model_input(held_out))
        terms = model.memory_bank.standardise(*model.term_maps(feats, model.reconstruct(feats), (SIZE, SIZE)))
    for t in terms:
        t = t.double()
        if scale == "std":
            assert float(t.mean()) == pytest.approx(0, abs=1e-3)
            assert float(t.std()) == pytest.approx(1, abs=1e-3)
        else:
            assert float(t.flatten(1).amax(1).mean()) == pytest.approx(1, abs=1e-4)
            assert float(t.std()) < 1  # z-scored maps of good images peak above one std
    with pytest.raises(ConfigError, match="bank_scale"):
        config.replace(bank_scale="max1")


def test_bank_combine_max_takes_each_pixels_larger_term_through_training_and_onnx(texture_set, tmp_path):
    """--set bank_combine=max (round 10): the map is the per-pixel maximum of the two weighted, scaled terms,
    not their sum; the threshold is calibrated on that map, and the ONNX export gives the same map."""
    from rd2t.cli import main

    out = tmp_path / "run"
    args = ["train", str(texture_set), "--out", str(out), "--epochs", "1", "--image-size", str(SIZE)]
    args += ["--batch-size", "4", "--device", "cpu", "--memory-bank", "0.05", "--set", "bank_weight=0.5"]
    args += ["--set", "bank_stride=8", "--set", "bank_scale=max", "--set", "bank_combine=max"]
    assert main(args) == 0
    model, ckpt = load_model(out / "model.pt")
    assert model.config.bank_combine == "max" and model.memory_bank.fitted
    x = _inputs(ckpt.val_files + sorted((texture_set / "test/stain").glob("*.png"))[:2])
    with torch.no_grad():
        feats = model.teacher_features(x)
        student, knn = model.memory_bank.standardise(
            *model.term_maps(feats, model.reconstruct(feats), (SIZE, SIZE))
        )
        scores, amap = model(x)
    want = torch.maximum(student, knn)[:, 0]  # share 0.5: both weights 1
    torch.testing.assert_close(amap, want)
    assert not torch.allclose(amap, (student + knn)[:, 0])  # the sum would be another map
    assert torch.equal(scores, amap.flatten(1).amax(1))
    n_val = len(ckpt.val_files)
    assert ckpt.calibration.scores == pytest.approx(scores[:n_val].tolist(), rel=1e-4, abs=1e-4)
    o_scores, o_maps = OnnxDetector(export_onnx(out / "model.pt", tmp_path / "max.onnx")).predict(x.numpy())
    assert np.abs(o_maps - amap.numpy()).max() <= 1e-3
    assert np.abs(o_scores - scores.numpy()).max() <= 1e-3
    with pytest.raises(ConfigError, match="bank_combine"):
        preset("offline", bank_combine="mean")


def test_unchosen_stride_loads_as_an_unfitted_stride_8_bank():
    """A checkpoint written before training chose the stride (last.pt of an interrupted run) still loads."""
    model = RD2T(preset("offline", memory_bank=0.01, bank_stride=0), pretrained=False)
    assert not model.memory_bank.fitted
    assert model.memory_bank.patches.shape[1] == sum(model.teachers[0].channels[1:3])


def test_tiled_model_fits_its_bank_on_tiles_and_exports_it(texture_set, tmp_path):
    """--memory-bank with --tile: the bank, its z-scores and the threshold all come from tiles, the way the
    tiled model scores an image, and the ONNX export carries it."""
    import importlib.util
    import warnings

    from rd2t.cli import main
    from rd2t.inference.export import EXPORT_TOLERANCE
    from rd2t.inference.predictor import Predictor
    from rd2t.inference.tiling import Tiler
    from rd2t.training.tiles import load_training_tiles

    out = tmp_path / "run"
    args = ["train", str(texture_set), "--out", str(out), "--epochs", "1", "--batch-size", "8"]
    args += ["--tile", "64", "--stride", "48", "--device", "cpu", "--val-fraction", "0.2"]
    # the finer bank here (stride 4 + 8), so it too is trained, saved, calibrated and exported
    assert main([*args, "--memory-bank", "0.05", "--set", "bank_weight=0.5", "--set", "bank_stride=4"]) == 0
    model, ckpt = load_model(out / "model.pt")
    tiler = Tiler.of(model.config)
    train_tiles = load_training_tiles(ckpt.train_files, tiler, False)[0]
    # as many patches as the stride-8 count says, each with the stride-4 + stride-8 channels
    assert len(model.memory_bank.patches) == round(0.05 * len(train_tiles) * (64 // 8) ** 2)
    assert model.memory_bank.patches.shape[1] == sum(model.teachers[0].channels[0:2])
    held_tiles = load_training_tiles(ckpt.val_files, tiler, False)[0]
    with torch.no_grad():
        feats = model.teacher_features(to_model_input(held_tiles))
        maps = model.term_maps(feats, model.reconstruct(feats), (64, 64))
    # offline's bank_scale=max: each term's mean peak over the held-out tiles, the units it scores, is 1
    assert model.config.bank_scale == "max"
    for z in model.memory_bank.standardise(*maps):
        assert float(z.double().flatten(1).amax(1).mean()) == pytest.approx(1, abs=1e-4)
    torch_p = Predictor.open(out / "model.pt")
    again = [p.score for p in torch_p.predict(ckpt.val_files)]
    # float32 sums in other batch groupings: ~3e-6 apart on scores of order 1 (2 threads)
    np.testing.assert_allclose(again, ckpt.calibration.scores, rtol=1e-5, atol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["export", str(out / "model.pt"), "--out", str(tmp_path / "m.onnx")]) == 0
    image = np.random.default_rng(4).integers(0, 255, (150, 110, 3), dtype=np.uint8)
    a = torch_p.predict_one(image)
    scale = max(1.0, float(np.abs(a.model_map).max()))
    # auto runs the fastest runtime that agrees with ONNX Runtime; an explicit openvino agrees or refuses:
    # OpenVINO 2026.3.0-2026.4.1 compute this graph wrong, and must not be used silently
    backends = ["auto", "onnx"] + (["openvino"] if importlib.util.find_spec("openvino") else [])
    for backend in backends:
        try:
            onnx_p = Predictor.open(tmp_path / "m.onnx", backend=backend)
        except ConfigError as e:
            assert backend == "openvino" and "off ONNX Runtime's" in str(e) and "\n" not in str(e)
            continue
        b = onnx_p.predict_one(image)
        assert np.abs(a.model_map - b.model_map).max() <= EXPORT_TOLERANCE * scale, backend


def test_bank_reads_only_its_candidates_and_keeps_what_all_patches_would_give(monkeypatch):
    """Fitting keeps only the random MAX_CANDIDATES patches while reading (bounded memory on thousands of
    tiles) and ends with the same coreset as fitting on every patch."""
    import rd2t.model.memory_bank as memory_bank_module
    import rd2t.training.loop as loop

    for module in (loop, memory_bank_module):
        monkeypatch.setattr(module, "MAX_CANDIDATES", 150)  # below the 6 x 8 x 8 = 384 stride-8 patches
    model = RD2T(preset("offline", memory_bank=0.05, bank_stride=8, image_size=SIZE), pretrained=False)
    model.eval()
    images = torch.randint(0, 256, (6, 3, SIZE, SIZE), dtype=torch.uint8)
    with torch.no_grad():
        loop._fit_patches(model, images, None, batch_size=4)
        feats = model.teacher_features(to_model_input(images))
        every = patch_embedding(feats[0], 8)
    every = every.flatten(2).transpose(1, 2).reshape(-1, every.shape[1])
    reference = MemoryBank(every.shape[1])
    reference.fit(every, 0.05, model.config.seed)
    assert len(reference.patches) == round(0.05 * 384)
    torch.testing.assert_close(model.memory_bank.patches, reference.patches)


def _labelled_copy(texture_set, dest, masks: bool):
    """The texture set's stained test images as a --val-defects folder (stain/, ground_truth/stain/)."""
    shutil.copytree(texture_set / "test/stain", dest / "stain")
    if masks:
        shutil.copytree(texture_set / "ground_truth/stain", dest / "ground_truth/stain")
    return dest


def _train_with_labelled(texture_set, tmp_path, capfd, masks: bool, *extra: str):
    """A 1-epoch offline model with a bank trained with --val-defects: (stderr, model folder, val folder)."""
    from rd2t.cli import main

    val = _labelled_copy(texture_set, tmp_path / "val", masks)
    out = tmp_path / "run"
    args = ["train", str(texture_set), "--out", str(out), "--epochs", "1", "--image-size", str(SIZE)]
    args += ["--batch-size", "4", "--device", "cpu", "--memory-bank", "0.05", "--val-defects", str(val)]
    assert main([*args, *extra]) == 0
    return capfd.readouterr().err, out, val


def test_labelled_defects_choose_stride_and_sum_or_max_and_are_reported(texture_set, tmp_path, capfd):
    """--val-defects (round 12): offline's bank_combine "chosen" tries both strides and both combinations on
    the labelled images (in place of painted ones), keeps the best criterion (ties: the stride's painted
    criterion on the sum, then stride 8, then the sum), and says how many the stored threshold catches, which
    `--threshold-rule youden` places where caught minus flagged shares peak."""
    err, out, val = _train_with_labelled(texture_set, tmp_path, capfd, True, "--threshold-rule", "youden")
    lines = [line for line in err.splitlines() if line.startswith("memory bank, stride")]
    ties = [float(re.search(r"\); on the painted images ([\d.]+)$", line)[1]) for line in lines]
    tried = {(s, c): (v, tie) for (s, c, _, v, _), tie in zip(choice_lines(err), ties, strict=True)}
    assert all(on == "6 labelled defects and 2 held-out good images" for *_, on in choice_lines(err))
    assert sorted(tried) == [(4, "max"), (4, "sum"), (8, "max"), (8, "sum")]
    # the labelled criterion, then the painted images', then stride 8, then the sum
    best = max(tried, key=lambda k: (tried[k], k[0] == 8, k[1] == "sum"))
    model, ckpt = load_model(out / "model.pt")
    assert (model.config.bank_stride, model.config.bank_combine) == best
    assert f"memory bank: stride {best[0]}, {best[1]} chosen" in err
    # the report counts what the saved model flags among the labelled images
    with torch.no_grad():
        scores, _ = model(_inputs(sorted((val / "stain").glob("*.png"))))
    threshold = ckpt.calibration.threshold
    caught = int((scores > threshold).sum())
    assert f"labelled defects: {caught} of 6 above the threshold {threshold:.4f} (youden;" in err
    # youden: no threshold tells the labelled defects from the held-out good images better
    good, bad = np.asarray(ckpt.calibration.scores), scores.numpy()
    every = np.concatenate([good, bad, good - 1e-6, bad - 1e-6])
    j = [(bad > t).mean() - (good > t).mean() for t in [threshold, *every]]
    assert ckpt.calibration.rule == "youden" and j[0] == max(j) and j[0] > 0
    # `rd2t evaluate` shows the stored rule's trade on the test set at the stored threshold
    trade = {r["rule"]: r for r in Detector.load(out / "model.pt").evaluate(texture_set, report=False).trade}
    assert trade["youden"]["stored"] and trade["youden"]["threshold"] == pytest.approx(threshold)
    # their scores stay with the threshold, also through ONNX export, for the station's threshold page
    want = pytest.approx(scores.tolist(), rel=1e-4, abs=1e-5)
    assert ckpt.calibration.defect_scores == want
    onnx = Predictor.open(export_onnx(out / "model.pt", tmp_path / "m.onnx"), backend="onnx")
    assert onnx.calibration.defect_scores == want


def test_labelled_defects_the_threshold_misses_are_counted_with_the_cost_of_catching_them(
    bank_run, texture_set, tmp_path, capsys
):
    """Below the stored threshold some labelled defects pass: training says how many, and how many held-out
    good images a threshold that catches them all would flag."""
    model, ckpt, _ = bank_run
    defects = load_labelled_defects(labelled_defects(_labelled_copy(texture_set, tmp_path, True)).test, SIZE)
    with torch.no_grad():
        want = np.sort(model(to_model_input(defects.images))[0].numpy())
    threshold = float(want[2:4].mean())  # between the 3rd and 4th lowest: 3 of 6 caught
    got = score_images(model, defects.images, batch_size=4)[0].tolist()
    assert sorted(got) == pytest.approx(want.tolist(), rel=1e-4, abs=1e-5)
    calibration = Calibration(threshold, "mean+3std", scores=ckpt.calibration.scores, defect_scores=got)
    capsys.readouterr()
    report_labelled_defects(calibration)
    good = np.asarray(ckpt.calibration.scores)
    line, hint = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"labelled defects: 3 of 6 above the threshold {threshold:.4f}")
    flagged = f"flags {int((good >= want[0]).sum())} of {len(good)} held-out good"
    assert line.endswith(f"a threshold just below {want[0]:.4f} catches all and {flagged}")
    # and where the best split of the two would put it, with what it catches and flags there
    best = youden(good, got)
    counts = f"{(want > best).sum()} of 6 caught, {(good > best).sum()} of {len(good)} held-out good flagged"
    assert hint == f"--threshold-rule youden would set {best:.4f}: {counts}"


def test_a_finished_run_resumed_with_labelled_defects_chooses_on_them_without_training_again(
    texture_set, tmp_path, capfd
):
    """The station's loop: a model trained on good images alone, then the defects confirmed at the line
    given to `rd2t train --resume --val-defects` on the same --out. No epoch runs again; the memory bank's
    stride and sum-or-maximum are chosen on the labelled images and youden places the threshold: the same
    model as a run that had the defects from the start."""
    from rd2t.cli import main

    val = _labelled_copy(texture_set, tmp_path / "val", True)
    later, first = tmp_path / "later", tmp_path / "first"
    args = ["train", str(texture_set), "--epochs", "1", "--image-size", str(SIZE), "--batch-size", "4"]
    args += ["--device", "cpu", "--memory-bank", "0.05"]
    with_defects = ["--val-defects", str(val), "--threshold-rule", "youden"]
    assert main([*args, "--out", str(later)]) == 0
    good_only, good_only_ckpt = load_model(later / "model.pt")
    assert good_only_ckpt.calibration.rule == "mean+3std" and not good_only_ckpt.calibration.defect_scores
    capfd.readouterr()
    assert main([*args, "--out", str(later), "--resume", *with_defects]) == 0
    out, err = capfd.readouterr()
    assert "no epoch left to train; memory bank and threshold made anew in " in out
    assert [(s, c) for s, c, *_ in choice_lines(err)] == [(8, "sum"), (8, "max"), (4, "sum"), (4, "max")]
    assert all(on == "6 labelled defects and 2 held-out good images" for *_, on in choice_lines(err))
    model, ckpt = load_model(later / "model.pt")
    # the student is the first run's, to the bit; only the memory bank and the threshold are made anew
    for k, v in good_only.state_dict().items():
        assert k.startswith("memory_bank") or torch.equal(v, model.state_dict()[k]), k
    assert ckpt.history == good_only_ckpt.history and ckpt.calibration.rule == "youden"
    assert len(ckpt.calibration.defect_scores) == 6
    assert main([*args, "--out", str(first), *with_defects]) == 0
    fresh, fresh_ckpt = load_model(first / "model.pt")
    assert model.config == fresh.config and ckpt.calibration.to_dict() == fresh_ckpt.calibration.to_dict()
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in model.state_dict().items())


def test_labelled_defects_without_masks_need_ten_held_out_images(texture_set, tmp_path, capfd):
    """Image labels only are told apart by image AUROC, which 2 held-out good images cannot give: painted
    pseudo-defects choose instead (said once), the combination stays the sum, and the report still comes."""
    err, out, _ = _train_with_labelled(texture_set, tmp_path, capfd, masks=False)
    assert "labelled defects without masks are told apart by image AUROC only" in err
    assert {(c, on) for _, c, _, _, on in choice_lines(err)} == {
        ("sum", "48 pseudo-defects painted and 2 held-out good images")
    }
    model, _ = load_model(out / "model.pt")
    assert model.config.bank_combine == "sum"
    assert re.search(r"labelled defects: \d of 6 above the threshold", err)


def test_youden_without_labelled_defects_is_refused_before_training(texture_set, tmp_path, capfd):
    from rd2t.cli import main

    args = ["train", str(texture_set), "--out", str(tmp_path / "run"), "--epochs", "1"]
    assert main([*args, "--image-size", str(SIZE), "--device", "cpu", "--threshold-rule", "youden"]) != 0
    assert capfd.readouterr().err.strip().splitlines()[-1] == (
        "error: --threshold-rule youden: places the threshold between the held-out good images and labelled "
        "defective ones; give them with --val-defects DIR"
    )
    assert not (tmp_path / "run" / "last.pt").exists()


def test_youden_with_no_readable_labelled_defect_keeps_the_training(texture_set, tmp_path, capfd):
    """Labelled images are read after training: if none can be read, youden cannot place the threshold, and
    the trained model is kept with the good images' rule rather than lost."""
    from rd2t.cli import main

    val = tmp_path / "val"
    (val / "stain").mkdir(parents=True)
    (val / "stain/broken.png").write_bytes(b"not a png")
    args = ["train", str(texture_set), "--out", str(tmp_path / "run"), "--epochs", "1", "--device", "cpu"]
    args += ["--image-size", str(SIZE), "--batch-size", "4"]
    args += ["--val-defects", str(val), "--threshold-rule", "youden"]
    assert main(args) == 0
    err = capfd.readouterr().err
    assert "broken.png" in err and "no labelled defect could be scored; the threshold is mean+3std" in err
    _, ckpt = load_model(tmp_path / "run/model.pt")
    assert ckpt.calibration.rule == "mean+3std" and ckpt.calibration.defect_scores == []


def test_tiled_models_choose_on_the_labelled_tiles_that_hold_defects(texture_set, tmp_path, capfd):
    """A tiled model chooses on the tiles of the labelled images that hold defect pixels (the others are good
    regions of a defective part) and records the whole images' tiled scores. Image labels alone (the station's
    reviewed-defects zip) cannot say which tiles those are: painted tiles choose, and the images are scored
    whole, enough for `--threshold-rule youden`."""
    from rd2t.cli import main
    from rd2t.inference.tiling import starts

    args = ["train", str(texture_set), "--out", str(tmp_path / "run"), "--epochs", "1", "--tile", "64"]
    args += ["--stride", "48", "--batch-size", "8", "--device", "cpu", "--val-fraction", "0.2"]
    args += ["--memory-bank", "0.05"]
    unmasked = _labelled_copy(texture_set, tmp_path / "unmasked", masks=False)
    assert main([*args, "--val-defects", str(unmasked), "--threshold-rule", "youden"]) == 0
    err = capfd.readouterr().err
    assert "image labels cannot say which tiles hold the defects, so painted tiles choose" in err
    (chosen_on,) = {on for *_, on in choice_lines(err)}
    assert chosen_on.endswith("pseudo-defects painted and 20 held-out good tiles")
    model, ckpt = load_model(tmp_path / "run/model.pt")
    images = sorted((unmasked / "stain").glob("*.png"))
    whole = np.array([p.score for p in Predictor.from_model(model).predict(images)])
    cal = ckpt.calibration
    assert cal.rule == "youden" and cal.defect_scores == pytest.approx(whole.tolist(), rel=1e-4, abs=1e-5)
    good = np.asarray(cal.scores)
    j = [(whole > t).mean() - (good > t).mean() for t in [cal.threshold, *good, *whole]]
    assert j[0] == max(j)

    # labelled parts twice the training images' size: 16 tiles each, a few of which hold the stain
    val, rng, holding = tmp_path / "val", np.random.default_rng(5), 0
    grid = [(y, x) for y in starts(192, 64, 48) for x in starts(192, 64, 48)]
    for sub in ("stain", "ground_truth/stain"):
        (val / sub).mkdir(parents=True)
    for i in range(4):
        bad, mask = paint_defect(texture(rng, 192), rng)
        Image.fromarray(bad).save(val / f"stain/{i}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(val / f"ground_truth/stain/{i}_mask.png")
        holding += sum(bool(mask[y : y + 64, x : x + 64].any()) for y, x in grid)
    assert 4 <= holding < 4 * len(grid)
    assert main([*args, "--val-defects", str(val)]) == 0
    err = capfd.readouterr().err
    lines = choice_lines(err)
    assert sorted((s, c) for s, c, *_ in lines) == [(4, "max"), (4, "sum"), (8, "max"), (8, "sum")]
    assert all(on == f"{holding} labelled defect tiles and 20 held-out good tiles" for *_, on in lines)
    model, ckpt = load_model(tmp_path / "run/model.pt")
    assert f"memory bank: stride {model.config.bank_stride}, {model.config.bank_combine} chosen" in err
    whole = [p.score for p in Predictor.from_model(model).predict(sorted((val / "stain").glob("*.png")))]
    assert ckpt.calibration.defect_scores == pytest.approx(whole, rel=1e-4, abs=1e-5)
