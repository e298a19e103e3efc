"""One registry of model names: the 16 official MobileNet v1 configs, and any other.

Names are the official release's file names, ``mobilenet_v1_<alpha>_<resolution>``.
``create_model`` builds a registered name; ``mobilenet_v1(alpha=..., resolution=...)``
builds anything else.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from dataclasses import dataclass

from ..errors import ConfigError
from .mobilenet_v1 import MobileNetV1, validate_config

ALPHAS = (1.0, 0.75, 0.5, 0.25)
RESOLUTIONS = (224, 192, 160, 128)


@dataclass(frozen=True)
class ModelSpec:
    """A registered config: its name, width multiplier and native input resolution."""

    name: str
    alpha: float
    resolution: int
    num_classes: int = 1001

    @property
    def input_size(self) -> tuple[int, int, int]:
        return (3, self.resolution, self.resolution)


def model_name(alpha: float, resolution: int) -> str:
    """The official name for a config, e.g. ``mobilenet_v1_0.75_192``."""
    return f"mobilenet_v1_{alpha:g}_{resolution}" if alpha != int(alpha) else f"mobilenet_v1_{alpha:.1f}_{resolution}"


_REGISTRY: dict[str, ModelSpec] = {
    model_name(a, r): ModelSpec(model_name(a, r), a, r) for a in ALPHAS for r in RESOLUTIONS
}

_NAME_RE = re.compile(r"^mobilenet_v1_(\d+(?:\.\d+)?)_(\d+)$")


def list_models(pattern: str = "*") -> list[str]:
    """Registered names (all 16 by default), largest first; ``pattern`` is a shell wildcard."""
    return [n for n in _REGISTRY if fnmatch.fnmatch(n, pattern)]


def get_spec(name: str) -> ModelSpec:
    """The spec of a registered name; unknown names fail with the closest valid names."""
    spec = _REGISTRY.get(name)
    if spec is None:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; valid names: {', '.join(_REGISTRY)}"
        custom = ""
        if _NAME_RE.match(name):
            custom = " (for an unpublished width/resolution use mobilenet_v1(alpha=..., resolution=...))"
        raise ConfigError(f"unknown model {name!r}{hint}{custom}")
    return spec


def parse_model_name(name: str) -> tuple[float, int]:
    """``(alpha, resolution)`` from a name of the official form, registered or not."""
    m = _NAME_RE.match(name)
    if not m:
        get_spec(name)  # raises with suggestions
    alpha, res = float(m.group(1)), int(m.group(2))
    validate_config(alpha, res)
    return alpha, res


def mobilenet_v1(alpha: float = 1.0, resolution: int = 224, num_classes: int = 1001, **kwargs) -> MobileNetV1:
    """Any MobileNet v1: width ``alpha`` (> 0), input ``resolution`` (>= 32).

    The resolution is not baked into the weights (the head pools globally); it is checked
    and recorded as ``model.default_resolution`` for preprocessing and counting.
    """
    validate_config(alpha, resolution, num_classes, kwargs.get("output_stride"), kwargs.get("padding", "same"))
    model = MobileNetV1(alpha=alpha, num_classes=num_classes, **kwargs)
    model.default_resolution = resolution
    model.name = model_name(alpha, resolution)
    return model


def create_model(name: str, weights: str | None = None, **overrides) -> MobileNetV1:
    """Build a registered model by name; ``overrides`` go to `MobileNetV1` (e.g. ``num_classes``).

    ``weights`` is ``None`` (random init), ``"imagenet"`` (the official checkpoint) or a path
    to any supported weights file.
    """
    spec = get_spec(name)
    if weights is None:
        overrides.setdefault("num_classes", spec.num_classes)
        alpha = overrides.pop("alpha", spec.alpha)
        resolution = overrides.pop("resolution", spec.resolution)
        return mobilenet_v1(alpha=alpha, resolution=resolution, **overrides)
    from ..weights import load_pretrained  # local import: weights depend on models

    return load_pretrained(name, weights, **overrides)
