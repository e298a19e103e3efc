"""MobileNet v2, exactly as TF-Slim's ``nets/mobilenet/mobilenet_v2.py`` defines it.

Paper: Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", 2018,
https://arxiv.org/abs/1801.04381.
Reference code and checkpoints: tensorflow/models, research/slim/nets/mobilenet
(``mobilenet_v2.py`` ``V2_DEF``, ``mobilenet.py``, ``conv_blocks.py``); DeepLab's use of it:
research/deeplab/core/feature_extractor.py.

The body is the paper's (t, c, n, s) table ``MOBILENET_V2_BLOCK_DEFS`` between a 3x3 stem
and a 1x1 conv; ``MobileNetV2`` walks it. Module names follow the TF-Slim scopes one to
one (``features.expanded_conv_3.depthwise.conv.weight`` is
``MobilenetV2/expanded_conv_3/depthwise/depthwise_weights``); ``slim_name`` is the map.

Width rules (TF-Slim ``_make_divisible(v, divisor, min_value)``: round to the nearest
multiple of ``divisor``, never below ``min_value`` nor more than 10% below ``v``):
- every layer's output: ``_make_divisible(c * multiplier, divisible_by, min_depth)``;
  slim classifiers use (8, 8); DeepLab uses (1, 1) for any multiplier other than 1.0,
  which is why its 0.5 backbone has 12 channels where slim would have 16;
- expansions: ``_make_divisible(in * t, 8)`` whatever the multiplier (the first block,
  t = 1, has no expand conv);
- the last 1x1 conv (1280) is not shrunk for multipliers below 1 in the ImageNet release
  (slim's ``finegrain_classification_mode``, as in ``mobilenet_v2_050``); DeepLab stops
  at ``layer_18`` and has no last conv at all.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import torch
from torch import nn

from ..errors import ConfigError
from .cfg import PretrainedCfg
from .head import ClassifierSurface
from .layers import ConvBnAct, Padding, make_conv, slim_init_
from .mobilenet_v1 import validate_config as v1_validate


class BlockDef(NamedTuple):
    """One row of the paper's table 2: ``n`` inverted residuals with expansion ``t``."""

    t: int  # expansion factor of the 1x1 expand conv
    c: int  # output channels before the multiplier
    n: int  # repeats
    s: int  # stride of the first repeat (the others have stride 1)


# TF-Slim V2_DEF: Conv(32, 3x3, s2), these 17 expanded_conv blocks, Conv_1(1280, 1x1).
STEM_DEPTH = 32
LAST_DEPTH = 1280
MOBILENET_V2_BLOCK_DEFS: tuple[BlockDef, ...] = (
    BlockDef(1, 16, 1, 1),
    BlockDef(6, 24, 2, 2),
    BlockDef(6, 32, 3, 2),
    BlockDef(6, 64, 4, 2),
    BlockDef(6, 96, 3, 1),
    BlockDef(6, 160, 3, 2),
    BlockDef(6, 320, 1, 1),
)

SLIM_SCOPE = "MobilenetV2"
MIN_RESOLUTION = 32
DROPOUT = 0.2  # slim training_scope dropout_keep_prob=0.8
# slim training_scope bn_decay=0.997 (v1 used 0.9997); PyTorch momentum = 1 - decay.
BN_MOMENTUM_V2 = 1.0 - 0.997
EXPAND_DIVISOR = 8  # conv_blocks.expand_input_by_factor(n, divisible_by=8)


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """TF-Slim's ``_make_divisible``: nearest multiple of ``divisor``, at least ``min_value``
    (default ``divisor``) and never more than 10% below ``v``."""
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class LayerDef(NamedTuple):
    """One built layer: the scope, its channels and its stride/dilation after output_stride."""

    name: str  # TF-Slim scope: Conv, expanded_conv, expanded_conv_1, ..., Conv_1
    endpoint: str  # TF-Slim endpoint: layer_1 ... layer_19
    in_ch: int
    expand_ch: int  # 0: no expand conv (and for the plain convs)
    out_ch: int
    stride: int
    dilation: int
    reduction: int  # input size / output size after this layer


def layer_defs(
    multiplier: float = 1.0,
    divisible_by: int = 8,
    min_depth: int = 8,
    output_stride: int | None = None,
    finegrain_classification_mode: bool = True,
    last_conv: bool = True,
    in_chans: int = 3,
) -> list[LayerDef]:
    """The network as built: slim's per-op depth rule and its ``output_stride`` logic.

    Once the running stride reaches ``output_stride``, every later stride becomes 1 and
    multiplies the atrous rate used by the *following* layers (slim's ``mobilenet_base``).
    """

    def depth(c: int) -> int:
        return make_divisible(c * multiplier, divisible_by, min_depth)

    specs: list[tuple[str, int, int, int]] = [("conv", STEM_DEPTH, 2, 0)]  # kind, c, stride, t
    for b in MOBILENET_V2_BLOCK_DEFS:
        specs += [("block", b.c, b.s if i == 0 else 1, b.t) for i in range(b.n)]
    if last_conv:
        last = LAST_DEPTH / multiplier if finegrain_classification_mode and multiplier < 1 else LAST_DEPTH
        specs.append(("conv1x1", last, 1, 0))

    out: list[LayerDef] = []
    current, rate, in_ch, n_block = 1, 1, in_chans, 0
    for i, (kind, c, s, t) in enumerate(specs):
        if output_stride is not None and current == output_stride:
            stride, dilation, rate = 1, rate, rate * s
        else:
            stride, dilation, current = s, 1, current * s
        out_ch = depth(c)
        if kind == "block":
            name = "expanded_conv" if n_block == 0 else f"expanded_conv_{n_block}"
            n_block += 1
            # The first block expands by 1 with divisible_by=1, i.e. not at all.
            inner = make_divisible(in_ch * t, EXPAND_DIVISOR) if t != 1 else in_ch
            expand = inner if inner > in_ch else 0
        else:
            name = "Conv" if kind == "conv" else "Conv_1"
            expand = 0
        out.append(LayerDef(name, f"layer_{i + 1}", in_ch, expand, out_ch, stride, dilation, current))
        in_ch = out_ch
    return out


def validate_config(depth_multiplier: float, resolution: int = 224, num_classes: int = 1001,
                    output_stride: int | None = None, padding: str = "same") -> None:  # fmt: skip
    """Raise `ConfigError` with a one-line reason if the configuration cannot be built (v1's rules)."""
    v1_validate(depth_multiplier, resolution, num_classes, output_stride, padding, width_name="depth_multiplier")


def _conv_bn(in_ch: int, out_ch: int, kernel: int, stride: int = 1, dilation: int = 1,
             depthwise: bool = False, act: bool = True, padding: Padding = "same") -> ConvBnAct:  # fmt: skip
    m = ConvBnAct(in_ch, out_ch, kernel, stride, dilation, depthwise=depthwise, padding=padding, act=act)
    m.bn.momentum = BN_MOMENTUM_V2
    return m


class InvertedResidual(nn.Module):
    """slim ``expanded_conv``: [1x1 expand, ReLU6] -> 3x3 depthwise, ReLU6 -> 1x1 project (linear) [+ input]."""

    def __init__(self, d: LayerDef, padding: Padding = "same") -> None:
        super().__init__()
        mid = d.expand_ch or d.in_ch
        self.expand = _conv_bn(d.in_ch, mid, 1, padding=padding) if d.expand_ch else None
        self.depthwise = _conv_bn(mid, mid, 3, d.stride, d.dilation, depthwise=True, padding=padding)
        self.project = _conv_bn(mid, d.out_ch, 1, act=False, padding=padding)  # linear bottleneck
        # slim adds the residual when the (post output_stride) stride is 1 and depths match.
        self.residual = d.stride == 1 and d.in_ch == d.out_ch

    def forward_parts(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """slim's block endpoints: ``expansion_output``, ``depthwise_output``, ``output``."""
        inner = self.expand(x) if self.expand is not None else x
        dw = self.depthwise(inner)
        y = self.project(dw)
        if self.residual:
            y = y + x
        return {"expansion_output": inner, "depthwise_output": dw, "output": y}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.depthwise(self.expand(x) if self.expand is not None else x)
        y = self.project(y)
        return y + x if self.residual else y


class MobileNetV2(ClassifierSurface, nn.Module):
    """MobileNet v2 with the timm-style backbone surface.

    Args:
        depth_multiplier: width multiplier (TF-Slim ``depth_multiplier``).
        num_classes: classifier outputs. The ImageNet release uses 1001 (index 0 =
            background); 0 removes the classifier and ``forward`` returns pooled features.
        output_stride: 8, 16 or 32 (default 32). Below 32 the later strides become
            dilation, as TF-Slim does for dense prediction (DeepLab uses 8 or 16).
        divisible_by, min_depth: the channel rounding (slim classifier: 8, 8; DeepLab at
            multiplier != 1: 1, 1).
        finegrain_classification_mode: keep the last conv at 1280 channels for
            multipliers below 1 (the ImageNet release does).
        last_conv: build ``Conv_1`` (the 1x1 1280 conv); DeepLab's backbone has none.
        padding: ``"same"`` (TF 'SAME', needed for TF weights) or ``"symmetric"``.
        dropout: drop probability before the logits (slim keep_prob 0.8).
        in_chans: input channels.
    """

    def __init__(
        self,
        depth_multiplier: float = 1.0,
        num_classes: int = 1001,
        output_stride: int | None = None,
        divisible_by: int = 8,
        min_depth: int = 8,
        finegrain_classification_mode: bool = True,
        last_conv: bool = True,
        padding: Padding = "same",
        dropout: float = DROPOUT,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        validate_config(depth_multiplier, MIN_RESOLUTION, num_classes, output_stride, padding)
        self.depth_multiplier = depth_multiplier
        self.num_classes = num_classes
        self.output_stride = output_stride or 32
        self.padding = padding
        self.drop_rate = dropout
        self.layer_defs = layer_defs(depth_multiplier, divisible_by, min_depth, output_stride,
                                     finegrain_classification_mode, last_conv, in_chans)  # fmt: skip
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        self.feature_info: list[dict] = []
        for d in self.layer_defs:
            if d.name == "Conv":
                layers[d.name] = _conv_bn(d.in_ch, d.out_ch, 3, d.stride, padding=padding)
            elif d.name == "Conv_1":
                layers[d.name] = _conv_bn(d.in_ch, d.out_ch, 1, padding=padding)
            else:
                layers[d.name] = InvertedResidual(d, padding)
            self.feature_info.append({"module": f"features.{d.name}", "name": d.name, "endpoint": d.endpoint,
                                      "num_chs": d.out_ch, "reduction": d.reduction})  # fmt: skip
        self.features = nn.Sequential(layers)
        self.num_features = self.layer_defs[-1].out_ch
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = self._make_classifier(num_classes)
        self.reset_parameters()

    def _make_classifier(self, num_classes: int) -> nn.Module:
        if num_classes == 0:
            return nn.Identity()
        # A 1x1 conv with bias, no BN, as slim's Logits/Conv2d_1c_1x1.
        return make_conv(self.num_features, num_classes, 1, bias=True, padding=self.padding)

    def reset_parameters(self) -> None:
        """TF-Slim init: truncated normal (std 0.09) for conv weights, zeros for biases, BN identity."""
        slim_init_(self)

    # --- backbone surface -------------------------------------------------------------

    @property
    def endpoint_names(self) -> list[str]:
        """Layer scopes in order: ``Conv``, ``expanded_conv``, ``expanded_conv_1``, ..."""
        return [d.name for d in self.layer_defs]

    def _resolve(self, name: str) -> tuple[int, str]:
        """(layer index, part) for a scope (``expanded_conv_3``) or slim endpoint
        (``layer_4``, ``layer_4/depthwise_output``, ``layer_4/expansion_output``)."""
        base, _, part = name.partition("/")
        for i, d in enumerate(self.layer_defs):
            if base in (d.name, d.endpoint):
                if part in ("", "output"):
                    return i, "output"
                if part in ("expansion_output", "depthwise_output") and isinstance(self.features[i], InvertedResidual):
                    return i, part
        valid = f"{self.layer_defs[0].endpoint} ... {self.layer_defs[-1].endpoint}, their scope names, or 'layer_N/depthwise_output'"
        raise ConfigError(f"unknown endpoint {name!r}; valid: {valid}")

    def forward_endpoints(self, x: torch.Tensor, names: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
        """Intermediate maps by TF-Slim scope or endpoint name (every layer's output when ``names`` is None)."""
        wanted = list(self.endpoint_names) if names is None else list(names)
        where = {n: self._resolve(n) for n in wanted}
        last = max((i for i, _ in where.values()), default=-1)
        out: dict[str, torch.Tensor] = {}
        for i, layer in enumerate(self.features):
            if i > last:
                break
            parts_wanted = {p for j, p in where.values() if j == i}
            if parts_wanted - {"output"}:
                parts = layer.forward_parts(x)
                x = parts["output"]
            else:
                x = layer(x)
                parts = {"output": x}
            for n, (j, p) in where.items():
                if j == i:
                    out[n] = parts[p]
        return out

    def forward_intermediates(self, x: torch.Tensor, indices: Sequence[int]) -> list[torch.Tensor]:
        """Outputs of the layers at ``indices`` (into ``feature_info``; negative counts from the end)."""
        n = len(self.layer_defs)
        bad = [k for k in indices if not -n <= k < n]
        if bad:
            raise ConfigError(f"feature indices {bad} out of range for {n} layers")
        names = [self.layer_defs[k].name for k in indices]
        maps = self.forward_endpoints(x, names)
        return [maps[k] for k in names]


# --- the TF-Slim variable map, as data -------------------------------------------------

# (our suffix inside one conv unit, TF-Slim suffix). Depthwise convs store
# ``depthwise_weights`` (H, W, in, multiplier); the others ``weights`` (H, W, in, out).
SLIM_NAME_RULES: tuple[tuple[str, str], ...] = (
    ("conv.weight", "weights"),
    ("bn.weight", "BatchNorm/gamma"),
    ("bn.bias", "BatchNorm/beta"),
    ("bn.running_mean", "BatchNorm/moving_mean"),
    ("bn.running_var", "BatchNorm/moving_variance"),
)
SLIM_LOGITS = (
    ("classifier.weight", "Logits/Conv2d_1c_1x1/weights"),
    ("classifier.bias", "Logits/Conv2d_1c_1x1/biases"),
)


def slim_name(key: str, scope: str = SLIM_SCOPE) -> str:
    """TF-Slim variable name for one of our state-dict keys (raises KeyError if none).

    ``features.Conv.conv.weight`` -> ``MobilenetV2/Conv/weights``;
    ``features.expanded_conv_3.depthwise.bn.bias`` -> ``MobilenetV2/expanded_conv_3/depthwise/BatchNorm/beta``.
    """
    for ours, theirs in SLIM_LOGITS:
        if key == ours:
            return f"{scope}/{theirs}"
    if key.startswith("features."):
        rest = key[len("features.") :]
        layer, _, rest = rest.partition(".")
        unit = ""
        if layer.startswith("expanded_conv"):
            unit, _, rest = rest.partition(".")
            if unit not in ("expand", "depthwise", "project"):
                raise KeyError(f"no TF-Slim name for {key!r}")
        for ours, theirs in SLIM_NAME_RULES:
            if rest == ours:
                if theirs == "weights" and unit == "depthwise":
                    theirs = "depthwise_weights"
                path = f"{layer}/{unit}" if unit else layer
                return f"{scope}/{path}/{theirs}"
    raise KeyError(f"no TF-Slim name for {key!r}")


def slim_name_map(model: nn.Module, prefix: str = "") -> dict[str, str]:
    """``{our state-dict key: TF-Slim variable name}`` for every tensor of ``model`` (under ``prefix``)."""
    return {key: slim_name(key[len(prefix) :]) for key in model.state_dict() if key.startswith(prefix)}


# --- entry point ------------------------------------------------------------------------


def model_name(depth_multiplier: float, resolution: int) -> str:
    """The release's file name: ``mobilenet_v2_1.0_224``, ``mobilenet_v2_0.35_96``."""
    return f"mobilenet_v2_{depth_multiplier}_{resolution}"


def default_cfg(depth_multiplier: float, resolution: int, num_classes: int = 1001, **arch_cfg) -> PretrainedCfg:
    """The contract of a MobileNet v2 without published weights (random init)."""
    return PretrainedCfg(task="classify" if num_classes else "embed", arch="mobilenet_v2",
                         arch_cfg={"depth_multiplier": depth_multiplier, **arch_cfg}, num_classes=num_classes,
                         label_offset=1 if num_classes == 1001 else 0, input_size=(3, resolution, resolution))  # fmt: skip


def mobilenet_v2(
    depth_multiplier: float = 1.0,
    resolution: int = 224,
    num_classes: int = 1001,
    output_stride: int | None = None,
    **kwargs,
) -> MobileNetV2:
    """Any MobileNet v2 with random weights (registry-friendly builder).

    Args:
        depth_multiplier: width multiplier (> 0); the release has 0.35, 0.5, 0.75, 1.0, 1.3, 1.4.
        resolution: the native input size (recorded in ``pretrained_cfg``; the net pools globally).
        num_classes: 1001 for the ImageNet release (index 0 = background), 0 for a backbone.
        output_stride: 8, 16 or 32 (None = 32).
        **kwargs: passed to `MobileNetV2` (divisible_by, min_depth, last_conv, padding, ...).
    """
    validate_config(depth_multiplier, resolution, num_classes, output_stride, kwargs.get("padding", "same"))
    model = MobileNetV2(depth_multiplier, num_classes, output_stride, **kwargs)
    model.default_resolution = resolution
    model.name = model_name(depth_multiplier, resolution)
    arch_cfg = {k: v for k, v in kwargs.items() if k in ("divisible_by", "min_depth", "last_conv", "padding",
                                                          "finegrain_classification_mode")}  # fmt: skip
    if output_stride is not None:
        arch_cfg["output_stride"] = output_stride
    model.pretrained_cfg = default_cfg(depth_multiplier, resolution, num_classes, **arch_cfg)
    return model
