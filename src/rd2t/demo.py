"""The offline demo: generate an industrial-looking dataset, train, evaluate, predict, write reports."""

from __future__ import annotations

import json
import time
from pathlib import Path

from rd2t import checkpoint
from rd2t.config import preset
from rd2t.data import load_image, mvtec
from rd2t.evaluate import evaluate, metrics_markdown
from rd2t.infer import Backend, expand_paths, map_range, predict_images, save_overlay
from rd2t.synth import make_dataset
from rd2t.train import load_model, resolve_device, train


def run_demo(
    out: Path, categories: list[str], *, epochs: int = 10, seed: int = 0, device: str = "auto"
) -> dict:
    from rd2t.cli import _write_report

    t_start = time.time()
    out = Path(out)
    data = make_dataset(out / "data", seed=seed, categories=tuple(categories))
    print(f"dataset: {data} (synthetic, seed {seed}) in {time.time() - t_start:.0f}s", flush=True)
    summary = {}
    for cat in categories:
        t0 = time.time()
        split = mvtec(data, cat)
        cfg = preset("offline", epochs=epochs, seed=seed, device=device)
        run_dir = out / "runs" / cat
        done = run_dir / "model.pt"
        if done.exists() and checkpoint.load(done)["config"]["epochs"] == epochs:  # a second run: reuse it
            model, payload = load_model(done, str(resolve_device(device)))
            print(f"{cat}: reusing the trained model {done}", flush=True)
        else:
            result = train(cfg, [s.path for s in split.train], run_dir, resume=True)
            model, payload = result.model, {"threshold": result.threshold}
        t_train = time.time() - t0
        threshold = payload["threshold"]["value"]
        res = evaluate(model, split, threshold=threshold, device=resolve_device(device), curves=True)
        report = _write_report(out / f"report_{cat}.html", res, cfg, f"demo/{cat}", done)
        flagged = predict_folder(done, data / cat / "test", out / "predictions" / cat)
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
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
    print(f"demo finished in {summary['_total_seconds']:.0f}s; open {out}/report_*.html", flush=True)
    print(f"your images: rd2t predict {out}/runs/{categories[0]}/model.pt FOLDER --out heatmaps", flush=True)
    return summary


def predict_folder(model_path: Path, folder: Path, out: Path) -> int:
    """What `rd2t predict` does for a user: score every image, write overlays and predictions.jsonl."""
    backend = Backend.open(model_path)
    low, high = map_range(backend)
    files, _ = expand_paths([str(folder / "*" / "*.png")])
    out.mkdir(parents=True, exist_ok=True)
    flagged = 0
    with open(out / "predictions.jsonl", "w") as f:
        for p in predict_images(backend, files):
            name = f"{p.path.parent.name}_{p.path.stem}.png"
            overlay = save_overlay(p, load_image(p.path), out / name, low, high)
            record = {
                "path": str(p.path),
                "score": p.score,
                "defective": p.is_defective,
                "overlay": str(overlay),
            }
            f.write(json.dumps(record) + "\n")
            flagged += bool(p.is_defective)
    return flagged
