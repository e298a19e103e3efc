"""The model a run trains: built from scratch or from source weights (with a new head), and its train mode.

A new head on pretrained weights starts as the recipe says: ``random`` (slim's init),
``zeros``, or ``source``, mapped from the source classifier (`source_mapped_head`).
"""

from __future__ import annotations

import torch
from torch import nn

from ..data.datasets import LabelledImages
from ..models.mobilenet_v1 import MobileNetV1
from ..models.registry import mobilenet_v1
from .config import TrainConfig
from .data import eval_loader
from .distributed import DistInfo
from .recipes import Recipe


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
