"""The offline demo: generate an industrial-looking dataset, train, evaluate, predict, write reports."""

from __future__ import annotations

import json
import time
from pathlib import Path

from rd2t.api import Detector
from rd2t.data import mvtec
from rd2t.errors import RD2TError
from rd2t.evaluation.evaluate import metrics_markdown
from rd2t.files import atomic_write
from rd2t.model.checkpoint import Checkpoint
from rd2t.model.loading import resolve_device
from rd2t.runners.synth import make_dataset


def run_demo(
    out: Path, categories: list[str], *, epochs: int = 10, seed: int = 0, device: str = "auto"
) -> dict:
    t_start = time.time()
    out = Path(out)
    data = make_dataset(out / "data", seed=seed, categories=tuple(categories))
    print(f"dataset: {data} (synthetic, seed {seed}) in {time.time() - t_start:.0f}s", flush=True)
    summary = {}
    for cat in categories:
        t0 = time.time()
        split = mvtec(data, cat)
        run_dir = out / "runs" / cat
        done = run_dir / "model.pt"
        if done.exists() and Checkpoint.load(done).config.epochs == epochs:  # a second run: reuse it
            det = Detector.load(done, device=str(resolve_device(device)))
            print(f"{cat}: reusing the trained model {done}", flush=True)
        else:
            det = Detector("offline", epochs=epochs, seed=seed, device=device).fit(
                split, run_dir, resume=True
            )
        t_train = time.time() - t0
        res = det.evaluate(split, report=False)
        report = det.write_report(out / f"report_{cat}.html", res, f"demo/{cat}")
        flagged = predict_folder(det, data / cat / "test", out / "predictions" / cat)
        print(metrics_markdown(res, f"demo/{cat}"), flush=True)
        print(
            f"{cat}: trained in {t_train:.0f}s; report {report}; predict flagged {flagged} of "
            f"{len(split.test)} test images (overlays in {out / 'predictions' / cat})",
            flush=True,
        )
        summary[cat] = {
            "metrics": res.metrics,
            "train_seconds": t_train,
            "report": str(report),
            "checkpoint": str(done),
            "flagged": flagged,
        }
    summary["_total_seconds"] = time.time() - t_start
    atomic_write(out / "summary.json", json.dumps(summary, indent=1, default=float))
    print(f"demo finished in {summary['_total_seconds']:.0f}s; open {out}/report_*.html", flush=True)
    print(f"your images: rd2t predict {out}/runs/{categories[0]}/model.pt FOLDER --out heatmaps", flush=True)
    return summary


def predict_folder(det: Detector, folder: Path, out: Path) -> int:
    """`rd2t predict FOLDER/*/*.png --out OUT`, with the records in OUT/predictions.jsonl."""
    flagged, lines = 0, []
    for rec in det.predict_files([str(folder / "*" / "*.png")], out=out):
        if isinstance(rec, RD2TError):
            print(f"error: {rec}", flush=True)
            continue
        lines.append(json.dumps(rec.to_dict()) + "\n")
        flagged += bool(rec.defective)
    atomic_write(out / "predictions.jsonl", "".join(lines))
    return flagged
