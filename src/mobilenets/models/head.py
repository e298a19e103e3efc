"""The classifier surface MobileNet v1 and v2 share (timm's): features, head, classifier reset, task outputs.

A class using `ClassifierSurface` builds ``features`` (the body), ``global_pool``,
``dropout`` and ``classifier`` (made by its ``_make_classifier(num_classes)``) and sets
``num_classes`` and ``num_features``; the surface gives it `forward_features`,
`forward_head`, `forward`, `reset_classifier` and the task contract (`outputs`, `predict`).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from .cfg import OutputSpec
from .layers import slim_init_


class ClassifierSurface:
    """Mixin for an ``nn.Module`` with ``features``, ``global_pool``, ``dropout`` and ``classifier``."""

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the logits layer with a freshly initialised one of ``num_classes`` outputs (0 = none)."""
        if not isinstance(num_classes, int) or num_classes < 0:
            raise ConfigError(f"num_classes must be an integer >= 0, got {num_classes}")
        self.num_classes = num_classes
        self.classifier = self._make_classifier(num_classes)
        cfg = getattr(self, "pretrained_cfg", None)
        if cfg is not None:  # a new head: the old classes, labels and metrics no longer describe it
            self.pretrained_cfg = cfg.replace(num_classes=num_classes, task="classify" if num_classes else "embed",
                                              labels=None, label_offset=0, metrics={})  # fmt: skip
        ref = next(self.features.parameters())
        self.classifier.to(device=ref.device, dtype=ref.dtype)
        slim_init_(self.classifier)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map of the body, N x C x H/os x W/os."""
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool, then (unless ``pre_logits``) dropout and logits. Returns N x classes or N x C."""
        x = self.global_pool(x)
        if pre_logits or self.num_classes == 0:
            return x.flatten(1)
        return self.classifier(self.dropout(x)).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    @property
    def outputs(self) -> tuple[OutputSpec, ...]:
        """What `predict` returns: class probabilities (when there is a classifier) and the pooled embedding."""
        emb = OutputSpec("embedding", (-1, self.num_features), meaning="pooled pre-logits features")
        if self.num_classes == 0:
            return (emb,)
        return (OutputSpec("probabilities", (-1, self.num_classes), meaning="softmax over the classes"), emb)

    def predict(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Eval-mode inference: ``{output name: tensor}`` for every entry of `outputs`."""
        pooled = self.global_pool(self.forward_features(x))
        out = {"embedding": pooled.flatten(1)}
        if self.num_classes:
            out = {"probabilities": self.classifier(pooled).flatten(1).softmax(1), **out}
        return out
