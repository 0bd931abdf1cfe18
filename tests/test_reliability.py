"""Nothing silently wrong: outputs that cannot mix up, wrong numbers refused, settings checked before any
work, errors that name the file, and a pixel limit (docs/reliability.md lists which test proves what)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rd2t.cli import main

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "default"}


def _run(capsys, *args):
    rc = main([str(a) for a in args])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _errors(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.startswith("error:")]


def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "rd2t", *map(str, args)]


def _solid(path: Path, size_wh: tuple[int, int], rgb: tuple[int, int, int], seed: int = 0) -> Path:
    """A noisy picture of one dominant colour (so its overlay's colour says which image it came from)."""
    rng = np.random.default_rng(seed)
    arr = np.clip(np.array(rgb, np.float32) + rng.normal(0, 12, (size_wh[1], size_wh[0], 3)), 0, 255)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(np.uint8)).save(path)
    return path


def _red_minus_blue(path: str | Path) -> float:
    a = np.asarray(Image.open(path).convert("RGB"), np.float32)
    return float((a[..., 0] - a[..., 2]).mean())


def _check_records_point_at_their_own_images(records: list[dict]) -> None:
    """Each overlay has its own image's size, and its colour: red image -> red-dominant overlay. (The
    blend weight is at most 0.5 and jet's ends are dark, so the sign of mean(R - B) survives it.)"""
    overlays = [r["overlay"] for r in records]
    assert len(set(overlays)) == len(overlays), overlays
    for r in records:
        with Image.open(r["path"]) as src, Image.open(r["overlay"]) as ov:
            assert ov.size == src.size, r
        assert np.sign(_red_minus_blue(r["overlay"])) == np.sign(_red_minus_blue(r["path"])), r


# ---- 1. outputs that cannot mix up or corrupt ---------------------------------------------------------


def test_same_names_in_two_folders_give_distinct_overlays_of_their_own_image(
    trained_cli_model, tmp_path, capsys
):
    for i, name in enumerate(("a.png", "b.png")):
        _solid(tmp_path / "dirA" / name, (64 + 8 * i, 48), (220, 30, 30), seed=i)
        _solid(tmp_path / "dirB" / name, (40, 72 + 8 * i), (30, 30, 220), seed=10 + i)
    rc, out, err = _run(
        capsys, "predict", trained_cli_model, tmp_path / "dirA", tmp_path / "dirB", "--out", tmp_path / "o"
    )
    records = [json.loads(line) for line in out.splitlines()]
    assert rc in (0, 1) and len(records) == 4, err
    _check_records_point_at_their_own_images(records)
    assert {Path(r["overlay"]).parent.name for r in records} == {"dirA", "dirB"}  # the input's relative path


def test_same_stem_with_two_extensions_keeps_both(trained_cli_model, tmp_path, capsys):
    _solid(tmp_path / "in" / "full.png", (64, 64), (220, 30, 30))
    _solid(tmp_path / "in" / "full.jpg", (48, 80), (30, 30, 220))
    rc, out, err = _run(capsys, "predict", trained_cli_model, tmp_path / "in", "--out", tmp_path / "o")
    records = [json.loads(line) for line in out.splitlines()]
    assert rc in (0, 1) and len(records) == 2, err
    _check_records_point_at_their_own_images(records)


def _many_images(folder: Path, n: int, size: int = 160) -> Path:
    for i in range(n):
        _solid(folder / f"{i:03d}.png", (size, size), (220, 30, 30) if i % 2 else (30, 30, 220), seed=i)
    return folder


def _read_lines(proc: subprocess.Popen, n: int, timeout: float = 120) -> list[str]:
    lines, t0 = [], time.time()
    while len(lines) < n and time.time() - t0 < timeout:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
    return lines


def _read_rest(proc: subprocess.Popen, timeout: float = 120) -> tuple[str, str]:
    """Everything else the process writes, through the same buffered streams `_read_lines` used:
    communicate() reads the raw pipes and loses lines a readline() already pulled into the buffer. A
    process still running after `timeout` is killed, so a hang fails the test instead of stalling it."""
    killer = threading.Timer(timeout, proc.kill)
    killer.start()
    try:
        out, err = proc.stdout.read(), proc.stderr.read()
        proc.wait()
    finally:
        killer.cancel()
    return out, err


def test_a_second_predict_on_the_same_out_folder_is_refused_and_the_first_stays_intact(
    trained_cli_model, tmp_path
):
    images = _many_images(tmp_path / "in", 12, size=64)
    out = tmp_path / "o"
    first = subprocess.Popen(
        _cli("predict", trained_cli_model, images, "--out", out, "--batch-size", "2"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    try:
        head = _read_lines(first, 1)  # the first result is out: the first process holds the folder
        assert head, first.stderr.read()
        first.send_signal(signal.SIGSTOP)  # keep it mid-run, deterministically, while the second starts
        second = subprocess.run(
            _cli("predict", trained_cli_model, images, "--out", out),
            capture_output=True,
            text=True,
            env=ENV,
            timeout=120,
        )
        first.send_signal(signal.SIGCONT)
        rest, err = _read_rest(first)
    finally:
        first.kill()
    assert second.returncode == 2 and second.stdout == ""
    (line,) = _errors(second.stderr)
    assert str(out) in line and "another rd2t predict" in line
    records = [json.loads(x) for x in head + rest.splitlines()]
    assert first.returncode in (0, 1) and len(records) == 12, err
    _check_records_point_at_their_own_images(records)


def test_ctrl_c_leaves_only_complete_files_and_the_results_so_far(trained_cli_model, tmp_path):
    images = _many_images(tmp_path / "in", 60, size=384)
    out = tmp_path / "o"
    proc = subprocess.Popen(
        _cli("predict", trained_cli_model, images, "--out", out, "--masks", "--batch-size", "2"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        # Ctrl-C as a terminal sends it: a suite started in the background (`cmd &` without job control)
        # inherits SIGINT ignored, and Python keeps it ignored, so the child would never see the signal.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        head = _read_lines(proc, 3)
        assert len(head) == 3, proc.stderr.read()
        proc.send_signal(signal.SIGINT)
        rest, err = _read_rest(proc)
    finally:
        proc.kill()
    records = [json.loads(x) for x in head + rest.splitlines()]
    assert proc.returncode == 130, err
    assert f"interrupted after {len(records)} scored images" in err and "Traceback" not in err
    assert len(records) < 60
    written = [p for p in out.rglob("*") if p.is_file() and p.name != ".rd2t-predict.lock"]
    assert not [p for p in written if not p.name.endswith(".png")], written  # no temp files left
    for p in written:
        with Image.open(p) as im:
            im.load()  # every file decodes
    for r in records:
        assert Path(r["overlay"]).is_file() and Path(r["mask"]).is_file()


# ---- 2. wrong numbers are refused, never passed -------------------------------------------------------


def test_nan_weights_are_an_error_per_image_never_a_pass(trained_cli_model, texture_set, tmp_path, capsys):
    payload = torch.load(trained_cli_model, map_location="cpu", weights_only=True)
    weights = payload["model"]
    trainable = [k for k, v in weights.items() if v.is_floating_point() and "teacher" not in k]
    weights[trainable[-1]] = torch.full_like(weights[trainable[-1]], float("nan"))
    torch.save(payload, tmp_path / "nan.pt")
    files = sorted((texture_set / "test/good").glob("*.png"))[:3]
    rc, out, err = _run(capsys, "predict", tmp_path / "nan.pt", *files)
    assert rc == 2 and out == "", out  # no record at all, certainly no pass
    lines = _errors(err)
    assert len(lines) == 3 and all("non-finite score" in ln for ln in lines)
    assert {Path(ln.split(":")[1].strip()).name for ln in lines} == {f.name for f in files}


def test_threshold_nan_is_refused(trained_cli_model, texture_set, capsys):
    rc, out, err = _run(
        capsys, "predict", trained_cli_model, texture_set / "test/good/000.png", "--threshold", "nan"
    )
    assert rc == 2 and out == ""
    (line,) = err.strip().splitlines()
    assert "threshold nan" in line


def test_unknown_backend_is_refused(trained_cli_model, texture_set, capsys):
    rc, out, err = _run(
        capsys, "predict", trained_cli_model, texture_set / "test/good/000.png", "--backend", "tensorrt"
    )
    assert rc == 2 and out == ""
    (line,) = err.strip().splitlines()
    assert "tensorrt" in line and "torch" in line and "onnx" in line


def test_pixel_types_are_converted_by_their_real_range(trained_cli_model, texture_set):
    from rd2t import Detector
    from rd2t.errors import InputError

    det = Detector.load(trained_cli_model)
    rgb = np.asarray(Image.open(texture_set / "test/stain/000.png").convert("RGB"))
    gray = rgb[..., 0]
    reference = det.predict(rgb).score
    same = [
        rgb.astype(np.float32),  # 0..255 floats
        rgb.astype(np.float64) / 255.0,  # 0..1 floats
        rgb.astype(np.uint16) * 257,  # 16-bit samples
        rgb.astype(np.int64),  # 8-bit values in a wide integer type
    ]
    for arr in same:
        assert det.predict(arr).score == pytest.approx(reference, abs=1e-5), arr.dtype
    gray_ref = det.predict(gray).score
    gray_same = [
        Image.fromarray(gray.astype(np.uint16) * 257),  # PIL I;16
        Image.fromarray(gray.astype(np.float32)),  # PIL F with 0..255 values
        Image.fromarray(gray.astype(np.float32) / 255.0),  # PIL F with 0..1 values
        Image.fromarray(gray.astype(np.int32)),  # PIL I with 8-bit values
    ]
    for im in gray_same:
        assert det.predict(im).score == pytest.approx(gray_ref, abs=1e-5), im.mode
    for bad, expected in [
        (np.full((32, 32, 3), np.nan, np.float32), "NaN or infinite"),
        (np.full((32, 32, 3), np.inf, np.float64), "NaN or infinite"),
        (np.full((32, 32), -3.0, np.float32), "outside"),
        (np.full((32, 32), 70000, np.int64), "outside"),
        (Image.fromarray(np.full((32, 32), np.nan, np.float32)), "NaN or infinite"),
        (Image.fromarray(np.full((32, 32), 1000.0, np.float32)), "outside"),
    ]:
        with pytest.raises(InputError, match=expected):
            det.predict(bad)


def test_onnx_with_flipped_bytes_is_refused(trained_cli_model, texture_set, tmp_path, capsys):
    onnx_path = tmp_path / "model.onnx"
    rc, _, err = _run(capsys, "export", trained_cli_model, "--out", onnx_path)
    assert rc == 0, err
    data = bytearray(onnx_path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 200] = bytes(b ^ 0xFF for b in data[middle : middle + 200])
    onnx_path.write_bytes(bytes(data))
    rc, out, err = _run(capsys, "predict", onnx_path, texture_set / "test/good/000.png")
    assert rc == 2 and out == ""
    (line,) = err.strip().splitlines()
    assert str(onnx_path) in line and "SHA-256" in line


# ---- 3. settings checked before any work --------------------------------------------------------------


@pytest.fixture
def no_work(monkeypatch):
    """Fails the test if an image is read for training or a model is loaded for scoring."""

    def refuse(*args, **kwargs):
        raise AssertionError("work started before the settings were checked")

    for target in ("rd2t.training.loop.load_training_images", "rd2t.inference.predictor.Predictor.open"):
        try:
            monkeypatch.setattr(target, refuse)
        except (ImportError, AttributeError):  # another layout (rd2t before 0.2): the other checks remain
            pass


@pytest.mark.parametrize(
    "option, value, named",
    [
        ("--threshold-rule", "banana", "banana"),
        ("--batch-size", "0", "batch_size"),
        ("--batch-size", "1", "batch_size"),
        ("--epochs", "-1", "epochs"),
        ("--val-fraction", "1.5", "val_fraction"),
        ("--image-size", "100", "image_size"),
    ],
)
def test_bad_training_options_fail_at_once_before_any_image_is_read(
    option, value, named, trained_cli_model, texture_set, tmp_path, capsys, no_work
):
    # no_work fails the test if an image is read or a model loaded (a time bound broke on a loaded CI)
    rc, out, err = _run(capsys, "train", texture_set, "--out", tmp_path / "run", option, value)
    assert rc == 2, (rc, err)
    (line,) = err.strip().splitlines()
    assert line.startswith("error:") and named in line
    assert not (tmp_path / "run").exists()  # nothing was started


def test_resume_with_another_image_size_names_the_conflict(
    trained_cli_model, texture_set, tmp_path, capsys, no_work
):
    run = tmp_path / "run"
    shutil.copytree(trained_cli_model.parent, run)
    before = (run / "last.pt").read_bytes()
    rc, _, err = _run(capsys, "train", texture_set, "--out", run, "--resume", "--image-size", "96")
    assert rc == 2  # no_work proves that reading last.pt is all it did
    (line,) = err.strip().splitlines()
    assert "image_size" in line and "64" in line and "96" in line
    assert (run / "last.pt").read_bytes() == before


def _unwritable(tmp_path: Path) -> Path:
    """A folder no one can create, root included: its parent is a regular file."""
    (tmp_path / "a_file").write_text("not a folder")
    return tmp_path / "a_file" / "sub"


@pytest.mark.parametrize(
    "make_args",
    [
        lambda m, d, o: ["train", d, "--out", o],
        lambda m, d, o: ["evaluate", "--checkpoint", m, "--data", d, "--out", o],
        lambda m, d, o: ["predict", m, d / "test/good", "--out", o],
        lambda m, d, o: ["predict", m, d / "test/good", "--output", o / "results.jsonl"],
    ],
    ids=["train", "evaluate", "predict-out", "predict-output"],
)
def test_unwritable_output_is_found_before_any_work(
    make_args, trained_cli_model, texture_set, tmp_path, capsys, no_work
):
    out = _unwritable(tmp_path)
    rc, stdout, err = _run(capsys, *make_args(trained_cli_model, texture_set, out))
    assert rc == 2 and stdout == "", err
    (line,) = err.strip().splitlines()
    assert "a_file" in line and "cannot write" in line


def test_an_unreadable_validation_image_is_named_and_training_goes_on(texture_set, tmp_path, capsys):
    from rd2t.training.loop import split_validation

    folder = tmp_path / "good"
    shutil.copytree(texture_set / "train/good", folder)
    for p in sorted(folder.glob("*.png"))[4:]:
        p.unlink()
    paths = sorted(folder.glob("*.png"))
    _, (val,) = split_validation(paths, 0.25, 0)
    val.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    args = ["--out", tmp_path / "run", "--epochs", "1", "--image-size", "64", "--batch-size", "2"]
    rc, out, err = _run(capsys, "train", folder, *args, "--val-fraction", "0.25", "--seed", "0")
    assert rc == 0, err
    assert val.name in err and "validation" in err  # says what failed ...
    assert "no readable training images" not in err
    assert "3 training images (no readable validation images)" in out  # ... and what the threshold used


# ---- 4. errors that name the file ---------------------------------------------------------------------


def test_checkpoint_without_config_is_one_line_naming_the_file(
    trained_cli_model, texture_set, tmp_path, capsys
):
    payload = torch.load(trained_cli_model, map_location="cpu", weights_only=True)
    del payload["config"]
    torch.save(payload, tmp_path / "noconfig.pt")
    rc, out, err = _run(capsys, "predict", tmp_path / "noconfig.pt", texture_set / "test/good/000.png")
    assert rc == 2 and out == ""
    (line,) = err.strip().splitlines()
    assert "noconfig.pt" in line and "config" in line and "unexpected" not in line


@pytest.fixture
def full_disk(tmp_path):
    """A 64 KiB tmpfs (root only); skipped where mounting is not permitted."""
    disk = tmp_path / "disk"
    disk.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {r.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_full_disk_is_one_line_naming_the_file(full_disk, trained_cli_model, texture_set, tmp_path, capsys):
    rc, _, err = _run(capsys, "export", trained_cli_model, "--out", full_disk / "model.onnx")
    assert rc == 2
    (line,) = err.strip().splitlines()
    assert "model.onnx" in line and "unexpected" not in line
    assert not [p for p in full_disk.iterdir() if p.name.endswith(".tmp")]

    good = tmp_path / "good"
    shutil.copytree(texture_set / "train/good", good, ignore=lambda d, names: sorted(names)[4:])
    args = ["--epochs", "1", "--image-size", "64", "--batch-size", "2", "--val-fraction", "0"]
    rc, _, err = _run(capsys, "train", good, "--out", full_disk / "run", *args)
    assert rc == 2
    (line,) = _errors(err)
    assert str(full_disk / "run") in line and ".pt" in line and "unexpected" not in line

    big = _many_images(tmp_path / "in", 12, size=128)
    rc, out, err = _run(capsys, "predict", trained_cli_model, big, "--out", full_disk / "ov")
    records = [json.loads(x) for x in out.splitlines()]
    assert rc == 2 and len(records) < 12  # the results written so far are on stdout
    (line,) = _errors(err)
    assert str(full_disk / "ov") in line and "_heatmap.png" in line and "unexpected" not in line
    for r in records:
        with Image.open(r["overlay"]) as im:
            im.load()


def test_torch_save_enforce_fail_becomes_an_output_error(tmp_path):
    from rd2t.errors import OutputError
    from rd2t.files import atomic_write

    def failing_save(f):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing")

    with pytest.raises(OutputError, match="model.pt: cannot write"):
        atomic_write(tmp_path / "model.pt", failing_save)
    assert list(tmp_path.iterdir()) == []


# ---- 5. size limit ------------------------------------------------------------------------------------


def test_pixel_limit_is_settable_and_one_line(trained_cli_model, tmp_path):
    small = _solid(tmp_path / "small.png", (64, 64), (90, 90, 90))  # 4096 px
    over = _solid(tmp_path / "over.png", (80, 80), (90, 90, 90))  # 6400 px: Pillow alone would warn
    far = _solid(tmp_path / "far.png", (128, 128), (90, 90, 90))  # 16384 px: Pillow alone would raise
    r = subprocess.run(
        _cli("predict", trained_cli_model, small, over, far),
        capture_output=True,
        text=True,
        env={**ENV, "RD2T_MAX_PIXELS": "5000"},
        timeout=120,
    )
    assert r.returncode == 2 and len(r.stdout.splitlines()) == 1, r.stderr
    assert "DecompressionBomb" not in r.stderr and "Traceback" not in r.stderr
    lines = _errors(r.stderr)
    assert len(lines) == 2
    for line, name in zip(lines, ("over.png", "far.png"), strict=True):
        assert name in line and "limit of 5000" in line and "RD2T_MAX_PIXELS" in line
