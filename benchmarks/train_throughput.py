"""Training throughput (images/s) of the engine's execution settings against plain PyTorch eager.

Every variant runs the engine's own `train_step` on the same model (same init), the same
loss and optimiser (the slim recipe's RMSProp), batch 32 of synthetic images, so only the
execution settings differ: ``eager`` is plain PyTorch (fp32, NCHW, no compile), the others
add channels_last, torch.compile and/or bf16 autocast. Variants are timed in interleaved
rounds (eager, cl, ..., eager, cl, ...) and the median round is reported, because the
machine may be shared; compile time is measured separately and excluded.

    python benchmarks/train_throughput.py                    # writes benchmarks/train_throughput.json
    python benchmarks/train_throughput.py --models mobilenet_v1_0.25_128 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

from mobilenets.models.registry import create_model
from mobilenets.train.engine import make_optimizer, train_step
from mobilenets.train.recipes import get_recipe
from mobilenets.utils import atomic_write

VARIANTS = {
    "eager": {"channels_last": False, "compile": False, "amp": None},
    "channels_last": {"channels_last": True, "compile": False, "amp": None},
    "channels_last+compile": {"channels_last": True, "compile": True, "amp": None},
    "channels_last+bf16": {"channels_last": True, "compile": False, "amp": torch.bfloat16},
}


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "load_avg_at_start": os.getloadavg()[0]}  # fmt: skip


class Runner:
    """One variant: its own model copy, optimiser and input batch, ready to step."""

    def __init__(self, name: str, settings: dict, model_name: str, batch: int, state: dict) -> None:
        self.name, self.settings = name, settings
        model = create_model(model_name)
        model.load_state_dict(state)
        fmt = torch.channels_last if settings["channels_last"] else torch.contiguous_format
        self.model = model.to(memory_format=fmt).train()
        self.optimizer = make_optimizer(self.model, get_recipe("slim"), 0.01)
        self.net = torch.compile(self.model) if settings["compile"] else self.model
        res = model.default_resolution
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(batch, 3, res, res, generator=gen).contiguous(memory_format=fmt)
        self.y = torch.randint(0, model.num_classes, (batch,), generator=gen)
        self.criterion = nn.CrossEntropyLoss()
        self.times: list[float] = []

    def step(self) -> None:
        train_step(self.net, self.x, self.y, self.optimizer, self.criterion, self.settings["amp"], None)

    def warmup(self) -> float:
        t = time.perf_counter()
        self.step()
        self.step()
        return time.perf_counter() - t

    def timed(self, steps: int) -> None:
        t = time.perf_counter()
        for _ in range(steps):
            self.step()
        self.times.append((time.perf_counter() - t) / steps)


def bench_model(model_name: str, variants: list[str], batch: int, rounds: int, steps: int) -> dict:
    torch._dynamo.reset()  # a fresh compile per model (otherwise dynamo retraces with dynamic shapes)
    torch.manual_seed(0)
    state = create_model(model_name).state_dict()
    runners = [Runner(v, VARIANTS[v], model_name, batch, state) for v in variants]
    warm = {}
    for r in runners:
        warm[r.name] = round(r.warmup(), 1)
        print(f"{model_name} {r.name}: warm-up (incl. compile) {warm[r.name]}s", file=sys.stderr, flush=True)
    for i in range(rounds):
        for r in runners:
            r.timed(steps)
        print(f"{model_name} round {i + 1}/{rounds}: "
              + "  ".join(f"{r.name} {batch / r.times[-1]:.1f}" for r in runners), file=sys.stderr, flush=True)  # fmt: skip
    base = batch / statistics.median(runners[0].times)
    out = {}
    for r in runners:
        ips = batch / statistics.median(r.times)
        out[r.name] = {"images_per_s": round(ips, 2), "vs_eager": round(ips / base, 3), "warmup_s": warm[r.name],
                       "rounds_images_per_s": [round(batch / t, 2) for t in r.times]}  # fmt: skip
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["mobilenet_v1_1.0_224", "mobilenet_v1_0.25_128"])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=2, help="steps per timed round")
    p.add_argument("--output", default=str(Path(__file__).with_suffix(".json")))
    args = p.parse_args()
    if args.variants[0] != "eager":
        args.variants = ["eager", *[v for v in args.variants if v != "eager"]]
    result = {"benchmark": "training images/s, synthetic batch, engine train_step, median of interleaved rounds",
              "batch": args.batch, "rounds": args.rounds, "steps_per_round": args.steps, "machine": machine(),
              "models": {}}  # fmt: skip
    for name in args.models:
        result["models"][name] = bench_model(name, args.variants, args.batch, args.rounds, args.steps)
        for v, r in result["models"][name].items():
            print(f"{name:24s} {v:24s} {r['images_per_s']:8.2f} img/s  x{r['vs_eager']:.2f}")
    with atomic_write(args.output) as tmp:
        tmp.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
