"""ONNX export: one file whose ONNX Runtime results match torch, with its metadata and a sidecar."""

import hashlib
import json

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from rd2t import __version__
from rd2t.calibration import Calibration
from rd2t.config import preset
from rd2t.data.transforms import to_model_input, to_uint8_tensor
from rd2t.errors import InputError, RD2TError
from rd2t.inference import export as export_module
from rd2t.inference.export import export_onnx
from rd2t.inference.onnx_runtime import OnnxDetector, sidecar_path, typed_metadata
from rd2t.model.checkpoint import Checkpoint
from rd2t.model.loading import load_model
from rd2t.model.network import RD2T

SIZE = 128
ATOL = 1e-4
# Ops that only exist for training (or make inference random): none may be in an exported detector.
TRAINING_OPS = {
    "Dropout",
    "Gradient",
    "RandomNormal",
    "RandomNormalLike",
    "RandomUniform",
    "RandomUniformLike",
    "Bernoulli",
    "Multinomial",
    "SoftmaxCrossEntropyLoss",
    "NegativeLogLikelihoodLoss",
    "Adagrad",
    "Adam",
    "Momentum",
}


def _photos() -> list[np.ndarray]:
    """Real photos and textures (scikit-image's bundled CC0 images) or, without it, generated textures."""
    try:
        import skimage.data as sk

        return [sk.chelsea(), sk.coffee()[:, 100:500], sk.brick(), sk.gravel()[100:400, 50:450]]
    except ImportError:
        rng = np.random.default_rng(0)
        yy, xx = np.mgrid[0:200, 0:240].astype(np.float32)
        out = []
        for k in range(4):
            base = 0.5 + 0.3 * np.sin(xx / (3 + k) + rng.uniform(0, 6)) * np.cos(yy / (5 + 2 * k))
            img = base[..., None] * rng.uniform(0.5, 1, 3) + rng.normal(0, 0.05, (200, 240, 1))
            out.append((np.clip(img, 0, 1) * 255).astype(np.uint8))
        return out


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    """(4, 3, S, S) float32 in [0, 1], prepared exactly as rd2t prepares images for torch."""
    return to_model_input(torch.stack([to_uint8_tensor(p, SIZE) for p in _photos()])).numpy()


def _make_checkpoint(path, name: str, images: np.ndarray, **overrides) -> tuple[RD2T, float]:
    """Real offline teachers, a seeded perturbed (non-trivial) student, threshold = median torch score."""
    torch.manual_seed(0)
    model = RD2T(preset(name, image_size=SIZE, **overrides))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(0.05 * (p.std() if p.numel() > 1 else 1.0) * torch.randn(p.shape, generator=g))
    model.eval()
    with torch.no_grad():
        scores, _ = model(torch.from_numpy(images))
    threshold = float(np.median(scores.numpy()))  # between two scores (4 images): half pass, half fail
    Checkpoint(
        model.config,
        model.state_dict(),
        epoch=1,
        complete=True,
        calibration=Calibration(threshold, "mean+3std"),
    ).save(path)
    return model, threshold


@pytest.fixture(scope="module")
def exported(tmp_path_factory, images):
    """The two-teacher offline preset at 128 px: (torch model, threshold, onnx path)."""
    folder = tmp_path_factory.mktemp("export")
    model, threshold = _make_checkpoint(folder / "model.pt", "offline", images)
    path = export_onnx(folder / "model.pt", folder / "detector.onnx")
    return model, threshold, path


def _torch(model, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        s, m = model(torch.from_numpy(x))
    return s.numpy(), m.numpy()


def _assert_parity(model, detector, x, threshold):
    t_scores, t_maps = _torch(model, x)
    o_scores, o_maps = detector.predict(x)
    assert o_maps.shape == t_maps.shape == (len(x), SIZE, SIZE) and o_scores.shape == (len(x),)
    assert np.abs(o_maps - t_maps).max() <= ATOL
    assert np.abs(o_scores - t_scores).max() <= ATOL
    np.testing.assert_array_equal(o_scores > threshold, t_scores > threshold)
    return t_scores


def test_onnx_runtime_matches_torch_at_batch_1_and_3(exported, images):
    model, threshold, path = exported
    detector = OnnxDetector(path, threads=2)
    scores = np.concatenate([_assert_parity(model, detector, images[i : i + 1], threshold) for i in range(4)])
    _assert_parity(model, detector, images[1:4], threshold)  # dynamic batch: another size than traced
    # The test means something: the maps vary over the image, and decisions split around the threshold
    # with a margin far above the tolerance.
    assert (scores > threshold).sum() == 2
    assert np.abs(scores - threshold).min() > 10 * ATOL
    _, maps = detector.predict(images[:1])
    assert maps.max() - maps.min() > 100 * ATOL
    np.testing.assert_array_equal(detector.decide(scores), scores > threshold)


def test_metadata_round_trip_and_sidecar(exported):
    model, threshold, path = exported
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert meta["rd2t_version"] == __version__
    assert meta["image_size"] == str(SIZE)
    assert float(meta["threshold"]) == threshold  # exact: written with repr
    assert meta["threshold_rule"] == "mean+3std"
    assert meta["preset"] == "offline"
    assert json.loads(meta["config"]) == json.loads(json.dumps(model.config.to_dict()))
    assert "[0, 1]" in meta["input"] and "RGB" in meta["input"]

    detector = OnnxDetector(path)
    assert detector.image_size == SIZE and detector.threshold == threshold
    assert detector.metadata == meta
    assert detector.config["teachers"] == list(model.config.teachers)

    side = json.loads(sidecar_path(path).read_text())
    assert side["onnx_file"] == path.name
    assert side["image_size"] == SIZE and side["threshold"] == threshold
    assert {k: v for k, v in side.items() if k not in ("onnx_file", "sha256")} == typed_metadata(meta)
    assert side["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_graph_is_inference_only_and_takes_rgb_in_0_1(exported):
    model, threshold, path = exported
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    ops = {n.op_type for n in proto.graph.node}
    assert not ops & TRAINING_OPS
    assert {"Conv", "Resize", "Pad", "ReduceMax"} <= ops  # teachers/student, upsampling, blur, score
    for node in proto.graph.node:
        if node.op_type == "BatchNormalization":
            assert all(a.name != "training_mode" or a.i == 0 for a in node.attribute)
            assert len(node.output) == 1  # training mode would also output running statistics
        if node.op_type == "Pad" and any(a.name == "mode" for a in node.attribute):
            assert {a.s for a in node.attribute if a.name == "mode"} <= {b"reflect", b"constant"}
    # One float32 (N, 3, S, S) input; outputs (N,) and (N, S, S).
    (inp,) = proto.graph.input
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert inp.name == "images" and inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert dims == ["N", 3, SIZE, SIZE]
    out = {
        o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] for o in proto.graph.output
    }
    assert out == {"scores": ["N"], "anomaly_maps": ["N", SIZE, SIZE]}

    # The same file image through rd2t's one preprocessing step (resize to uint8, / 255) in both backends.
    img = Image.fromarray(_photos()[1]).rotate(17)
    x = (to_uint8_tensor(img, SIZE).float() / 255)[None].numpy()
    detector = OnnxDetector(path)
    t_scores, t_maps = _torch(model, x)
    o_scores, o_maps = detector.predict(x)
    assert np.abs(o_maps - t_maps).max() <= ATOL and np.abs(o_scores - t_scores).max() <= ATOL
    # The graph normalises internally: it must reject ImageNet-normalised or 0-255 input, not score it.
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        detector.predict(x * 255)
    with pytest.raises(InputError, match="divide by 255"):
        detector.predict((x * 255).astype(np.uint8))


def test_wrong_input_size_names_expected_and_got(exported, images):
    _, _, path = exported
    detector = OnnxDetector(path)
    expected = r"expected images of shape \(N, 3, 128, 128\).*got shape \(1, 3, 96, 96\)"
    with pytest.raises(InputError, match=expected):
        detector.predict(np.zeros((1, 3, 96, 96), np.float32))
    with pytest.raises(InputError, match=r"got shape \(2, 128, 128, 3\).*channels last"):
        detector.predict(images[:2].transpose(0, 2, 3, 1))
    with pytest.raises(InputError, match=r"got shape \(3, 128, 128\)"):
        detector.predict(images[0])
    scores, maps = detector.predict(images[:0])
    assert scores.shape == (0,) and maps.shape == (0, SIZE, SIZE)


def test_single_teacher_rd4ad_offline_exports_with_parity(tmp_path, images):
    model, threshold = _make_checkpoint(tmp_path / "rd4ad.pt", "rd4ad-offline", images)
    path = export_onnx(tmp_path / "rd4ad.pt", tmp_path / "rd4ad.onnx")
    detector = OnnxDetector(path, optimization="basic")
    assert detector.metadata["preset"] == "rd4ad-offline" and detector.threshold == threshold
    _assert_parity(model, detector, images[:1], threshold)
    _assert_parity(model, detector, images[:3], threshold)


def test_dice_distance_exports_with_parity(tmp_path, images):
    model, threshold = _make_checkpoint(tmp_path / "dice.pt", "rd4ad-offline", images, distance="dice")
    detector = OnnxDetector(export_onnx(tmp_path / "dice.pt", tmp_path / "dice.onnx"), optimization="basic")
    assert json.loads(detector.metadata["config"])["distance"] == "dice"
    _assert_parity(model, detector, images[:3], threshold)


def test_export_check_rejects_a_graph_that_differs_from_torch(exported, images):
    """The check every export runs: the two-teacher graph is not the single-teacher model."""
    model, _, path = exported
    other = RD2T(preset("rd4ad-offline", image_size=SIZE, pretrained=False)).eval()
    proto = onnx.load(str(path))
    assert export_module._parity(model, proto, images[:2]) <= ATOL
    with pytest.raises(RD2TError, match="differs from torch"):
        export_module._parity(other, proto, images[:2])


def test_failed_export_names_each_exporter_and_writes_nothing(exported, tmp_path, monkeypatch):
    _, _, path = exported

    def broken(*args, **kwargs):
        raise RuntimeError("unsupported operator aten::something")

    monkeypatch.setattr(export_module, "_export_torchscript", broken)
    monkeypatch.setattr(export_module, "_export_dynamo", broken)
    with pytest.raises(RD2TError, match=r"torchscript: RuntimeError: unsupported operator.*dynamo"):
        export_onnx(path.with_name("model.pt"), tmp_path / "out.onnx")
    assert not list(tmp_path.iterdir())


def test_fixed_batch_export_runs_any_batch_and_loaded_model_matches(exported, images, tmp_path):
    model, threshold, path = exported
    ckpt = path.with_name("model.pt")
    fixed = export_onnx(ckpt, tmp_path / "fixed.onnx", dynamic_batch=False)
    detector = OnnxDetector(fixed, optimization="disable")
    assert detector.fixed_batch == 1 and detector.metadata["batch"] == "1"
    _assert_parity(model, detector, images[:3], threshold)  # run one image at a time inside predict
    # And the model as `load_model` rebuilds it from the checkpoint is the one exported.
    loaded, record = load_model(ckpt)
    assert record.calibration.threshold == threshold
    np.testing.assert_allclose(_torch(loaded, images[:2])[1], _torch(model, images[:2])[1], atol=1e-6)


def test_bad_arguments_give_clear_errors(exported, tmp_path):
    _, _, path = exported
    with pytest.raises(Exception, match="optimization='fast'"):
        OnnxDetector(path, optimization="fast")
    with pytest.raises(InputError, match="not found"):
        OnnxDetector(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(InputError, match="not a loadable ONNX model"):
        OnnxDetector(tmp_path / "junk.onnx")
    with pytest.raises(InputError, match=r"\.onnx"):
        export_onnx(path.with_name("model.pt"), tmp_path / "detector.bin")
    with pytest.warns(UserWarning, match="NoSuchExecutionProvider"):
        d = OnnxDetector(path, providers=["NoSuchExecutionProvider"])
    assert d.providers == ["CPUExecutionProvider"]
