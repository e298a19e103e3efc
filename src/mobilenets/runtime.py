"""One `Predictor` over every backend: same preprocessing in, same probabilities/embeddings out.

``load_predictor(model=..., weights=..., backend="torch")`` is what ``classify``,
``evaluate`` and ``embed`` use. A predictor takes preprocessed NCHW float32 batches (its
``transform`` makes them from images) and returns class probabilities or pooled
embeddings as numpy arrays.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .data.transforms import EvalTransform
from .errors import MobilenetsError

BACKENDS = ("torch",)


@dataclass
class Predictor:
    """Base class. Subclasses implement `_run` (and `_embed` where the artifact allows)."""

    backend: str
    name: str
    resolution: int
    num_classes: int
    labels: list[str] | None = None
    has_background: bool = False
    crop_fraction: float = 0.875
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def transform(self) -> EvalTransform:
        return EvalTransform(self.resolution, self.crop_fraction)

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """Softmax probabilities, N x num_classes."""
        raise NotImplementedError

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """Pooled pre-logits features, N x C."""
        raise MobilenetsError(f"the {self.backend} backend cannot produce embeddings for this artifact")

    def label(self, index: int) -> str:
        if self.labels and 0 <= index < len(self.labels):
            return self.labels[index]
        return str(index)


class TorchPredictor(Predictor):
    def __init__(self, model: torch.nn.Module, name: str, resolution: int, crop_fraction: float = 0.875,
                 threads: int | None = None) -> None:  # fmt: skip
        cfg = getattr(model, "pretrained_cfg", {}) or {}
        super().__init__(
            backend="torch", name=name, resolution=resolution, num_classes=model.num_classes,
            labels=cfg.get("labels"), has_background=bool(cfg.get("has_background")),
            crop_fraction=crop_fraction, info={"source": cfg.get("source"), "format": cfg.get("format")},
        )  # fmt: skip
        if threads:
            torch.set_num_threads(threads)
        self.model = model.eval()

    @torch.inference_mode()
    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        if self.num_classes == 0:
            raise MobilenetsError(f"{self.name} has no classifier (an embedding extractor); use embed")
        return self.model(torch.as_tensor(batch)).softmax(1).numpy()

    @torch.inference_mode()
    def embed(self, batch: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(batch)
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True).numpy()


def load_predictor(model: str | None = None, weights: str | os.PathLike | None = None, backend: str = "torch",
                   resolution: int | None = None, crop_fraction: float = 0.875,
                   threads: int | None = None) -> Predictor:  # fmt: skip
    """A predictor for a registered ``model`` name and/or a ``weights`` file (official: ``"imagenet"``).

    With only ``weights``, the config (alpha, classes, input size) is read from the file.
    """
    if backend not in BACKENDS:
        raise MobilenetsError(f"unknown backend {backend!r}; available: {', '.join(BACKENDS)}")
    from .models.registry import create_model, get_spec
    from .weights import build_model, read_weights

    if weights is None and model is None:
        raise MobilenetsError("give --model NAME and/or --weights FILE")
    if model is not None:
        spec = get_spec(model)
        if weights is None:
            raise MobilenetsError(f"no weights given for {model}: pass --weights imagenet (download) or --weights FILE")
        kwargs = {"resolution": resolution} if resolution else {}
        net = create_model(model, weights=weights, **kwargs)
        res = resolution or spec.resolution
        name = model
    else:
        w = read_weights(weights)
        net = build_model(w, resolution=resolution)
        res = net.default_resolution
        name = net.name
    return TorchPredictor(net, name, res, crop_fraction, threads)
