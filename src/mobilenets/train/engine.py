"""One training loop for ``train`` and ``finetune``: data, model, optimiser, evaluation, checkpoints, resume, DDP.

A run directory holds::

    run.json            the configuration (written when the run starts)
    last.pt             full training state, rewritten every ``checkpoint_every`` steps and
                        at each epoch end (resume point; torch.load(weights_only=True))
    last.safetensors    weights after the latest epoch (the EMA when the recipe has one),
    best.safetensors    and those of the best val top-1 epoch, with class names: what
                        classify / evaluate / export take
    log.csv, steps.csv  per epoch and every ``log_every`` steps; tb/ for TensorBoard when
                        ``torch.utils.tensorboard`` imports (the ``[train]`` extra)

Exact resume: nothing random uses hidden state. The sample order of epoch ``e`` is
``randperm(seed + e)``; an image's augmentation is seeded by ``(seed, epoch, index)``; the
model's own randomness (dropout) by ``(seed, step, rank)``, reseeded every step. So the
checkpoint's seed, epoch and step are the complete RNG state, and a run killed at any
point continues from its last checkpoint to the same weights as an uninterrupted run.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import pickle
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..data.augment import TrainTransform
from ..data.datasets import ImageDataset, LabelledImages, SkipCorrupt, collate_skip, open_dataset
from ..data.images import load_image
from ..data.transforms import EvalTransform
from ..errors import ConfigError, ImageError, MobilenetsError
from ..models.mobilenet_v1 import MobileNetV1
from ..models.registry import mobilenet_v1, model_name
from ..utils import atomic_write
from .distributed import DistInfo, ResumableSampler, all_reduce_sum, convert_sync_batchnorm, init_distributed
from .optim import LRSchedule, ModelEma, RMSpropTF
from .recipes import Recipe

CHECKPOINT_FORMAT = "mobilenets-train-checkpoint/1"
# Fields a resumed run may change; anything else must match the checkpoint.
RESUMABLE_CHANGES = ("data", "epochs", "workers", "device", "amp", "compile", "channels_last",
                     "checkpoint_every", "log_every", "progress")  # fmt: skip


class RunError(MobilenetsError):
    """A run directory that cannot be started or resumed as asked."""


@dataclass
class TrainConfig:
    """A training run: data, model, recipe, seed, then execution settings (device, AMP, workers, logging)."""

    data: str  # folder with train/ and val/ class folders
    output: str  # run directory
    recipe: Recipe
    alpha: float
    resolution: int
    weights: str | None = None  # initial weights (fine-tuning); None = from scratch
    seed: int = 0
    workers: int = 2
    device: str | None = None  # None: cuda when available, else cpu
    amp: str = "auto"  # auto (bf16/fp16 on CUDA, off on CPU) | bf16 | fp16 | off
    compile: bool = False
    channels_last: bool = True
    sync_bn: bool = False
    checkpoint_every: int = 50  # steps between mid-epoch checkpoints; 0 = epoch ends only
    log_every: int = 10
    progress: bool = True

    @property
    def model_name(self) -> str:
        return model_name(self.alpha, self.resolution)

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["recipe"] = self.recipe.as_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        return cls(**{**d, "recipe": Recipe.from_dict(d["recipe"])})


# --- data ----------------------------------------------------------------------------------


class AugmentedImages(Dataset):
    """Train images keyed by ``(index, epoch)``; each image's augmentation is seeded by (seed, epoch, index)."""

    def __init__(self, data: LabelledImages, transform: TrainTransform, seed: int) -> None:
        self.data, self.transform, self.seed = data, transform, seed

    def __len__(self) -> int:
        return len(self.data.samples)

    def __getitem__(self, key: tuple[int, int]):
        index, epoch = key
        path, label = self.data.samples[index]
        try:
            img = load_image(path)
        except ImageError as e:
            return e
        return self.transform(img, np.random.default_rng([self.seed, epoch, index])), label


def train_transform(recipe: Recipe, resolution: int) -> TrainTransform:
    return TrainTransform(resolution, recipe.area_range, recipe.aspect_range, recipe.min_object_covered,
                          flip=recipe.flip, brightness=recipe.brightness, saturation=recipe.saturation)  # fmt: skip


def open_split(data_dir: str | Path, split: str, classes: list[str] | None = None) -> LabelledImages:
    """``DIR/train`` or ``DIR/val`` as class folders; one-line errors for missing or empty data."""
    root = Path(data_dir)
    if not root.is_dir():
        raise MobilenetsError(
            f"{root}: no such folder (expected {root}/train/<class>/*.jpg and {root}/val/<class>/*.jpg)"
        )
    folder = root / split
    if not folder.is_dir():
        raise MobilenetsError(f"{folder}: no such folder (expected {root}/{split}/<class>/*.jpg)")
    ds = open_dataset(folder, classes=classes)
    if ds.layout not in ("class-folders", "imagenet-folders"):
        raise MobilenetsError(f"{folder}: expected one folder per class, found loose image files")
    return ds


# --- model ---------------------------------------------------------------------------------


def build_train_model(cfg: TrainConfig, train_data: LabelledImages, info: DistInfo | None = None,
                      init_weights: bool = True, workers: int = 0) -> MobileNetV1:  # fmt: skip
    """The model for ``cfg``: from ``cfg.weights`` (a new head for ``train_data``'s classes) or from scratch.

    ``init_weights=False`` builds the architecture only (a checkpoint will fill it).
    """
    r, classes, info = cfg.recipe, list(train_data.classes), info or DistInfo()
    torch.manual_seed(cfg.seed)  # the same init on every rank and every rerun
    if cfg.weights and init_weights:
        from ..weights import build_model, read_weights

        w = read_weights(cfg.weights)
        model = build_model(w, resolution=cfg.resolution, dropout=r.dropout)  # with the source head, if any
        if w.labels != classes or w.num_classes != len(classes):
            mapped = None
            if r.head_init == "source" and w.num_classes:
                mapped = source_mapped_head(model, train_data, cfg.resolution, info, workers)
            model.reset_classifier(len(classes))
            if mapped is not None:
                model.classifier.weight.data.copy_(mapped[0].view_as(model.classifier.weight))
                model.classifier.bias.data.copy_(mapped[1])
            elif r.head_init != "random":  # "zeros", or "source" from weights without a classifier
                nn.init.zeros_(model.classifier.weight)
    else:
        model = mobilenet_v1(alpha=cfg.alpha, resolution=cfg.resolution, num_classes=len(classes), dropout=r.dropout)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 1.0 - r.bn_decay  # PyTorch momentum is the weight of the new value
            m.weight.requires_grad_(r.train_bn_gamma)
    if r.freeze_backbone:
        model.features.requires_grad_(False)
    return model


@torch.inference_mode()
def source_mapped_head(model: MobileNetV1, data: LabelledImages, resolution: int, info: DistInfo,
                       workers: int = 0) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """A new head from the source classifier: row k = source rows weighted by the source model's mean softmax
    over class k's train images (a label mapping learned from the data, no class names needed).

    On hymenoptera this head alone scores 92% val before any training (ants -> 'ant', bees -> 'bee');
    a zero or random head starts at chance.
    """
    k = len(data.classes)
    sums = torch.zeros(k, model.num_classes, dtype=torch.float64)
    counts = torch.zeros(k, dtype=torch.float64)
    model.eval()
    for x, y, _ in eval_loader(data, resolution, workers, info):  # unreadable images: counted by the trainer later
        if x is None:
            continue
        sums.index_add_(0, y, model(x).softmax(1).double())
        counts += torch.bincount(y, minlength=k).double()
    if info.enabled:
        import torch.distributed as dist

        dist.all_reduce(sums)
        dist.all_reduce(counts)
    mean = sums / counts.clamp(min=1)[:, None]
    weight = model.classifier.weight.detach().flatten(1).double()
    return (mean @ weight).float(), (mean @ model.classifier.bias.detach().double()).float()


def set_train_mode(model: nn.Module, recipe: Recipe) -> None:
    """``model.train()``, with BN in eval mode where the recipe freezes it (frozen BN or backbone)."""
    model.train()
    if recipe.bn_mode == "frozen" or recipe.freeze_backbone:
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()


def param_groups(model: nn.Module, recipe: Recipe, lr: float) -> list[dict[str, Any]]:
    """Trainable parameters split by weight decay (conv kernels, depthwise per recipe) and head/backbone lr."""
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        kernel = name.endswith("conv.weight") or name == "classifier.weight"
        decay = kernel and (recipe.decay_depthwise or "_depthwise." not in name)
        groups.setdefault((name.startswith("classifier."), decay), []).append(p)
    return [
        {"params": ps, "lr": lr * (1.0 if head else recipe.backbone_lr_scale),
         "weight_decay": recipe.weight_decay if decay else 0.0}
        for (head, decay), ps in sorted(groups.items())
    ]  # fmt: skip


def make_optimizer(model: nn.Module, recipe: Recipe, lr: float) -> torch.optim.Optimizer:
    groups = param_groups(model, recipe, lr)
    if recipe.optimizer == "rmsprop_tf":
        return RMSpropTF(groups, lr, rho=recipe.rmsprop_decay, momentum=recipe.momentum, eps=recipe.eps)
    return torch.optim.SGD(groups, lr, momentum=recipe.momentum, nesterov=recipe.nesterov)


def make_schedule(recipe: Recipe, steps_per_epoch: int, num_train: int, global_batch: int) -> LRSchedule:
    # slim: decay_steps = int(num_samples_per_epoch * num_epochs_per_decay / batch_size)
    return LRSchedule(
        kind=recipe.schedule,
        total_steps=recipe.epochs * steps_per_epoch,
        warmup_steps=round(recipe.warmup_epochs * steps_per_epoch),
        decay_steps=max(1, int(num_train * recipe.decay_epochs / global_batch)),
        decay_rate=recipe.decay_rate,
        min_ratio=recipe.min_lr_ratio,
    )


def native_cpu_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), where oneDNN's bf16 kernels win."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype. ``auto``: bf16 on CUDA (fp16 without bf16 support) and on CPUs with native bf16.

    Measured for 1.0_224 at batch 32 (benchmarks/train_throughput.json): on an AVX512-BF16
    CPU bf16 autocast trains faster than fp32; on an AVX2 CPU it was ~12x slower, so
    there auto stays fp32.
    """
    if amp == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if device.type == "cpu" and native_cpu_bf16() else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[amp]


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


def keep_freed_memory() -> bool:
    """glibc only: serve big tensors from the heap and keep freed memory for reuse (process-wide).

    By default glibc maps big blocks (always those over 32 MB) fresh from the kernel and
    unmaps them on free, so each training step page-faults its activations in again: a
    quarter of a CPU step for 1.0_224 at batch 32 (benchmarks/train_throughput.json).
    jemalloc or tcmalloc avoid this for PyTorch CPU training; ``mallopt`` does it with
    glibc. The cost: freed memory returns to the OS only when the process ends. False
    where it does not apply.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if sys.platform != "linux" or name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        m_trim_threshold, m_mmap_max = -1, -4  # <malloc.h>
        return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))
    except (OSError, AttributeError):  # not glibc
        return False


def step_seed(seed: int, step: int, rank: int) -> int:
    """The seed of the model's own randomness (dropout) at one step on one rank."""
    return ((seed * 1_000_003 + step) * 1_009 + rank) & 0x7FFF_FFFF_FFFF_FFFF


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


def eval_loader(data: LabelledImages, resolution: int, workers: int, info: DistInfo) -> DataLoader:
    ds = ImageDataset(data, EvalTransform(resolution))
    return DataLoader(ds, batch_size=64, sampler=range(info.rank, len(ds), info.world_size), num_workers=workers,
                      collate_fn=collate_skip, persistent_workers=workers > 0)  # fmt: skip


def evaluate_weights(weights: str | Path, data_dir: str | Path, workers: int = 2) -> dict[str, float]:
    """Top-1 of a saved weights file on ``DIR/val`` with the reference eval transform (single process)."""
    from ..weights import build_model, read_weights

    model = build_model(read_weights(weights))
    labels = model.pretrained_cfg.get("labels")
    val = open_split(data_dir, "val", classes=labels)
    loader = eval_loader(val, model.default_resolution, workers, DistInfo())
    return evaluate(model, loader, torch.device("cpu"), DistInfo(), SkipCorrupt())


# --- the run -------------------------------------------------------------------------------


def check_run_dir(output: Path, resume: bool) -> dict[str, Any] | None:
    """The checkpoint to resume from (or None for a new run); refuses to overwrite another run."""
    ckpt = output / "last.pt"
    if resume:
        if not ckpt.is_file():
            raise RunError(f"{output}: no checkpoint to resume (last.pt missing); start the run without --resume")
        try:
            state = torch.load(ckpt, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as e:  # foreign or damaged
            raise RunError(
                f"{ckpt}: not a readable checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
            ) from None
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise RunError(f"{ckpt}: not a mobilenets training checkpoint")
        return state
    if output.exists() and not output.is_dir():
        raise RunError(f"{output}: exists and is not a folder")
    if output.is_dir() and any(output.iterdir()):
        what = "holds another run" if (output / "run.json").exists() or ckpt.exists() else "is not empty"
        raise RunError(f"{output}: {what}; pass --resume to continue it, or choose another --output")
    return None


def merge_resume_config(saved: TrainConfig, given: dict[str, Any]) -> TrainConfig:
    """The saved configuration with the allowed changes from ``given`` (explicitly passed options)."""
    current = {**saved.as_dict(), **{k: v for k, v in saved.recipe.as_dict().items()}}
    conflicts = [k for k, v in given.items() if k not in RESUMABLE_CHANGES and k in current and current[k] != v]
    if conflicts:
        raise RunError(f"--resume: {', '.join(sorted(conflicts))} differ from the run being resumed "
                       f"(only {', '.join(RESUMABLE_CHANGES)} may change)")  # fmt: skip
    cfg = dataclasses.replace(saved, **{k: v for k, v in given.items() if k in RESUMABLE_CHANGES and k != "epochs"})
    if "epochs" in given:
        cfg = dataclasses.replace(cfg, recipe=cfg.recipe.with_overrides(epochs=given["epochs"]))
    return cfg


@dataclass
class _EpochStats:
    loss_sum: float = 0.0
    correct: float = 0.0
    seen: float = 0.0
    skipped: float = 0.0
    seconds: float = 0.0


@dataclass
class _Logs:
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


def train(cfg: TrainConfig, resume: bool = False, given: dict[str, Any] | None = None,
          log: Callable[[str], None] | None = None) -> dict[str, Any]:  # fmt: skip
    """Run (or resume) training; returns the summary (val top-1, epochs, seconds, weights path).

    Under torchrun every process calls this; rank 0 logs and writes. ``given`` are the
    options passed explicitly when resuming (checked against the saved run).
    """
    info = init_distributed(cfg.device)
    if info.device.type == "cpu":
        keep_freed_memory()
    try:
        return _Trainer(cfg, info, resume, given or {}, log or _stderr).run()
    finally:
        if info.enabled:
            import torch.distributed as dist

            dist.destroy_process_group()


def _stderr(line: str) -> None:
    from tqdm import tqdm

    tqdm.write(line, file=sys.stderr)


class _Trainer:
    def __init__(self, cfg: TrainConfig, info: DistInfo, resume: bool, given: dict[str, Any],
                 log: Callable[[str], None]) -> None:  # fmt: skip
        self.info, self.out = info, Path(cfg.output)
        self.log = log if info.is_main else (lambda line: None)
        self.state = check_run_dir(self.out, resume)
        if info.enabled:  # every rank has checked the folder before rank 0 writes into it
            import torch.distributed as dist

            dist.barrier()
        if self.state is not None:
            cfg = merge_resume_config(TrainConfig.from_dict(self.state["config"]), given)
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
        self.logs, self.partial, self.elapsed = _Logs(), _EpochStats(), 0.0
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
        self.model.load_state_dict(s["model"])
        self.optimizer.load_state_dict(s["optimizer"])
        # the schedule itself is rebuilt from the config (which may extend the epochs); only the counters load
        self.scheduler.load_state_dict({**s["scheduler"], "lr_lambdas": [None] * len(self.optimizer.param_groups)})
        if self.ema is not None:
            self.ema.load_state_dict(s["ema"])
        if self.scaler is not None and s.get("scaler"):
            self.scaler.load_state_dict(s["scaler"])
        self.epoch, self.start_batch, self.step = s["epoch"], s["batch_in_epoch"], s["step"]
        self.best, self.elapsed = s["best"], s["seconds"]
        self.logs = _Logs(s["logs"]["epochs"], s["logs"]["steps"])
        if self.info.is_main:  # the saved partial sums are already reduced over ranks: count them once
            self.partial = _EpochStats(**s["partial"])
        else:
            self.partial = _EpochStats(seconds=s["partial"]["seconds"])
        if s["world_size"] != self.info.world_size:
            self.log(f"note: resuming a {s['world_size']}-process run on {self.info.world_size}; "
                     "the sample order is the same, float sums may differ")  # fmt: skip

    def _save_checkpoint(self, epoch: int, batch_in_epoch: int, partial: _EpochStats) -> None:
        # every rank calls this at the same step: the partial sums are reduced first
        sums = all_reduce_sum([partial.loss_sum, partial.correct, partial.seen, partial.skipped], self.info)
        if not self.info.is_main:
            return
        state = {
            "format": CHECKPOINT_FORMAT,
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
            "partial": dataclasses.asdict(_EpochStats(*sums, seconds=partial.seconds)),
            "logs": {"epochs": self.logs.epochs, "steps": self.logs.steps},
        }
        self.logs.write(self.out)
        with atomic_write(self.out / "last.pt") as tmp:
            torch.save(state, tmp)

    # -- loop -----------------------------------------------------------------------------

    def _loader(self) -> DataLoader:
        cfg = self.cfg
        ds = AugmentedImages(self.train_data, train_transform(cfg.recipe, cfg.resolution), cfg.seed)
        return DataLoader(ds, batch_size=cfg.recipe.batch_size // self.info.world_size, sampler=self.sampler,
                          num_workers=cfg.workers, collate_fn=collate_skip, persistent_workers=cfg.workers > 0,
                          pin_memory=self.device.type == "cuda", drop_last=True)  # fmt: skip

    def run(self) -> dict[str, Any]:
        cfg, r, info = self.cfg, self.cfg.recipe, self.info
        self.t0 = time.perf_counter()
        if info.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            for stale in self.out.glob(".*.tmp"):  # temp files of a write that a kill interrupted
                stale.unlink(missing_ok=True)
            with atomic_write(self.out / "run.json") as tmp:
                tmp.write_text(json.dumps({"config": cfg.as_dict(), "classes": self.classes}, indent=1))
        self.tb = self._tensorboard()
        what = "resuming" if self.state else "training"
        self.log(f"{what} {cfg.model_name} on {len(self.train_data)} images ({len(self.classes)} classes), "
                 f"val {len(self.val_data)}; recipe {r.name}, {r.epochs} epochs x {self.steps_per_epoch} steps, "
                 f"batch {r.batch_size} ({info.world_size} process{'es' if info.enabled else ''}), lr {self.lr:g}, "
                 f"{self.device.type}{', amp ' + str(self.amp_dtype).split('.')[-1] if self.amp_dtype else ''}"
                 + (f"; from epoch {self.epoch + 1} step {self.start_batch}" if self.state else ""))  # fmt: skip
        self._warn_slow_bn()
        train_loader = self._loader()
        val_loader = eval_loader(self.val_data, cfg.resolution, cfg.workers, info)
        last_val: dict[str, float] | None = None
        while self.epoch < r.epochs:
            self._train_epoch(train_loader)
            last_val = self._end_epoch(val_loader)
            self.epoch, self.start_batch, self.partial = self.epoch + 1, 0, _EpochStats()
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
                    "recipe": r.name, "epoch": self.epoch + 1, "val_top1": val["top1"], "crop_fraction": 0.875}  # fmt: skip
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
