"""MobileNet v1, exactly as TF-Slim's ``mobilenet_v1.py`` defines it.

Paper: Howard et al., "MobileNets: Efficient Convolutional Neural Networks for Mobile
Vision Applications", 2017, https://arxiv.org/abs/1704.04861.
Reference code and checkpoints: tensorflow/models, research/slim/nets/mobilenet_v1.py.

The body is the data table ``MOBILENET_V1_CONV_DEFS``; ``MobileNetV1`` walks it. Module
names follow the TF-Slim scopes one to one (``features.Conv2d_3_pointwise.conv.weight`` is
``MobilenetV1/Conv2d_3_pointwise/weights``); ``SLIM_NAME_RULES`` is that map as data.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import NamedTuple

import torch
from torch import nn

from ..errors import ConfigError
from .head import ClassifierSurface
from .layers import ConvBnAct, Padding, make_conv, slim_init_


class ConvDef(NamedTuple):
    """One row of the body: ``kind`` is 'conv' (full 3x3) or 'dws' (depthwise separable)."""

    kind: str
    stride: int
    depth: int  # output channels before the width multiplier


# TF-Slim's MOBILENETV1_CONV_DEFS: the stem, then 13 depthwise-separable blocks.
MOBILENET_V1_CONV_DEFS: tuple[ConvDef, ...] = (
    ConvDef("conv", 2, 32),
    ConvDef("dws", 1, 64),
    ConvDef("dws", 2, 128),
    ConvDef("dws", 1, 128),
    ConvDef("dws", 2, 256),
    ConvDef("dws", 1, 256),
    ConvDef("dws", 2, 512),
    ConvDef("dws", 1, 512),
    ConvDef("dws", 1, 512),
    ConvDef("dws", 1, 512),
    ConvDef("dws", 1, 512),
    ConvDef("dws", 1, 512),
    ConvDef("dws", 2, 1024),
    ConvDef("dws", 1, 1024),
)

MIN_DEPTH = 8
MIN_RESOLUTION = 32
DROPOUT = 0.001  # slim's dropout_keep_prob=0.999


def scaled_depth(depth: int, alpha: float, min_depth: int = MIN_DEPTH) -> int:
    """Width rule of TF-Slim: ``max(int(depth * alpha), min_depth)`` (truncates, no rounding)."""
    return max(int(depth * alpha), min_depth)


def validate_config(
    alpha: float,
    resolution: int,
    num_classes: int = 1001,
    output_stride: int | None = None,
    padding: str = "same",
    width_name: str = "alpha (width multiplier)",
) -> None:
    """Raise `ConfigError` with a one-line reason if the configuration cannot be built (MobileNet v1 and v2)."""
    if not isinstance(alpha, (int, float)) or not alpha > 0:
        raise ConfigError(f"{width_name} must be > 0, got {alpha}")
    if not isinstance(resolution, int) or resolution < MIN_RESOLUTION:
        raise ConfigError(f"resolution must be an integer >= {MIN_RESOLUTION}, got {resolution}")
    if not isinstance(num_classes, int) or num_classes < 0:
        raise ConfigError(f"num_classes must be an integer >= 0, got {num_classes}")
    if output_stride not in (None, 8, 16, 32):
        raise ConfigError(f"output_stride must be 8, 16 or 32, got {output_stride}")
    if padding not in ("same", "symmetric"):
        raise ConfigError(f"padding must be 'same' or 'symmetric', got {padding!r}")


class MobileNetV1(ClassifierSurface, nn.Module):
    """MobileNet v1 with the timm-style backbone surface.

    Args:
        alpha: width multiplier; every depth becomes ``max(int(d * alpha), min_depth)``.
        num_classes: classifier outputs. Official weights use 1001 (index 0 = background);
            0 removes the classifier and ``forward`` returns pooled features.
        min_depth: lower bound on every layer's channels (TF-Slim: 8).
        output_stride: 8, 16 or 32 (default 32). Below 32, the strides after that point
            become dilation, as TF-Slim does for dense prediction.
        padding: ``"same"`` (TF 'SAME', needed for TF weights) or ``"symmetric"``.
        dropout: drop probability before the logits (TF-Slim keep_prob 0.999).
        in_chans: input channels.

    Any input of at least 32x32 works (the head pools globally).
    """

    def __init__(
        self,
        alpha: float = 1.0,
        num_classes: int = 1001,
        min_depth: int = MIN_DEPTH,
        output_stride: int | None = None,
        padding: Padding = "same",
        dropout: float = DROPOUT,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        validate_config(alpha, MIN_RESOLUTION, num_classes, output_stride, padding)
        self.alpha = alpha
        self.num_classes = num_classes
        self.output_stride = output_stride or 32
        self.padding = padding
        self.drop_rate = dropout
        self.feature_info: list[dict] = []

        layers: OrderedDict[str, nn.Module] = OrderedDict()
        in_ch, current_stride, rate = in_chans, 1, 1
        for i, cdef in enumerate(MOBILENET_V1_CONV_DEFS):
            out_ch = scaled_depth(cdef.depth, alpha, min_depth)
            # TF-Slim: once the target output stride is reached, later strides turn into
            # dilation (atrous convolution) so the feature map keeps its resolution.
            if output_stride is not None and current_stride == output_stride:
                stride, dilation, rate = 1, rate, rate * cdef.stride
            else:
                stride, dilation = cdef.stride, 1
                current_stride *= cdef.stride
            if cdef.kind == "conv":
                layers[f"Conv2d_{i}"] = ConvBnAct(in_ch, out_ch, 3, stride, padding=padding)
                self._add_info(f"Conv2d_{i}", out_ch, current_stride)
            else:
                layers[f"Conv2d_{i}_depthwise"] = ConvBnAct(
                    in_ch, in_ch, 3, stride, dilation, depthwise=True, padding=padding
                )
                self._add_info(f"Conv2d_{i}_depthwise", in_ch, current_stride)
                layers[f"Conv2d_{i}_pointwise"] = ConvBnAct(in_ch, out_ch, 1, padding=padding)
                self._add_info(f"Conv2d_{i}_pointwise", out_ch, current_stride)
            in_ch = out_ch
        self.features = nn.Sequential(layers)
        self.num_features = in_ch

        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = self._make_classifier(num_classes)
        self.reset_parameters()

    def _add_info(self, name: str, channels: int, reduction: int) -> None:
        self.feature_info.append({"module": f"features.{name}", "name": name, "num_chs": channels, "reduction": reduction})

    def _make_classifier(self, num_classes: int) -> nn.Module:
        if num_classes == 0:
            return nn.Identity()
        # The logits layer is a 1x1 conv with bias, as in TF-Slim (Logits/Conv2d_1c_1x1).
        return make_conv(self.num_features, num_classes, 1, bias=True, padding=self.padding)

    def reset_parameters(self) -> None:
        """TF-Slim init: truncated normal (std 0.09) for conv weights, zeros for biases, BN identity."""
        slim_init_(self)

    # --- backbone surface -------------------------------------------------------------

    @property
    def endpoint_names(self) -> list[str]:
        """TF-Slim endpoint names in order: ``Conv2d_0``, ``Conv2d_1_depthwise``, ... ``Conv2d_13_pointwise``."""
        return [info["name"] for info in self.feature_info]

    def forward_endpoints(self, x: torch.Tensor, names: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
        """Intermediate maps by TF-Slim endpoint name (all of them when ``names`` is None)."""
        known = self.endpoint_names
        wanted = list(known) if names is None else list(names)
        unknown = [n for n in wanted if n not in known]
        if unknown:
            raise ConfigError(f"unknown endpoint(s) {unknown}; valid: {known[0]} ... {known[-1]}")
        last = max(known.index(n) for n in wanted) if wanted else -1
        out: dict[str, torch.Tensor] = {}
        for name, layer in self.features.named_children():
            if known.index(name) > last:
                break
            x = layer(x)
            if name in wanted:
                out[name] = x
        return out


# --- multi-scale features for detection and segmentation heads --------------------------

# The stages of the body: the last layer before each stride change, by TF-Slim endpoint name.
STAGE_ENDPOINTS = ("Conv2d_1_pointwise", "Conv2d_3_pointwise", "Conv2d_5_pointwise", "Conv2d_11_pointwise",
                   "Conv2d_13_pointwise")  # fmt: skip


class MobileNetV1Features(nn.Module):
    """The body of a `MobileNetV1` returning the maps of ``out_indices`` (stages of `STAGE_ENDPOINTS`).

    ``feature_info`` has one entry per returned map: channels (``num_chs``), ``reduction``
    (input side / map side, which stops growing at the output stride) and the TF-Slim
    endpoint ``name``. State-dict keys are those of `MobileNetV1` without the classifier.
    """

    def __init__(self, model: MobileNetV1, out_indices: Iterable[int] = (0, 1, 2, 3, 4)) -> None:
        super().__init__()
        out_indices = tuple(out_indices)
        bad = [i for i in out_indices if not isinstance(i, int) or not 0 <= i < len(STAGE_ENDPOINTS)]
        if bad or not out_indices:
            raise ConfigError(f"out_indices must be stage numbers 0-{len(STAGE_ENDPOINTS) - 1}, got {out_indices}")
        self.features = model.features
        self.alpha, self.output_stride, self.out_indices = model.alpha, model.output_stride, out_indices
        self.pretrained_cfg = getattr(model, "pretrained_cfg", None)
        by_name = {info["name"]: info for info in model.feature_info}
        self.feature_info = [dict(by_name[STAGE_ENDPOINTS[i]], stage=i) for i in out_indices]
        self._wanted = {info["name"]: k for k, info in enumerate(self.feature_info)}
        self._last = max(model.endpoint_names.index(STAGE_ENDPOINTS[i]) for i in out_indices)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out: list[torch.Tensor | None] = [None] * len(self.feature_info)
        for i, (name, layer) in enumerate(self.features.named_children()):
            if i > self._last:
                break
            x = layer(x)
            if name in self._wanted:
                out[self._wanted[name]] = x
        return out  # type: ignore[return-value]


# --- the TF-Slim variable map, as data -------------------------------------------------

SLIM_SCOPE = "MobilenetV1"

# (our state-dict suffix, TF-Slim variable suffix). The conv weight's TF name depends on
# the layer: depthwise convs store ``depthwise_weights`` (H, W, in, multiplier), the others
# ``weights`` (H, W, in, out). TF-Slim's MobileNet v1 has no BN gamma (scale=False);
# ours is kept trainable and maps to ``BatchNorm/gamma`` (1.0 when absent from a source).
SLIM_NAME_RULES: tuple[tuple[str, str], ...] = (
    ("conv.weight", "weights"),
    ("bn.weight", "BatchNorm/gamma"),
    ("bn.bias", "BatchNorm/beta"),
    ("bn.running_mean", "BatchNorm/moving_mean"),
    ("bn.running_var", "BatchNorm/moving_variance"),
)
SLIM_LOGITS = (("classifier.weight", "Logits/Conv2d_1c_1x1/weights"), ("classifier.bias", "Logits/Conv2d_1c_1x1/biases"))


def slim_name(key: str) -> str:
    """TF-Slim variable name for one of our state-dict keys (raises KeyError if none)."""
    for ours, theirs in SLIM_LOGITS:
        if key == ours:
            return f"{SLIM_SCOPE}/{theirs}"
    if key.startswith("features."):
        scope, _, suffix = key[len("features.") :].partition(".")
        for ours, theirs in SLIM_NAME_RULES:
            if suffix == ours:
                if theirs == "weights" and scope.endswith("_depthwise"):
                    theirs = "depthwise_weights"
                return f"{SLIM_SCOPE}/{scope}/{theirs}"
    raise KeyError(f"no TF-Slim name for {key!r}")


def slim_name_map(model: nn.Module) -> dict[str, str]:
    """``{our state-dict key: TF-Slim variable name}`` for every tensor of ``model``."""
    return {key: slim_name(key) for key in model.state_dict()}
