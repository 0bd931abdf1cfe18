"""`rd2t benchmark`: every category x seed, resumable, one table with published rows labelled as such."""

import json

from rd2t.cli import main
from rd2t.runners.benchmark import table


def test_benchmark_runs_seeds_skips_finished_jobs_and_tabulates(texture_set, tmp_path, capsys):
    args = [
        "benchmark",
        "--dataset",
        "mvtec",
        "--root",
        str(texture_set.parent),
        "--categories",
        "stripes",
        "--seeds",
        "2",
        "--epochs",
        "1",
        "--image-size",
        "64",
        "--out",
        str(tmp_path),
        "--device",
        "cpu",
    ]
    assert main(args) == 0
    done = [tmp_path / "stripes" / f"seed{s}" / "metrics.json" for s in (0, 1)]
    assert all(p.exists() for p in done)
    records = json.loads((tmp_path / "results.json").read_text())
    assert {r["seed"] for r in records} == {0, 1}
    assert records[0]["metrics"] != records[1]["metrics"], "seeds must give different runs"
    mtimes = [p.stat().st_mtime_ns for p in done]
    capsys.readouterr()
    assert main(args) == 0  # a re-run after a crash: finished jobs are skipped, not retrained
    assert [p.stat().st_mtime_ns for p in done] == mtimes
    md = (tmp_path / "results.md").read_text()
    assert "| stripes | 2 |" in md and "±" in md


def test_table_labels_published_figures_as_not_measured():
    rec = {"category": "bottle", "metrics": {"image_auroc": 1.0, "pixel_auroc": 0.99, "au_pro": 0.97}}
    md = table([rec], "mvtec")
    assert "| bottle | 1 | 100.00 | 99.00 | 97.00 |" in md
    assert "not measured by rd2t" in md and "PatchCore" in md
