"""Segmentation training: DeepLab v3 on VOC-layout data, DeepLab's augmentation, loss and poly schedule, exact resume.

from mobilenets.train.segment import finetune_segmentation, resume_segmentation
s = finetune_segmentation("voc2012_seg_samples", "mobilenet_v1_0.25_224_1_default_1.tflite", "runs/seg",
                          epochs=150, crop_size=193, limit=10)    # benchmarks/train_segment.md
s["start_miou"], s["val_miou"], s["best_miou"]       # before training, after the last epoch, best epoch
s = resume_segmentation("runs/seg")                   # after a kill: continues to the same weights

The recipe is DeepLab's (tensorflow/models research/deeplab ``train.py``, ``utils/train_utils.py``,
``input_preprocess.py``): random scale in [0.5, 2.0] (image bilinear, label nearest), pad to
the crop (image with the mean pixel, label with 255), random crop, random left-right flip;
the scale is relative to the contract's input, as the model will see images: eval (and the
Predictor) resize the whole image to N x N (N = ``eval_size``), so scale s trains on the
image resized to sN x sN (DeepLab evaluates at the image's own size instead, so it scales that);
per-pixel cross-entropy with label 255 ignored, averaged over the pixels that count; L2 4e-5
on conv kernels, ``poly`` learning rate ``lr * (1 - step / total) ** 0.9``. The optimiser is
Adam (lr 3e-4) by default, not DeepLab's SGD + momentum 0.9 (lr 0.007, 30k steps at batch 16;
``optimizer="sgd"``): measured on 10 VOC pairs from the 0.25_224 ImageNet float file (crop 129,
batch 4, 120 steps), Adam 3e-4 reaches mIoU 0.44 while SGD at 0.003 still predicts background
everywhere (0.10), and SGD at 0.007 cannot even overfit one batch on a .tflite backbone (BN
folded: no normalisation left in it). From a pretrained DeepLab file use a low rate (~1e-5). See benchmarks/train_segment.md.

Initial weights (``weights=``): an ImageNet MobileNet v1 file (any format `weights.read_weights`
reads; its ``features.*`` become ``backbone.features.*``, the head starts random), a DeepLab
file (Google's ``deeplabv3.tflite`` or our safetensors; the logits are kept when the class
count matches) or nothing (random init).

BN: ``bn_mode="head"`` (default) keeps the backbone's BN frozen (a .tflite import has BN
folded into its convs: batch statistics would re-normalise features the weights no longer
expect) and trains the head's BN with decay ``bn_decay`` (0.9: a short run must move the
moving statistics that eval mode uses; DeepLab's 0.9997 needs ~10^4 steps); ``"frozen"``
freezes all BN; ``"train"`` trains all.

Run directory: ``run.json`` ({"task": "segment", "config", "classes"}), ``last.pt`` (the training
state, `checkpoint.save_checkpoint`, every ``checkpoint_every`` steps and each epoch end),
``last.safetensors`` / ``best.safetensors`` (best val mIoU) with the DeepLab contract, so
`builder.model_from_weights` and `auto.load_predictor` rebuild them; ``log.csv``, ``steps.csv``.

Exact resume as the classification engine: epoch ``e``'s order is ``randperm(seed + e)``, a
crop's augmentation is seeded by ``(seed, epoch, index)``, dropout by ``(seed, step)`` reseeded
every step; a run killed at any point continues to the weights of an uninterrupted run
(bit-equal with the same thread count; one thread for a comparison across processes).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..data.images import load_image
from ..data.transforms import EvalTransform
from ..data.voc import IGNORE_INDEX, find_segmentation_data, read_voc_mask
from ..errors import ConfigError, ImageError, MobilenetsError
from ..models.deeplab import DeepLabV3, deeplab_cfg
from ..utils import atomic_write
from .checkpoint import RunError, RunLogs, check_new_run_dir, load_checkpoint, restore_checkpoint, save_checkpoint
from .distributed import DistInfo, ResumableSampler
from .engine import log_to_stderr, step_seed

TASK = "segment"
BACKBONES = ("mobilenet_v1", "mobilenet_v2")
BN_MODES = ("head", "frozen", "train")
# Fields a resumed run may change; anything else must match the checkpoint.
RESUMABLE_CHANGES = ("data", "val_data", "epochs", "workers", "device", "threads", "checkpoint_every", "log_every",
                     "eval_every", "progress")  # fmt: skip


@dataclass
class SegmentConfig:
    """One segmentation run as plain data: data, model, DeepLab's recipe, seed, execution settings."""

    data: str  # VOC layout (JPEGImages/ + SegmentationClass/) or N_image/N_target pairs
    output: str  # run directory
    weights: str | None = None  # initial weights; None = random init
    backbone: str = "mobilenet_v1"  # from the weights when they say (MobileNet v1 or a DeepLab file)
    alpha: float = 1.0  # backbone width; from the weights when they say
    output_stride: int = 16
    num_classes: int = 21
    atrous_rates: tuple[int, ...] = ()  # () = no atrous ASPP branches (DeepLab's MobileNet setting)
    train_split: str = "train"  # ImageSets/Segmentation/<split>.txt of a VOC layout (pairs: all)
    val_data: str | None = None  # None: evaluate on the training pairs
    val_split: str = "val"
    limit: int | None = None  # use only the first N training pairs (and val pairs when val_data is None)
    # recipe
    epochs: int = 30
    batch_size: int = 4
    crop_size: int = 257  # square train crop (DeepLab: 513 = 8k + 1)
    eval_size: int | None = None  # the contract's input side (whole image resized); None = crop_size
    optimizer: str = "adam"  # adam | sgd (DeepLab's, with momentum: for long runs, see the module docstring)
    lr: float = 3e-4  # peak rate of the poly schedule (DeepLab's SGD: 0.007 at batch 16)
    poly_power: float = 0.9
    momentum: float = 0.9
    weight_decay: float = 4e-5
    min_scale: float = 0.5
    max_scale: float = 2.0
    flip: bool = True
    dropout: float = 0.1
    bn_mode: str = "head"
    bn_decay: float = 0.9
    seed: int = 0
    # execution
    workers: int = 0
    device: str | None = None  # None: cuda when available, else cpu
    threads: int | None = None  # torch.set_num_threads (1 for bit-equal runs across processes)
    checkpoint_every: int = 20  # steps between mid-epoch checkpoints; 0 = epoch ends only
    log_every: int = 5
    eval_every: int = 1  # epochs between val mIoU evaluations (and the last epoch always)
    progress: bool = True

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["atrous_rates"] = list(self.atrous_rates)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SegmentConfig:
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        return cls(**{**d, "atrous_rates": tuple(d.get("atrous_rates") or ())})

    def check(self) -> None:
        if self.backbone not in BACKBONES:
            raise ConfigError(f"backbone must be one of {', '.join(BACKBONES)}, got {self.backbone!r}")
        if self.optimizer not in ("sgd", "adam"):
            raise ConfigError(f"optimizer must be sgd or adam, got {self.optimizer!r}")
        if self.bn_mode not in BN_MODES:
            raise ConfigError(f"bn_mode must be one of {', '.join(BN_MODES)}, got {self.bn_mode!r}")
        if self.batch_size < 2 and self.bn_mode != "frozen":
            raise ConfigError("batch_size must be >= 2 when BN trains (bn_mode='frozen' allows 1)")
        if not 0 < self.min_scale <= self.max_scale:
            raise ConfigError(f"scale range [{self.min_scale}, {self.max_scale}] is empty")
        if self.crop_size < 16 or self.epochs < 1 or self.lr <= 0:
            raise ConfigError("crop_size must be >= 16, epochs >= 1 and lr > 0")


FIELDS = frozenset(f.name for f in fields(SegmentConfig))


def segment_config(data: str | Path, output: str | Path, **settings: Any) -> SegmentConfig:
    """A `SegmentConfig` from keyword settings; an unknown name is a one-line `ConfigError`."""
    unknown = sorted(set(settings) - FIELDS)
    if unknown:
        raise ConfigError(f"unknown segmentation training setting(s) {', '.join(unknown)}; "
                          f"known: {', '.join(sorted(FIELDS - {'data', 'output'}))}")  # fmt: skip
    if settings.get("weights") is not None:
        settings["weights"] = str(settings["weights"])
    if "atrous_rates" in settings:
        settings["atrous_rates"] = tuple(int(r) for r in settings["atrous_rates"] or ())
    cfg = SegmentConfig(data=str(data), output=str(output), **settings)
    cfg.check()
    return cfg


def parse_setting(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` -> (key, value typed by the `SegmentConfig` field), for ``--set``."""
    key, sep, raw = text.partition("=")
    key = key.strip().replace("-", "_")
    types = {f.name: str(f.type) for f in fields(SegmentConfig)}
    if not sep or key not in types or key in ("data", "output"):
        raise ConfigError(f"--set expects KEY=VALUE with KEY a segmentation setting, got {text!r}")
    kind = types[key]
    try:
        if raw.lower() == "none" and "None" in kind:
            return key, None
        if kind.startswith("tuple"):
            return key, tuple(int(v) for v in raw.split(",") if v.strip())
        if kind == "bool":
            if raw.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return key, raw.lower() in ("true", "1")
        if kind.startswith("int"):
            return key, int(raw)
        if kind.startswith("float"):
            return key, float(raw)
        return key, raw
    except ValueError:
        raise ConfigError(f"--set {key}: cannot read {raw!r} as {kind}") from None


# --- data ------------------------------------------------------------------------------------


def training_pairs(cfg: SegmentConfig) -> list[tuple[Path, Path]]:
    pairs = find_segmentation_data(cfg.data, cfg.train_split).pairs
    pairs = pairs[: cfg.limit] if cfg.limit else pairs
    if len(pairs) < cfg.batch_size:
        raise ConfigError(f"{cfg.data}: {len(pairs)} image/mask pairs, fewer than the batch size {cfg.batch_size}")
    return pairs


def validation_pairs(cfg: SegmentConfig) -> list[tuple[Path, Path]]:
    if cfg.val_data is None:
        return training_pairs(cfg)
    pairs = find_segmentation_data(cfg.val_data, cfg.val_split).pairs
    if not pairs:
        raise ConfigError(f"{cfg.val_data}: no image/mask pairs to validate on")
    return pairs


class SegmentationCrops(Dataset):
    """Training crops keyed by ``(index, epoch)``; each crop's augmentation is seeded by (seed, epoch, index)."""

    def __init__(self, pairs: list[tuple[Path, Path]], cfg: SegmentConfig, mean: tuple, std: tuple) -> None:
        self.pairs, self.cfg = pairs, cfg
        self.mean, self.std = np.asarray(mean, np.float32), np.asarray(std, np.float32)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, epoch = key
        cfg = self.cfg
        img_path, mask_path = self.pairs[index]
        photo = load_image(img_path)
        mask = read_voc_mask(mask_path, cfg.num_classes)
        if mask.shape != (photo.height, photo.width):
            raise ImageError(f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]}, its image "
                             f"{photo.width}x{photo.height}")  # fmt: skip
        rng = np.random.default_rng([cfg.seed, epoch, index])
        # relative to the contract: eval resizes the whole image to N x N (N = eval_size), so scale 1 is N x N
        side = max(1, round((cfg.eval_size or cfg.crop_size) * float(rng.uniform(cfg.min_scale, cfg.max_scale))))
        w = h = side
        img = np.asarray(photo.resize((w, h), Image.BILINEAR), np.float32) / 255.0
        lab = np.asarray(Image.fromarray(mask).resize((w, h), Image.NEAREST), np.uint8)
        c = cfg.crop_size
        ph, pw = max(c - h, 0), max(c - w, 0)
        if ph or pw:  # DeepLab pads the image with the mean pixel (0 after normalising), the label with 255
            img = np.concatenate([img, np.broadcast_to(self.mean, (ph, w, 3))], 0) if ph else img
            img = np.concatenate([img, np.broadcast_to(self.mean, (h + ph, pw, 3))], 1) if pw else img
            lab = np.pad(lab, ((0, ph), (0, pw)), constant_values=IGNORE_INDEX)
        y0 = int(rng.integers(0, img.shape[0] - c + 1))
        x0 = int(rng.integers(0, img.shape[1] - c + 1))
        img, lab = img[y0 : y0 + c, x0 : x0 + c], lab[y0 : y0 + c, x0 : x0 + c]
        if cfg.flip and rng.random() < 0.5:
            img, lab = img[:, ::-1], lab[:, ::-1]
        x = (img - self.mean) / self.std
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1))), torch.from_numpy(lab.astype(np.int64))


# --- model -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PolySchedule:
    """DeepLab's ``poly`` learning-rate factor for ``LambdaLR``: ``(1 - step / total) ** power`` (plain data)."""

    total_steps: int
    power: float = 0.9

    def __call__(self, step: int) -> float:
        return max(0.0, 1.0 - min(step, self.total_steps) / max(self.total_steps, 1)) ** self.power


def source_state(cfg: SegmentConfig) -> tuple[dict[str, Any], dict[str, torch.Tensor], str]:
    """(architecture overrides, state dict in DeepLabV3 naming, what it is) of ``cfg.weights``."""
    from ..weights import read_weights

    w = read_weights(cfg.weights)
    arch = w.cfg.arch if w.cfg is not None else "mobilenet_v1"
    if arch == "mobilenet_v1":
        state = {f"backbone.{k}": v for k, v in w.state_dict.items() if k.startswith("features.")}
        return {"backbone": "mobilenet_v1", "alpha": w.alpha}, state, "ImageNet MobileNet v1 backbone"
    if arch.startswith("deeplabv3_"):
        a = w.cfg.arch_cfg
        arch_kw = {"backbone": a.get("backbone", arch.removeprefix("deeplabv3_")),
                   "alpha": float(a.get("depth_multiplier", w.alpha))}  # fmt: skip
        state = dict(w.state_dict)
        if w.cfg.num_classes != cfg.num_classes:
            state = {k: v for k, v in state.items() if not k.startswith("logits.")}
        return arch_kw, state, "DeepLab model"
    raise ConfigError(f"{cfg.weights}: weights of architecture {arch!r} cannot start a DeepLab run "
                      "(MobileNet v1 or DeepLab weights)")  # fmt: skip


def build_segment_model(cfg: SegmentConfig, init_weights: bool = True) -> tuple[DeepLabV3, SegmentConfig, str]:
    """The `DeepLabV3` of ``cfg`` (with ``cfg.weights`` loaded unless ``init_weights=False``), ``cfg`` with the
    architecture the weights fix, and a line saying what was loaded."""
    state, what = None, "random init"
    if cfg.weights and init_weights:
        arch_kw, state, what = source_state(cfg)
        cfg = dataclasses.replace(cfg, **arch_kw)
    torch.manual_seed(cfg.seed)  # the same head init on every rerun
    model = DeepLabV3(cfg.backbone, cfg.alpha, cfg.num_classes, cfg.output_stride,
                      atrous_rates=cfg.atrous_rates or None, dropout=cfg.dropout)  # fmt: skip
    if state is not None:
        own = model.state_dict()
        for k, t in state.items():
            if k in own and own[k].shape != t.shape:
                raise ConfigError(f"{cfg.weights}: tensor {k!r} has shape {tuple(t.shape)}, the model needs "
                                  f"{tuple(own[k].shape)} (alpha={cfg.alpha:g}, {cfg.num_classes} classes)")  # fmt: skip
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or any(k.startswith("backbone.") for k in missing):
            raise ConfigError(f"{cfg.weights}: weights do not fit DeepLabV3 (missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]})")  # fmt: skip
    for name, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d) and not name.startswith("backbone."):
            m.momentum = 1.0 - cfg.bn_decay  # PyTorch momentum is the weight of the new value
    model.pretrained_cfg = model_contract(cfg)
    return model, cfg, what


def model_contract(cfg: SegmentConfig, source: str | None = None):
    """The DeepLab `PretrainedCfg` the run's weights are saved with: whole image resized to ``eval_size``."""
    c = deeplab_cfg(cfg.backbone, cfg.alpha, cfg.num_classes, cfg.output_stride, cfg.atrous_rates,
                    resolution=cfg.eval_size or cfg.crop_size)  # fmt: skip
    recipe = (f"mobilenets train --task segment: DeepLab recipe, {cfg.epochs} epochs, batch {cfg.batch_size}, "
              f"crop {cfg.crop_size}, lr {cfg.lr:g} poly {cfg.poly_power:g}, scale [{cfg.min_scale:g}, "
              f"{cfg.max_scale:g}]")  # fmt: skip
    return c.replace(source=source or f"mobilenets train --task segment {cfg.output}", recipe=recipe)


def set_train_mode(model: DeepLabV3, bn_mode: str) -> None:
    model.train()
    for name, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d) and (
            bn_mode == "frozen" or (bn_mode == "head" and name.startswith("backbone."))
        ):
            m.eval()


def make_optimizer(model: nn.Module, cfg: SegmentConfig) -> torch.optim.Optimizer:
    """SGD + momentum; L2 on conv kernels (DeepLab's slim arg scope: depthwise kernels too), not on BN or biases."""
    decay, rest = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if name.endswith("weight") and p.ndim == 4 else rest).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, cfg.lr)
    return torch.optim.SGD(groups, cfg.lr, momentum=cfg.momentum)


# --- evaluation --------------------------------------------------------------------------------


@torch.inference_mode()
def evaluate_miou(
    model: DeepLabV3, pairs: list[tuple[Path, Path]], device: torch.device | str = "cpu"
) -> dict[str, Any]:
    """mIoU of ``model`` as `tasks.segment.evaluate_segmentation` computes it with a Predictor: the contract's
    eval transform, logits resized back (align_corners), arg-max, one confusion matrix, 255 ignored."""
    from ..tasks.segment import confusion_update, logits_to_mask

    was_training = model.training
    model.eval()
    transform = EvalTransform.from_cfg(model.pretrained_cfg)
    k = model.num_classes
    cm = np.zeros((k, k), np.int64)
    for img_path, mask_path in pairs:
        truth = read_voc_mask(mask_path, k)
        photo = load_image(img_path, decode=transform.decode)
        logits = model(transform(photo)[None].to(device)).float()[0].cpu().numpy()
        confusion_update(cm, truth, logits_to_mask(logits, truth.shape))
    model.train(was_training)
    cmf = cm.astype(np.float64)
    tp = np.diag(cmf)
    union = cmf.sum(0) + cmf.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
    miou = float(np.nanmean(iou)) if np.isfinite(iou).any() else 0.0
    return {"miou": miou, "pixel_acc": float(tp.sum() / max(cmf.sum(), 1)), "count": len(pairs)}


# --- the loop ------------------------------------------------------------------------------------


class SegmentTrainer:
    """One segmentation run: ``SegmentTrainer(cfg, state).run()`` from the start (``state=None``) or a checkpoint."""

    def __init__(self, cfg: SegmentConfig, state: dict[str, Any] | None = None, log=None) -> None:
        self.log = log or log_to_stderr
        self.state, self.out = state, Path(cfg.output)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model, self.cfg, self.source = build_segment_model(cfg, init_weights=state is None)
        self.model.to(self.device)
        self.train_pairs, self.val_pairs = training_pairs(self.cfg), validation_pairs(self.cfg)
        self.info = DistInfo(device=self.device)
        self.sampler = ResumableSampler(len(self.train_pairs), self.cfg.batch_size, self.info, self.cfg.seed)
        self.steps_per_epoch = self.sampler.batches_per_epoch
        self.optimizer = make_optimizer(self.model, self.cfg)
        schedule = PolySchedule(self.cfg.epochs * self.steps_per_epoch, self.cfg.poly_power)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        self.criterion = nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX)
        self.epoch, self.start_batch, self.step, self.elapsed = 0, 0, 0, 0.0
        self.best = {"miou": -1.0, "epoch": 0}
        self.start_val: dict[str, Any] | None = None
        self.logs, self.partial = RunLogs(), {"loss_sum": 0.0, "seen": 0.0, "seconds": 0.0}
        if state is not None:
            restore_checkpoint(state, self.model, self.optimizer, self.scheduler, None, None)
            self.epoch, self.start_batch, self.step = state["epoch"], state["batch_in_epoch"], state["step"]
            self.best, self.elapsed, self.start_val = state["best"], state["seconds"], state["start_val"]
            self.partial = dict(state["partial"])
            self.logs = RunLogs(state["logs"]["epochs"], state["logs"]["steps"])

    def _save_checkpoint(self, epoch: int, batch_in_epoch: int) -> None:
        state = {
            "task": TASK, "config": self.cfg.as_dict(), "classes": list(self.model.pretrained_cfg.labels or ()),
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "epoch": epoch, "batch_in_epoch": batch_in_epoch,
            "step": self.step, "world_size": 1, "best": self.best, "start_val": self.start_val,
            "seconds": self.elapsed + (time.perf_counter() - self.t0), "partial": dict(self.partial),
            "logs": {"epochs": self.logs.epochs, "steps": self.logs.steps},
        }  # fmt: skip
        self.logs.write(self.out)
        save_checkpoint(self.out / "last.pt", state)

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        self.t0 = time.perf_counter()
        prepare_segment_run_dir(self.out, cfg, list(self.model.pretrained_cfg.labels or ()))
        what = "resuming" if self.state else "training"
        self.log(f"{what} {self.model.name} (output stride {cfg.output_stride}, {self.source}) on "
                 f"{len(self.train_pairs)} image/mask pairs, val {len(self.val_pairs)}; {cfg.epochs} epochs x "
                 f"{self.steps_per_epoch} steps, batch {cfg.batch_size}, crop {cfg.crop_size}, lr {cfg.lr:g} poly, "
                 f"bn {cfg.bn_mode}, {self.device.type}"
                 + (f"; from epoch {self.epoch + 1} step {self.start_batch}" if self.state else ""))  # fmt: skip
        if self.start_val is None:
            self.start_val = evaluate_miou(self.model, self.val_pairs, self.device)
            self.log(f"before training: val mIoU {100 * self.start_val['miou']:.2f}  "
                     f"pixel acc {100 * self.start_val['pixel_acc']:.2f}")  # fmt: skip
        mean, std = self.model.pretrained_cfg.mean, self.model.pretrained_cfg.std
        loader = DataLoader(SegmentationCrops(self.train_pairs, cfg, mean, std), batch_size=cfg.batch_size,
                            sampler=self.sampler, num_workers=cfg.workers, drop_last=True,
                            persistent_workers=cfg.workers > 0)  # fmt: skip
        last_val = None
        while self.epoch < cfg.epochs:
            self._train_epoch(loader)
            last_val = self._end_epoch()
            self.epoch, self.start_batch = self.epoch + 1, 0
            self.partial = {"loss_sum": 0.0, "seen": 0.0, "seconds": 0.0}
            self._save_checkpoint(self.epoch, 0)
        if last_val is None and self.logs.epochs:  # resumed a finished run: nothing left to do
            last_val = {"miou": self.logs.epochs[-1]["val_miou"]}
        losses = [r["train_loss"] for r in self.logs.epochs]
        return {
            "task": TASK, "start_miou": self.start_val["miou"], "val_miou": last_val["miou"] if last_val else None,
            "best_miou": self.best["miou"], "best_epoch": self.best["epoch"],
            "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
            "epochs": self.epoch, "steps": self.step,
            "seconds": round(self.elapsed + time.perf_counter() - self.t0, 1),
            "weights": str(self.out / "last.safetensors"),
        }  # fmt: skip

    def _train_epoch(self, loader: DataLoader) -> None:
        from tqdm import tqdm

        cfg = self.cfg
        self.sampler.set_epoch(self.epoch, self.start_batch)
        set_train_mode(self.model, cfg.bn_mode)
        bar = tqdm(total=self.steps_per_epoch, initial=self.start_batch, desc=f"epoch {self.epoch + 1}/{cfg.epochs}",
                   disable=None if cfg.progress else True, leave=False, file=sys.stderr)  # fmt: skip
        t_start = time.perf_counter()
        for batch_index, (x, y) in enumerate(loader, start=self.start_batch):
            x, y = x.to(self.device), y.to(self.device)
            torch.manual_seed(step_seed(cfg.seed, self.step, 0))  # dropout
            loss = self.criterion(self.model(x).float(), y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            lr = self.optimizer.param_groups[0]["lr"]
            self.scheduler.step()
            self.step += 1
            value = float(loss.detach())
            if not math.isfinite(value):
                raise MobilenetsError(f"training diverged at step {self.step} (loss {value}); lower the lr")
            self.partial["loss_sum"] += value * len(y)
            self.partial["seen"] += len(y)
            bar.update(1)
            if self.step % cfg.log_every == 0:
                self.logs.steps.append({"step": self.step, "epoch": self.epoch + 1, "loss": value, "lr": lr})
                bar.set_postfix(loss=f"{value:.3f}", lr=f"{lr:.3g}")
            done = batch_index + 1
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and done < self.steps_per_epoch:
                self.partial["seconds"] += time.perf_counter() - t_start
                self._save_checkpoint(self.epoch, done)
                t_start = time.perf_counter()
        self.partial["seconds"] += time.perf_counter() - t_start
        bar.close()

    def _end_epoch(self) -> dict[str, Any]:
        from ..weights import save_weights

        cfg, p = self.cfg, self.partial
        due = (self.epoch + 1) % max(cfg.eval_every, 1) == 0 or self.epoch + 1 == cfg.epochs
        val = (
            evaluate_miou(self.model, self.val_pairs, self.device) if due else {"miou": math.nan, "pixel_acc": math.nan}
        )
        row = {"epoch": self.epoch + 1, "step": self.step, "lr": self.optimizer.param_groups[0]["lr"],
               "train_loss": p["loss_sum"] / max(p["seen"], 1), "val_miou": val["miou"],
               "val_pixel_acc": val["pixel_acc"], "images_per_s": p["seen"] / max(p["seconds"], 1e-9),
               "epoch_seconds": p["seconds"]}  # fmt: skip
        self.logs.epochs.append(row)
        improved = due and val["miou"] > self.best["miou"]
        if improved:
            self.best = {"miou": val["miou"], "epoch": self.epoch + 1}
        extra = {"epoch": self.epoch + 1, "task": TASK}
        if due:
            metrics = {"val_miou": val["miou"], "val_pixel_acc": val["pixel_acc"]}
            self.model.pretrained_cfg = self.model.pretrained_cfg.replace(metrics=metrics)
        save_weights(self.model, self.out / "last.safetensors", **extra)
        if improved:
            save_weights(self.model, self.out / "best.safetensors", **extra)
        shown = (f"val mIoU {100 * val['miou']:.2f} (pixel acc {100 * val['pixel_acc']:.2f}, "
                 f"best {100 * self.best['miou']:.2f})  ") if due else ""  # fmt: skip
        self.log(f"epoch {self.epoch + 1}/{cfg.epochs}  loss {row['train_loss']:.4f}  {shown}"
                 f"{row['images_per_s']:.1f} crops/s  {p['seconds']:.1f}s")  # fmt: skip
        return val


# --- the run directory and the entry points ----------------------------------------------------------


def prepare_segment_run_dir(output: Path, cfg: SegmentConfig, classes: list[str]) -> None:
    output.mkdir(parents=True, exist_ok=True)
    for stale in output.glob(".*.tmp"):  # temp files of a write that a kill interrupted
        stale.unlink(missing_ok=True)
    with atomic_write(output / "run.json") as tmp:
        tmp.write_text(json.dumps({"task": TASK, "config": cfg.as_dict(), "classes": classes}, indent=1))


def train_segmentation(cfg: SegmentConfig, *, log=None) -> dict[str, Any]:
    """Train ``cfg`` in a new (empty or absent) run directory; returns the summary
    (``start_miou``, ``val_miou``, ``best_miou``, ``first_loss``, ``last_loss``, ``epochs``, ``steps``, ``seconds``, ``weights``)."""
    cfg.check()
    check_new_run_dir(Path(cfg.output))
    return SegmentTrainer(cfg, None, log).run()


def finetune_segmentation(data: str | Path, weights: str | Path, output: str | Path, *, log=None,
                          **settings: Any) -> dict[str, Any]:  # fmt: skip
    """Fine-tune ``weights`` (MobileNet v1 ImageNet or DeepLab) as DeepLab v3 on ``data``; see `segment_config`."""
    return train_segmentation(segment_config(data, output, weights=weights, **settings), log=log)


def resume_segmentation(output: str | Path, *, log=None, **changes: Any) -> dict[str, Any]:
    """Continue the segmentation run in ``output`` from ``last.pt``; ``changes`` may set `RESUMABLE_CHANGES`
    (``epochs=`` extends a run), other fields only to their saved value."""
    out = Path(output)
    state = load_checkpoint(out / "last.pt")
    if state.get("task") != TASK:
        raise RunError(f"{out}: holds a {state.get('task', 'classify')} run, not a segmentation run")
    run_file = out / "run.json"
    saved = SegmentConfig.from_dict(
        json.loads(run_file.read_text())["config"] if run_file.is_file() else state["config"]
    )
    current = saved.as_dict()
    unknown = sorted(k for k in changes if k not in current or k == "output")
    if unknown:
        raise RunError(f"resume: unknown setting(s) {', '.join(unknown)}")
    conflicts = sorted(k for k, v in changes.items() if k not in RESUMABLE_CHANGES and current[k] != v)
    if conflicts:
        raise RunError(f"resume {out}: {', '.join(conflicts)} differ from the run being resumed "
                       f"(only {', '.join(RESUMABLE_CHANGES)} may change)")  # fmt: skip
    cfg = dataclasses.replace(saved, output=str(out), **{k: v for k, v in changes.items() if k in RESUMABLE_CHANGES})
    return SegmentTrainer(cfg, state, log).run()


def is_segment_run(output: str | Path) -> bool:
    """Whether ``output`` holds a segmentation run (its run.json says so)."""
    try:
        return json.loads((Path(output) / "run.json").read_text()).get("task") == TASK
    except (OSError, ValueError, AttributeError):
        return False
