"""Command line: `rd2t train | predict | evaluate | benchmark | export | download | presets | demo |
serve | watch`.

Every user error is one line on stderr and a non-zero exit; `--debug` (anywhere) shows the traceback.
"""

from __future__ import annotations

import csv
import json
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from rd2t.config import PRESETS, Config
from rd2t.errors import InputError, OutputError, RD2TError

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


BACKEND_OPTION = typer.Option(
    help="auto|torch|onnx|openvino|openvino-bf16. auto: torch for a .pt; for an .onnx the runtime measured "
    "fastest on this machine (recorded once)"
)


class OverlayFormat(str, Enum):
    png = "png"
    jpg = "jpg"


def _resolve_config(
    base,
    config_file: Path | None,
    sets: list[str] | None,
    teachers: str | None = None,
    teacher_weights: str | None = None,
    **fields,
) -> Config:
    from rd2t.config import parse_value, resolve

    overrides = {k: v for k, v in fields.items() if v is not None}
    for name, text in (
        ("teachers", teachers),
        ("teacher_weights", teacher_weights),
        ("widths", fields.get("widths")),
    ):
        if text is not None:
            overrides[name] = parse_value(name, text)
    return resolve(base, config_file, overrides, sets or [])


def _split(data: Path, dataset: str, category: str | None, training: bool = True):
    from rd2t.api import open_split

    return open_split(data, dataset, category, training)


ConfigFile = Annotated[
    Path | None,
    typer.Option("--config", help="JSON or YAML file of config fields; options given here override it."),
]
Sets = Annotated[
    list[str] | None, typer.Option("--set", help="Any config field: --set sigma=2 (repeatable).")
]


@contextmanager
def _ctrl_c_sets_a_flag() -> Iterator[threading.Event]:
    """While scoring, the first Ctrl-C sets a flag the loop reads between images instead of raising
    KeyboardInterrupt wherever the main thread is: raised inside the writer thread's future, it can leave a
    lock held, and the exit then waits for that thread forever. A second Ctrl-C raises as usual."""
    flag = threading.Event()
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if main else signal.SIG_IGN
    if previous is signal.SIG_IGN:  # not the main thread, or Ctrl-C ignored by whoever started us
        yield flag
        return

    def first_then_raise(signum, frame) -> None:
        if flag.is_set():
            raise KeyboardInterrupt
        flag.set()

    signal.signal(signal.SIGINT, first_then_raise)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


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
    out: Annotated[Path, typer.Option(help="Run folder: last.pt (resumable), model.pt, config.json.")] = Path(
        "runs/rd2t"
    ),
    dataset: Annotated[str, typer.Option(help="auto|mvtec|btad|visa|mpdd|mvtec3d|folder")] = "auto",
    category: Annotated[str | None, typer.Option(help="Category inside a dataset root.")] = None,
    preset_name: Annotated[str, typer.Option("--preset", help="See `rd2t presets`.")] = "offline",
    config_file: ConfigFile = None,
    teachers: Annotated[str | None, typer.Option(help="One or two timm names, comma-separated.")] = None,
    teacher_weights: Annotated[str | None, typer.Option(help="Local weight files, comma-separated.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Default 200 (RD4AD).")] = None,
    image_size: Annotated[int | None, typer.Option(help="Input size, multiple of 32.")] = None,
    batch_size: Annotated[int | None, typer.Option()] = None,
    lr: Annotated[float | None, typer.Option(help="Adam learning rate.")] = None,
    val_fraction: Annotated[
        float | None, typer.Option(help="Good images held out for the threshold.")
    ] = None,
    threshold_rule: Annotated[
        str | None, typer.Option(help="mean+Kstd | quantile:Q | max | youden (with --val-defects)")
    ] = None,
    fusion: Annotated[str | None, typer.Option(help="iaff|sum")] = None,
    student: Annotated[str | None, typer.Option(help="basic|bottleneck|mbconv")] = None,
    loss: Annotated[str | None, typer.Option(help="flat|pixel")] = None,
    sigma: Annotated[float | None, typer.Option(help="Gaussian blur of the map (pixels).")] = None,
    widths: Annotated[str | None, typer.Option(help="Bottleneck/student widths, e.g. 64,128,256.")] = None,
    cache: Annotated[str | None, typer.Option(help="Teacher-feature cache: memory|disk|none")] = None,
    tile: Annotated[int | None, typer.Option(help="Tile size (px, multiple of 32) for large images.")] = None,
    stride: Annotated[int | None, typer.Option(help="Tile step in px (default 3/4 of the tile).")] = None,
    scale: Annotated[float | None, typer.Option(help="Resize factor before tiling, 0 < s <= 1.")] = None,
    memory_bank: Annotated[
        float | None,
        typer.Option(help="Patches kept for a nearest-neighbour term (share of stride-8 count), 0 = off."),
    ] = None,
    bank_weight: Annotated[
        float | None,
        typer.Option(help="That term's share of the map, 0..1; -1 = chosen on pseudo-defects."),
    ] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    device: Annotated[str | None, typer.Option(help="auto|cpu|cuda|cuda:N")] = None,
    val_defects: Annotated[
        Path | None,
        typer.Option(
            help="A few labelled defective images of this part (<type>/ folders, masks in ground_truth/): "
            "the memory bank's settings are chosen on them; never trained on."
        ),
    ] = None,
    sets: Sets = None,
    resume: Annotated[bool, typer.Option(help="Continue from OUT/last.pt.")] = False,
) -> None:
    """Train on defect-free images; holds out a share of them to calibrate the pass/fail threshold."""
    from rd2t.api import Detector
    from rd2t.files import atomic_write, check_writable
    from rd2t.model.checkpoint import Checkpoint

    base: Config | str = preset_name
    done_before = 0  # epochs the resumed checkpoint holds: none left means only the bank and threshold
    if resume and (out / "last.pt").exists():  # flags given now must agree with the checkpoint
        last = Checkpoint.load(out / "last.pt")
        base, done_before = last.config, last.epoch
        if val_defects is not None:  # they choose again what training chose on painted images
            base = base.with_bank_choices_open()
    cfg = _resolve_config(
        base,
        config_file,
        sets,
        teachers,
        teacher_weights,
        epochs=epochs,
        image_size=image_size,
        batch_size=batch_size,
        lr=lr,
        val_fraction=val_fraction,
        threshold_rule=threshold_rule,
        fusion=fusion,
        student=student,
        loss=loss,
        sigma=sigma,
        widths=widths,
        cache=cache,
        tile=tile,
        stride=stride,
        scale=scale,
        memory_bank=memory_bank,
        bank_weight=bank_weight,
        seed=seed,
        device=device,
    )
    check_writable(out)
    split = _split(data, dataset, category)  # with the layout's own validation/good, if it has one
    t0 = time.time()
    try:
        det = Detector(cfg).fit(split, out, resume=resume, val_defects=val_defects)
    except KeyboardInterrupt:  # SIGINT/SIGTERM: the loop finished its step and wrote last.pt
        typer.echo(f"interrupted: progress saved to {out / 'last.pt'}; rerun with --resume", err=True)
        raise typer.Exit(130) from None
    if det.predictor is None:  # a non-zero rank of a distributed run
        return
    atomic_write(out / "config.json", json.dumps(det.config.to_dict(), indent=1) + "\n")
    cal = det.calibration
    total = det.config.epochs
    done = f"trained {total} epochs"
    if 0 < done_before < total:  # resumed: what this call trained, not the run's total
        left = total - done_before
        done = f"trained {left} more epoch{'s' * (left != 1)} ({total} in all)"
    elif done_before >= total:
        done = "no epoch left to train; " + ("memory bank and " if det.config.memory_bank > 0 else "")
        done += "threshold made anew"
    typer.echo(f"{done} in {time.time() - t0:.0f}s -> {det.checkpoint_path}")
    typer.echo(f"threshold {cal.threshold:.4f} ({cal.rule} of {len(cal.scores)} {cal.source} scores)")


@app.command()
def predict(
    model: Annotated[Path, typer.Argument(help="model.pt checkpoint or exported .onnx")],
    paths: Annotated[list[str], typer.Argument(help="Image files, folders or globs.")],
    out: Annotated[Path | None, typer.Option(help="Folder for heat-map overlays (and masks).")] = None,
    output: Annotated[Path | None, typer.Option(help="Write results here instead of stdout.")] = None,
    fmt: Annotated[Format, typer.Option("--format")] = Format.jsonl,
    threshold: Annotated[float | None, typer.Option(help="Override the calibrated threshold.")] = None,
    masks: Annotated[bool, typer.Option(help="Also write binary defect masks (map > threshold).")] = False,
    overlay_format: Annotated[
        OverlayFormat, typer.Option(help="png: lossless; jpg: ~30x faster to write (docs/performance.md).")
    ] = OverlayFormat.png,
    backend: Annotated[str, BACKEND_OPTION] = "auto",
    device: Annotated[str, typer.Option()] = "cpu",
    batch_size: Annotated[int, typer.Option(min=1)] = 8,
    threads: Annotated[int | None, typer.Option(min=1, help="CPU threads for the model.")] = None,
) -> None:
    """Score images. Exit code: 0 all pass, 1 some defective, 2 some input could not be read.

    Results are written as each image is scored, so an interruption or a late failure loses nothing.
    """
    from rd2t.api import Detector
    from rd2t.files import check_writable
    from rd2t.inference.predictor import check_threshold

    check_threshold(threshold)
    if output is not None:
        check_writable(output.parent if str(output.parent) else Path("."))
    if out is not None:
        check_writable(out)
    det = Detector.load(model, device=device, backend=backend, threads=threads)
    try:
        stream = open(output, "w", newline="") if output else sys.stdout  # noqa: SIM115
    except OSError as e:
        raise OutputError(f"{output}: cannot write ({e.strerror or type(e).__name__})") from None
    writer = csv.writer(stream) if fmt == Format.csv else None
    if writer:
        writer.writerow(["path", "score", "defective", "threshold", "overlay", "mask"])
    n_ok = n_bad = n_err = 0
    interrupted = "interrupted after {} scored images: their results are above, their files complete"
    try:
        with _ctrl_c_sets_a_flag() as ctrl_c:
            records = det.predict_files(
                paths,
                out=out,
                masks=masks,
                threshold=threshold,
                batch_size=batch_size,
                overlay_format=overlay_format.value,
            )
            for rec in records:
                if isinstance(rec, RD2TError):
                    n_err += 1
                    typer.echo(f"error: {rec}", err=True)
                else:
                    n_ok += 1
                    n_bad += bool(rec.defective)
                    row = rec.to_dict()
                    if writer:
                        writer.writerow(row.values())
                    else:
                        stream.write(json.dumps(row) + "\n")
                    stream.flush()
                if ctrl_c.is_set():
                    records.close()  # waits for the pictures being written: every file on disk is whole
                    typer.echo(interrupted.format(n_ok), err=True)
                    raise typer.Exit(130)
    except KeyboardInterrupt:  # a second Ctrl-C: out at once
        typer.echo(interrupted.format(n_ok), err=True)
        raise typer.Exit(130) from None
    except OSError as e:  # writing the results file or stdout (full disk, closed pipe); overlays: OutputError
        raise OutputError(f"{output or 'stdout'}: cannot write ({e.strerror or type(e).__name__})") from None
    finally:
        if output:
            stream.close()
    typer.echo(f"{n_ok} scored, {n_bad} defective, {n_err} unreadable", err=True)
    if n_err:
        raise typer.Exit(EXIT_ERROR)
    if n_bad:
        raise typer.Exit(EXIT_DEFECT)


@app.command()
def evaluate(
    checkpoint: Annotated[Path, typer.Option(help="model.pt or an exported .onnx")],
    data: Annotated[Path, typer.Option(help="Dataset root, or a folder with test/ (train/ may be absent)")],
    dataset: Annotated[str, typer.Option()] = "auto",
    category: Annotated[str | None, typer.Option()] = None,
    out: Annotated[Path, typer.Option(help="Writes metrics.json, metrics.md and report.html here.")] = Path(
        "runs/eval"
    ),
    report: Annotated[bool, typer.Option(help="Write the HTML report.")] = True,
    backend: Annotated[str, BACKEND_OPTION] = "auto",
    device: Annotated[str, typer.Option()] = "cpu",
) -> None:
    """Metrics at the images' original resolution, per defect type; JSON, Markdown and an HTML report."""
    from rd2t.api import Detector
    from rd2t.evaluation.evaluate import metrics_markdown
    from rd2t.files import check_writable

    check_writable(out)
    det = Detector.load(checkpoint, device=device, backend=backend)
    split = _split(data, dataset, category, training=False)  # scored only: train/ may be absent
    res = det.evaluate(split, out=out, report=report)
    typer.echo(metrics_markdown(res, split.name))
    if res.report_path:
        typer.echo(f"report: {res.report_path}")


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
    config_file: ConfigFile = None,
    sets: Sets = None,
) -> None:
    """Train + evaluate every category over seeds (resumable); per-category table with mean ± std."""
    from rd2t.data import DATASETS
    from rd2t.runners.benchmark import benchmark as run_bench
    from rd2t.runners.benchmark import table, write_outputs

    if dataset not in DATASETS:
        raise InputError(f"unknown dataset {dataset!r}; one of {', '.join(DATASETS)}")
    if not root.is_dir():
        raise InputError(f"{root}: no such folder")
    cats = [c.strip() for c in categories.split(",")] if categories else DATASETS[dataset]
    cfg = _resolve_config(preset_name, config_file, sets, epochs=epochs, image_size=image_size, device=device)
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
    from rd2t.api import Detector

    if fmt != "onnx":
        raise InputError(f"--format {fmt}: only onnx is supported")
    det = Detector.load(checkpoint)
    path = det.export(out, opset=opset)
    typer.echo(f"exported {path}")
    _report_backend_speed(det, path)


def _report_backend_speed(det, onnx_path: Path) -> None:
    """Measure the backends on this machine once, at export, and record what `--backend auto` will use."""
    import torch

    from rd2t.inference.backends import choose_onnx_runtime, median_ms

    predictor = det._require()
    size = predictor.image_size
    torch_ms = median_ms(predictor.backend, torch.zeros(1, 3, size, size, dtype=torch.uint8))
    record = choose_onnx_runtime(onnx_path, remeasure=True)
    speeds = [f"torch (.pt) {torch_ms:.1f} ms"] + [f"{k} {v:.1f} ms" for k, v in record["b1_ms"].items()]
    speeds = ", ".join(speeds)
    typer.echo(f"batch-1 speed here: {speeds}; --backend auto runs the .onnx with {record['chosen']}")


@app.command()
def download(
    name: Annotated[str, typer.Argument(help="mvtec|mvtec_ad2|btad|visa")],
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
    from rd2t.runners.demo import run_demo

    run_demo(out, [c.strip() for c in categories.split(",")], epochs=epochs, seed=seed, device=device)


KEEP_DAYS_OPTION = typer.Option(
    help="Remove the image files of unreviewed inspections older than this (rows stay). Default: keep all."
)
MIN_FREE_OPTION = typer.Option(
    help="While the images disk has less free space than this, remove the oldest unreviewed ones' images."
)


@app.command()
def serve(
    model: Annotated[Path, typer.Argument(help="model.pt checkpoint or exported .onnx")],
    host: Annotated[str, typer.Option(help="Listen address (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 8000,
    db: Annotated[str | None, typer.Option(help="Database URL; default SQLite in --images.")] = None,
    images: Annotated[Path, typer.Option(help="Originals, overlays, thumbnails.")] = Path("rd2t-station"),
    mqtt: Annotated[str | None, typer.Option(help="mqtt://host:1883/topic for each verdict.")] = None,
    token: Annotated[str | None, typer.Option(help="Needed by /v1 and the page; env RD2T_TOKEN.")] = None,
    backend: Annotated[str, BACKEND_OPTION] = "auto",
    threads: Annotated[int | None, typer.Option(min=1, help="CPU threads of the model.")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Images scored at once.")] = 2,
    queue: Annotated[int, typer.Option(min=0, help="Requests waiting before 503.")] = 16,
    max_upload_mb: Annotated[float, typer.Option(help="Largest request body.")] = 50.0,
    max_pixels: Annotated[int, typer.Option(help="Largest width x height.")] = 40_000_000,
    overlay: Annotated[str, typer.Option(help="lazy: drawn when first viewed; eager: per verdict.")] = "lazy",
    keep_images_days: Annotated[float | None, KEEP_DAYS_OPTION] = None,
    min_free_gb: Annotated[float | None, MIN_FREE_OPTION] = None,
) -> None:
    """The inspection station: HTTP API, results database, MQTT and the review page (docs/serving.md)."""
    from rd2t.service.app import serve as run
    from rd2t.service.settings import StationSettings

    run(StationSettings(model, host, port, db, images, mqtt, token, backend, threads, workers, queue,
                        max_upload_mb, max_pixels, overlay, keep_images_days, min_free_gb))  # fmt: skip


@app.command()
def watch(
    in_dir: Annotated[Path, typer.Argument(help="Folder the camera writes images into.")],
    model: Annotated[Path, typer.Argument(help="model.pt checkpoint or exported .onnx")],
    db: Annotated[str | None, typer.Option(help="Database URL; default SQLite in --images.")] = None,
    images: Annotated[Path, typer.Option(help="Originals, overlays, thumbnails.")] = Path("rd2t-station"),
    mqtt: Annotated[str | None, typer.Option(help="mqtt://host:1883/topic for each verdict.")] = None,
    done_dir: Annotated[Path | None, typer.Option(help="Move handled files here (default: leave).")] = None,
    interval: Annotated[float, typer.Option(min=0.05, help="Seconds between scans.")] = 1.0,
    backend: Annotated[str, BACKEND_OPTION] = "auto",
    threads: Annotated[int | None, typer.Option(min=1, help="CPU threads of the model.")] = None,
    overlay: Annotated[str, typer.Option(help="lazy: drawn when first viewed; eager: per verdict.")] = "lazy",
    keep_images_days: Annotated[float | None, KEEP_DAYS_OPTION] = None,
    min_free_gb: Annotated[float | None, MIN_FREE_OPTION] = None,
) -> None:
    """Inspect each new image in a folder once, recorded like an HTTP inspection."""
    from rd2t.service.settings import StationSettings
    from rd2t.service.watch import watch as run

    settings = StationSettings(
        model, db=db, images=images, mqtt=mqtt, backend=backend, threads=threads, overlay=overlay,
        keep_images_days=keep_images_days, min_free_gb=min_free_gb,
    )  # fmt: skip
    run(settings, in_dir, done_dir, interval)


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
    except KeyboardInterrupt:  # `train` and `predict` say what they kept; elsewhere nothing was half-written
        typer.echo("interrupted", err=True)
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
        if isinstance(e, MemoryError):  # a resource limit, not a bug: say what to change
            typer.echo("error: out of memory (large images? lower RD2T_MAX_PIXELS or --batch-size)", err=True)
            return EXIT_ERROR
        typer.echo(
            f"error: unexpected {type(e).__name__}: {e} (rerun with --debug for the traceback)", err=True
        )
        return EXIT_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
