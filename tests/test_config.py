"""One config object: every field settable from a file or the command line, checked before any work."""

import json

import pytest

from rd2t.cli import main
from rd2t.config import Config, preset, read_config_file, resolve
from rd2t.errors import ConfigError
from rd2t.model.checkpoint import Checkpoint

TINY = ["--epochs", "1", "--image-size", "64", "--batch-size", "4", "--device", "cpu"]


def test_parts_cover_every_field_and_runtime_fields_never_conflict():
    parts = {f: Config.part_of(f) for f in Config.__dataclass_fields__}
    assert set(parts.values()) == {"model", "training", "runtime"}
    a, b = preset("offline"), preset("offline", device="cpu", cache="disk")
    assert a.conflicts(b) == []
    assert a.conflicts(preset("offline", image_size=96)) == ["image_size: 256 vs 96"]
    assert a.conflicts(preset("offline", epochs=5)) == []  # extending a run is allowed


def test_file_then_flags_then_assignments(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps({"epochs": 7, "sigma": 2.0, "widths": [32, 64, 128]}))
    (tmp_path / "c.yaml").write_text("epochs: 9\nfusion: sum\n")
    cfg = resolve("offline", tmp_path / "c.json", {"epochs": 3}, ["loss=pixel", "student_blocks=1,1,1"])
    assert (cfg.epochs, cfg.sigma, cfg.widths, cfg.loss, cfg.student_blocks) == (
        3,
        2.0,
        (32, 64, 128),
        "pixel",
        (1, 1, 1),
    )
    assert resolve("offline", tmp_path / "c.yaml").fusion == "sum"


@pytest.mark.parametrize(
    "content,expected",
    [
        ('{"epochs": 0}', "epochs=0"),
        ('{"epochs": true}', "epochs=True"),  # a JSON boolean is no count, though Python's True == 1
        ('{"scale": true}', "scale=True"),
        ('{"colour": 1}', "unknown config field(s) colour"),
        ("{not json", "not valid json"),
        ('["a"]', "expected a mapping"),
    ],
)
def test_bad_config_files_are_one_line_errors(tmp_path, content, expected):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        resolve("offline", path)


def test_read_config_file_names_a_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="nope.json: cannot read config file"):
        read_config_file(tmp_path / "nope.json")


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--threshold-rule", "banana"], "threshold rule 'banana'"),
        (["--batch-size", "0"], "batch_size=0"),
        (["--epochs", "-1"], "epochs=-1"),
        (["--val-fraction", "1.5"], "val_fraction=1.5"),
        (["--set", "sigma=-1"], "sigma=-1"),
        (["--set", "nonsense=1"], "unknown config field 'nonsense'"),
        (["--fusion", "concat"], "fusion='concat'"),
    ],
)
def test_train_refuses_bad_settings_before_reading_any_image(tmp_path, capsys, args, expected):
    rc = main(["train", str(tmp_path / "no_such_data"), "--out", str(tmp_path / "o"), *args])
    err = capsys.readouterr().err
    assert rc == 2 and expected in err and "no_such_data" not in err, err
    assert not (tmp_path / "o").exists()


def test_train_writes_resolved_config_and_resume_refuses_contradicting_flags(texture_set, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", str(texture_set), "--out", str(out), *TINY, "--set", "sigma=2"]) == 0
    written = Config.from_dict(json.loads((out / "config.json").read_text()))
    assert written == Checkpoint.load(out / "model.pt").config and written.sigma == 2.0
    capsys.readouterr()
    rc = main(["train", str(texture_set), "--out", str(out), "--resume", "--image-size", "96"])
    err = capsys.readouterr().err
    assert rc == 2 and "image_size: 64 vs 96" in err and "last.pt" in err
    # Flags that agree (or only extend the run) are fine; the checkpoint's other settings are kept.
    assert main(["train", str(texture_set), "--out", str(out), "--resume", "--epochs", "2"]) == 0
    assert "trained 1 more epoch (2 in all) in " in capsys.readouterr().out  # this call's, not the total
    resumed = Checkpoint.load(out / "model.pt")
    assert resumed.epoch == 2 and resumed.config.sigma == 2.0 and resumed.config.image_size == 64
