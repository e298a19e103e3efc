"""One registry of model names and the weights published for them (the catalog), as data.

Names are the official release's file names, ``mobilenet_v1_<alpha>_<resolution>``. Each
registered `ModelSpec` lists its published weights by tag (``imagenet``, ``imagenet_quant``);
each `WeightsEntry` carries the full contract (`PretrainedCfg`: preprocessing, classes,
published metrics, source URLs). ``mobilenet_v1(alpha=..., resolution=...)`` builds any
other config; `mobilenets.create_model` builds a registered name, with weights.

Sources of the tables (all Apache-2.0, tensorflow/models research/slim):
- ``_SEED_2017``: the first release's table (2017-06-14 checkpoints), as quoted in the
  project brief: MACs (millions), params (millions), top-1, top-5 on ILSVRC-2012 val.
- ``_RELEASE_2018_TOP``: ``research/slim/nets/mobilenet_v1.md`` for the 2018-02-22 tarballs
  (float and quantization-aware-trained ``_quant``), single centre crop.
- Keras Applications ``mobilenet_<a>_<res>_tf.h5`` (1000 classes, no background) as a
  fallback source for the float weights.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from dataclasses import dataclass, field

from ..data.labels import imagenet_labels
from ..errors import ConfigError
from .cfg import PretrainedCfg
from .mobilenet_v1 import MobileNetV1, validate_config

ALPHAS = (1.0, 0.75, 0.5, 0.25)
RESOLUTIONS = (224, 192, 160, 128)
TAGS = ("imagenet", "imagenet_quant")
RECIPE_V1 = "https://github.com/tensorflow/models/tree/master/research/slim (train_image_classifier.py, mobilenet_v1_train.py)"


@dataclass(frozen=True)
class Published:
    """One row of a published table (MACs and params in millions, accuracies in %)."""

    macs_m: float
    params_m: float
    top1: float
    top5: float

    def as_dict(self) -> dict[str, float]:
        return {"macs_m": self.macs_m, "params_m": self.params_m, "top1": self.top1, "top5": self.top5}


@dataclass(frozen=True)
class WeightsEntry:
    """Published weights: their catalog name, where to get them, and their contract."""

    name: str  # e.g. mobilenet_v1_0.75_192 or mobilenet_v1_0.75_192_quant
    arch: str  # the registered model name
    tag: str  # imagenet | imagenet_quant
    urls: tuple[str, ...]  # tried in order
    cfg: PretrainedCfg

    @property
    def quantized(self) -> bool:
        return self.cfg.quantization is not None

    @property
    def alpha(self) -> float:
        return float(self.cfg.arch_cfg["alpha"])

    @property
    def resolution(self) -> int:
        return self.cfg.resolution


@dataclass(frozen=True)
class ModelSpec:
    """A registered config: its name, architecture, width multiplier and native input resolution."""

    name: str
    alpha: float
    resolution: int
    num_classes: int = 1001
    arch: str = "mobilenet_v1"
    paper: Published | None = None  # the 2017 seed table's row
    weights: dict[str, WeightsEntry] = field(default_factory=dict)

    @property
    def input_size(self) -> tuple[int, int, int]:
        return (3, self.resolution, self.resolution)


def model_name(alpha: float, resolution: int) -> str:
    """The official name for a config, e.g. ``mobilenet_v1_0.75_192``."""
    return f"mobilenet_v1_{alpha:g}_{resolution}" if alpha != int(alpha) else f"mobilenet_v1_{alpha:.1f}_{resolution}"


def default_cfg(alpha: float, resolution: int, num_classes: int = 1001, **arch_cfg) -> PretrainedCfg:
    """The contract of a MobileNet v1 without published weights (random init, or a fine-tuned head)."""
    return PretrainedCfg(task="classify" if num_classes else "embed", arch="mobilenet_v1",
                         arch_cfg={"alpha": alpha, **arch_cfg}, num_classes=num_classes,
                         label_offset=1 if num_classes == 1001 else 0, input_size=(3, resolution, resolution))  # fmt: skip


# alpha -> (MACs per resolution 224/192/160/128, params, top-1 per res, top-5 per res)
_SEED_2017 = {
    1.0: ((569, 418, 291, 186), 4.24, (70.7, 69.3, 67.2, 64.1), (89.5, 88.9, 87.5, 85.3)),
    0.75: ((317, 233, 162, 104), 2.59, (68.4, 67.4, 65.2, 61.8), (88.2, 87.3, 86.1, 83.6)),
    0.5: ((150, 110, 77, 49), 1.34, (64.0, 62.1, 59.9, 56.2), (85.4, 84.0, 82.5, 79.6)),
    0.25: ((41, 34, 21, 14), 0.47, (50.6, 49.0, 46.0, 41.3), (75.0, 73.6, 70.7, 66.2)),
}
# mobilenet_v1.md (2018-02-22): float top-1, top-5, then _quant top-1, top-5. Same MACs/params as the seed table.
_RELEASE_2018_TOP = {
    1.0: ((70.9, 70.0, 68.0, 65.2), (89.9, 89.2, 87.7, 85.8), (69.7, 69.0, 67.3, 64.0), (89.5, 88.9, 87.7, 85.5)),
    0.75: ((68.4, 67.2, 65.3, 62.1), (88.2, 87.3, 86.0, 83.9), (67.9, 66.2, 63.9, 59.8), (88.1, 87.1, 85.5, 82.8)),
    0.5: ((63.3, 61.7, 59.1, 56.3), (84.9, 83.6, 81.9, 79.4), (62.2, 60.4, 57.7, 54.9), (84.5, 83.2, 81.3, 78.9)),
    0.25: ((49.8, 47.7, 45.5, 41.5), (74.2, 72.3, 70.3, 66.3), (48.2, 45.8, 43.5, 39.9), (73.8, 71.9, 69.1, 65.8)),
}

_TGZ_2018 = "http://download.tensorflow.org/models/mobilenet_v1_2018_02_22/{name}.tgz"
_KERAS_H5 = "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet/mobilenet_{a}_{res}_tf.h5"
_KERAS_ALPHA = {1.0: "1_0", 0.75: "7_5", 0.5: "5_0", 0.25: "2_5"}


def keras_h5_url(alpha: float, resolution: int) -> str:
    return _KERAS_H5.format(a=_KERAS_ALPHA[alpha], res=resolution)


def _build() -> dict[str, ModelSpec]:
    out: dict[str, ModelSpec] = {}
    labels = tuple(imagenet_labels(1001))  # index 0 = TF's 'background'
    for alpha in ALPHAS:
        macs, params, t1, t5 = _SEED_2017[alpha]
        f1, f5, q1, q5 = _RELEASE_2018_TOP[alpha]
        for i, res in enumerate(RESOLUTIONS):
            name = model_name(alpha, res)
            base = default_cfg(alpha, res).replace(labels=labels)
            float_cfg = base.replace(metrics=Published(macs[i], params, f1[i], f5[i]).as_dict(), recipe=RECIPE_V1,
                                     url=_TGZ_2018.format(name=name), tag="imagenet")  # fmt: skip
            quant_cfg = base.replace(metrics=Published(macs[i], params, q1[i], q5[i]).as_dict(), recipe=RECIPE_V1,
                                     url=_TGZ_2018.format(name=f"{name}_quant"), tag="imagenet_quant",
                                     quantization="uint8-qat")  # fmt: skip
            weights = {
                "imagenet": WeightsEntry(name, name, "imagenet", (float_cfg.url, keras_h5_url(alpha, res)), float_cfg),
                "imagenet_quant": WeightsEntry(f"{name}_quant", name, "imagenet_quant", (quant_cfg.url,), quant_cfg),
            }
            out[name] = ModelSpec(name, alpha, res, paper=Published(macs[i], params, t1[i], t5[i]), weights=weights)
    return out


_REGISTRY: dict[str, ModelSpec] = _build()
# Every published weights file by its catalog name (``mobilenet_v1_1.0_224``, ``..._quant``).
CATALOG: dict[str, WeightsEntry] = {w.name: w for spec in _REGISTRY.values() for w in spec.weights.values()}

_NAME_RE = re.compile(r"^mobilenet_v1_(\d+(?:\.\d+)?)_(\d+)$")


def list_models(pattern: str = "*") -> list[str]:
    """Registered names (all 16 by default), largest first; ``pattern`` is a shell wildcard."""
    return [n for n in _REGISTRY if fnmatch.fnmatch(n, pattern)]


def get_spec(name: str) -> ModelSpec:
    """The spec of a registered name; unknown names fail with the closest valid names."""
    spec = _REGISTRY.get(name)
    if spec is None:
        close = difflib.get_close_matches(str(name), list(_REGISTRY), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; valid names: {', '.join(_REGISTRY)}"
        custom = ""
        if _NAME_RE.match(str(name)):
            custom = " (for an unpublished width/resolution use mobilenet_v1(alpha=..., resolution=...))"
        raise ConfigError(f"unknown model {name!r}{hint}{custom}")
    return spec


def get_weights_entry(name: str, tag: str = "imagenet") -> WeightsEntry:
    """The published weights ``tag`` of registered model ``name`` (or a catalog name like ``..._quant``)."""
    if name in CATALOG and tag == "imagenet":
        return CATALOG[name]
    spec = get_spec(name)
    if tag not in spec.weights:
        raise ConfigError(f"{name} has no weights tagged {tag!r}; published: {', '.join(spec.weights)}")
    return spec.weights[tag]


def parse_model_name(name: str) -> tuple[float, int]:
    """``(alpha, resolution)`` from a name of the official form, registered or not."""
    m = _NAME_RE.match(name)
    if not m:
        get_spec(name)  # raises with suggestions
    alpha, res = float(m.group(1)), int(m.group(2))
    validate_config(alpha, res)
    return alpha, res


def mobilenet_v1(alpha: float = 1.0, resolution: int = 224, num_classes: int = 1001, **kwargs) -> MobileNetV1:
    """Any MobileNet v1 with random weights: width ``alpha`` (> 0), input ``resolution`` (>= 32).

    The resolution is not baked into the weights (the head pools globally); it is checked
    and recorded as ``model.default_resolution`` and in ``model.pretrained_cfg``.
    """
    validate_config(alpha, resolution, num_classes, kwargs.get("output_stride"), kwargs.get("padding", "same"))
    model = MobileNetV1(alpha=alpha, num_classes=num_classes, **kwargs)
    model.default_resolution = resolution
    model.name = model_name(alpha, resolution)
    arch_cfg = {k: v for k, v in kwargs.items() if k in ("min_depth", "output_stride", "padding")}
    model.pretrained_cfg = default_cfg(alpha, resolution, num_classes, **arch_cfg)
    return model
