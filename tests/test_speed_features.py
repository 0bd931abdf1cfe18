"""Deployment speed features: cheap resumable checkpoints (teachers once, throttled, written on SIGTERM)."""

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from rd2t.config import preset
from rd2t.data import list_images
from rd2t.errors import CheckpointError
from rd2t.model import checkpoint
from rd2t.model.checkpoint import Checkpoint
from rd2t.training.loop import train

EPOCHS = 4
TRAIN_ARGS = ["--epochs", str(EPOCHS), "--image-size", "64", "--batch-size", "4", "--val-fraction", "0.2"]
TRAIN_ARGS += [
    "--preset",
    "rd4ad-offline",
    "--device",
    "cpu",
    "--set",
    "checkpoint_every_s=3600",
]  # no timed write: only the signal's


def _rd2t_train(data, out, *extra) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread: bit-identical across processes
    cmd = [sys.executable, "-m", "rd2t", "train", str(data), "--out", str(out), *TRAIN_ARGS, *extra]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def interrupted_and_full(texture_set, tmp_path_factory):
    """The same run twice: once uninterrupted, once stopped by SIGTERM in its first epochs then resumed."""
    root = tmp_path_factory.mktemp("sigterm")
    data = root / "good"  # 10 images: 8 train (2 steps of 4), 2 for the threshold
    data.mkdir()
    for p in list_images(texture_set / "train/good")[:10]:
        shutil.copy(p, data)
    full = _rd2t_train(data, root / "full")
    part = _rd2t_train(data, root / "part")
    deadline = time.monotonic() + 120
    while not (root / "part/teachers.pt").exists():  # written just before the first epoch
        assert part.poll() is None, part.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "training never started"
        time.sleep(0.02)
    time.sleep(0.3)
    part.send_signal(signal.SIGTERM)
    _, err = part.communicate(timeout=120)
    stopped = Checkpoint.load(root / "part/last.pt")
    resumed = _rd2t_train(data, root / "part", "--resume")
    assert resumed.wait(timeout=300) == 0, resumed.communicate()[1][-2000:]
    assert full.wait(timeout=300) == 0, full.communicate()[1][-2000:]
    return root, part.returncode, err, stopped


def test_sigterm_writes_a_checkpoint_and_resume_gives_the_uninterrupted_weights(interrupted_and_full):
    root, returncode, err, stopped = interrupted_and_full
    assert returncode == 130, err[-2000:]
    assert "--resume" in err
    assert not stopped.complete and stopped.epoch < EPOCHS, "the signal came after the run had finished"
    a, b = Checkpoint.load(root / "full/model.pt"), Checkpoint.load(root / "part/model.pt")
    assert a.history == b.history
    assert a.weights.keys() == b.weights.keys()
    assert all(torch.equal(a.weights[k], b.weights[k]) for k in a.weights), "resumed weights differ"
    assert a.calibration.threshold == b.calibration.threshold


def test_last_pt_leaves_the_teachers_out_and_model_pt_keeps_them(interrupted_and_full, tmp_path):
    root = interrupted_and_full[0] / "full"
    raw = torch.load(root / "last.pt", map_location="cpu", weights_only=True)
    assert raw["model"] and not any(k.startswith("teachers.") for k in raw["model"])
    assert raw["optimizer"] is not None, "last.pt still resumes (Adam state)"
    model = Checkpoint.load(root / "model.pt")
    assert model.teachers_file is None and any(k.startswith("teachers.") for k in model.weights)
    last = Checkpoint.load(root / "last.pt")  # teachers.pt merged back in
    assert all(torch.equal(last.weights[k], model.weights[k]) for k in model.weights)
    # Smaller than the former every-epoch file (every weight and the Adam state) by the teachers' size.
    # (Not smaller than model.pt: Adam keeps two tensors per trainable weight; exact resume needs them.)
    last.teachers_file = None
    former = last.save(tmp_path / "former.pt").stat().st_size
    teachers = (root / "teachers.pt").stat().st_size
    assert (root / "last.pt").stat().st_size < former - 0.9 * teachers
    (root / "teachers.pt").write_bytes(b"not the teachers")
    with pytest.raises(CheckpointError, match="teachers.pt is not the teachers file"):
        Checkpoint.load(root / "last.pt")
    (root / "teachers.pt").unlink()
    with pytest.raises(CheckpointError, match="teachers.pt are missing"):
        Checkpoint.load(root / "last.pt")
    assert Checkpoint.load(root / "model.pt").complete  # model.pt alone is enough to load


def test_last_pt_is_written_at_most_every_n_seconds(texture_set, tmp_path, monkeypatch):
    written = []
    write = checkpoint.atomic_write
    monkeypatch.setattr(checkpoint, "atomic_write", lambda p, d: written.append(p.name) or write(p, d))
    cfg = preset(
        "rd4ad-offline", image_size=64, batch_size=4, epochs=3, val_fraction=0.0, device="cpu"
    ).replace(checkpoint_every_s=3600)
    train(cfg, list_images(texture_set / "train/good")[:8], tmp_path, progress=False)
    # Teachers once, no per-epoch last.pt within the hour, then the final model.pt and last.pt.
    assert written == ["teachers.pt", "model.pt", "last.pt"]
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL, "the loop's signal handlers are removed"


def test_openvino_backend_matches_onnx_runtime(trained_cli_model, texture_set, tmp_path):
    try:
        import openvino  # noqa: F401
    except ImportError:
        pytest.skip("openvino is not installed (pip install 'rd2t[openvino]'): OpenVINO backend not tested")
    import numpy as np

    from rd2t.cli import main
    from rd2t.inference.predictor import Predictor

    onnx = tmp_path / "m.onnx"
    assert main(["export", str(trained_cli_model), "--out", str(onnx)]) == 0
    ort, ov = Predictor.open(onnx, backend="onnx"), Predictor.open(onnx, backend="openvino")
    assert ov.threshold == ort.threshold and ov.info.config == ort.info.config
    files = sorted((texture_set / "test").rglob("*.png"))
    for a, b in zip(ort.predict(files, batch_size=4), ov.predict(files, batch_size=4), strict=True):
        np.testing.assert_allclose(b.model_map, a.model_map, atol=1e-4)  # f32, as ORT vs torch at export
        assert a.is_defective == b.is_defective


def _installed_runtimes() -> set[str]:
    from rd2t.inference.backends import _runtimes

    return set(_runtimes())


def test_auto_backend_runs_the_runtime_measured_fastest_here_and_measures_once(
    trained_cli_model, tmp_path, monkeypatch, capsys
):
    import json

    from rd2t.cli import main
    from rd2t.inference.backends import choice_record_path
    from rd2t.inference.predictor import Predictor

    monkeypatch.setenv("RD2T_CACHE_DIR", str(tmp_path / "cache"))
    onnx = tmp_path / "m.onnx"
    assert main(["export", str(trained_cli_model), "--out", str(onnx)]) == 0
    # Export times every installed runtime on this machine, says which auto will use, and records it.
    (record,) = json.loads(choice_record_path().read_text()).values()
    assert set(record["b1_ms"]) == _installed_runtimes() and all(v > 0 for v in record["b1_ms"].values())
    assert record["chosen"] == min(record["b1_ms"], key=record["b1_ms"].get)
    assert f"auto runs the .onnx with {record['chosen']}" in capsys.readouterr().out
    assert Predictor.open(onnx).backend.name == record["chosen"]
    assert Predictor.open(trained_cli_model).backend.name == "torch"  # a .pt: torch, nothing measured
    if len(_installed_runtimes()) < 2:
        pytest.skip("only ONNX Runtime is installed: auto has nothing to choose between (rd2t[openvino])")
    # The record is what decides: set the other runtime as the choice and auto follows it, unmeasured.
    path = choice_record_path()
    records = json.loads(path.read_text())
    (key,) = records
    other = next(r for r in record["b1_ms"] if r != record["chosen"])
    records[key]["chosen"] = other
    path.write_text(json.dumps(records))
    before = path.stat().st_mtime_ns
    assert Predictor.open(onnx).backend.name == other
    assert path.stat().st_mtime_ns == before
    # Another thread count is another measurement, recorded beside the first.
    Predictor.open(onnx, threads=1)
    assert len(json.loads(path.read_text())) == 2


def test_auto_backend_works_when_its_record_cannot_be_written(trained_cli_model, tmp_path, monkeypatch):
    if len(_installed_runtimes()) < 2:
        pytest.skip("only ONNX Runtime is installed: auto measures nothing (rd2t[openvino])")
    from rd2t.inference.export import export_onnx
    from rd2t.inference.predictor import Predictor

    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    monkeypatch.setenv("RD2T_CACHE_DIR", str(blocked / "cache"))
    onnx = export_onnx(trained_cli_model, tmp_path / "m.onnx")
    with pytest.warns(UserWarning, match="backend choice not recorded"):
        p = Predictor.open(onnx)
    assert p.backend.name in _installed_runtimes()


def test_openvino_backend_scores_correctly_from_several_threads(trained_cli_model, texture_set, tmp_path):
    """The station scores from worker threads: each must get its own image's map, as when run alone."""
    if "openvino" not in _installed_runtimes():
        pytest.skip("openvino is not installed (pip install 'rd2t[openvino]')")
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    from rd2t.inference.export import export_onnx
    from rd2t.inference.predictor import Predictor

    ov = Predictor.open(export_onnx(trained_cli_model, tmp_path / "m.onnx"), backend="openvino")
    files = sorted((texture_set / "test").rglob("*.png"))
    alone = [ov.predict_one(f).model_map for f in files]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda f: ov.predict_one(f).model_map, files * 3))
    for i, m in enumerate(together):
        np.testing.assert_array_equal(m, alone[i % len(files)])


def test_auto_backend_reads_the_model_once_and_still_refuses_a_changed_file(
    trained_cli_model, tmp_path, monkeypatch
):
    """`auto` keys its record on the file's SHA-256 and the sidecar check needs the same digest: one hash
    per load serves both, and a file changed after export is still refused on that path."""
    if len(_installed_runtimes()) < 2:
        pytest.skip("only ONNX Runtime is installed: auto hashes nothing (rd2t[openvino])")
    from rd2t import files
    from rd2t.errors import InputError
    from rd2t.inference import backends, onnx_runtime
    from rd2t.inference.export import export_onnx
    from rd2t.inference.predictor import Predictor

    monkeypatch.setenv("RD2T_CACHE_DIR", str(tmp_path / "cache"))
    onnx = export_onnx(trained_cli_model, tmp_path / "m.onnx")
    hashed = []

    def counting(path, *a, **k):
        hashed.append(path)
        return files.file_sha256(path, *a, **k)

    monkeypatch.setattr(backends, "file_sha256", counting)
    monkeypatch.setattr(onnx_runtime, "file_sha256", counting)
    for _ in range(2):  # the first load may measure (both runtimes opened), the second reads the record
        hashed.clear()
        Predictor.open(onnx)
        assert len(hashed) == 1
    data = bytearray(onnx.read_bytes())
    data[-1] ^= 1  # a flipped byte in the last initializer: still loadable, other numbers
    onnx.write_bytes(bytes(data))
    with pytest.raises(InputError, match="SHA-256 does not match"):
        Predictor.open(onnx)
