"""The offline demo: generate an industrial-looking dataset, train, evaluate, predict, write reports."""

from __future__ import annotations

import json
import time
from pathlib import Path

from rd2t.config import preset
from rd2t.data import mvtec
from rd2t.evaluate import evaluate, metrics_markdown
from rd2t.synth import make_dataset
from rd2t.train import resolve_device, train


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
        result = train(cfg, [s.path for s in split.train], run_dir, resume=True)
        t_train = time.time() - t0
        res = evaluate(
            result.model,
            split,
            threshold=result.threshold["value"],
            device=resolve_device(device),
            curves=True,
        )
        report = _write_report(out / f"report_{cat}.html", res, cfg, f"demo/{cat}", result.checkpoint)
        print(metrics_markdown(res, f"demo/{cat}"), flush=True)
        print(f"{cat}: trained in {t_train:.0f}s; report {report}", flush=True)
        summary[cat] = {
            "metrics": res.metrics,
            "train_seconds": t_train,
            "report": str(report),
            "checkpoint": str(result.checkpoint),
        }
    summary["_total_seconds"] = time.time() - t_start
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
    print(f"demo finished in {summary['_total_seconds']:.0f}s; open {out}/report_*.html", flush=True)
    print(
        f"try: rd2t predict {out}/runs/{categories[0]}/model.pt {data}/{categories[0]}/test/hole "
        f"--out {out}/predictions",
        flush=True,
    )
    return summary
