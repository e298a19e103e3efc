"""Build a registered model, with weights: ``create_model(name, *, weights=None, **overrides)``.

    import mobilenets
    model = mobilenets.create_model("mobilenet_v1_0.75_192", weights="imagenet")      # official float
    model = mobilenets.create_model("mobilenet_v1_0.75_192", weights="imagenet_quant") # the _quant release
    model = mobilenets.create_model("mobilenet_v1_0.25_224", weights="file.tflite")   # any supported file
    feats = mobilenets.create_model("mobilenet_v1_1.0_224", features_only=True, out_indices=(3, 4))

A model with weights comes back in eval mode with ``model.pretrained_cfg`` describing them.
"""

from __future__ import annotations

import os
from typing import Any

from torch import nn

from .errors import ConfigError
from .models.mobilenet_v1 import MobileNetV1Features
from .models.registry import TAGS, get_spec, get_weights_entry, mobilenet_v1
from .weights import LoadedWeights, build_model, check_fits, read_weights

# Options that change what the weights compute: only the published value works with official weights.
_PUBLISHED_ONLY = {"padding": "same", "min_depth": 8}


def create_model(name: str, *, weights: str | os.PathLike | None = None, features_only: bool = False,
                 out_indices: tuple[int, ...] = (0, 1, 2, 3, 4), **overrides: Any) -> nn.Module:  # fmt: skip
    """Build registered model ``name``; ``overrides`` go to `MobileNetV1` (``num_classes``, ``output_stride``, ...).

    Args:
        weights: None (random init), a tag (``"imagenet"``, ``"imagenet_quant"``: the official
            release, downloaded once) or a path to any supported weights file.
        features_only: return a `MobileNetV1Features` giving the maps of ``out_indices``.
        out_indices: stages to return with ``features_only`` (0-4: reductions 2, 4, 8, 16, 32,
            capped at ``output_stride``).
        resolution: the input side (default: the name's).
    """
    spec = get_spec(name)
    if weights is None:
        overrides.setdefault("num_classes", 0 if features_only else spec.num_classes)
        alpha = overrides.pop("alpha", spec.alpha)
        resolution = overrides.pop("resolution", spec.resolution)
        model = mobilenet_v1(alpha=alpha, resolution=resolution, **overrides)
    else:
        model = load_pretrained(name, weights, **overrides)
    return MobileNetV1Features(model, out_indices) if features_only else model


def load_pretrained(name: str, weights: str | os.PathLike, alpha: float | None = None,
                    resolution: int | None = None, **overrides: Any) -> nn.Module:  # fmt: skip
    """``create_model(name, weights=...)``: check the file against the named config, then build (eval mode)."""
    for key, published in _PUBLISHED_ONLY.items():
        if key in overrides and overrides[key] != published:
            raise ConfigError(f"{key}={overrides[key]!r} was never published with weights: official MobileNet v1 "
                              f"weights need {key}={published!r} (or build with weights=None and train)")  # fmt: skip
    w = read_tagged(name, weights)
    return build_model(w, resolution=check_fits(w, name, alpha, resolution), **overrides)


def read_tagged(name: str, weights: str | os.PathLike) -> LoadedWeights:
    """Weights by tag (``imagenet``/``imagenet_quant``, fetched into the cache) or by path."""
    if str(weights) in TAGS:
        from .weights.cache import fetch_official

        return read_weights(fetch_official(get_weights_entry(name, str(weights)).name))
    return read_weights(weights)


def model_from_weights(w: LoadedWeights, resolution: int | None = None) -> nn.Module:
    """The model of any architecture that ``w`` holds (its ``cfg.arch``), in eval mode."""
    arch = w.cfg.arch if w.cfg is not None else "mobilenet_v1"
    if arch == "mobilenet_v1":
        return build_model(w, resolution=resolution)
    if arch in ("deeplabv3_mobilenet_v2", "deeplabv3_mobilenet_v1"):
        from .weights.deeplab_tflite import build_deeplab

        return build_deeplab(w, resolution)
    if arch == "ssd_mobilenet_v1":
        from .weights.ssd_tflite import build_ssd

        return build_ssd(w, resolution)
    raise ConfigError(f"{w.source}: weights of architecture {arch!r} cannot be built by this version")
