"""The one contract that weights carry: `PretrainedCfg`, and the outputs a task model declares.

timm's ``pretrained_cfg`` and torchvision's ``Weights.meta`` are the models. Every model
built by this package has a ``pretrained_cfg`` (a default one for a random model); it is
written into our safetensors header and into every exported artifact, and read back by
the eval transform (`EvalTransform.from_cfg`), the Predictor, the exporters and the CLI.
Nothing else holds preprocessing constants: the release tables in `catalog` build these.

`OutputSpec` names one output of a task model: what a Predictor returns under that name
on every backend, and what the exporters give the artifact's output tensors.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError

TASKS = ("classify", "embed", "detect", "segment")
DECODERS = ("tf", "pillow")  # tf: libjpeg fast integer DCT as tf.image.decode_jpeg; pillow: accurate DCT
RESIZERS = ("tf1_bilinear", "pillow_bilinear")

# TF 'inception' preprocessing, shared by every Google MobileNet release (slim classifiers,
# the Object Detection API's SSD, DeepLab): (x / 255 - 0.5) / 0.5, i.e. [-1, 1].
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)
SLIM_EVAL_CROP = 0.875  # TF-Slim's preprocess_for_eval central_fraction


@dataclass(frozen=True)
class OutputSpec:
    """One declared output: its name, shape (-1 = batch or any), dtype and meaning."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    meaning: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype, "meaning": self.meaning}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OutputSpec:
        return cls(str(d["name"]), tuple(int(s) for s in d["shape"]), str(d.get("dtype", "float32")),
                   str(d.get("meaning", "")))  # fmt: skip


@dataclass(frozen=True)
class PretrainedCfg:
    """What a set of weights is and how to feed it.

    Args:
        task: classify | embed | detect | segment.
        arch: architecture family (``mobilenet_v1``, ``mobilenet_v2``, ``ssd_mobilenet_v1``, ...).
        arch_cfg: the builder's keyword arguments (alpha, min_depth, output_stride, ...).
        num_classes: model outputs per position (1001 for the ImageNet release; 0 = backbone).
        label_offset: output index of dataset class 0 (1 when index 0 is 'background').
        labels: one name per output index, when known.
        input_size: (C, H, W) the weights were built and measured at.
        crop_fraction: central crop kept before resizing (1.0 = the whole image).
        mean, std: per channel, applied to [0, 1] values.
        decode: how JPEGs are decoded (see `DECODERS`).
        resize: resize kernel (see `RESIZERS`).
        metrics: published numbers (top1/top5 in %, macs_m/params_m in millions; map, miou).
        url, sha256: where the weights come from and their digest, when known.
        quantization: None (float), ``"uint8-qat"`` (Google's _quant release) or how ours was made.
        source: the file or URL these weights were read from.
        tag: the weights' name in the catalog (``imagenet``, ``imagenet_quant``), if any.
        recipe: how they were trained (a link or a command).
    """

    task: str = "classify"
    arch: str = "mobilenet_v1"
    arch_cfg: dict[str, Any] = field(default_factory=dict)
    num_classes: int = 1001
    label_offset: int = 1
    labels: tuple[str, ...] | None = None
    input_size: tuple[int, int, int] = (3, 224, 224)
    crop_fraction: float = SLIM_EVAL_CROP
    mean: tuple[float, float, float] = INCEPTION_MEAN
    std: tuple[float, float, float] = INCEPTION_STD
    decode: str = "tf"
    resize: str = "tf1_bilinear"
    metrics: dict[str, float] = field(default_factory=dict)
    url: str | None = None
    sha256: str | None = None
    quantization: str | None = None
    source: str | None = None
    tag: str | None = None
    recipe: str | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ConfigError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.decode not in DECODERS:
            raise ConfigError(f"decode must be one of {', '.join(DECODERS)}, got {self.decode!r}")
        if self.resize not in RESIZERS:
            raise ConfigError(f"resize must be one of {', '.join(RESIZERS)}, got {self.resize!r}")
        if not 0.0 < float(self.crop_fraction) <= 1.0:
            raise ConfigError(f"crop_fraction must be in (0, 1], got {self.crop_fraction}")
        if self.labels is not None and not isinstance(self.labels, tuple):
            object.__setattr__(self, "labels", tuple(self.labels))
        for name in ("input_size", "mean", "std"):
            value = getattr(self, name)
            if not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))

    @property
    def resolution(self) -> int:
        """The square input side (H)."""
        return int(self.input_size[1])

    @property
    def has_background(self) -> bool:
        """Whether output 0 is TF's 'background' class (never a real prediction)."""
        return self.label_offset == 1 and self.num_classes > 0

    def replace(self, **changes: Any) -> PretrainedCfg:
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k in ("input_size", "mean", "std"):
            d[k] = list(d[k])
        if d["labels"] is not None:
            d["labels"] = list(d["labels"])
        return d

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PretrainedCfg:
        """From `as_dict` output; unknown keys (from a newer writer) are ignored, wrong types refused."""
        if not isinstance(d, dict):
            raise ConfigError(f"pretrained_cfg must be a JSON object, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in known}
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"invalid pretrained_cfg ({e})") from None

    @classmethod
    def from_json(cls, text: str | bytes) -> PretrainedCfg:
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError) as e:
            raise ConfigError(f"pretrained_cfg is not valid JSON ({e})") from None
        return cls.from_dict(data)
