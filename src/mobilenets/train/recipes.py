"""Training recipes as plain data: TF-Slim's MobileNet v1 defaults, a modern one, and a fine-tune preset.

A `Recipe` is every hyperparameter that changes the result; the engine reads nothing else.
``mobilenets recipes`` prints them, ``--set KEY=VALUE`` overrides any field.

- ``slim``: ``train_image_classifier.py`` flag defaults with ``mobilenet_v1_arg_scope``
  (TF-Slim, tensorflow/models research/slim): RMSProp decay 0.9, momentum 0.9, epsilon 1.0
  (TF semantics: epsilon inside the square root, mean square starting at 1), learning rate
  0.01 at batch 32 decayed x0.94 every 2 epochs (staircase), L2 weight decay 4e-5 on conv
  kernels but not depthwise ones (``regularize_depthwise=False``), BN decay 0.9997 and no BN
  gamma (``scale=False``), dropout keep 0.999, no label smoothing, no moving average. Slim
  sets no epoch count (it runs to ``--max_number_of_steps``); 100 is ours.
- ``modern``: SGD + Nesterov, linear warmup then cosine, label smoothing 0.1, weight EMA
  (the timm/torchvision ImageNet practice), and BN decay 0.9 (PyTorch's momentum 0.1).
  The BN decay is the measured part: from scratch on hymenoptera (0.25_128, 30 epochs of 7
  steps, ``benchmarks/train_hymenoptera.py``) slim's 0.9997 barely moves BN's moving
  statistics from their init, so eval-mode predictions are one class (val top-1 45.8%,
  chance) while training loss falls; with 0.99 the same; with 0.9 val reaches 60-64%
  (slim's optimiser with 0.9 does as well: on small data the BN decay is what matters).
- ``finetune``: small labelled sets on pretrained weights. Measured on hymenoptera (245
  train / 153 val images) from ``mobilenet_v1_0.75_192_quant.tflite``, 8 epochs, batch 32,
  final val top-1 (``benchmarks/train_hymenoptera.py``, seed 0; the preset's other seeds
  are in ``benchmarks/train_hymenoptera.md``):

  ==========  ================  ======  ===========  =========
  head init   backbone          lr      val top-1 %  seconds
  ==========  ================  ======  ===========  =========
  source      frozen            0.001   95.4         25        <- the preset
  source      trained, lr x0.1  0.001   95.4         44
  zeros       trained, lr x0.1  0.001   92.2         44
  random      trained, lr x0.1  0.001   85.0         43
  random      trained, lr x0.1  0.01    69.3         43
  random      frozen            0.01    90.8         24
  ==========  ================  ======  ===========  =========

  The ``source`` head alone (before any training) scores 92.2%: the ImageNet classifier
  already knows ants and bees, and mapping it beats learning a head from 245 images.
  Training the backbone too gains nothing here for ~1.8x the time, so the preset freezes it
  (``--no-freeze-backbone`` trains it). BN stays frozen in every case: the .tflite import
  folds BN into the convs, so batch statistics would re-normalise features the weights no
  longer expect.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any

from ..errors import ConfigError


@dataclass(frozen=True)
class Recipe:
    """Every hyperparameter of a training run. Learning rates are for ``lr_batch`` images per step."""

    name: str
    description: str
    epochs: int
    batch_size: int  # global: summed over all processes
    # optimiser
    optimizer: str  # "rmsprop_tf" (TF1 RMSProp semantics) | "sgd"
    lr: float  # peak learning rate at a global batch of lr_batch, scaled linearly with the batch
    lr_batch: int
    momentum: float
    weight_decay: float  # L2 (added to the gradient, as slim's l2_regularizer) on conv kernels
    decay_depthwise: bool  # include depthwise kernels in weight decay
    rmsprop_decay: float = 0.9
    eps: float = 1.0
    nesterov: bool = False
    # schedule, stepped every iteration
    schedule: str = "exponential"  # "exponential" (staircase) | "cosine"
    decay_rate: float = 0.94  # exponential: lr factor per decay_epochs
    decay_epochs: float = 2.0
    warmup_epochs: float = 0.0  # linear warmup from 0
    min_lr_ratio: float = 0.0  # cosine: final lr / peak lr
    # loss and model
    label_smoothing: float = 0.0
    ema_decay: float = 0.0  # 0 = off; TF ExponentialMovingAverage with num_updates warmup
    bn_decay: float = 0.9997  # TF decay; PyTorch momentum = 1 - decay
    bn_mode: str = "train"  # "train" (batch statistics) | "frozen" (BN in eval mode: running stats used, not updated)
    train_bn_gamma: bool = False  # slim's MobileNet has no gamma; ours exists and stays 1 unless this is set
    dropout: float = 0.001
    freeze_backbone: bool = False  # train only the classifier
    # a new classifier on pretrained weights: "random" (slim's init), "zeros", or "source": mapped from the
    # source classifier through the source model's mean softmax on each new class's train images
    head_init: str = "random"
    backbone_lr_scale: float = 1.0  # backbone lr = head lr x this
    # augmentation (TF1 inception train preprocessing, `data.augment.TrainTransform`)
    area_range: tuple[float, float] = (0.05, 1.0)
    aspect_range: tuple[float, float] = (3 / 4, 4 / 3)
    min_object_covered: float = 0.1
    flip: bool = True
    brightness: float = 32 / 255
    saturation: tuple[float, float] = (0.5, 1.5)

    def with_overrides(self, **changes: Any) -> Recipe:
        """A copy with fields replaced; unknown fields and bad values raise `ConfigError`."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ConfigError(f"unknown recipe field(s) {', '.join(unknown)}; see `mobilenets recipes`")
        recipe = dataclasses.replace(self, **changes)
        recipe.validate()
        return recipe

    def validate(self) -> None:
        checks = [
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.lr > 0 and self.lr_batch >= 1, "lr must be > 0 and lr_batch >= 1"),
            (self.optimizer in ("rmsprop_tf", "sgd"), "optimizer must be rmsprop_tf or sgd"),
            (self.schedule in ("exponential", "cosine"), "schedule must be exponential or cosine"),
            (self.bn_mode in ("train", "frozen"), "bn_mode must be train or frozen"),
            (self.head_init in ("random", "zeros", "source"), "head_init must be random, zeros or source"),
            (0 <= self.label_smoothing < 1, "label_smoothing must be in [0, 1)"),
            (0 <= self.ema_decay < 1, "ema_decay must be in [0, 1)"),
            (0 < self.bn_decay < 1, "bn_decay must be in (0, 1)"),
            (0 <= self.dropout < 1, "dropout must be in [0, 1)"),
            (0 < self.area_range[0] <= self.area_range[1] <= 1, "area_range must satisfy 0 < lo <= hi <= 1"),
            (0 < self.aspect_range[0] <= self.aspect_range[1], "aspect_range must satisfy 0 < lo <= hi"),
            (self.decay_epochs > 0 and self.warmup_epochs >= 0, "decay_epochs must be > 0, warmup_epochs >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"recipe {self.name!r}: {message}")

    def scaled_lr(self, global_batch: int) -> float:
        """The peak learning rate at ``global_batch`` images per step (linear scaling)."""
        return self.lr * global_batch / self.lr_batch

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Recipe:
        tuples = {f.name for f in fields(cls) if str(f.type).startswith("tuple")}
        return cls(**{k: tuple(v) if k in tuples else v for k, v in d.items()})


SLIM = Recipe(
    name="slim",
    description="TF-Slim train_image_classifier defaults for MobileNet v1 (RMSProp, x0.94 every 2 epochs)",
    epochs=100,
    batch_size=32,
    optimizer="rmsprop_tf",
    lr=0.01,
    lr_batch=32,
    momentum=0.9,
    rmsprop_decay=0.9,
    eps=1.0,
    weight_decay=4e-5,
    decay_depthwise=False,
    schedule="exponential",
    decay_rate=0.94,
    decay_epochs=2.0,
)

MODERN = Recipe(
    name="modern",
    description="SGD Nesterov, warmup + cosine, label smoothing 0.1, EMA, BN decay 0.9 (short runs keep a working BN)",
    epochs=100,
    batch_size=32,
    optimizer="sgd",
    lr=0.1,
    lr_batch=256,
    momentum=0.9,
    nesterov=True,
    weight_decay=4e-5,
    decay_depthwise=False,
    schedule="cosine",
    warmup_epochs=2.0,
    label_smoothing=0.1,
    ema_decay=0.999,
    bn_decay=0.9,
    train_bn_gamma=True,
)

FINETUNE = Recipe(
    name="finetune",
    description="small datasets on pretrained weights: head mapped from the source classifier, backbone frozen",
    epochs=8,
    batch_size=32,
    optimizer="sgd",
    lr=0.001,
    lr_batch=32,
    momentum=0.9,
    weight_decay=1e-4,
    decay_depthwise=False,
    schedule="cosine",
    label_smoothing=0.1,
    bn_mode="frozen",
    train_bn_gamma=True,
    head_init="source",
    freeze_backbone=True,
    dropout=0.2,
    backbone_lr_scale=0.1,
    area_range=(0.25, 1.0),
)

RECIPES: dict[str, Recipe] = {r.name: r for r in (SLIM, MODERN, FINETUNE)}


def get_recipe(name: str) -> Recipe:
    """A recipe by name; unknown names raise `ConfigError` listing the known ones."""
    try:
        return RECIPES[name]
    except KeyError:
        raise ConfigError(f"unknown recipe {name!r}; known: {', '.join(RECIPES)}") from None


def parse_override(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` -> (key, typed value), typed by the `Recipe` field (tuples as ``lo,hi``)."""
    key, sep, raw = text.partition("=")
    key = key.strip().replace("-", "_")
    types = {f.name: str(f.type) for f in fields(Recipe)}
    if not sep or key not in types:
        raise ConfigError(f"--set expects KEY=VALUE with KEY a recipe field, got {text!r}; see `mobilenets recipes`")
    kind = types[key]
    try:
        if kind.startswith("tuple"):
            value: Any = tuple(float(v) for v in raw.split(","))
            if len(value) != 2:
                raise ValueError
        elif kind == "bool":
            if raw.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            value = raw.lower() in ("true", "1")
        elif kind == "int":
            value = int(raw)
        elif kind == "float":
            value = float(raw)
        else:
            value = raw
    except ValueError:
        raise ConfigError(f"--set {key}: cannot read {raw!r} as {kind}") from None
    return key, value
