"""Validation: top-1 and loss of a model, of a saved weights file, and of a run directory's final weights.

All three use the reference eval transform (centre crop 0.875, bilinear, [-1, 1]) in fp32
and eval mode, so the epoch-end numbers of a run, `evaluate_weights` on its saved file and
``mobilenets evaluate`` agree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..data.datasets import SkipCorrupt
from ..errors import MobilenetsError
from .checkpoint import read_run_file
from .data import eval_loader, open_split
from .distributed import DistInfo, all_reduce_sum


@torch.inference_mode()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, info: DistInfo, skipped: SkipCorrupt,
             channels_last: bool = False) -> dict[str, float]:  # fmt: skip
    """Mean cross-entropy and top-1 over the loader (sharded over ranks, summed), in eval mode, fp32."""
    was_training = model.training
    model.eval()
    loss_sum, correct, count = 0.0, 0.0, 0.0
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for x, y, bad in loader:
        for err in bad:
            skipped.record(err)
        if x is None:
            continue
        x, y = x.to(device, memory_format=fmt), y.to(device)
        logits = model(x).float()
        loss_sum += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
        correct += float((logits.argmax(1) == y).sum())
        count += len(y)
    loss_sum, correct, count = all_reduce_sum([loss_sum, correct, count], info)
    model.train(was_training)
    if count == 0:
        raise MobilenetsError("no readable validation images")
    return {"loss": loss_sum / count, "top1": correct / count, "count": int(count)}


def evaluate_weights(weights: str | Path, data_dir: str | Path, workers: int = 2) -> dict[str, float]:
    """Top-1 of a saved weights file on ``DIR/val`` with the reference eval transform (single process, CPU).

    Returns ``{"top1", "loss", "count"}``; the file's class names pick the label of each val folder.
    """
    from ..weights import build_model, read_weights

    w = read_weights(weights)
    model, labels = build_model(w), w.labels
    val = open_split(data_dir, "val", classes=labels)
    loader = eval_loader(val, model.default_resolution, workers, DistInfo())
    return evaluate(model, loader, torch.device("cpu"), DistInfo(), SkipCorrupt())


def evaluate_run(output: str | Path, data: str | Path | None = None, workers: int | None = None) -> dict[str, Any]:
    """The final evaluation of a run: its ``last.safetensors`` on ``DATA/val``, as `evaluate_weights` computes it.

    Args:
        output: the run directory.
        data: the folder holding ``val/``; default: the run's own (from run.json).
        workers: DataLoader workers; default: the run's setting.

    Returns ``{"top1", "loss", "count", "data", "weights"}``.
    """
    out = Path(output)
    if data is None or workers is None:
        cfg = read_run_file(out)["config"]
        data = cfg["data"] if data is None else data
        workers = cfg["workers"] if workers is None else workers
    weights = out / "last.safetensors"
    if not weights.is_file():
        raise MobilenetsError(f"{weights}: missing; the run in {out} has not finished an epoch")
    result = evaluate_weights(weights, data, workers=workers)
    return {**result, "data": str(data), "weights": str(weights)}
