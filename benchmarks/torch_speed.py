"""The torch backend's speed: our fused inference graph against a plain eager MobileNet v1 and ONNX Runtime.

    python benchmarks/torch_speed.py        # writes benchmarks/torch_speed.{json,md}

Same machine, same run, calls interleaved round after round (so load from other processes
hits every variant alike), batch 1, 1.0_224 (random weights: speed does not depend on them):

- ``torch (ours)``: `open_backend("torch", model=...)`, the graph `mobilenets classify` runs
  for a weights file on the torch backend (BN folded, padding static, channels-last);
- ``eager MobileNetV1``: our module as built, `model(x)` under inference mode;
- ``plain eager``: an ``nn.Sequential`` of conv, BN, ReLU6 with symmetric padding, the
  simplest MobileNet v1 PyTorch can run;
- ``onnxruntime``: our float .onnx export of the same weights.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mobilenets import create_model
from mobilenets.export import export_model
from mobilenets.models.mobilenet_v1 import MOBILENET_V1_CONV_DEFS
from mobilenets.runtime import backend_available, open_backend
from mobilenets.utils import atomic_write, machine_id

OUT = Path(__file__).with_name("torch_speed")
ROUNDS, WARMUP = 60, 10


def plain_eager() -> nn.Sequential:
    layers, cin = [], 3
    for d in MOBILENET_V1_CONV_DEFS:
        if d.kind == "conv":
            layers += [nn.Conv2d(cin, d.depth, 3, d.stride, 1, bias=False), nn.BatchNorm2d(d.depth), nn.ReLU6(True)]
        else:
            layers += [nn.Conv2d(cin, cin, 3, d.stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin), nn.ReLU6(True),
                       nn.Conv2d(cin, d.depth, 1, bias=False), nn.BatchNorm2d(d.depth), nn.ReLU6(True)]  # fmt: skip
        cin = d.depth
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, 1001, 1), nn.Flatten(), nn.Softmax(1)).eval()


def measure(threads: int, onnx_path: Path | None) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = create_model("mobilenet_v1_1.0_224").eval()
    ours = open_backend("torch", model=model)
    eager = plain_eager()
    x = np.random.default_rng(0).uniform(-1, 1, (1, 3, 224, 224)).astype(np.float32)
    xt = torch.from_numpy(x)
    calls = {"torch (ours)": lambda: ours.run(x), "eager MobileNetV1": lambda: model(xt), "plain eager": lambda: eager(xt)}
    if onnx_path is not None:
        ort = open_backend("onnxruntime", onnx_path, threads=threads)
        calls["onnxruntime"] = lambda: ort.run(x)
    times: dict[str, list[float]] = {k: [] for k in calls}
    with torch.inference_mode():
        for f in calls.values():
            for _ in range(WARMUP):
                f()
        for _ in range(ROUNDS):
            for k, f in calls.items():
                t = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t)
    med = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
    rounds = np.asarray(times["torch (ours)"]) / np.asarray(times["plain eager"])
    return {"threads": threads, "median_ms": {k: round(v, 3) for k, v in med.items()},
            "ours_vs_plain_eager": round(float(np.median(rounds)), 3)}  # fmt: skip


def main() -> int:
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = None
        if backend_available("onnxruntime"):
            torch.manual_seed(0)
            onnx_path = Path(tmp) / "m.onnx"
            export_model(create_model("mobilenet_v1_1.0_224").eval(), "onnx", onnx_path, parity=False)
        rows = [measure(t, onnx_path) for t in (1, 2)]
    result = {"machine": machine_id(), "torch": torch.__version__, "batch": 1, "model": "mobilenet_v1_1.0_224",
              "rounds": ROUNDS, "load_average": [round(load0, 2), round(os.getloadavg()[0], 2)], "rows": rows}  # fmt: skip
    with atomic_write(OUT.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(result, indent=1))
    names = list(rows[0]["median_ms"])
    lines = [f"# torch backend speed ({result['machine']}, torch {torch.__version__})", "",
             "| threads | " + " | ".join(f"{n} (ms)" for n in names) + " | ours / plain eager |",
             "|---" * (len(names) + 2) + "|"]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['threads']} | " + " | ".join(f"{r['median_ms'][n]:.2f}" for n in names)
                     + f" | {r['ours_vs_plain_eager']:.3f} |")  # fmt: skip
    lines += ["", (f"1.0_224, batch 1, median of {ROUNDS} interleaved rounds; ratio = median of per-round ratios; "
                   f"load average {result['load_average'][0]} at start, {result['load_average'][1]} at end.")]
    with atomic_write(OUT.with_suffix(".md")) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
