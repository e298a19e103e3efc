"""The run directory: its checkpoint format, the checks before a run starts, and what a resume may change.

A run directory holds::

    run.json            {"config": TrainConfig.as_dict(), "classes": [...]}, written when the
                        run starts and again when it resumes (with the changes applied)
    last.pt             the full training state (below), rewritten every ``checkpoint_every``
                        steps and at each epoch end: the resume point
    last.safetensors    weights after the latest epoch (the EMA when the recipe has one),
    best.safetensors    and those of the best val top-1 epoch, with class names
    log.csv, steps.csv  per epoch and every ``log_every`` steps; tb/ for TensorBoard

``last.pt`` (``torch.load(weights_only=True)``) is a dict: ``format`` (`CHECKPOINT_FORMAT`),
``config``, ``classes``, the state dicts ``model``, ``optimizer``, ``scheduler``, ``ema`` and
``scaler`` (None when unused), the position ``epoch`` (completed epochs), ``batch_in_epoch``
and ``step``, ``world_size``, ``best`` (``{"top1", "epoch"}``), ``seconds`` of training so
far, ``partial`` (the current epoch's `EpochStats`, already summed over ranks) and ``logs``
(`RunLogs`). Every file is written to a temporary name and renamed, so a kill at any moment
leaves the previous version whole.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import MobilenetsError
from ..utils import atomic_write
from .config import TrainConfig

CHECKPOINT_FORMAT = "mobilenets-train-checkpoint/1"
# Fields a resumed run may change; anything else must match the checkpoint.
RESUMABLE_CHANGES = ("data", "epochs", "workers", "device", "amp", "compile", "channels_last",
                     "checkpoint_every", "log_every", "progress", "heap_reuse")  # fmt: skip


class RunError(MobilenetsError):
    """A run directory that cannot be started or resumed as asked."""


@dataclass
class EpochStats:
    """The running sums of the epoch in progress (saved mid-epoch so a resume continues them)."""

    loss_sum: float = 0.0
    correct: float = 0.0
    seen: float = 0.0
    skipped: float = 0.0
    seconds: float = 0.0


@dataclass
class RunLogs:
    """Per-epoch and per-step history, kept in the checkpoint and rewritten as CSV (atomically)."""

    epochs: list[dict[str, float]] = field(default_factory=list)
    steps: list[dict[str, float]] = field(default_factory=list)

    def write(self, out: Path) -> None:
        for name, rows in (("log.csv", self.epochs), ("steps.csv", self.steps)):
            if not rows:
                continue
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
            with atomic_write(out / name) as tmp:
                tmp.write_text(buf.getvalue())


# --- before a run ------------------------------------------------------------------------------


def check_new_run_dir(output: Path) -> None:
    """Refuse to start a new run in a folder that holds another run or anything else."""
    if output.exists() and not output.is_dir():
        raise RunError(f"{output}: exists and is not a folder")
    if output.is_dir() and any(output.iterdir()):
        held = (output / "run.json").exists() or (output / "last.pt").exists()
        what = "holds another run" if held else "is not empty"
        raise RunError(f"{output}: {what}; pass --resume (or call mobilenets.train.resume) to continue it, "
                       "or choose another --output")  # fmt: skip


def prepare_run_dir(output: Path, cfg: TrainConfig, classes: list[str]) -> None:
    """Create the folder, drop temp files a kill left behind, and (re)write run.json."""
    output.mkdir(parents=True, exist_ok=True)
    for stale in output.glob(".*.tmp"):  # temp files of a write that a kill interrupted
        stale.unlink(missing_ok=True)
    with atomic_write(output / "run.json") as tmp:
        tmp.write_text(json.dumps({"config": cfg.as_dict(), "classes": classes}, indent=1))


def read_run_file(output: str | Path) -> dict[str, Any]:
    """run.json of a run directory; a `RunError` when it is missing or damaged."""
    path = Path(output) / "run.json"
    try:
        saved = json.loads(path.read_text())
        TrainConfig.from_dict(saved["config"])
    except FileNotFoundError:
        raise RunError(f"{path}: missing; {output} is not a run directory") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise RunError(f"{path}: damaged ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    return saved


# --- checkpoint -----------------------------------------------------------------------------------


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` (the dict the module docstring describes) atomically."""
    with atomic_write(path) as tmp:
        torch.save({"format": CHECKPOINT_FORMAT, **state}, tmp)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """The training state in ``path``; a one-line `RunError` when it is missing, damaged or foreign."""
    if not path.is_file():
        raise RunError(f"{path.parent}: no checkpoint to resume ({path.name} missing); start the run without --resume")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as e:  # foreign or damaged
        raise RunError(
            f"{path}: not a readable checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
        ) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise RunError(f"{path}: not a mobilenets training checkpoint")
    return state


def restore_checkpoint(state: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                       scheduler: torch.optim.lr_scheduler.LRScheduler, ema: torch.nn.Module | None,
                       scaler: torch.amp.GradScaler | None) -> None:  # fmt: skip
    """Load the state dicts of ``state`` into the run's modules (the counters are the caller's)."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    # the schedule itself is rebuilt from the config (which may extend the epochs); only the counters load
    scheduler.load_state_dict({**state["scheduler"], "lr_lambdas": [None] * len(optimizer.param_groups)})
    if ema is not None:
        ema.load_state_dict(state["ema"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])


# --- resume -----------------------------------------------------------------------------------------


def _fields(cfg: TrainConfig) -> dict[str, Any]:
    return {**cfg.as_dict(), **cfg.recipe.as_dict()}


def saved_config(output: Path, state: dict[str, Any]) -> TrainConfig:
    """The configuration to resume: run.json's (the latest one asked for), else the checkpoint's.

    The two differ only in `RESUMABLE_CHANGES` (a resume rewrites run.json before its first
    checkpoint); a difference elsewhere means they belong to different runs. ``output`` is
    the folder given, wherever the run was started.
    """
    ckpt = TrainConfig.from_dict(state["config"])
    if (output / "run.json").exists():
        cfg = TrainConfig.from_dict(read_run_file(output)["config"])
        a, b = _fields(ckpt), _fields(cfg)
        differ = sorted(k for k in a.keys() | b.keys() if k not in (*RESUMABLE_CHANGES, "output", "recipe")
                        and a.get(k) != b.get(k))  # fmt: skip
        if differ:
            raise RunError(f"{output}: run.json and last.pt describe different runs ({', '.join(differ)} differ)")
    else:
        cfg = ckpt
    return dataclasses.replace(cfg, output=str(output))


def merge_resume_config(saved: TrainConfig, changes: dict[str, Any]) -> TrainConfig:
    """``saved`` with ``changes`` applied: `TrainConfig` or recipe field names, where only
    `RESUMABLE_CHANGES` may take a new value (repeating the saved value is accepted)."""
    current = _fields(saved)
    unknown = sorted(k for k in changes if k not in current or k in ("output", "recipe"))
    if unknown:
        raise RunError(f"resume: unknown setting(s) {', '.join(unknown)} (only {', '.join(RESUMABLE_CHANGES)} "
                       "may change)")  # fmt: skip
    conflicts = [k for k, v in changes.items() if k not in RESUMABLE_CHANGES and current[k] != v]
    if conflicts:
        raise RunError(f"resume {saved.output}: {', '.join(sorted(conflicts))} differ from the run being resumed "
                       f"(only {', '.join(RESUMABLE_CHANGES)} may change)")  # fmt: skip
    cfg = dataclasses.replace(saved, **{k: v for k, v in changes.items() if k in RESUMABLE_CHANGES and k != "epochs"})
    if "epochs" in changes:
        cfg = dataclasses.replace(cfg, recipe=cfg.recipe.with_overrides(epochs=changes["epochs"]))
    return cfg
