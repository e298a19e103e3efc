"""The training loop: one `Trainer` for ``train``, ``finetune`` and ``resume``, single process or DDP.

Each step: the batch to the device, the model's own randomness reseeded, `train_step`
(forward under autocast, fp32 loss, backward, optimiser step), the EMA, the LR schedule.
Each epoch end: fp32 validation of the deployed weights (the EMA when there is one),
``last.safetensors`` / ``best.safetensors``, the logs and a checkpoint; mid-epoch
checkpoints every ``checkpoint_every`` steps. The run directory's layout and checkpoint
format are in `checkpoint`.

Exact resume: nothing random uses hidden state. The sample order of epoch ``e`` is
``randperm(seed + e)``; an image's augmentation is seeded by ``(seed, epoch, index)``; the
model's own randomness (dropout) by ``(seed, step, rank)``, reseeded every step. So the
checkpoint's seed, epoch and step are the complete RNG state, and a run killed at any
point continues from its last checkpoint to the same weights as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..data.datasets import SkipCorrupt
from ..errors import ConfigError
from .checkpoint import EpochStats, RunError, RunLogs, prepare_run_dir, restore_checkpoint, save_checkpoint
from .config import TrainConfig
from .data import eval_loader, open_split
from .data import train_loader as train_loader_for
from .distributed import DistInfo, ResumableSampler, all_reduce_sum, convert_sync_batchnorm
from .evaluation import evaluate
from .model import build_train_model, set_train_mode
from .optim import ModelEma, make_optimizer, make_schedule
from .platform import heap_reuse_applied, keep_freed_memory, resolve_amp


def train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, optimizer: torch.optim.Optimizer,
               criterion: nn.Module, amp_dtype: torch.dtype | None,
               scaler: torch.amp.GradScaler | None) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """One optimisation step; returns the (detached) loss and logits."""
    with torch.autocast(x.device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext():
        logits = model(x)
    loss = criterion(logits.float(), y)
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    return loss.detach(), logits.detach()


def step_seed(seed: int, step: int, rank: int) -> int:
    """The seed of the model's own randomness (dropout) at one step on one rank."""
    return ((seed * 1_000_003 + step) * 1_009 + rank) & 0x7FFF_FFFF_FFFF_FFFF


def log_to_stderr(line: str) -> None:
    """The default log: one line on stderr, above any progress bar."""
    from tqdm import tqdm

    tqdm.write(line, file=sys.stderr)


class Trainer:
    """One run on this process: ``Trainer(cfg, info, state).run()`` trains ``cfg`` from the start
    (``state=None``) or from the checkpoint ``state``, and returns the summary.

    The run directory's checks (`checkpoint.check_new_run_dir`, `checkpoint.load_checkpoint`)
    and the resume rules are the caller's (`mobilenets.train.train` / `resume`).
    """

    def __init__(self, cfg: TrainConfig, info: DistInfo, state: dict[str, Any] | None = None,
                 log: Callable[[str], None] | None = None) -> None:  # fmt: skip
        self.info, self.out, self.state = info, Path(cfg.output), state
        self.log = (log or log_to_stderr) if info.is_main else (lambda line: None)
        self.cfg, r = cfg, cfg.recipe
        if r.batch_size % info.world_size:
            raise ConfigError(f"batch size {r.batch_size} must be divisible by the {info.world_size} processes")

        self.train_data = open_split(cfg.data, "train")
        self.classes = list(self.train_data.classes)
        if self.state is not None and self.state["classes"] != self.classes:
            raise RunError(
                f"{cfg.data}/train: classes {self.classes[:5]} differ from the run's {self.state['classes'][:5]}"
            )
        self.val_data = open_split(cfg.data, "val", classes=self.classes)
        if len(self.train_data) < r.batch_size:
            raise ConfigError(f"{cfg.data}/train has {len(self.train_data)} images, fewer than the batch size "
                              f"{r.batch_size}; lower --batch-size")  # fmt: skip

        self.device = info.device
        self.amp_dtype = resolve_amp(cfg.amp, self.device)
        if self.state is None and cfg.weights and r.head_init == "source":
            self.log(f"initialising the head from {Path(cfg.weights).name}'s classifier "
                     f"on {len(self.train_data)} train images")  # fmt: skip
        self.model = build_train_model(cfg, self.train_data, info, self.state is None, cfg.workers).to(self.device)
        if cfg.sync_bn and info.enabled:
            convert_sync_batchnorm(self.model)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.sampler = ResumableSampler(len(self.train_data), r.batch_size, info, cfg.seed)
        self.steps_per_epoch = self.sampler.batches_per_epoch
        self.lr = r.scaled_lr(r.batch_size)
        self.optimizer = make_optimizer(self.model, r, self.lr)
        schedule = make_schedule(r, self.steps_per_epoch, len(self.train_data), r.batch_size)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        self.ema = ModelEma(self.model, r.ema_decay) if r.ema_decay else None
        self.scaler = torch.amp.GradScaler(self.device.type) if self.amp_dtype == torch.float16 else None
        self.criterion = nn.CrossEntropyLoss(label_smoothing=r.label_smoothing)

        self.epoch, self.start_batch, self.step, self.last_lr = 0, 0, 0, 0.0
        self.best = {"top1": -1.0, "epoch": 0}
        self.logs, self.partial, self.elapsed = RunLogs(), EpochStats(), 0.0
        if self.state is not None:
            self._load_state(self.state)
        self.skipped = SkipCorrupt(warned=not info.is_main)

        self.net: nn.Module = self.model
        if info.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model, device_ids=ids)
        if cfg.compile:
            self.net = torch.compile(self.net)

    # -- state ----------------------------------------------------------------------------

    def _load_state(self, s: dict[str, Any]) -> None:
        restore_checkpoint(s, self.model, self.optimizer, self.scheduler, self.ema, self.scaler)
        self.epoch, self.start_batch, self.step = s["epoch"], s["batch_in_epoch"], s["step"]
        self.best, self.elapsed = s["best"], s["seconds"]
        self.logs = RunLogs(s["logs"]["epochs"], s["logs"]["steps"])
        if self.info.is_main:  # the saved partial sums are already reduced over ranks: count them once
            self.partial = EpochStats(**s["partial"])
        else:
            self.partial = EpochStats(seconds=s["partial"]["seconds"])
        if s["world_size"] != self.info.world_size:
            self.log(f"note: resuming a {s['world_size']}-process run on {self.info.world_size}; "
                     "the sample order is the same, float sums may differ")  # fmt: skip

    def _save_checkpoint(self, epoch: int, batch_in_epoch: int, partial: EpochStats) -> None:
        # every rank calls this at the same step: the partial sums are reduced first
        sums = all_reduce_sum([partial.loss_sum, partial.correct, partial.seen, partial.skipped], self.info)
        if not self.info.is_main:
            return
        state = {
            "config": self.cfg.as_dict(),
            "classes": self.classes,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "epoch": epoch,
            "batch_in_epoch": batch_in_epoch,
            "step": self.step,
            "world_size": self.info.world_size,
            "best": self.best,
            "seconds": self.elapsed + (time.perf_counter() - self.t0),
            "partial": dataclasses.asdict(EpochStats(*sums, seconds=partial.seconds)),
            "logs": {"epochs": self.logs.epochs, "steps": self.logs.steps},
        }
        self.logs.write(self.out)
        save_checkpoint(self.out / "last.pt", state)

    # -- loop -----------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        cfg, r, info = self.cfg, self.cfg.recipe, self.info
        self.t0 = time.perf_counter()
        if info.is_main:
            prepare_run_dir(self.out, cfg, self.classes)
        self.tb = self._tensorboard()
        what = "resuming" if self.state else "training"
        self.log(f"{what} {cfg.model_name} on {len(self.train_data)} images ({len(self.classes)} classes), "
                 f"val {len(self.val_data)}; recipe {r.name}, {r.epochs} epochs x {self.steps_per_epoch} steps, "
                 f"batch {r.batch_size} ({info.world_size} process{'es' if info.enabled else ''}), lr {self.lr:g}, "
                 f"{self.device.type}{', amp ' + str(self.amp_dtype).split('.')[-1] if self.amp_dtype else ''}"
                 + (f"; from epoch {self.epoch + 1} step {self.start_batch}" if self.state else ""))  # fmt: skip
        self._warn_slow_bn()
        if self.epoch < r.epochs:
            self._reuse_heap()
        train_loader = train_loader_for(self.train_data, r, cfg.resolution, cfg.seed, self.sampler, cfg.workers, info)
        val_loader = eval_loader(self.val_data, cfg.resolution, cfg.workers, info)
        last_val: dict[str, float] | None = None
        while self.epoch < r.epochs:
            self._train_epoch(train_loader)
            last_val = self._end_epoch(val_loader)
            self.epoch, self.start_batch, self.partial = self.epoch + 1, 0, EpochStats()
            self._save_checkpoint(self.epoch, 0, self.partial)
        if self.tb is not None:
            self.tb.close()
        if last_val is None and self.logs.epochs:  # resumed a finished run: nothing left to do
            last_val = {"top1": self.logs.epochs[-1]["val_top1"]}
        return {
            "val_top1": last_val["top1"] if last_val else None,
            "best_top1": self.best["top1"],
            "best_epoch": self.best["epoch"],
            "epochs": self.epoch,
            "steps": self.step,
            "seconds": round(self.elapsed + time.perf_counter() - self.t0, 1),
            "weights": str(self.out / "last.safetensors"),
            "skipped_images": self.skipped.count,
        }

    def _reuse_heap(self) -> None:
        """glibc heap reuse (`platform.keep_freed_memory`) before the first CPU step, once per process."""
        if not self.cfg.heap_reuse or self.device.type != "cpu" or heap_reuse_applied():
            return
        if keep_freed_memory():
            self.log("note: glibc now keeps freed memory for reuse in this process (faster CPU steps; "
                     "heap_reuse=False / --no-heap-reuse leaves the allocator alone)")  # fmt: skip

    def _warn_slow_bn(self) -> None:
        """Warn when BN's moving statistics cannot follow the weights within the whole run.

        They are what eval mode (val, classify, export) uses; with slim's decay 0.9997 a short
        run leaves them near their init and eval-mode predictions collapse to one class.
        """
        r = self.cfg.recipe
        if r.bn_mode == "frozen" or r.freeze_backbone:
            return
        steps = r.epochs * self.steps_per_epoch
        if r.bn_decay**steps > 0.05:
            fits = min(0.9, math.floor(100 * 0.05 ** (1 / steps)) / 100)  # keeps <= 5% of the init
            self.log(f"warning: BN decay {r.bn_decay:g} over {steps} steps keeps {100 * r.bn_decay**steps:.0f}% of "
                     f"the initial BN statistics that eval mode uses; pass --set bn_decay={fits:g} (or lower) "
                     "for a run this short")  # fmt: skip

    def _tensorboard(self):
        if not self.info.is_main:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # the [train] extra is not installed
            return None
        return SummaryWriter(str(self.out / "tb"), purge_step=self.step if self.state else None)

    def _train_epoch(self, loader: DataLoader) -> None:
        from tqdm import tqdm

        cfg, r, info = self.cfg, self.cfg.recipe, self.info
        self.sampler.set_epoch(self.epoch, self.start_batch)
        set_train_mode(self.model, r)
        stats, fmt = self.partial, torch.channels_last if cfg.channels_last else torch.contiguous_format
        bar = tqdm(total=self.steps_per_epoch, initial=self.start_batch, desc=f"epoch {self.epoch + 1}/{r.epochs}",
                   disable=None if (cfg.progress and info.is_main) else True, leave=False, file=sys.stderr)  # fmt: skip
        # loss and hit sums stay on the device between log points: no sync per step on a GPU
        running = torch.zeros(2, dtype=torch.float64, device=self.device)

        def flush() -> None:
            stats.loss_sum, stats.correct = stats.loss_sum + float(running[0]), stats.correct + float(running[1])
            running.zero_()

        t_start = time.perf_counter()
        for batch_index, (x, y, bad) in enumerate(loader, start=self.start_batch):
            for err in bad:
                self.skipped.record(err)
            stats.skipped += len(bad)
            loss = None
            if x is not None:
                x = x.to(self.device, non_blocking=True, memory_format=fmt)
                y = y.to(self.device, non_blocking=True)
                torch.manual_seed(step_seed(cfg.seed, self.step, info.rank))
                loss, logits = train_step(self.net, x, y, self.optimizer, self.criterion, self.amp_dtype, self.scaler)
                if self.ema is not None:
                    self.ema.update(self.model)
                running[0] += loss.double() * len(y)
                running[1] += (logits.argmax(1) == y).sum()
                stats.seen += len(y)
            lr = self.last_lr = self.optimizer.param_groups[-1]["lr"]
            self.scheduler.step()
            self.step += 1
            bar.update(1)
            if self.step % cfg.log_every == 0:
                self._log_step(loss, 0 if x is None else len(y), lr)
                if loss is not None:
                    bar.set_postfix(loss=f"{float(loss):.3f}", lr=f"{lr:.3g}")
            done = batch_index + 1
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and done < self.steps_per_epoch:
                stats.seconds += time.perf_counter() - t_start
                flush()
                self._save_checkpoint(self.epoch, done, stats)
                t_start = time.perf_counter()
        stats.seconds += time.perf_counter() - t_start
        flush()
        bar.close()

    def _log_step(self, loss: torch.Tensor | None, n: int, lr: float) -> None:
        total, count = all_reduce_sum([float(loss) * n if loss is not None else 0.0, float(n)], self.info)
        if count and self.info.is_main:
            row = {"step": self.step, "epoch": self.epoch + 1, "loss": total / count, "lr": lr}
            self.logs.steps.append(row)
            if self.tb is not None:
                self.tb.add_scalar("train/loss", row["loss"], self.step)
                self.tb.add_scalar("train/lr", lr, self.step)

    def _end_epoch(self, val_loader: DataLoader) -> dict[str, float]:
        cfg, r, stats = self.cfg, self.cfg.recipe, self.partial
        loss_sum, correct, seen, skipped = all_reduce_sum([stats.loss_sum, stats.correct, stats.seen, stats.skipped],
                                                          self.info)  # fmt: skip
        deploy = self.ema.module if self.ema is not None else self.model
        # fp32 even when training under autocast: the same numbers as `mobilenets evaluate` gives for the
        # saved weights, and the same best.safetensors whichever precision trained them
        val = evaluate(deploy, val_loader, self.device, self.info, self.skipped, cfg.channels_last)
        row = {
            "epoch": self.epoch + 1, "step": self.step, "lr": self.last_lr,
            "train_loss": loss_sum / max(seen, 1), "train_top1": correct / max(seen, 1),
            "val_loss": val["loss"], "val_top1": val["top1"],
            "images_per_s": seen / max(stats.seconds, 1e-9), "epoch_seconds": stats.seconds, "skipped": int(skipped),
        }  # fmt: skip
        self.logs.epochs.append(row)
        improved = val["top1"] > self.best["top1"]
        if improved:
            self.best = {"top1": val["top1"], "epoch": self.epoch + 1}
        if self.info.is_main:
            from ..weights import save_weights

            meta = {"labels": self.classes, "source": f"mobilenets train {self.out} (recipe {r.name})",
                    "recipe": r.name, "epoch": self.epoch + 1, "val_top1": val["top1"]}  # fmt: skip
            save_weights(deploy, self.out / "last.safetensors", **meta)
            if improved:
                save_weights(deploy, self.out / "best.safetensors", **meta)
            if self.tb is not None:
                for key in ("train_loss", "train_top1", "val_loss", "val_top1", "images_per_s"):
                    self.tb.add_scalar(f"epoch/{key}", row[key], self.epoch + 1)
        self.log(f"epoch {self.epoch + 1}/{r.epochs}  loss {row['train_loss']:.4f}  train {100 * row['train_top1']:.1f}%  "
                 f"val {100 * val['top1']:.1f}% (loss {val['loss']:.4f}, best {100 * self.best['top1']:.1f}%)  "
                 f"{row['images_per_s']:.1f} img/s  {stats.seconds:.1f}s"
                 + (f"  skipped {int(skipped)}" if skipped else ""))  # fmt: skip
        return val
