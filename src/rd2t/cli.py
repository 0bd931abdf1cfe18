"""Command line: `rd2t train | predict | evaluate | benchmark | export | download | presets | demo`.

Every user error is one line on stderr and a non-zero exit; `--debug` (anywhere) shows the traceback.
"""

from __future__ import annotations

import csv
import json
import sys
import time
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from rd2t.config import PRESETS, Config, preset
from rd2t.errors import InputError, RD2TError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="rd2t: two-teacher reverse distillation for visual defect detection.",
)

EXIT_DEFECT, EXIT_ERROR = 1, 2


class Format(str, Enum):
    jsonl = "jsonl"
    csv = "csv"


def _config(preset_name: str, teachers: str | None, teacher_weights: str | None, **fields) -> Config:
    overrides = {k: v for k, v in fields.items() if v is not None}
    if teachers:
        names = tuple(t.strip() for t in teachers.split(",") if t.strip())
        overrides["teachers"] = names
        overrides["teacher_weights"] = (None,) * len(names)
        overrides["preset"] = "custom"
    if teacher_weights:
        overrides["teacher_weights"] = tuple(w.strip() or None for w in teacher_weights.split(","))
    return preset(preset_name, **overrides)


def _split(data: Path, dataset: str, category: str | None):
    from rd2t.data import open_dataset

    if not data.exists():
        raise InputError(f"{data}: no such file or folder")
    if dataset == "auto":
        if category:
            return open_dataset("mvtec", data, category)
        return open_dataset("folder", data, None)
    return open_dataset(dataset, data, category)


@app.command()
def presets() -> None:
    """List the named configurations."""
    for name, (desc, cfg) in PRESETS.items():
        typer.echo(
            f"{name:14s} {desc}\n{'':14s} teachers: {', '.join(cfg.teachers)}; student: {cfg.student}; "
            f"fusion: {cfg.fusion if len(cfg.teachers) == 2 else '-'}"
        )


@app.command()
def train(
    data: Annotated[
        Path, typer.Argument(help="Folder of good images, or a dataset root (MVTec-like layout).")
    ],
    out: Annotated[Path, typer.Option(help="Run folder: last.pt (resumable) and model.pt.")] = Path(
        "runs/rd2t"
    ),
    dataset: Annotated[str, typer.Option(help="auto|mvtec|btad|visa|mpdd|mvtec3d|folder")] = "auto",
    category: Annotated[str | None, typer.Option(help="Category inside a dataset root.")] = None,
    preset_name: Annotated[str, typer.Option("--preset", help="See `rd2t presets`.")] = "offline",
    teachers: Annotated[str | None, typer.Option(help="One or two timm names, comma-separated.")] = None,
    teacher_weights: Annotated[str | None, typer.Option(help="Local weight files, comma-separated.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Default 200 (RD4AD).")] = None,
    image_size: Annotated[int | None, typer.Option(help="Input size, multiple of 32.")] = None,
    batch_size: Annotated[int | None, typer.Option()] = None,
    val_fraction: Annotated[
        float | None, typer.Option(help="Good images held out for the threshold.")
    ] = None,
    threshold_rule: Annotated[str | None, typer.Option(help="mean+Kstd | quantile:Q | max")] = None,
    cache: Annotated[str | None, typer.Option(help="Teacher-feature cache: memory|disk|none")] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    device: Annotated[str, typer.Option(help="auto|cpu|cuda|cuda:N")] = "auto",
    resume: Annotated[bool, typer.Option(help="Continue from OUT/last.pt.")] = False,
) -> None:
    """Train on defect-free images; holds out a share of them to calibrate the pass/fail threshold."""
    from rd2t.distributed import maybe_distributed_train

    cfg = _config(
        preset_name,
        teachers,
        teacher_weights,
        epochs=epochs,
        image_size=image_size,
        batch_size=batch_size,
        val_fraction=val_fraction,
        threshold_rule=threshold_rule,
        cache=cache,
        seed=seed,
        device=device,
    )
    images = [s.path for s in _split(data, dataset, category).train]
    t0 = time.time()
    result = maybe_distributed_train(cfg, images, out, resume=resume)
    if result is None:  # a non-zero rank of a distributed run
        return
    thr = result.threshold
    typer.echo(f"trained {cfg.epochs} epochs in {time.time() - t0:.0f}s -> {result.checkpoint}")
    typer.echo(f"threshold {thr['value']:.4f} ({thr['rule']} of {len(thr['scores'])} {thr['source']} scores)")


@app.command()
def predict(
    model: Annotated[Path, typer.Argument(help="model.pt checkpoint or exported .onnx")],
    paths: Annotated[list[str], typer.Argument(help="Image files, folders or globs.")],
    out: Annotated[Path | None, typer.Option(help="Folder for heat-map overlays (and masks).")] = None,
    output: Annotated[Path | None, typer.Option(help="Write results here instead of stdout.")] = None,
    fmt: Annotated[Format, typer.Option("--format")] = Format.jsonl,
    threshold: Annotated[float | None, typer.Option(help="Override the calibrated threshold.")] = None,
    masks: Annotated[bool, typer.Option(help="Also write binary defect masks (map > threshold).")] = False,
    backend: Annotated[str, typer.Option(help="auto|torch|onnx")] = "auto",
    device: Annotated[str, typer.Option()] = "cpu",
    batch_size: Annotated[int, typer.Option()] = 8,
) -> None:
    """Score images. Exit code: 0 all pass, 1 some defective, 2 some input could not be read."""
    from PIL import Image

    from rd2t.data import load_image
    from rd2t.infer import Backend, expand_paths, map_range, predict_images, save_overlay

    be = Backend.open(model, device=device, backend=backend)
    thr = be.threshold if threshold is None else threshold
    files, errors = expand_paths(paths)
    for e in errors:
        typer.echo(f"error: {e}", err=True)
    low, high = map_range(be)
    stream = open(output, "w", newline="") if output else sys.stdout  # noqa: SIM115
    writer = csv.writer(stream) if fmt == Format.csv else None
    if writer:
        writer.writerow(["path", "score", "defective", "threshold", "overlay"])
    n_bad = n_err = 0
    try:
        for p in predict_images(be, files, batch_size=batch_size, threshold=thr):
            if isinstance(p, InputError):
                n_err += 1
                typer.echo(f"error: {p}", err=True)
                continue
            n_bad += bool(p.is_defective)
            overlay_path = None
            if out:
                rel = p.path.stem
                overlay_path = save_overlay(p, load_image(p.path), out / f"{rel}_heatmap.png", low, high)
                if masks and thr is not None:
                    Image.fromarray((p.defect_mask(thr) * 255).astype("uint8")).save(out / f"{rel}_mask.png")
            rec = {
                "path": str(p.path),
                "score": round(p.score, 6),
                "defective": p.is_defective,
                "threshold": thr,
                "overlay": str(overlay_path) if overlay_path else None,
            }
            if writer:
                writer.writerow(rec.values())
            else:
                stream.write(json.dumps(rec) + "\n")
    finally:
        if output:
            stream.close()
    typer.echo(f"{len(files) - n_err} scored, {n_bad} defective, {n_err + len(errors)} unreadable", err=True)
    if n_err or errors:
        raise typer.Exit(EXIT_ERROR)
    if n_bad:
        raise typer.Exit(EXIT_DEFECT)


@app.command()
def evaluate(
    checkpoint: Annotated[Path, typer.Option(help="model.pt")],
    data: Annotated[Path, typer.Option(help="Dataset root, or a folder with train/ and test/")],
    dataset: Annotated[str, typer.Option()] = "auto",
    category: Annotated[str | None, typer.Option()] = None,
    out: Annotated[Path, typer.Option(help="Writes metrics.json, metrics.md and report.html here.")] = Path(
        "runs/eval"
    ),
    report: Annotated[bool, typer.Option(help="Write the HTML report.")] = True,
    device: Annotated[str, typer.Option()] = "cpu",
) -> None:
    """Metrics at the images' original resolution, per defect type; JSON, Markdown and an HTML report."""
    from rd2t.evaluate import evaluate as run_eval
    from rd2t.evaluate import metrics_markdown
    from rd2t.train import load_model

    model, payload = load_model(checkpoint, device)
    split = _split(data, dataset, category)
    thr = (payload.get("threshold") or {}).get("value")
    res = run_eval(model, split, threshold=thr, device=device, curves=report)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(
        json.dumps(
            {
                "dataset": split.name,
                "checkpoint": str(checkpoint),
                "metrics": res.metrics,
                "per_defect": res.per_defect,
                "threshold": thr,
                "skipped": res.skipped,
            },
            indent=1,
        )
    )
    md = metrics_markdown(res, split.name)
    (out / "metrics.md").write_text(md)
    typer.echo(md)
    if report:
        path = _write_report(out / "report.html", res, model.config, split.name, checkpoint)
        typer.echo(f"report: {path}")


def _write_report(path: Path, res, config: Config, title: str, checkpoint: Path) -> Path:
    from rd2t.data import load_mask
    from rd2t.report import ImageResult, write_report

    results = [
        ImageResult(
            s.sample.path,
            s.sample.label,
            s.sample.defect_type,
            s.score,
            s.anomaly_map,
            load_mask(s.sample.mask_path, s.original_size) if s.sample.mask_path else None,
            None if res.threshold is None else s.score > res.threshold,
        )
        for s in res.scored
    ]
    info = {
        "dataset": title,
        "preset": config.preset,
        "teachers": ", ".join(config.teachers),
        "epochs": config.epochs,
        "image size": config.image_size,
        "checkpoint": str(checkpoint),
    }
    return write_report(
        path,
        results,
        metrics=res.metrics,
        per_defect=res.per_defect,
        threshold=res.threshold,
        curves=res.curves,
        title=f"rd2t — {title}",
        info=info,
    )


@app.command()
def benchmark(
    dataset: Annotated[str, typer.Option(help="mvtec|btad|visa|mpdd|mvtec3d")],
    root: Annotated[Path, typer.Option(help="Dataset root folder.")],
    categories: Annotated[str | None, typer.Option(help="Comma-separated; default all.")] = None,
    preset_name: Annotated[str, typer.Option("--preset")] = "offline",
    seeds: Annotated[int, typer.Option()] = 3,
    epochs: Annotated[int | None, typer.Option()] = None,
    image_size: Annotated[int | None, typer.Option()] = None,
    out: Annotated[Path, typer.Option()] = Path("runs/benchmark"),
    workers: Annotated[int, typer.Option(help="Parallel processes (one category/seed each).")] = 1,
    device: Annotated[str, typer.Option()] = "auto",
) -> None:
    """Train + evaluate every category over seeds (resumable); per-category table with mean ± std."""
    from rd2t.benchmark import benchmark as run_bench
    from rd2t.benchmark import table, write_outputs
    from rd2t.data import DATASETS

    if dataset not in DATASETS:
        raise InputError(f"unknown dataset {dataset!r}; one of {', '.join(DATASETS)}")
    if not root.is_dir():
        raise InputError(f"{root}: no such folder")
    cats = [c.strip() for c in categories.split(",")] if categories else DATASETS[dataset]
    cfg = _config(preset_name, None, None, epochs=epochs, image_size=image_size, device=device)
    records = run_bench(dataset, str(root), cats, cfg, seeds, str(out), workers=workers)
    md, js = write_outputs(records, dataset, out)
    typer.echo(table(records, dataset))
    typer.echo(f"written {md} and {js}")


@app.command()
def export(
    checkpoint: Annotated[Path, typer.Argument(help="model.pt")],
    out: Annotated[Path | None, typer.Option(help="Default: beside the checkpoint, .onnx")] = None,
    fmt: Annotated[str, typer.Option("--format")] = "onnx",
    opset: Annotated[int, typer.Option()] = 17,
) -> None:
    """Export the whole inference graph (normalisation to image score) to one ONNX file."""
    from rd2t.export import export_onnx

    if fmt != "onnx":
        raise InputError(f"--format {fmt}: only onnx is supported")
    path = export_onnx(checkpoint, out or checkpoint.with_suffix(".onnx"), opset=opset)
    typer.echo(f"exported {path}")


@app.command()
def download(
    name: Annotated[str, typer.Argument(help="mvtec|btad|visa")],
    root: Annotated[Path, typer.Option(help="Where to put the dataset.")] = Path("datasets"),
) -> None:
    """Fetch a public dataset from its official address (resumable, checksummed)."""
    from rd2t.data import download as fetch

    typer.echo(f"dataset ready at {fetch(name, root)}")


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Where data, models and reports go.")] = Path("demo_out"),
    categories: Annotated[
        str, typer.Option(help="Comma-separated synthetic categories.")
    ] = "washer,brushed_metal,woven_fabric,wood",
    epochs: Annotated[int, typer.Option()] = 10,
    seed: Annotated[int, typer.Option()] = 0,
    device: Annotated[str, typer.Option()] = "auto",
) -> None:
    """Offline end-to-end demo on a generated dataset: train, evaluate, predict, HTML report."""
    from rd2t.demo import run_demo

    run_demo(out, [c.strip() for c in categories.split(",")], epochs=epochs, seed=seed, device=device)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    try:
        code = app(args=argv, prog_name="rd2t", standalone_mode=False)
        if isinstance(code, int):  # click returns typer.Exit codes in non-standalone mode
            return code
    except RD2TError as e:
        if debug:
            raise
        typer.echo(f"error: {e}", err=True)
        return EXIT_ERROR
    except KeyboardInterrupt:
        typer.echo(
            "interrupted: the last completed epoch's checkpoint is intact; rerun with --resume", err=True
        )
        return 130
    except typer.Exit as e:
        return e.exit_code
    except Exception as e:  # click usage errors
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            return EXIT_ERROR
        if isinstance(e, click.exceptions.Abort):
            return 130
        if debug:
            raise
        typer.echo(
            f"error: unexpected {type(e).__name__}: {e} (rerun with --debug for the traceback)", err=True
        )
        return EXIT_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
