"""Training on ../shared/data/hymenoptera (245 train / 153 val images, ants vs bees), through the CLI.

Three measurements, each a real ``mobilenets`` run in a subprocess (wall time as a user sees it):

- ``finetune``: ``mobilenets finetune`` with the default preset from Google's
  ``mobilenet_v1_0.75_192_quant.tflite``, seeds 0/1/2: val top-1 per epoch, final, seconds.
  "epoch 0" is the head mapped from the source classifier before any step.
- ``scratch``: ``mobilenets train --model mobilenet_v1_0.25_128`` from random init with the
  ``slim`` and ``modern`` recipes (same epochs, seed 0): train loss and val top-1 per epoch.
- ``ablation`` (``--parts ablation``): the fine-tune design choices of ``train/recipes.py``'s table.

    python benchmarks/train_hymenoptera.py                   # writes train_hymenoptera.{json,md,png}
    python benchmarks/train_hymenoptera.py --parts ablation  # adds the ablation to the same files
    python benchmarks/train_hymenoptera.py --parts scratch --sweep --scratch-epochs 60
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("MOBILENETS_SHARED", HERE.parents[1] / "shared" / "data"))
DATA = SHARED / "hymenoptera"
SOURCE = SHARED / "models" / "mobilenet_v1_0.75_192_quant.tflite"

# (label, extra finetune options): the rows of the table in train/recipes.py
ABLATION = [
    ("source head, frozen backbone, lr 0.001 (preset)", []),
    ("source head, backbone trained at lr x0.1, lr 0.001", ["--no-freeze-backbone"]),
    ("zero head, backbone trained at lr x0.1, lr 0.001", ["--no-freeze-backbone", "--set", "head_init=zeros"]),
    ("random head, backbone trained at lr x0.1, lr 0.001", ["--no-freeze-backbone", "--set", "head_init=random"]),
    ("random head, backbone trained at lr x0.1, lr 0.01",
     ["--no-freeze-backbone", "--set", "head_init=random", "--lr", "0.01"]),
    ("random head, frozen backbone, lr 0.01", ["--set", "head_init=random", "--lr", "0.01"]),
]  # fmt: skip


# from-scratch variants: the two recipes, and (--sweep) the knobs that decide them on small data
SCRATCH = {"slim": ["--recipe", "slim"], "modern": ["--recipe", "modern"]}
SWEEP = {
    "slim, bn_decay 0.9": ["--recipe", "slim", "--set", "bn_decay=0.9"],
    "modern, bn_decay 0.99": ["--recipe", "modern", "--set", "bn_decay=0.99"],
}


def run(args: list[str], out: Path) -> dict:
    """One CLI run; its JSON summary plus the per-epoch rows of log.csv."""
    cmd = [sys.executable, "-m", "mobilenets", *args, "--output", str(out), "--json", "--no-progress"]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    with open(out / "log.csv") as f:
        rows = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]
    return {"summary": summary, "wall_s": round(wall, 1), "epochs": rows}


def head_only_top1() -> float:
    """Val top-1 of the source-mapped head before any training step (the finetune preset's epoch 0)."""
    import torch

    from mobilenets.data.datasets import SkipCorrupt
    from mobilenets.train.config import TrainConfig
    from mobilenets.train.data import eval_loader, open_split
    from mobilenets.train.distributed import DistInfo
    from mobilenets.train.evaluation import evaluate
    from mobilenets.train.model import build_train_model
    from mobilenets.train.recipes import get_recipe
    from mobilenets.weights import read_weights

    w = read_weights(SOURCE)
    cfg = TrainConfig(data=str(DATA), output="", recipe=get_recipe("finetune"), alpha=w.alpha,
                      resolution=w.resolution, weights=str(SOURCE), workers=2)  # fmt: skip
    train_data = open_split(DATA, "train")
    model = build_train_model(cfg, train_data, workers=2)
    val = open_split(DATA, "val", classes=list(train_data.classes))
    loader = eval_loader(val, cfg.resolution, 2, DistInfo())
    return evaluate(model, loader, torch.device("cpu"), DistInfo(), SkipCorrupt())["top1"]


def curve(r: dict, key: str) -> list[float]:
    return [row[key] for row in r["epochs"]]


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b, c) = plt.subplots(1, 3, figsize=(15, 4.2))
    for seed, r in result["finetune"]["runs"].items():
        ys = [result["finetune"]["head_only_top1"], *curve(r, "val_top1")]
        a.plot(range(len(ys)), [100 * y for y in ys], marker="o", label=f"seed {seed}")
    a.axhline(93, color="grey", ls="--", lw=1, label="93% target")
    a.set(title="finetune 0.75_192 from Google's weights (preset)", xlabel="epoch (0 = mapped head, no training)",
          ylabel="val top-1 %", ylim=(85, 100))  # fmt: skip
    a.legend()
    runs = result["scratch"]["runs"]
    for name, r in runs.items():
        xs = range(1, len(r["epochs"]) + 1)
        if "bn_decay" not in name:  # BN decay does not change the training loss (batch statistics in training)
            b.plot(xs, curve(r, "train_loss"), label=name)
        c.plot(xs, [100 * y for y in curve(r, "val_top1")], label=name)
    b.set(title="from scratch 0.25_128: train loss", xlabel="epoch", ylabel="loss (modern: with label smoothing)")
    b.legend(fontsize=8)
    c.set(title="from scratch 0.25_128: val top-1 (eval mode)", xlabel="epoch", ylabel="val top-1 %")
    c.legend(fontsize=8)
    fig.tight_layout()
    from mobilenets.utils import atomic_write

    with atomic_write(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")


def markdown(result: dict) -> str:
    ft, sc = result["finetune"], result["scratch"]
    lines = ["# Training on hymenoptera (measured by benchmarks/train_hymenoptera.py)", "",
             f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores, torch {result['machine']['torch']}.",
             "", "## finetune (preset) from mobilenet_v1_0.75_192_quant.tflite", "",
             f"Mapped head before training: val top-1 {100 * ft['head_only_top1']:.1f}%.", "",
             "| seed | val top-1 per epoch (%) | final val top-1 | epochs | wall time (s) |", "|---|---|---|---|---|"]  # fmt: skip
    for seed, r in ft["runs"].items():
        per = " ".join(f"{100 * y:.1f}" for y in curve(r, "val_top1"))
        lines.append(f"| {seed} | {per} | {100 * r['summary']['val_top1']:.1f}% | {r['summary']['epochs']} | "
                     f"{r['wall_s']:.0f} |")  # fmt: skip
    lines += ["", f"## train from scratch: mobilenet_v1_0.25_128, {sc['epochs']} epochs, seed 0", "",
              "| recipe | train loss first -> last epoch | best val top-1 | final val top-1 | wall time (s) |",
              "|---|---|---|---|---|"]  # fmt: skip
    for recipe, r in sc["runs"].items():
        loss = curve(r, "train_loss")
        lines.append(f"| {recipe} | {loss[0]:.3f} -> {loss[-1]:.3f} | {100 * max(curve(r, 'val_top1')):.1f}% | "
                     f"{100 * r['summary']['val_top1']:.1f}% | {r['wall_s']:.0f} |")  # fmt: skip
    if "ablation" in result:
        lines += ["", "## fine-tune ablation (seed 0, 8 epochs)", "", "| variant | final val top-1 |", "|---|---|"]
        for label, r in result["ablation"].items():
            lines.append(f"| {label} | {100 * r['summary']['val_top1']:.1f}% |")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--scratch-epochs", type=int, default=30)
    p.add_argument("--parts", nargs="*", default=["finetune", "scratch"], choices=["finetune", "scratch", "ablation"],
                   help="what to run; the other parts of an existing --output are kept (none: redraw only)")  # fmt: skip
    p.add_argument("--sweep", action="store_true", help="scratch: also the variants of SWEEP")
    p.add_argument("--output", default=str(HERE / "train_hymenoptera.json"))
    args = p.parse_args()
    if not DATA.is_dir() or not SOURCE.is_file():
        raise SystemExit(f"needs {DATA} and {SOURCE} (../shared/data beside the checkout)")
    import torch

    from mobilenets.utils import atomic_write

    out = Path(args.output)
    result: dict = json.loads(out.read_text()) if out.exists() else {}
    from mobilenets.runtime import machine_id

    result["machine"] = {"cpu": machine_id(), "cores": os.cpu_count(),
                         "torch": torch.__version__, "python": platform.python_version()}  # fmt: skip
    ft_args = ["finetune", "--data", str(DATA), "--weights", str(SOURCE)]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if "finetune" in args.parts:
            result["finetune"] = {"head_only_top1": round(head_only_top1(), 4), "runs": {}}
            print(f"mapped head, no training: val top-1 {100 * result['finetune']['head_only_top1']:.1f}%")
            for seed in args.seeds:
                r = run([*ft_args, "--seed", str(seed)], work / f"ft{seed}")
                result["finetune"]["runs"][str(seed)] = r
                per = " ".join(f"{100 * y:.1f}" for y in curve(r, "val_top1"))
                print(f"finetune seed {seed}: val top-1 {100 * r['summary']['val_top1']:.1f}% in {r['wall_s']:.0f}s "
                      f"(per epoch {per})", flush=True)  # fmt: skip
        if "scratch" in args.parts:
            result["scratch"] = {"model": "mobilenet_v1_0.25_128", "epochs": args.scratch_epochs, "runs": {}}
            variants = {**SCRATCH, **(SWEEP if args.sweep else {})}
            for i, (recipe, extra) in enumerate(variants.items()):
                r = run(["train", "--data", str(DATA), "--model", "mobilenet_v1_0.25_128", *extra,
                         "--epochs", str(args.scratch_epochs)], work / f"scratch{i}")  # fmt: skip
                result["scratch"]["runs"][recipe] = r
                print(f"scratch {recipe}: loss {curve(r, 'train_loss')[0]:.3f} -> {curve(r, 'train_loss')[-1]:.3f}, "
                      f"best val {100 * max(curve(r, 'val_top1')):.1f}% in {r['wall_s']:.0f}s", flush=True)  # fmt: skip
        if "ablation" in args.parts:
            result["ablation"] = {}
            for label, extra in ABLATION:
                r = run([*ft_args, "--seed", "0", *extra], work / f"abl{len(result['ablation'])}")
                result["ablation"][label] = r
                print(f"ablation {label}: val top-1 {100 * r['summary']['val_top1']:.1f}%", flush=True)
    if "finetune" not in result or "scratch" not in result:
        raise SystemExit(f"{out}: run the finetune and scratch parts first")
    with atomic_write(out) as tmp:
        tmp.write_text(json.dumps(result, indent=1) + "\n")
    with atomic_write(out.with_suffix(".md")) as tmp:
        tmp.write_text(markdown(result))
    plot(result, out.with_suffix(".png"))
    print(f"wrote {out}, {out.with_suffix('.md')}, {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
