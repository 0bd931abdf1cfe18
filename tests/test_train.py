"""Training: loss goes down, detection works end to end, checkpoints round-trip, resume is exact."""

import numpy as np
import pytest
import torch
from PIL import Image

from rd2t.config import preset
from rd2t.data import list_images
from rd2t.data.transforms import to_model_input, to_uint8_tensor
from rd2t.errors import CheckpointError, ConfigError
from rd2t.model.checkpoint import Checkpoint
from rd2t.model.loading import load_model
from rd2t.training.loop import calibrate_threshold, split_validation, train

SIZE = 96


def _tiny_checkpoint(epoch: int) -> Checkpoint:
    return Checkpoint(preset("rd4ad-offline", pretrained=False), {"w": torch.zeros(2)}, epoch=epoch)


def _cfg(**kw):
    base = dict(image_size=SIZE, batch_size=8, val_fraction=0.2, device="cpu")
    base.update(kw)
    return preset("offline", **base)


def _test_batch(root):
    paths = sorted((root / "test").rglob("*.png"))
    x = to_model_input(torch.stack([to_uint8_tensor(Image.open(p), SIZE) for p in paths]))
    labels = np.array([p.parent.name != "good" for p in paths])
    masks = []
    for p in paths:
        m = root / "ground_truth" / p.parent.name / f"{p.stem}_mask.png"
        masks.append(np.array(Image.open(m).resize((SIZE, SIZE), Image.NEAREST)) > 0 if m.exists() else None)
    return x, labels, masks


@pytest.fixture(scope="module")
def trained(texture_set, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    result = train(_cfg(epochs=8), list_images(texture_set / "train/good"), out, progress=False)
    return result, out


def test_training_lowers_the_loss(trained):
    result, _ = trained
    assert result.history[-1] < 0.5 * result.history[0]


def test_end_to_end_detects_and_localises_painted_defects(trained, texture_set):
    result, _ = trained
    x, labels, masks = _test_batch(texture_set)
    scores, maps = result.model.predict(x)
    scores = scores.numpy()
    assert scores[labels].min() > scores[~labels].max(), "every defective image must outrank every good one"
    hits = 0
    defect_masks = [m for m, lab in zip(masks, labels, strict=True) if lab]
    for amap, mask in zip(maps.numpy()[labels], defect_masks, strict=True):
        y, xx = np.unravel_index(amap.argmax(), amap.shape)
        hits += bool(mask[y, xx])
    assert hits == labels.sum(), f"map maximum inside the defect for {hits}/{labels.sum()} images"
    # The calibrated threshold (from held-out good images) passes the good and fails the defective ones.
    thr = result.calibration.threshold
    assert result.calibration.source == "validation"
    assert (scores[labels] > thr).all() and (scores[~labels] <= thr).mean() >= 0.8


def test_checkpoint_round_trip_gives_identical_scores(trained, texture_set):
    result, out = trained
    x, _, _ = _test_batch(texture_set)
    model, ckpt = load_model(out / "model.pt")
    assert ckpt.complete and ckpt.calibration.threshold == result.calibration.threshold
    assert torch.equal(model.predict(x)[1], result.model.predict(x)[1])


@pytest.mark.parametrize("feature_jitter", [0.0, 1.2])
def test_resume_after_interruption_equals_uninterrupted_run(texture_set, tmp_path, feature_jitter):
    images = list_images(texture_set / "train/good")[:12]
    cfg = _cfg(epochs=3, image_size=64, batch_size=4, feature_jitter=feature_jitter)
    full = train(cfg, images, tmp_path / "full", progress=False)
    train(cfg, images, tmp_path / "part", progress=False, stop_after=2)
    assert not Checkpoint.load(tmp_path / "part/last.pt").complete
    assert not (tmp_path / "part/model.pt").exists()
    resumed = train(cfg, images, tmp_path / "part", progress=False, resume=True)
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"
    assert full.history == resumed.history
    if feature_jitter:  # the noise is drawn per step from the seed, and it does change what is learnt
        plain = train(cfg.replace(feature_jitter=0.0), images, tmp_path / "plain", progress=False)
        assert plain.history != full.history


def test_feature_jitter_noise_is_a_fixed_share_of_each_features_norm():
    from rd2t.training.loop import jitter

    feats = [[torch.randn(4, c, 16, 16) * 3 for c in (24, 272)], [torch.rand(4, 64, 8, 8)]]
    noisy = jitter(feats, 1.2, seed=5)
    for t_feats, n_feats in zip(feats, noisy, strict=True):
        for f, n in zip(t_feats, n_feats, strict=True):
            ratio = (n - f).norm(dim=1) / f.norm(dim=1)  # per position, whatever the channel count
            assert abs(float(ratio.mean()) - 1.2) < 0.06 and n.shape == f.shape
    assert torch.equal(jitter(feats, 1.2, seed=5)[1][0], noisy[1][0])  # the same step, the same noise


def test_same_seed_same_scores_other_seed_other_scores(texture_set, tmp_path):
    images = list_images(texture_set / "train/good")[:10]
    x, _, _ = _test_batch(texture_set)
    runs = [
        train(_cfg(epochs=2, image_size=64, batch_size=4, seed=s), images, tmp_path / str(i), progress=False)
        for i, s in enumerate((0, 0, 1))
    ]
    x = torch.nn.functional.interpolate(x, size=64)
    s = [r.model.predict(x)[0] for r in runs]
    assert torch.equal(s[0], s[1]) and not torch.allclose(s[0], s[2])


def test_disk_cache_trains_like_the_memory_cache_and_no_cache_is_close(texture_set, tmp_path):
    images = list_images(texture_set / "train/good")[:10]
    runs = {
        c: train(_cfg(epochs=2, image_size=64, batch_size=4, cache=c), images, tmp_path / c, progress=False)
        for c in ("memory", "disk", "none")
    }
    assert runs["memory"].history == runs["disk"].history
    assert any((tmp_path / "disk/cache").glob("*.npy"))
    # fp16 caching is the only difference from live teacher features: tiny at first, Adam then amplifies it.
    assert runs["memory"].history[0] == pytest.approx(runs["none"].history[0], rel=5e-3)
    assert runs["memory"].history[1] == pytest.approx(runs["none"].history[1], rel=5e-2)


def test_interrupted_write_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    good = _tiny_checkpoint(epoch=1).save(tmp_path / "last.pt")

    def crash(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        _tiny_checkpoint(epoch=2).save(tmp_path / "last.pt")
    monkeypatch.undo()
    assert Checkpoint.load(good).epoch == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"], "no temp file left behind"


def test_truncated_or_foreign_checkpoint_is_a_one_line_error(tmp_path):
    path = _tiny_checkpoint(epoch=1).save(tmp_path / "m.pt")
    data = path.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pt: not a readable rd2t checkpoint"):
        Checkpoint.load(tmp_path / "cut.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"other\.pt: not an rd2t checkpoint"):
        Checkpoint.load(tmp_path / "other.pt")
    old = torch.load(path, weights_only=True)
    old["format_version"] = 0
    torch.save(old, tmp_path / "old.pt")
    with pytest.raises(CheckpointError, match=r"old\.pt: checkpoint format 0"):
        Checkpoint.load(tmp_path / "old.pt")


def test_unreadable_training_image_is_skipped_not_fatal(texture_set, tmp_path, capsys):
    images = list_images(texture_set / "train/good")[:6]
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG garbage")
    result = train(
        _cfg(epochs=1, image_size=64, batch_size=2, val_fraction=0),
        images + [bad],
        tmp_path / "r",
        progress=False,
    )
    assert "broken.png" in capsys.readouterr().err
    assert str(bad) not in Checkpoint.load(result.checkpoint).train_files


def test_threshold_rules_and_validation_split():
    scores = np.array([1.0, 2.0, 3.0, 4.0])
    assert calibrate_threshold(scores, "max") == 4.0
    assert calibrate_threshold(scores, "quantile:0.5") == 2.5
    assert calibrate_threshold(scores, "mean+3std") == pytest.approx(2.5 + 3 * np.std(scores, ddof=1))
    # youden: between the good scores and the labelled defects', where caught minus flagged shares peak
    assert calibrate_threshold(scores, "youden", [3.5, 5.0, 6.0]) == 3.25  # all caught, 1/4 flagged: 3/4
    assert calibrate_threshold(scores, "youden", [5.0, 6.0]) == 4.5  # all caught, none flagged
    assert calibrate_threshold([1.0, 4.0], "youden", [2.0, 5.0]) == 4.5  # ties 1.5 and 4.5: fewer alarms
    rng = np.random.default_rng(0)  # rounded scores: many ties, checked against every midpoint by hand
    for _ in range(200):
        good, bad = (
            rng.normal(0, 1, rng.integers(2, 30)).round(1),
            rng.normal(1, 1, rng.integers(1, 30)).round(1),
        )
        values = np.unique(np.concatenate([good, bad]))
        j = {t: (bad > t).mean() - (good > t).mean() for t in (values[:-1] + values[1:]) / 2}
        assert calibrate_threshold(good, "youden", bad) == max(t for t in j if j[t] == max(j.values()))
    with pytest.raises(ConfigError, match="youden' needs labelled defective images"):
        calibrate_threshold(scores, "youden")
    paths = [f"{i}.png" for i in range(20)]
    train_p, val_p = split_validation(paths, 0.1, seed=0)
    assert len(val_p) == 2 and not set(train_p) & set(val_p)
    assert split_validation(paths, 0.1, seed=0) == (train_p, val_p)


def test_too_few_held_out_images_warn_that_the_threshold_is_a_guess(capsys):
    from rd2t.model.network import RD2T
    from rd2t.training.loop import FEW_CALIBRATION_IMAGES, calibrate

    torch.manual_seed(0)
    model = RD2T(preset("offline", image_size=32, pretrained=False)).eval()
    images = torch.randint(0, 256, (FEW_CALIBRATION_IMAGES, 3, 32, 32), dtype=torch.uint8)
    few = calibrate(model, images[:3], "mean+3std", "validation")
    assert len(few.scores) == 3
    assert "only 3 held-out good image(s)" in capsys.readouterr().err
    enough = calibrate(model, images, "mean+3std", "validation")
    assert len(enough.scores) == FEW_CALIBRATION_IMAGES
    assert "warning" not in capsys.readouterr().err


def test_mvtec_ad2_validation_good_sets_the_threshold(texture_set, tmp_path, capsys):
    """MVTec AD 2 ships its own held-out good images: `rd2t train` calibrates on them instead of holding out
    a share of train/good (which it then trains on in full)."""
    import shutil

    from rd2t.cli import main

    base = tmp_path / "ad2" / "stripes"
    train_dir, val_dir = base / "train/good", base / "validation/good"
    shutil.copytree(texture_set / "train/good", train_dir)
    val_dir.mkdir(parents=True)
    for p in sorted(train_dir.glob("*.png"))[:4]:  # 4 of the 24 move to validation/good
        shutil.move(p, val_dir / p.name)
    shutil.copytree(texture_set / "test/good", base / "test_public/good")
    shutil.copytree(texture_set / "test/stain", base / "test_public/bad")
    gt = base / "test_public/ground_truth/bad"
    shutil.copytree(texture_set / "ground_truth/stain", gt)
    out = tmp_path / "run"
    args = ["train", str(tmp_path / "ad2"), "--dataset", "mvtec_ad2", "--category", "stripes"]
    args += ["--out", str(out)]
    args += ["--epochs", "1", "--image-size", "64", "--batch-size", "4", "--device", "cpu"]
    assert main(args) == 0
    assert "of 4 validation scores" in capsys.readouterr().out
    ckpt = Checkpoint.load(out / "model.pt")
    assert sorted(map(str, ckpt.val_files)) == sorted(str(p) for p in val_dir.glob("*.png"))
    assert sorted(map(str, ckpt.train_files)) == sorted(str(p) for p in train_dir.glob("*.png"))  # all 20
    assert len(ckpt.calibration.scores) == 4
