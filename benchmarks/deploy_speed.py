"""Deployment latency: our exports against Google's files, and auto / int8 against every backend.

All predictors of one thread count are timed in one interleaved loop (one call each per
round, through the same `Predictor` interface, batch 1), so load from other processes on
this shared machine hits them alike. Ratios are given two ways: median of the per-round
ratios (paired, robust to load drifting during the run) and ratio of the medians.

- ``ours_f025 / google_f025``: our float .tflite of 0.25_224 (from Google's weights) vs
  ``mobilenet_v1_0.25_224_1_default_1.tflite``, both in LiteRT;
- ``ours_q075 / google_q075``: our int8 .tflite of 0.75_192 (weights of the _quant file,
  calibrated on hymenoptera/train) vs ``mobilenet_v1_0.75_192_quant.tflite``;
- 1.0_224 (random-init weights, seed 0: there is no 1.0_224 float checkpoint on disk, and
  latency does not depend on the values): ``auto`` fp32 vs the fastest of torch,
  onnxruntime and litert; the int8 path (``auto`` over our int8 .onnx) vs auto fp32; every
  int8 engine for comparison.

    python benchmarks/deploy_speed.py [--rounds 150]    # writes benchmarks/deploy_speed.{json,md}
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

# OpenMP workers (PyTorch) must sleep, not spin, between calls, or at 2 threads they steal the
# cores of the predictor timed next; set before torch starts its thread pool.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data"
CRITERIA = {"ours_f025/google_f025": 1.05, "ours_q075/google_q075": 1.05, "auto_f10/fastest_f10": 1.1,
            "int8_path/auto_f10": 0.6}  # fmt: skip


def machine() -> dict:
    import ai_edge_litert
    import onnxruntime

    from mobilenets.runtime import machine_id

    versions = {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                "ai_edge_litert": getattr(ai_edge_litert, "__version__", "?")}  # fmt: skip
    try:
        from mobilenets.runtime import import_openvino

        versions["openvino"] = import_openvino().__version__
    except ImportError:
        pass
    return {"cpu": machine_id(), "python": platform.python_version(), "versions": versions,
            "loadavg_start": os.getloadavg()}  # fmt: skip


def build(threads: int, work: Path) -> dict:
    """name -> Predictor, everything exported under ``work`` (auto's cache included)."""
    from mobilenets.export import export_model
    from mobilenets.models.registry import create_model
    from mobilenets.quantize import calibration_images
    from mobilenets.runtime import load_predictor
    from mobilenets.weights import build_model, read_weights, save_weights

    models = SHARED / "models"
    f025, q075 = work / "ours_f025.tflite", work / "ours_q075.tflite"
    w10, q10_onnx, q10_tflite = work / "f10.safetensors", work / "q10.onnx", work / "q10.tflite"
    if not f025.exists():
        export_model(build_model(read_weights(models / "mobilenet_v1_0.25_224_1_default_1.tflite")), "tflite", f025)
        calib192 = calibration_images(SHARED / "hymenoptera" / "train", 192)
        export_model(build_model(read_weights(models / "mobilenet_v1_0.75_192_quant.tflite")), "tflite", q075,
                     calibration=calib192)  # fmt: skip
        torch.manual_seed(0)
        net = create_model("mobilenet_v1_1.0_224").eval()
        save_weights(net, w10)
        calib224 = calibration_images(SHARED / "hymenoptera" / "train", 224, size=64)
        export_model(net, "onnx", q10_onnx, calibration=calib224)
        export_model(net, "tflite", q10_tflite, calibration=calib224)
    p = {
        "google_f025": load_predictor(weights=models / "mobilenet_v1_0.25_224_1_default_1.tflite", backend="litert", threads=threads),
        "ours_f025": load_predictor(weights=f025, backend="litert", threads=threads),
        "google_q075": load_predictor(weights=models / "mobilenet_v1_0.75_192_quant.tflite", backend="litert", threads=threads),
        "ours_q075": load_predictor(weights=q075, backend="litert", threads=threads),
        "auto_f10": load_predictor(weights=w10, backend="auto", threads=threads),  # exports float copies once
        "torch_f10": load_predictor(weights=w10, backend="torch", threads=threads),
    }  # fmt: skip
    exports = sorted((work / "cache" / "exports").iterdir())
    p["onnxruntime_f10"] = load_predictor(weights=next(e for e in exports if e.suffix == ".onnx"), backend="onnxruntime", threads=threads)
    p["litert_f10"] = load_predictor(weights=next(e for e in exports if e.suffix == ".tflite"), backend="litert", threads=threads)
    p["int8_path"] = load_predictor(weights=q10_onnx, backend="auto", threads=threads)
    p["onnxruntime_q10"] = load_predictor(weights=q10_onnx, backend="onnxruntime", threads=threads)
    p["litert_q10"] = load_predictor(weights=q10_tflite, backend="litert", threads=threads)
    try:
        p["openvino_f10"] = load_predictor(weights=next(e for e in exports if e.suffix == ".onnx"), backend="openvino", threads=threads)
        p["openvino_q10"] = load_predictor(weights=q10_onnx, backend="openvino", threads=threads)
    except Exception as e:  # noqa: BLE001 - openvino is optional: measure without it
        print(f"openvino skipped: {e}", file=sys.stderr)
    return p


def measure(preds: dict, rounds: int) -> dict[str, np.ndarray]:
    from mobilenets.runtime import time_interleaved

    batches = {k: np.random.default_rng(0).uniform(-1, 1, (1, 3, p.resolution, p.resolution)).astype(np.float32)
               for k, p in preds.items()}  # fmt: skip
    # time_interleaved takes one batch; group predictors by input size and interleave group by group per round
    times: dict[str, list[float]] = {k: [] for k in preds}
    for _ in range(rounds):
        for size in sorted({p.resolution for p in preds.values()}):
            group = {k: p for k, p in preds.items() if p.resolution == size}
            for k, t in time_interleaved(group, next(batches[k] for k in group), runs=1, warmup=0).items():
                times[k].extend(t.tolist())
    return {k: np.asarray(v) for k, v in times.items()}


def ratios(t: dict[str, np.ndarray]) -> dict[str, dict]:
    med = {k: float(np.median(v)) for k, v in t.items()}
    fastest = min(("torch_f10", "onnxruntime_f10", "litert_f10"), key=med.get)
    pairs = {"ours_f025/google_f025": ("ours_f025", "google_f025"), "ours_q075/google_q075": ("ours_q075", "google_q075"),
             "auto_f10/fastest_f10": ("auto_f10", fastest), "int8_path/auto_f10": ("int8_path", "auto_f10"),
             "int8_path/fastest_f10": ("int8_path", fastest)}  # fmt: skip
    out = {}
    for name, (a, b) in pairs.items():
        out[name] = {"vs": b, "median_of_round_ratios": round(float(np.median(t[a] / t[b])), 3),
                     "ratio_of_medians": round(med[a] / med[b], 3), "limit": CRITERIA.get(name)}  # fmt: skip
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=150)
    parser.add_argument("--threads", default="1,2")
    args = parser.parse_args()
    from mobilenets.utils import atomic_write

    result = {"machine": machine(), "rounds": args.rounds, "batch": 1, "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.environ["MOBILENETS_HOME"] = str(work / "cache")  # fresh: auto measures and chooses in this run
        for threads in (int(t) for t in args.threads.split(",")):
            preds = build(threads, work)
            for p in preds.values():  # warm up every engine before the interleaved rounds
                for _ in range(5):
                    p.probabilities(np.zeros((1, 3, p.resolution, p.resolution), np.float32))
            t = measure(preds, args.rounds)
            result["runs"][threads] = {
                "median_ms": {k: round(float(np.median(v)) * 1e3, 3) for k, v in t.items()},
                "p90_ms": {k: round(float(np.percentile(v, 90)) * 1e3, 3) for k, v in t.items()},
                "auto_choice": {"fp32": preds["auto_f10"].backend, "int8": preds["int8_path"].backend},
                "ratios": ratios(t),
            }
            print(json.dumps(result["runs"][threads], indent=1), file=sys.stderr)
    result["machine"]["loadavg_end"] = os.getloadavg()
    with atomic_write(HERE / "deploy_speed.json") as out:
        out.write_text(json.dumps(result, indent=1))
    head = (f"Machine: {result['machine']['cpu']}, load average at start "
            f"{result['machine']['loadavg_start'][0]:.1f}, at end {result['machine']['loadavg_end'][0]:.1f}; "
            f"batch 1; {args.rounds} interleaved rounds.")  # fmt: skip
    lines = [head, "", "| threads | ratio | vs | median of round ratios | ratio of medians | limit |", "|---|---|---|---:|---:|---:|"]
    for threads, run in result["runs"].items():
        for name, r in run["ratios"].items():
            lines.append(f"| {threads} | {name} | {r['vs']} | {r['median_of_round_ratios']:.3f} | {r['ratio_of_medians']:.3f} | "
                         f"{'' if r['limit'] is None else r['limit']} |")  # fmt: skip
    lines += ["", "| threads | " + " | ".join(result["runs"][next(iter(result["runs"]))]["median_ms"]) + " |"]
    lines.append("|---|" + "---:|" * len(result["runs"][next(iter(result["runs"]))]["median_ms"]))
    for threads, run in result["runs"].items():
        lines.append(f"| {threads} | " + " | ".join(f"{v:.2f}" for v in run["median_ms"].values()) + " |")
    with atomic_write(HERE / "deploy_speed.md") as out:
        out.write_text("\n".join(lines) + "\n\nMedian ms per call (Predictor.probabilities, preprocessed input).\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
