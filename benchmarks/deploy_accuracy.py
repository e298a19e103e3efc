"""Export parity and int8 accuracy, measured on all of imagenet_samples_100.

Float: Google's ``mobilenet_v1_0.25_224_1_default_1.tflite`` weights, imported with
`read_weights`, exported to .tflite and .onnx; each artifact against the PyTorch model
(max |probability difference|, top-1 agreement, top-1 against the labels).
Int8: the weights of ``mobilenet_v1_0.75_192_quant.tflite``, calibrated on
``hymenoptera/train`` (ants and bees: not ImageNet, not the evaluation images), exported
as int8 .tflite (int8 and uint8 input) and int8 .onnx, each also without the weight-rounding
bias correction, evaluated on the 100 ImageNet images.

    python benchmarks/deploy_accuracy.py      # writes benchmarks/deploy_accuracy.{json,md}
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mobilenets import EvalTransform
from mobilenets.auto import load_predictor
from mobilenets.data.datasets import open_dataset
from mobilenets.export import export_model
from mobilenets.quantize import calibration_images, load_batch
from mobilenets.utils import atomic_write, machine_id
from mobilenets.weights import build_model, read_weights

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data"


def evaluate(resolution: int) -> tuple[np.ndarray, np.ndarray]:
    ds = open_dataset(SHARED / "imagenet_samples_100")
    x = load_batch([p for p, _ in ds.samples], EvalTransform(resolution))
    return x, np.array([label + 1 for _, label in ds.samples])  # +1: index 0 is background


def row(kind: str, fmt: str, probs: np.ndarray, ref: np.ndarray, labels: np.ndarray, seconds: float) -> dict:
    return {"weights": kind, "artifact": fmt, "top1": float((probs.argmax(1) == labels).mean()),
            "float_top1": float((ref.argmax(1) == labels).mean()),
            "top1_agreement": float((probs.argmax(1) == ref.argmax(1)).mean()),
            "max_abs_prob_diff": float(np.abs(probs - ref).max()), "export_s": round(seconds, 1)}  # fmt: skip


def main() -> int:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model = build_model(read_weights(SHARED / "models" / "mobilenet_v1_0.25_224_1_default_1.tflite")).eval()
        x, labels = evaluate(224)
        with torch.inference_mode():
            ref = model(torch.from_numpy(x)).softmax(1).numpy()
        for fmt, backend in (("tflite", "litert"), ("onnx", "onnxruntime")):
            t = time.perf_counter()
            out = Path(tmp) / f"f.{fmt}"
            export_model(model, fmt, out)
            probs = load_predictor(weights=out, backend=backend).probabilities(x)
            rows.append(row("0.25_224 float", f"{fmt} float32", probs, ref, labels, time.perf_counter() - t))
            print(rows[-1], file=sys.stderr)

        model = build_model(read_weights(SHARED / "models" / "mobilenet_v1_0.75_192_quant.tflite")).eval()
        x, labels = evaluate(192)
        with torch.inference_mode():
            ref = model(torch.from_numpy(x)).softmax(1).numpy()
        calib = calibration_images(SHARED / "hymenoptera" / "train", EvalTransform(192), size=200)
        for fmt, backend, input_type, correct in (("tflite", "litert", "int8", True), ("tflite", "litert", "uint8", True),
                                                  ("tflite", "litert", "int8", False),
                                                  ("onnx", "onnxruntime", "int8", True),
                                                  ("onnx", "onnxruntime", "int8", False)):  # fmt: skip
            t = time.perf_counter()
            out = Path(tmp) / f"q_{input_type}_{correct}.{fmt}"
            export_model(model, fmt, out, calibration=calib, input_dtype=input_type, bias_correction=correct)
            probs = load_predictor(weights=out, backend=backend).probabilities(x)
            name = f"{fmt} int8" + (f", {input_type} input" if fmt == "tflite" else ", float input")
            name += "" if correct else ", no bias correction"
            rows.append(row("0.75_192_quant, calibrated on hymenoptera/train (200 images)", name, probs, ref, labels,
                            time.perf_counter() - t))  # fmt: skip
            print(rows[-1], file=sys.stderr)

    with atomic_write(HERE / "deploy_accuracy.json") as tmp_json:
        tmp_json.write_text(json.dumps({"machine": machine_id(), "rows": rows}, indent=1))
    lines = ["| weights | artifact | top-1 (artifact) | top-1 (PyTorch float) | top-1 agreement | max abs prob diff |",
             "|---|---|---:|---:|---:|---:|"]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['weights']} | {r['artifact']} | {100 * r['top1']:.0f}% | {100 * r['float_top1']:.0f}% | "
                     f"{100 * r['top1_agreement']:.0f}% | {r['max_abs_prob_diff']:.2e} |")  # fmt: skip
    with atomic_write(HERE / "deploy_accuracy.md") as tmp_md:
        tmp_md.write_text("\n".join(lines) + f"\n\nOn all 100 images of imagenet_samples_100 (one per class); {machine_id()}.\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
