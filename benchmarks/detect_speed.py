"""SSD-MobileNet-v1 latency: our int8 .tflite vs Google's uint8 file (LiteRT), and PyTorch, at 1 and 2 threads.

    python benchmarks/detect_speed.py [--int8 ours_int8.tflite] [--runs 40]

Without ``--int8`` the imported model is exported first (int8, calibrated on coco8/images/train).
All predictors of one thread count are timed interleaved on the same input (`auto.time_interleaved`),
so the ratios share the machine's noise. Writes ``detect_speed.json`` and ``detect_speed.md`` beside
this script (``--out`` names another pair: one per machine), each headed by `utils.machine_id`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from mobilenets.auto import load_predictor, time_interleaved
from mobilenets.utils import machine_id

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data"
GOOGLE = SHARED / "models" / "coco_ssd_mobilenet_v1_1.0_quant_2018_06_29.tflite"


def export_int8(out: Path) -> Path:
    from mobilenets.data.coco import yolo_samples
    from mobilenets.data.transforms import EvalTransform
    from mobilenets.export import export_model
    from mobilenets.weights.ssd_tflite import load_ssd

    model = load_ssd(GOOGLE)
    tr = EvalTransform.from_cfg(model.pretrained_cfg)
    cal = np.stack([tr(p).numpy() for p, _ in yolo_samples(SHARED / "coco8", "train")])
    export_model(model, "tflite", out, calibration=cal, parity=False)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--int8", type=Path, help="our int8 .tflite (default: export one now)")
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--out", type=Path, default=HERE / "detect_speed", help="writes OUT.json and OUT.md (one file per machine)")
    args = ap.parse_args()
    tmp = tempfile.TemporaryDirectory()
    ours = args.int8 or export_int8(Path(tmp.name) / "ssd_int8.tflite")
    img = SHARED / "images" / "cats_and_dogs.jpg"
    rows = {}
    for threads in (1, 2):
        preds = {"ours int8 (litert)": load_predictor(weights=ours, threads=threads),
                 "google uint8 (litert)": load_predictor(weights=GOOGLE, threads=threads),
                 "torch float (ours)": load_predictor(weights=GOOGLE, backend="torch", threads=threads)}  # fmt: skip
        batch = preds["google uint8 (litert)"].transform(img)[None].numpy()
        times = time_interleaved(preds, batch, runs=args.runs)
        ms = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
        rows[threads] = {"median_ms": ms, "ratio_ours_over_google": ms["ours int8 (litert)"] / ms["google uint8 (litert)"]}
        print(threads, rows[threads])
    result = {"machine": machine_id(), "runs": args.runs, "input": "1 x 300 x 300 (cats_and_dogs.jpg)", "threads": rows}
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [f"# SSD-MobileNet-v1 latency ({machine_id()})", "",
             "| threads | ours int8 (ms) | Google uint8 (ms) | PyTorch float (ms) | ours / Google |", "|---|---|---|---|---|"]  # fmt: skip
    for t, r in rows.items():
        m = r["median_ms"]
        lines.append(f"| {t} | {m['ours int8 (litert)']:.2f} | {m['google uint8 (litert)']:.2f} | "
                     f"{m['torch float (ours)']:.2f} | {r['ratio_ours_over_google']:.3f} |")  # fmt: skip
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
