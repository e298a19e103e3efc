"""The entry points: `train` starts a run, `resume` continues a run directory, `finetune` adapts pretrained weights.

Under torchrun every process calls the same function; rank 0 alone logs and writes. Each
returns the summary::

    {"val_top1", "best_top1", "best_epoch", "epochs", "steps", "seconds", "weights", "skipped_images"}

and with ``final_eval`` (the default of `finetune`), ``"final"``: `evaluate_run` of the
saved ``last.safetensors``, whose top-1 then is ``val_top1`` (and whose time is in ``seconds``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .checkpoint import check_new_run_dir, load_checkpoint, merge_resume_config, saved_config
from .config import TrainConfig, finetune_config
from .distributed import DistInfo, init_distributed
from .engine import Trainer
from .evaluation import evaluate_run
from .recipes import Recipe

Log = Callable[[str], None]


def train(cfg: TrainConfig, *, final_eval: bool = False, log: Log | None = None) -> dict[str, Any]:
    """Train ``cfg`` in a new (empty or absent) run directory ``cfg.output``; returns the summary.

    A folder that holds anything is refused (`RunError`): continue a run with `resume`.
    On the CPU the run turns on glibc heap reuse for the process (``cfg.heap_reuse``).
    ``log`` receives the progress lines (default: stderr).
    """
    info = init_distributed(cfg.device)
    try:
        check_new_run_dir(Path(cfg.output))
        if info.enabled:  # every rank has checked the folder before rank 0 writes into it
            import torch.distributed as dist

            dist.barrier()
        summary = Trainer(cfg, info, None, log).run()
    finally:
        _leave(info)
    return _with_final_eval(summary, cfg, info) if final_eval else summary


def resume(output: str | Path, *, final_eval: bool = False, log: Log | None = None, **changes: Any) -> dict[str, Any]:
    """Continue the run in ``output`` from its last checkpoint, with its saved configuration (run.json).

    ``changes`` may set any of `checkpoint.RESUMABLE_CHANGES` (``epochs=`` extends a finished
    run; ``data``, ``workers``, ``device``, ...); other `TrainConfig` or recipe fields are
    accepted only with their saved value, anything else is a one-line `RunError`. The result
    is bit-equal to an uninterrupted run (same thread count).
    """
    out = Path(output)
    state = load_checkpoint(out / "last.pt")
    cfg = merge_resume_config(saved_config(out, state), changes)
    info = init_distributed(cfg.device)
    try:
        summary = Trainer(cfg, info, state, log).run()
    finally:
        _leave(info)
    return _with_final_eval(summary, cfg, info) if final_eval else summary


def finetune(data: str | Path, weights: str | Path, output: str | Path, *, model: str | None = None,
             resolution: int | None = None, recipe: str | Recipe = "finetune", final_eval: bool = True,
             log: Log | None = None, **settings: Any) -> dict[str, Any]:  # fmt: skip
    """Fine-tune ``weights`` on ``DATA/train`` (a new head for its classes), then evaluate the result on ``DATA/val``.

    What ``mobilenets finetune`` runs. Args:
        data: folder with ``train/<class>/*`` and ``val/<class>/*``.
        weights: the source weights (.tflite, .safetensors, ...; see `mobilenets.weights`).
        output: a new run directory.
        model, resolution: the input side (`config.finetune_shape`; default: the weights').
        recipe: recipe name or `Recipe` (default: the ``finetune`` preset).
        final_eval: evaluate ``last.safetensors`` afresh after training (``summary["final"]``).
        **settings: `TrainConfig` and recipe fields (``epochs=``, ``workers=``, ``freeze_backbone=``, ...).
    """
    cfg = finetune_config(data, weights, output, model=model, resolution=resolution, recipe=recipe, **settings)
    return train(cfg, final_eval=final_eval, log=log)


def _with_final_eval(summary: dict[str, Any], cfg: TrainConfig, info: DistInfo) -> dict[str, Any]:
    if not info.is_main:  # rank 0 alone evaluates (the process group is gone by now)
        return summary
    start = time.perf_counter()
    final = evaluate_run(cfg.output, cfg.data, cfg.workers)
    seconds = round(summary["seconds"] + time.perf_counter() - start, 1)  # training (all sessions) + this check
    return {**summary, "val_top1": final["top1"], "seconds": seconds, "final": final}


def _leave(info: DistInfo) -> None:
    if info.enabled:
        import torch.distributed as dist

        dist.destroy_process_group()
