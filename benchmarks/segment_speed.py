"""Segmentation latency: our float and int8 DeepLab v3 .tflite against Google's deeplabv3.tflite, and PyTorch.

Our files are exports of the model imported from Google's file (`mobilenets export`): float,
and full-integer int8 (uint8 input) calibrated on coco8 + imagenet_samples_100 (never the
VOC pairs that accuracy is measured on). All four predictors of one thread count are timed
in one interleaved loop (one call each per round, batch 1, 257 x 257, through the same
`Predictor.run`), so load from other processes on this shared machine hits them alike.
Ratios are given as the median of the per-round ratios (paired) and the ratio of medians.

    python benchmarks/segment_speed.py [--rounds 60] [--float F.tflite --int8 Q.tflite]
    # writes benchmarks/segment_speed.{json,md}
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # PyTorch workers sleep between calls, not spin

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data"
GOOGLE = SHARED / "models" / "deeplabv3.tflite"
CRITERIA = {"ours_float/google_float": 1.05, "ours_int8/google_float": 1.0}


def calibration_folder(work: Path) -> Path:
    folder = work / "calibration"
    folder.mkdir(exist_ok=True)
    for src in [*(SHARED / "coco8" / "images").rglob("*.jpg"), *(SHARED / "imagenet_samples_100").glob("*.JPEG")]:
        (folder / src.name).symlink_to(src)
    return folder


def exports(work: Path, float_path: str | None, int8_path: str | None) -> tuple[Path, Path]:
    from mobilenets.data.transforms import EvalTransform
    from mobilenets.export import export_model
    from mobilenets.quantize import calibration_images
    from mobilenets.weights.deeplab_tflite import load_deeplab

    model = load_deeplab(GOOGLE)
    f = Path(float_path) if float_path else work / "ours_float.tflite"
    q = Path(int8_path) if int8_path else work / "ours_int8.tflite"
    if not f.exists():
        export_model(model, "tflite", f, parity=False)
    if not q.exists():
        calib = calibration_images(calibration_folder(work), EvalTransform.from_cfg(model.pretrained_cfg))
        export_model(model, "tflite", q, calibration=calib, parity=False)
    return f, q


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--float", dest="float_path", help="our float .tflite (default: export it now)")
    parser.add_argument("--int8", dest="int8_path", help="our int8 .tflite (default: export it now)")
    args = parser.parse_args()
    from mobilenets.auto import load_predictor, time_interleaved
    from mobilenets.utils import atomic_write, machine_id

    result = {"machine": {"cpu": machine_id(), "python": platform.python_version(), "torch": torch.__version__,
                          "loadavg_start": os.getloadavg()},
              "rounds": args.rounds, "batch": 1, "input": [1, 3, 257, 257], "runs": {}}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        f, q = exports(Path(tmp), args.float_path, args.int8_path)
        for threads in (int(t) for t in args.threads.split(",")):
            preds = {"google_float": load_predictor(weights=GOOGLE, backend="litert", threads=threads),
                     "ours_float": load_predictor(weights=f, backend="litert", threads=threads),
                     "ours_int8": load_predictor(weights=q, backend="litert", threads=threads),
                     "torch": load_predictor(weights=GOOGLE, backend="torch", threads=threads)}  # fmt: skip
            x = np.random.default_rng(0).uniform(-1, 1, (1, 3, 257, 257)).astype(np.float32)
            t = time_interleaved(preds, x, runs=args.rounds, warmup=5)
            med = {k: float(np.median(v)) for k, v in t.items()}
            ratios = {}
            for a, b in (("ours_float", "google_float"), ("ours_int8", "google_float"), ("ours_int8", "ours_float"),
                         ("torch", "google_float")):  # fmt: skip
                name = f"{a}/{b}"
                ratios[name] = {"median_of_round_ratios": round(float(np.median(t[a] / t[b])), 3),
                                "ratio_of_medians": round(med[a] / med[b], 3), "limit": CRITERIA.get(name)}  # fmt: skip
            result["runs"][threads] = {"median_ms": {k: round(v * 1e3, 2) for k, v in med.items()},
                                       "p90_ms": {k: round(float(np.percentile(v, 90)) * 1e3, 2) for k, v in t.items()},
                                       "ratios": ratios}  # fmt: skip
            print(json.dumps(result["runs"][threads], indent=1), file=sys.stderr)
    result["machine"]["loadavg_end"] = os.getloadavg()
    with atomic_write(HERE / "segment_speed.json") as out:
        out.write_text(json.dumps(result, indent=1))
    m = result["machine"]
    lines = [(f"Machine: {m['cpu']}; load average at start {m['loadavg_start'][0]:.1f}, at end "
             f"{m['loadavg_end'][0]:.1f}; batch 1, 257 x 257; {args.rounds} interleaved rounds."), "",
             "| threads | google float (LiteRT) | ours float (LiteRT) | ours int8 (LiteRT) | PyTorch |",
             "|---|---:|---:|---:|---:|"]  # fmt: skip
    for threads, run in result["runs"].items():
        ms = run["median_ms"]
        lines.append(f"| {threads} | {ms['google_float']:.1f} | {ms['ours_float']:.1f} | {ms['ours_int8']:.1f} | "
                     f"{ms['torch']:.1f} |")  # fmt: skip
    lines += ["", "Median ms per call. Ratios:", "", "| threads | ratio | median of round ratios | ratio of medians | limit |",
              "|---|---|---:|---:|---:|"]  # fmt: skip
    for threads, run in result["runs"].items():
        for name, r in run["ratios"].items():
            lines.append(f"| {threads} | {name} | {r['median_of_round_ratios']:.3f} | {r['ratio_of_medians']:.3f} | "
                         f"{'' if r['limit'] is None else r['limit']} |")  # fmt: skip
    with atomic_write(HERE / "segment_speed.md") as out:
        out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
