"""The network: teachers, fusion, bottleneck, student, loss and anomaly map."""

import numpy as np
import pytest
import torch
from PIL import Image

from rd2t.config import PRESETS, Config, preset
from rd2t.errors import ConfigError, WeightsError
from rd2t.model.fusion import IAFF, MSCAM
from rd2t.model.network import RD2T, GaussianBlur, distance
from rd2t.model.teachers import Teacher, build_classifier

SMALL = 64  # shapes scale with the input; 64 px keeps the WideResNet presets quick on 2 cores


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_builds_and_reconstructs_every_teacher_feature(name):
    torch.manual_seed(0)
    cfg = preset(name, pretrained=False, image_size=SMALL)
    model = RD2T(cfg).eval()
    x = torch.rand(2, 3, SMALL, SMALL)
    feats = model.teacher_features(x)
    preds = model.reconstruct(feats)
    assert len(feats) == len(cfg.teachers)
    for t_feats, s_feats, teacher in zip(feats, preds, model.teachers, strict=True):
        assert [f.shape[1] for f in t_feats] == teacher.channels
        assert [f.shape[-1] for f in t_feats] == [SMALL // 4, SMALL // 8, SMALL // 16]
        assert [p.shape for p in s_feats] == [f.shape for f in t_feats]
    scores, maps = model.predict(x)
    assert scores.shape == (2,) and maps.shape == (2, SMALL, SMALL)
    assert torch.allclose(scores, maps.flatten(1).amax(1))


def test_rd4ad_preset_has_rd4ad_shapes():
    model = RD2T(preset("rd4ad", pretrained=False))
    # RD4AD: OCBE embedding 2048 channels; student outputs match WRN50 layer1-3 without heads.
    assert model.ocbe.out_channels == 2048
    assert all(isinstance(h, torch.nn.Identity) for h in model.heads[0])
    assert len(model.teachers) == 1


def test_teachers_are_frozen_and_get_no_gradient():
    torch.manual_seed(0)
    model = RD2T(preset("offline", pretrained=False, image_size=SMALL))
    model.train()
    assert all(not t.training for t in model.teachers), "teachers must stay in eval mode"
    bn_before = model.teachers[0].features.state_dict()["bn1.running_mean"].clone()
    x = torch.rand(4, 3, SMALL, SMALL)
    feats = model.teacher_features(x)
    assert all(not f.requires_grad for tf in feats for f in tf)
    loss = model.loss(feats, model.reconstruct(feats))
    loss.backward()
    teacher_params = [p for t in model.teachers for p in t.parameters()]
    assert teacher_params and all(p.grad is None and not p.requires_grad for p in teacher_params)
    trainable = [m for m in (model.fusion, model.ocbe, model.student, model.heads)]
    assert all(any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters()) for m in trainable)
    # The fusion (input side) learns through the student's loss.
    assert model.fusion.fuse[2].stage2.local_att[0].weight.grad.abs().sum() > 0
    assert torch.equal(model.teachers[0].features.state_dict()["bn1.running_mean"], bn_before)


def test_iaff_matches_the_two_stage_formula_on_a_hand_built_input():
    torch.manual_seed(1)
    iaff = IAFF(channels=8, reduction=4).eval()
    for m in iaff.modules():  # non-trivial BN statistics so the check covers them
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    x = torch.arange(2 * 8 * 3 * 3, dtype=torch.float32).reshape(2, 8, 3, 3) / 50 - 1
    y = torch.cos(torch.arange(2 * 8 * 3 * 3, dtype=torch.float32)).reshape(2, 8, 3, 3)

    def mscam(m: MSCAM, z):
        local = m.local_att(z)
        pooled = z.mean(dim=(2, 3), keepdim=True)
        glob = m.global_att[1](pooled)
        return torch.sigmoid(local + glob)

    with torch.no_grad():
        w1 = mscam(iaff.stage1, x + y)
        xi = x * w1 + y * (1 - w1)
        w2 = mscam(iaff.stage2, xi)
        expected = x * w2 + y * (1 - w2)
        got = iaff(x, y)
    assert torch.allclose(got, expected, atol=1e-6)
    # The two stages have their own weights (the public port shares the global branch by mistake).
    assert iaff.stage1.global_att[1][0].weight.data_ptr() != iaff.stage2.global_att[1][0].weight.data_ptr()
    # Convex combination: the output lies between the inputs element-wise.
    lo, hi = torch.minimum(x, y), torch.maximum(x, y)
    assert bool(((got >= lo - 1e-6) & (got <= hi + 1e-6)).all())


def test_batch_of_one_works_in_eval_mode():
    model = RD2T(preset("offline", pretrained=False, image_size=SMALL)).eval()
    scores, maps = model.predict(torch.rand(1, 3, SMALL, SMALL))
    assert scores.shape == (1,) and torch.isfinite(maps).all()


def test_gaussian_blur_matches_scipy():
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(0)
    img = rng.random((1, 1, 64, 64)).astype(np.float32)
    ours = GaussianBlur(4.0)(torch.from_numpy(img))[0, 0].numpy()
    ref = gaussian_filter(img[0, 0].astype(np.float64), sigma=4, mode="mirror")
    assert np.abs(ours - ref).max() < 1e-5


def test_loss_variants_and_perfect_reconstruction_gives_zero_map():
    model = RD2T(preset("offline", pretrained=False, image_size=SMALL)).eval()
    feats = model.teacher_features(torch.rand(2, 3, SMALL, SMALL))
    assert float(model.loss(feats, feats)) == pytest.approx(0.0, abs=1e-5)
    model.config = model.config.replace(loss="pixel")
    assert float(model.loss(feats, feats)) == pytest.approx(0.0, abs=1e-5)
    amap = model.anomaly_map(feats, feats, (SMALL, SMALL))
    assert float(amap.abs().max()) < 1e-4
    flipped = [[-f for f in tf] for tf in feats]  # cosine -1 everywhere: 2 per teacher and scale
    assert float(model.anomaly_map(feats, flipped, (SMALL, SMALL)).mean()) == pytest.approx(
        2 * 2 * 3, rel=1e-3
    )


def test_dice_distance_is_cosine_where_norms_agree_and_counts_a_change_of_strength():
    """The `dice` distance (config.distance) sees what 1 - cosine cannot: a feature rebuilt in the right
    direction at the wrong strength, as a large brightness change may leave it."""
    g = torch.Generator().manual_seed(0)
    t = torch.randn(2, 16, 5, 5, generator=g)
    s = torch.randn(2, 16, 5, 5, generator=g)
    s_same_norm = s / s.norm(dim=1, keepdim=True) * t.norm(dim=1, keepdim=True)
    cosine = distance(s_same_norm, t, "cosine")
    assert torch.allclose(distance(s_same_norm, t, "dice"), cosine, atol=1e-5)
    assert float(distance(t, t, "dice").abs().max()) < 1e-6
    for strength in (0.5, 1.5, 3.0):  # same direction: cosine 0, dice (1 - a)^2 / (1 + a^2)
        d = distance(strength * t, t, "dice")
        assert float(distance(strength * t, t, "cosine").abs().max()) < 1e-5
        assert torch.allclose(d, torch.full_like(d, (1 - strength) ** 2 / (1 + strength**2)), atol=1e-5)
    model = RD2T(preset("offline", pretrained=False, image_size=SMALL, distance="dice")).eval()
    feats = model.teacher_features(torch.rand(2, 3, SMALL, SMALL))
    doubled = [[2 * f for f in tf] for tf in feats]  # 1 - 4/5 = 0.2 per teacher and scale, in loss and map
    assert float(model.loss(feats, feats)) == pytest.approx(0.0, abs=1e-5)
    assert float(model.loss(feats, doubled)) == pytest.approx(0.2 * 2 * 3, rel=1e-4)
    amap = model.anomaly_map(feats, doubled, (SMALL, SMALL))
    assert float(amap.mean()) == pytest.approx(0.2 * 2 * 3, rel=1e-3)
    with pytest.raises(ConfigError, match="distance='l1'"):
        preset("offline", distance="l1")


def test_offline_weights_are_real_imagenet_weights():
    """Free photos shipped by scikit-image (CC0): a cat and an espresso, classified by all three Lites."""
    skdata = pytest.importorskip("skimage.data")
    egyptian_cat, tabby, tiger_cat, espresso, cup = 285, 281, 282, 967, 968
    for name in ("tf_efficientnet_lite0", "tf_efficientnet_lite2"):
        model = build_classifier(name).eval()
        cfg = model.pretrained_cfg
        for photo, allowed in (("chelsea", {egyptian_cat, tabby, tiger_cat}), ("coffee", {espresso, cup})):
            img = (
                Image.fromarray(getattr(skdata, photo)())
                .convert("RGB")
                .resize(cfg["input_size"][1:], Image.BICUBIC)
            )
            x = torch.from_numpy(np.array(img)).permute(2, 0, 1).float()[None] / 255
            x = (x - torch.tensor(cfg["mean"]).view(1, 3, 1, 1)) / torch.tensor(cfg["std"]).view(1, 3, 1, 1)
            with torch.no_grad():
                probs = model(x).softmax(-1)[0]
            assert int(probs.argmax()) in allowed, (name, photo, int(probs.argmax()))
            assert float(probs.max()) > 0.5


def test_teacher_normalisation_is_the_teachers_own():
    lite = Teacher("tf_efficientnet_lite0", pretrained=False)
    wrn = Teacher("resnet18.tv_in1k", pretrained=False)
    assert torch.allclose(lite.mean.flatten(), torch.tensor([0.5, 0.5, 0.5]))  # native [-1, 1] input
    assert torch.allclose(wrn.mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))


def test_local_weights_file_loads_strictly_and_names_mismatches(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(3)
    ref = build_classifier("resnet18", pretrained=False)
    pth, st = tmp_path / "r18.pth", tmp_path / "r18.safetensors"
    torch.save(ref.state_dict(), pth)
    save_file(ref.state_dict(), str(st))
    for path in (pth, st):
        teacher = Teacher("resnet18", weights=str(path))
        assert torch.equal(
            teacher.features.state_dict()["layer1.0.conv1.weight"], ref.state_dict()["layer1.0.conv1.weight"]
        )
    broken = dict(ref.state_dict())
    broken.pop("layer2.0.conv1.weight")
    broken["extra.weight"] = torch.zeros(1)
    torch.save(broken, tmp_path / "bad.pth")
    with pytest.raises(
        WeightsError, match=r"missing keys: layer2\.0\.conv1\.weight.*unexpected keys: extra\.weight"
    ):
        Teacher("resnet18", weights=str(tmp_path / "bad.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="junk.pth: cannot read"):
        Teacher("resnet18", weights=str(tmp_path / "junk.pth"))


def test_hub_download_offline_gives_a_clear_error(monkeypatch):
    import timm

    real = timm.create_model

    def no_network(name, pretrained=False, **kw):
        if pretrained:
            raise OSError("network is unreachable")
        return real(name, pretrained=False, **kw)

    monkeypatch.setattr(timm, "create_model", no_network)
    with pytest.raises(WeightsError, match=r"wide_resnet50_2.*cannot download.*--teacher-weights"):
        build_classifier("wide_resnet50_2.tv_in1k")


def test_config_rejects_bad_values():
    from rd2t.errors import RD2TError

    with pytest.raises(RD2TError, match="fusion"):
        Config(fusion="concat")
    with pytest.raises(RD2TError, match="multiple of 32"):
        Config(image_size=100)
