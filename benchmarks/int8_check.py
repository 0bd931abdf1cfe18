"""INT8 (ONNX Runtime static QDQ) against fp32 for a trained rd2t model: speed and what it does to defects.

Not shipped in rd2t (docs/performance.md, "INT8"): calibrated on good images only, as it must be, the
activation ranges do not cover what a defect produces, so defect scores collapse. This script is the record.

    python benchmarks/int8_check.py runs/hazelnut/model.pt --good ../shared/data/hazelnut_toy/train/good \
        --test ../shared/data/hazelnut_toy/test --json docs/measured/int8_hazelnut_toy.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from rd2t.data import list_images
from rd2t.data.images import load_image
from rd2t.data.transforms import to_uint8_tensor
from rd2t.inference.export import export_onnx
from rd2t.inference.onnx_runtime import INPUT_NAME, OUTPUT_NAMES, ort_session


def batch_of(paths: list[Path], size: int) -> np.ndarray:
    return np.stack([to_uint8_tensor(load_image(p), size).numpy().astype(np.float32) / 255 for p in paths])


class Reader:  # onnxruntime.quantization CalibrationDataReader: one good image at a time
    def __init__(self, images: np.ndarray):
        self.rows = iter(images)

    def get_next(self):
        row = next(self.rows, None)
        return None if row is None else {INPUT_NAME: row[None]}


def quantize(fp32: Path, out: Path, good: np.ndarray) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    quantize_static(
        str(fp32),
        str(out),
        Reader(good),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
        op_types_to_quantize=["Conv"],  # the map's distances/blur stay fp32 (ORT's QLinearMul fails there)
    )


def median_ms(fn, runs: int) -> float:
    fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", type=Path)
    ap.add_argument("--good", type=Path, required=True, help="good training images (calibration)")
    ap.add_argument("--test", type=Path, required=True, help="test folder: good/ and defect subfolders")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(a.model, Path(tmp) / "fp32.onnx")
        import onnx

        size = int({p.key: p.value for p in onnx.load(str(fp32)).metadata_props}["image_size"])
        good = batch_of(list_images(a.good)[:64], size)
        int8 = Path(tmp) / "int8.onnx"
        t = time.perf_counter()
        quantize(fp32, int8, good)
        quantize_s = time.perf_counter() - t
        tests = sorted(p for p in a.test.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp"))
        labels = np.array([p.parent.name != "good" for p in tests])
        x = batch_of(tests, size)
        rows = {}
        for name, path in (("fp32", fp32), ("int8", int8)):
            s = ort_session(str(path), threads=a.threads)
            scores, maps = [], []
            for i in range(0, len(x), 8):
                sc, mp = s.run(list(OUTPUT_NAMES), {INPUT_NAME: x[i : i + 8]})
                scores.append(sc)
                maps.append(mp)
            calib = s.run(list(OUTPUT_NAMES), {INPUT_NAME: good[:16]})[0]
            rows[name] = {
                "scores": np.concatenate(scores),
                "maps": np.concatenate(maps),
                "calib_scores": calib,
                "b1_ms": median_ms(lambda s=s: s.run(None, {INPUT_NAME: x[:1]}), a.runs),
                "b16_img_s": 16e3
                / median_ms(lambda s=s: s.run(None, {INPUT_NAME: good[:16]}), max(2, a.runs // 4)),
            }
    f, q = rows["fp32"], rows["int8"]
    result = {
        "model": str(a.model),
        "image_size": size,
        "threads": a.threads,
        "calibration_images": len(good),
        "quantize_seconds": quantize_s,
        "load_avg_before": load_before,
        "load_avg_after": os.getloadavg(),
    }
    for name, r in rows.items():
        result[name] = {
            "b1_ms": r["b1_ms"],
            "b16_img_s": r["b16_img_s"],
            "image_auroc": float(roc_auc_score(labels, r["scores"])),
            "mean_score_good": float(r["scores"][~labels].mean()),
            "mean_score_defective": float(r["scores"][labels].mean()),
        }
    result["max_score_error_calibration_images"] = float(np.abs(q["calib_scores"] - f["calib_scores"]).max())
    result["max_map_error_test_good"] = float(np.abs(q["maps"][~labels] - f["maps"][~labels]).max())
    result["max_map_error_test_defective"] = float(np.abs(q["maps"][labels] - f["maps"][labels]).max())
    result["fp32_map_max"] = float(f["maps"].max())
    print(json.dumps(result, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
