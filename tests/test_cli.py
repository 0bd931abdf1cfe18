"""The tool in a user's hands: CLI commands, exit codes, bad input, and the Python API."""

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rd2t import Detector
from rd2t.cli import main

TINY = ["--epochs", "2", "--image-size", "64", "--batch-size", "4", "--device", "cpu"]


@pytest.fixture(scope="module")
def trained_cli(trained_cli_model):
    return trained_cli_model


def _run(capsys, *args):
    rc = main([str(a) for a in args])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_presets_lists_the_four_named_configs(capsys):
    rc, out, _ = _run(capsys, "presets")
    assert rc == 0 and all(n in out for n in ("offline", "paper", "rd4ad", "rd4ad-offline"))


def test_train_writes_a_model_with_a_threshold_from_held_out_good_images(trained_cli):
    from rd2t.model.checkpoint import Checkpoint

    ckpt = Checkpoint.load(trained_cli)
    assert ckpt.complete and ckpt.calibration.source == "validation"
    assert len(ckpt.val_files) >= 2 and not set(ckpt.val_files) & set(ckpt.train_files)
    assert all("/train/good/" in p for p in ckpt.train_files)  # test images never trained on


def test_predict_scores_good_files_skips_bad_ones_and_exits_2(trained_cli, texture_set, tmp_path, capsys):
    folder = tmp_path / "mixed"
    shutil.copytree(texture_set / "test/good", folder)
    (folder / "zz_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    rc, out, err = _run(
        capsys, "predict", trained_cli, folder, tmp_path / "missing.png", "--out", tmp_path / "ov"
    )
    rows = [json.loads(line) for line in out.splitlines()]
    assert rc == 2
    assert len(rows) == 6 and all(isinstance(r["score"], float) for r in rows)
    assert "zz_corrupt.png" in err and "missing.png: no such file" in err and "Traceback" not in err
    assert all((tmp_path / "ov" / f"{i:03d}_heatmap.png").exists() for i in range(6))


def test_predict_files_yields_each_record_in_order_once_its_pictures_are_written(
    trained_cli, texture_set, tmp_path
):
    files = sorted((texture_set / "test").rglob("*.png"))
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    files.insert(3, corrupt)
    det = Detector.load(trained_cli)
    seen = []
    for rec in det.predict_files(files, out=tmp_path / "ov", masks=True, batch_size=2, overlay_format="jpg"):
        if isinstance(rec, Exception):
            seen.append("error")
            continue
        seen.append(Path(rec.path))
        # Pictures are written in a thread, but a record only comes once its files are complete.
        with Image.open(rec.overlay) as over, Image.open(rec.path) as src:
            assert over.format == "JPEG" and over.size == src.size and rec.overlay.endswith("_heatmap.jpg")
        with Image.open(rec.mask) as m:
            assert m.format == "PNG" and m.size == src.size
    assert seen == [*files[:3], "error", *files[4:]]


def test_predict_exit_code_tells_pass_or_defective(trained_cli, texture_set, tmp_path, capsys):
    bad = sorted((texture_set / "test/stain").glob("*.png"))
    rc, out, _ = _run(capsys, "predict", trained_cli, *bad, "--threshold", "1e9")
    assert rc == 0 and all(not json.loads(r)["defective"] for r in out.splitlines())
    rc, out, _ = _run(
        capsys,
        "predict",
        trained_cli,
        *bad,
        "--threshold",
        "0",
        "--format",
        "csv",
        "--masks",
        "--out",
        tmp_path,
    )
    rows = list(csv.DictReader(io.StringIO(out)))
    assert rc == 1 and len(rows) == len(bad) and all(r["defective"] == "True" for r in rows)
    assert (tmp_path / f"{bad[0].stem}_mask.png").exists()


def test_evaluate_needs_no_training_images(trained_cli, texture_set, tmp_path, capsys):
    """A line's folder of test images, without the training images, is scored as the full layout is."""
    only_test = tmp_path / "stripes"
    only_test.mkdir()
    for sub in ("test", "ground_truth"):
        (only_test / sub).symlink_to(texture_set / sub)
    runs = {}
    evaluate = ["evaluate", "--checkpoint", trained_cli, "--no-report"]
    for name, data in (("full", texture_set), ("only_test", only_test)):
        rc, _, _ = _run(capsys, *evaluate, "--data", data, "--out", tmp_path / name)
        assert rc == 0
        runs[name] = json.loads((tmp_path / name / "metrics.json").read_text())
    assert runs["only_test"]["metrics"] == runs["full"]["metrics"]
    assert runs["only_test"]["metrics"]["pixel_auroc"] is not None


def test_predict_accepts_globs(trained_cli, texture_set, capsys):
    rc, out, _ = _run(capsys, "predict", trained_cli, str(texture_set / "test" / "*" / "00[01].png"))
    assert rc in (0, 1) and len(out.splitlines()) == 4


def test_evaluate_writes_json_markdown_and_report(trained_cli, texture_set, tmp_path, capsys):
    rc, out, _ = _run(
        capsys, "evaluate", "--checkpoint", trained_cli, "--data", texture_set, "--out", tmp_path
    )
    assert rc == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics["per_defect"]) == {"stain"}
    assert 0.0 <= metrics["metrics"]["au_pro"] <= 1.0
    assert "| all |" in (tmp_path / "metrics.md").read_text()
    # one row per test image, the score the model gives it and the verdict at the stored threshold
    rows = list(csv.DictReader((tmp_path / "scores.csv").open()))
    test = sorted((texture_set / "test").rglob("*.png"))
    assert sorted(Path(r["path"]) for r in rows) == test
    det = Detector.load(trained_cli)
    some = [rows[0], rows[-1]]
    for r, p in zip(some, det.predict([Path(r["path"]) for r in some]), strict=True):
        assert float(r["score"]) == pytest.approx(p.score, rel=1e-5)
        assert r["defective"] == str(p.score > det.threshold)
        assert r["label"] == ("0" if r["defect_type"] == "good" else "1")
    alarms = sum(r["defective"] == "True" and r["label"] == "0" for r in rows)
    assert metrics["metrics"]["false_alarms"] == alarms
    # what each threshold rule, applied to the stored held-out good scores, gives on this test set
    trade = {r["rule"]: r for r in metrics["threshold_rules"]}
    stored = trade[det.calibration.rule]
    assert stored["stored"] and sum(r["stored"] for r in trade.values()) == 1
    assert stored["threshold"] == pytest.approx(det.threshold)
    assert (stored["false_alarms"], stored["misses"]) == (alarms, metrics["metrics"]["misses"])
    top = max(det.calibration.scores)
    assert trade["max"]["threshold"] == pytest.approx(top)
    scores = np.array([float(r["score"]) for r in rows])
    bad = np.array([r["label"] == "1" for r in rows])
    assert trade["max"]["misses"] == int((scores[bad] <= top).sum())
    assert "| max |" in (tmp_path / "metrics.md").read_text()
    html = (tmp_path / "report.html").read_text()
    assert "stain" in html and "http://" not in html


@pytest.mark.parametrize(
    "make_args, expected",
    [
        (lambda d, c: ["train", d / "nowhere", "--out", d / "o"], "nowhere: no such file or folder"),
        (lambda d, c: ["train", d / "empty", "--out", d / "o"], "empty"),
        (lambda d, c: ["train", d / "notimages", "--out", d / "o"], "notimages"),
        (lambda d, c: ["train", d, "--dataset", "mvtec", "--category", "bottle", "--out", d / "o"], "bottle"),
        (lambda d, c: ["predict", d / "cut.pt", d], "cut.pt: not a readable rd2t checkpoint"),
        (lambda d, c: ["predict", c, d / "empty"], "empty: folder holds no images"),
        (
            lambda d, c: ["evaluate", "--checkpoint", d / "nope.pt", "--data", d],
            "nope.pt: checkpoint not found",
        ),
        (lambda d, c: ["train", d, "--preset", "nonsense", "--out", d / "o"], "unknown preset 'nonsense'"),
        (
            lambda d, c: ["benchmark", "--dataset", "mvtec", "--root", d / "nowhere"],
            "nowhere: no such folder",
        ),
        (lambda d, c: ["serve", c, "--keep-images-days", "0"], "--keep-images-days 0: must be positive"),
        (lambda d, c: ["watch", d, c, "--min-free-gb", "-5"], "--min-free-gb -5: must be positive"),
        (
            lambda d, c: ["watch", d, c, "--overlay", "sometimes"],
            "--overlay sometimes: expected eager or lazy",
        ),
    ],
)
def test_bad_input_is_one_line_naming_what_and_where(make_args, expected, trained_cli, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notimages").mkdir()
    (tmp_path / "notimages" / "readme.txt").write_text("hello")
    data = trained_cli.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 3])
    rc, _, err = _run(capsys, *make_args(tmp_path, trained_cli))
    assert rc == 2
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert lines and expected in lines[0], err
    assert "Traceback" not in err


def test_debug_flag_shows_the_traceback(tmp_path):
    from rd2t.errors import RD2TError

    with pytest.raises(RD2TError):
        main(["predict", str(tmp_path / "x.pt"), str(tmp_path), "--debug"])


def test_detector_api_fit_predict_save_load_in_memory(texture_set, tmp_path):
    det = Detector("offline", epochs=2, image_size=64, batch_size=4, device="cpu")
    det.fit(texture_set / "train/good", out_dir=tmp_path / "run", progress=False)
    path = texture_set / "test/stain/000.png"
    arr = np.array(Image.open(path).convert("RGB"))
    p_path, p_pil, p_arr = det.predict(path), det.predict(Image.open(path)), det.predict(arr)
    assert p_path.score == pytest.approx(p_pil.score) == pytest.approx(p_arr.score)
    assert p_arr.anomaly_map.shape == arr.shape[:2]  # map at the image's own size
    batch = det.predict(np.stack([arr, arr]))
    assert len(batch) == 2 and batch[0].score == pytest.approx(p_arr.score)
    det.threshold = p_arr.score - 1e-3
    assert det.predict(arr).is_defective
    det.save(tmp_path / "copy.pt")
    loaded = Detector.load(tmp_path / "copy.pt")
    assert loaded.threshold == pytest.approx(det.threshold)
    assert loaded.predict(arr).score == pytest.approx(p_arr.score, rel=1e-6)  # float32 rounding


def test_export_then_predict_with_onnx_runtime_agrees(trained_cli, texture_set, tmp_path, capsys):
    onnx_path = tmp_path / "model.onnx"
    rc, _, _ = _run(capsys, "export", trained_cli, "--out", onnx_path)
    assert rc == 0 and onnx_path.exists() and (tmp_path / "model.json").exists()
    files = sorted((texture_set / "test").rglob("*.png"))[:8]
    rc_t, out_t, _ = _run(capsys, "predict", trained_cli, *files)
    rc_o, out_o, _ = _run(capsys, "predict", onnx_path, *files, "--backend", "onnx")
    torch_rows = [json.loads(line) for line in out_t.splitlines()]
    onnx_rows = [json.loads(line) for line in out_o.splitlines()]
    assert rc_t == rc_o and len(onnx_rows) == len(files)
    for a, b in zip(torch_rows, onnx_rows, strict=True):
        assert a["path"] == b["path"] and a["defective"] == b["defective"]
        assert abs(a["score"] - b["score"]) < 1e-4
    # The deployed file evaluates like its checkpoint; `Detector.load` of the .onnx knows the true config.
    metrics = {}
    for name, model in (("pt", trained_cli), ("onnx", onnx_path)):
        rc, _, _ = _run(
            capsys,
            "evaluate",
            "--checkpoint",
            model,
            "--data",
            texture_set,
            "--out",
            tmp_path / name,
            "--no-report",
        )
        assert rc == 0
        metrics[name] = json.loads((tmp_path / name / "metrics.json").read_text())["metrics"]
    assert metrics["pt"].keys() == metrics["onnx"].keys() and "au_pro" in metrics["pt"]
    for k, v in metrics["pt"].items():
        assert metrics["onnx"][k] == pytest.approx(v, abs=1e-3), k
    assert Detector.load(onnx_path).config == Detector.load(trained_cli).config
    assert Detector.load(onnx_path).config.image_size == 64  # not the default Config's 256


def test_demo_generates_trains_evaluates_predicts_and_reports(tmp_path, capsys):
    rc = main(["demo", "--out", str(tmp_path), "--categories", "washer", "--epochs", "1", "--device", "cpu"])
    assert rc == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert 0.0 <= summary["washer"]["metrics"]["image_auroc"] <= 1.0
    assert (tmp_path / "report_washer.html").stat().st_size > 10_000
    lines = (tmp_path / "predictions/washer/predictions.jsonl").read_text().splitlines()
    preds = [json.loads(x) for x in lines]
    assert len(preds) == 30 and all(Path(p["overlay"]).exists() for p in preds)
    capsys.readouterr()
    assert main(["demo", "--out", str(tmp_path), "--categories", "washer", "--epochs", "1"]) == 0
    assert "washer: reusing the trained model" in capsys.readouterr().out, "a second run reuses the model"
