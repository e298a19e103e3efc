"""Training throughput (images/s) of the engine's CPU settings against plain PyTorch eager.

Every variant runs the engine's own `train_step` on the same model (same init), the same
loss and optimiser (the slim recipe's RMSProp) and batch 32 of synthetic images, so only
the execution settings differ:

- ``eager``: plain PyTorch, fp32, NCHW, default allocator (the baseline);
- ``channels_last``: NHWC tensors (oneDNN's fast depthwise and 1x1 kernels);
- ``engine``: channels_last + `keep_freed_memory`, fp32: what ``mobilenets train`` does on
  a CPU without native bf16;
- ``engine+compile``: the same under ``torch.compile`` (``--compile``);
- ``engine+bf16``: with bf16 autocast: what ``mobilenets train`` does (``--amp auto``) on a
  CPU with native bf16 (AVX512-BF16 or AMX); on others (AVX2) it is ~12x slower than
  eager and gets one round only.

Each (variant, round) is a fresh process (the allocator setting is process-wide), rounds
are interleaved (eager, channels_last, ..., eager, ...) because the machine may be shared,
and the median round is reported; warm-up (and compile) time is excluded.

    python benchmarks/train_throughput.py            # writes benchmarks/train_throughput.json
    python benchmarks/train_throughput.py --models mobilenet_v1_0.25_128 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

VARIANTS: dict[str, dict] = {
    "eager": {"channels_last": False, "keep_freed_memory": False, "compile": False, "amp": None},
    "channels_last": {"channels_last": True, "keep_freed_memory": False, "compile": False, "amp": None},
    "engine": {"channels_last": True, "keep_freed_memory": True, "compile": False, "amp": None},
    "engine+compile": {"channels_last": True, "keep_freed_memory": True, "compile": True, "amp": None},
    "engine+bf16": {"channels_last": True, "keep_freed_memory": True, "compile": False, "amp": "bf16"},
}  # fmt: skip
# a variant this much slower than eager in its first round is not run again (bf16 without native support)
HOPELESS = 0.25


def measure(model_name: str, variant: str, batch: int, steps: int) -> dict:
    """One process's measurement: build, warm up (2 steps), time ``steps`` steps."""
    import torch
    from torch import nn

    from mobilenets.builder import create_model
    from mobilenets.train.engine import train_step
    from mobilenets.train.optim import make_optimizer
    from mobilenets.train.platform import keep_freed_memory
    from mobilenets.train.recipes import get_recipe

    settings = VARIANTS[variant]
    if settings["keep_freed_memory"]:
        keep_freed_memory()
    torch.manual_seed(0)
    model = create_model(model_name)
    fmt = torch.channels_last if settings["channels_last"] else torch.contiguous_format
    model = model.to(memory_format=fmt).train()
    optimizer = make_optimizer(model, get_recipe("slim"), 0.01)
    net = torch.compile(model) if settings["compile"] else model
    amp = torch.bfloat16 if settings["amp"] == "bf16" else None
    gen = torch.Generator().manual_seed(0)
    res = model.default_resolution
    x = torch.randn(batch, 3, res, res, generator=gen).contiguous(memory_format=fmt)
    y = torch.randint(0, model.num_classes, (batch,), generator=gen)
    criterion = nn.CrossEntropyLoss()
    t = time.perf_counter()
    for _ in range(2):
        train_step(net, x, y, optimizer, criterion, amp, None)
    warm = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(steps):
        train_step(net, x, y, optimizer, criterion, amp, None)
    return {"images_per_s": batch * steps / (time.perf_counter() - t), "warmup_s": warm}


def machine() -> dict:
    import torch

    from mobilenets.runtime import machine_id
    from mobilenets.train.platform import native_cpu_bf16

    return {"cpu": machine_id(), "cores": os.cpu_count(), "native_bf16": native_cpu_bf16(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
            "load_avg_at_start": round(os.getloadavg()[0], 2)}  # fmt: skip


def run_worker(model_name: str, variant: str, batch: int, steps: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", model_name, variant, "--batch", str(batch), "--steps", str(steps)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{model_name} {variant} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_model(model_name: str, variants: list[str], batch: int, rounds: int, steps: int) -> dict:
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    for i in range(rounds):
        for v in variants:
            if i > 0 and runs[v][0]["images_per_s"] < HOPELESS * runs["eager"][0]["images_per_s"]:
                continue
            runs[v].append(run_worker(model_name, v, batch, steps))
        line = "  ".join(f"{v} {runs[v][-1]['images_per_s']:.1f}" for v in variants)
        print(f"{model_name} round {i + 1}/{rounds}: {line}", file=sys.stderr, flush=True)
    base = statistics.median(r["images_per_s"] for r in runs["eager"])
    out = {}
    for v in variants:
        ips = statistics.median(r["images_per_s"] for r in runs[v])
        # per-round ratios against the eager run of the same round (robust to load changes between rounds)
        ratios = [r["images_per_s"] / e["images_per_s"] for r, e in zip(runs[v], runs["eager"])]
        out[v] = {"images_per_s": round(ips, 2), "vs_eager": round(ips / base, 3),
                  "vs_eager_per_round_median": round(statistics.median(ratios), 3),
                  "rounds_images_per_s": [round(r["images_per_s"], 2) for r in runs[v]],
                  "warmup_s": round(statistics.median(r["warmup_s"] for r in runs[v]), 1),
                  **VARIANTS[v]}  # fmt: skip
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["mobilenet_v1_1.0_224", "mobilenet_v1_0.25_128"])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=3, help="timed steps per round (after 2 warm-up steps)")
    p.add_argument("--output", default=str(Path(__file__).with_suffix(".json")))
    p.add_argument("--worker", nargs=2, metavar=("MODEL", "VARIANT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(measure(*args.worker, args.batch, args.steps)))
        return 0
    variants = ["eager", *[v for v in args.variants if v != "eager"]]
    result = {"benchmark": "training images/s: engine train_step on a synthetic batch, fresh process per round, "
                           "median of interleaved rounds",
              "batch": args.batch, "rounds": args.rounds, "steps_per_round": args.steps, "machine": machine(),
              "models": {}}  # fmt: skip
    for name in args.models:
        result["models"][name] = bench_model(name, variants, args.batch, args.rounds, args.steps)
        for v, r in result["models"][name].items():
            print(f"{name:24s} {v:20s} {r['images_per_s']:8.2f} img/s  x{r['vs_eager']:.2f} "
                  f"(per-round median x{r['vs_eager_per_round_median']:.2f})")  # fmt: skip
    from mobilenets.utils import atomic_write

    with atomic_write(args.output) as tmp:
        tmp.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
