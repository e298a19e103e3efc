"""`TrainConfig`: one training run as plain data, and the two ways to build one from keyword settings.

`make_config` takes any mix of `TrainConfig` and `Recipe` field names (``epochs=3,
workers=0, freeze_backbone=False``) and sorts them; `finetune_config` also reads the
source weights for the width and input size, as ``mobilenets finetune`` does.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..models.registry import model_name
from .recipes import Recipe, get_recipe


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
    # CPU runs: glibc keeps freed memory for reuse, process-wide and for the rest of the
    # process (`platform.keep_freed_memory`); False leaves the allocator as it is
    heap_reuse: bool = True

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


RUN_FIELDS = frozenset(f.name for f in fields(TrainConfig)) - {"data", "output", "recipe", "alpha", "resolution"}
RECIPE_FIELDS = frozenset(f.name for f in fields(Recipe)) - {"name"}


def make_config(data: str | Path, output: str | Path, alpha: float, resolution: int, *, weights: str | Path | None = None,
                recipe: str | Recipe = "slim", **settings: Any) -> TrainConfig:  # fmt: skip
    """A `TrainConfig` from a recipe (name or object) and keyword settings.

    Args:
        data: folder with ``train/<class>/*`` and ``val/<class>/*`` images.
        output: the run directory.
        alpha, resolution: the architecture (width multiplier, input side).
        weights: initial weights for fine-tuning; None trains from scratch.
        recipe: a registered recipe name (``mobilenets recipes``) or a `Recipe`.
        **settings: `TrainConfig` fields (``seed``, ``workers``, ``device``, ...) and `Recipe`
            fields (``epochs``, ``batch_size``, ``lr``, ...); anything else is a `ConfigError`.
    """
    unknown = sorted(set(settings) - RUN_FIELDS - RECIPE_FIELDS)
    if unknown:
        raise ConfigError(f"unknown training setting(s) {', '.join(unknown)}; TrainConfig fields or recipe fields "
                          "(`mobilenets recipes`)")  # fmt: skip
    base = get_recipe(recipe) if isinstance(recipe, str) else recipe
    r = base.with_overrides(**{k: v for k, v in settings.items() if k in RECIPE_FIELDS})
    run = {k: v for k, v in settings.items() if k in RUN_FIELDS}
    return TrainConfig(data=str(data), output=str(output), recipe=r, alpha=alpha, resolution=resolution,
                       weights=None if weights is None else str(weights), **run)  # fmt: skip


def finetune_shape(weights: str | Path, model: str | None = None, resolution: int | None = None) -> tuple[float, int]:
    """(alpha, resolution) to fine-tune ``weights``: alpha from the weights; the input side from ``resolution``,
    else ``model``'s, else the weights' own, else 224. A ``model`` of another width is a `ConfigError`."""
    from ..models.registry import get_spec
    from ..weights import read_weights

    w = read_weights(weights)
    side = resolution or w.resolution or 224
    if model:
        spec = get_spec(model)
        if abs(spec.alpha - w.alpha) > 1e-6:
            raise ConfigError(f"{weights}: weights have alpha={w.alpha:g} but {model} has alpha={spec.alpha:g}")
        side = resolution or spec.resolution
    return w.alpha, side


def finetune_config(data: str | Path, weights: str | Path, output: str | Path, *, model: str | None = None,
                    resolution: int | None = None, recipe: str | Recipe = "finetune",
                    **settings: Any) -> TrainConfig:  # fmt: skip
    """The configuration ``mobilenets finetune`` runs: `finetune_shape` for the architecture, then `make_config`."""
    alpha, side = finetune_shape(weights, model, resolution)
    return make_config(data, output, alpha, side, weights=weights, recipe=recipe, **settings)
