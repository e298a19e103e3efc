"""On a CUDA GPU: the ``mobilenets train`` command trains with AMP, and how fast (images/s).

Runs the real command (``python -m mobilenets train ... --device cuda --amp auto``) on a
generated class-folder set (or ``--data DIR``), checks it finished with a finite, falling
loss and bf16/fp16 autocast, then times the engine's `train_step` on a synthetic batch
(AMP + channels_last vs fp32 eager) for the compute-only rate. Without a GPU it prints
one line and exits 0.

    python benchmarks/cuda_train_check.py [--data DIR] [--model mobilenet_v1_1.0_224] [--output FILE.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def make_data(root: Path, per_class: int = 96, side: int = 256) -> Path:
    """Two classes of random-texture JPEGs told apart by colour: enough for the loss to fall in one epoch."""
    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("val", per_class // 4)):
        for name, tint in (("red", (60, -30, -30)), ("blue", (-30, -30, 60))):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                arr = np.clip(rng.integers(0, 200, (side, side, 3)) + np.array(tint), 0, 255).astype(np.uint8)
                Image.fromarray(arr).save(folder / f"{i:03d}.jpg", quality=90)
    return root


def compute_rate(model_name: str, batch: int, amp: torch.dtype | None, channels_last: bool, steps: int = 20) -> float:
    from mobilenets.models.registry import create_model
    from mobilenets.train.engine import make_optimizer, train_step
    from mobilenets.train.recipes import get_recipe

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = create_model(model_name).cuda().to(memory_format=fmt).train()
    opt = make_optimizer(model, get_recipe("slim"), 0.01)
    res = model.default_resolution
    x = torch.randn(batch, 3, res, res, device="cuda").contiguous(memory_format=fmt)
    y = torch.randint(0, model.num_classes, (batch,), device="cuda")
    loss_fn = torch.nn.CrossEntropyLoss()
    for _ in range(5):
        train_step(model, x, y, opt, loss_fn, amp, None)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        train_step(model, x, y, opt, loss_fn, amp, None)
    torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - t)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help="class-folder data (default: generated)")
    p.add_argument("--model", default="mobilenet_v1_1.0_224")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--output", help="also write the result as JSON here")
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("cuda_train_check: skipped, no CUDA device")
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(args.data) if args.data else make_data(Path(tmp) / "data")
        run = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "mobilenets", "train", "--data", str(data), "--model", args.model, "--output",
               str(run), "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--device", "cuda",
               "--amp", "auto", "--workers", "4", "--log-every", "1", "--no-progress", "--json"]  # fmt: skip
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            print(proc.stderr[-4000:], file=sys.stderr)
            print(f"cuda_train_check: FAILED, train exited {proc.returncode}")
            return 1
        with open(run / "log.csv") as f:
            epochs = list(csv.DictReader(f))
        with open(run / "steps.csv") as f:
            losses = [float(r["loss"]) for r in csv.DictReader(f)]
        summary = json.loads(proc.stdout.strip().splitlines()[-1])
    amp_used = "amp bfloat16" in proc.stderr or "amp float16" in proc.stderr
    falling = np.mean(losses[-5:]) < np.mean(losses[:5])
    result = {
        "device": torch.cuda.get_device_name(),
        "model": args.model,
        "batch": args.batch_size,
        "train_command": {"ok": bool(amp_used and falling and np.isfinite(losses).all()), "amp": amp_used,
                          "loss_first": losses[0], "loss_last": losses[-1], "wall_s": round(wall, 1),
                          "images_per_s_by_epoch": [round(float(r["images_per_s"]), 1) for r in epochs],
                          "val_top1": summary["val_top1"]},
        "compute_only_images_per_s": {
            "eager_fp32_nchw": round(compute_rate(args.model, args.batch_size, None, False), 1),
            "amp_channels_last": round(compute_rate(args.model, args.batch_size, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16, True), 1),
        },
    }  # fmt: skip
    print(json.dumps(result, indent=1))
    if args.output:
        from mobilenets.utils import atomic_write

        with atomic_write(args.output) as tmp_file:
            tmp_file.write_text(json.dumps(result, indent=1) + "\n")
    if not result["train_command"]["ok"]:
        print("cuda_train_check: FAILED (no AMP, or the loss did not fall)")
        return 1
    print(f"cuda_train_check: ok, {result['train_command']['images_per_s_by_epoch'][-1]} images/s through the train "
          f"command, {result['compute_only_images_per_s']['amp_channels_last']} compute-only with AMP")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
