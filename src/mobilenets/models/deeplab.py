"""DeepLab v3 (and the v3+ decoder) over a MobileNet backbone, as tensorflow/models' DeepLab.

Papers: Chen et al., "Rethinking Atrous Convolution for Semantic Image Segmentation",
2017, https://arxiv.org/abs/1706.05587 (v3); "Encoder-Decoder with Atrous Separable
Convolution for Semantic Image Segmentation", 2018, https://arxiv.org/abs/1802.02611 (v3+).
Reference code: tensorflow/models research/deeplab/model.py (``_extract_features``,
``refine_by_decoder``, ``get_branch_logits``) and core/feature_extractor.py. Weights:
Google's ``deeplabv3.tflite`` (MobileNet v2 depth 0.5, output stride 8, PASCAL VOC),
read by `mobilenets.weights.deeplab_tflite`.

The head is a few named branches over the backbone's last feature map, each a TF scope:
``image_pooling`` (global average, 1x1 conv 256, ReLU, broadcast back), ``aspp0`` (1x1
conv 256), optional ``aspp1..3`` (separable 3x3 atrous convs), ``concat_projection`` (1x1
256 over the concatenation), an optional ``decoder``, and ``logits`` (1x1 with bias,
DeepLab's ``logits/semantic``), bilinearly resized with ``align_corners=True`` to the
input size. Head convs have BN (eps 1e-5, decay 0.9997) and ReLU, not ReLU6; they are
`ConvBnAct` units, so `models.deploy.fuse_for_inference` folds them like the backbone's.

As a task model: ``predict(x) -> {"logits": N x classes x H x W}`` and ``outputs`` at the
contract's ``pretrained_cfg.input_size`` (`deeplab_cfg`: whole image, no crop, [-1, 1],
257 x 257 by default as Google's file).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .cfg import OutputSpec, PretrainedCfg
from .layers import ConvBnAct, Padding, make_conv
from .mobilenet_v1 import MobileNetV1
from .mobilenet_v2 import MobileNetV2

HEAD_DEPTH = 256  # DeepLab's `depth` of every ASPP branch and of concat_projection
DECODER_PROJECTION_DEPTH = 48  # feature_projection0 of the v3+ decoder
HEAD_BN_EPS = 1e-5  # model.py batch_norm_params: epsilon 1e-5, decay 0.9997
HEAD_BN_MOMENTUM = 1.0 - 0.9997
HEAD_DROPOUT = 0.1  # concat_projection_dropout keep_prob 0.9
# DeepLab's published atrous rates (with aspp): (6, 12, 18) at output stride 16, doubled at 8.
DEFAULT_ATROUS_RATES = {16: (6, 12, 18), 8: (12, 24, 36)}
# Low-level feature (stride 4) the v3+ decoder refines with: DeepLab's choice for
# MobileNet v2; for v1 (not a DeepLab backbone) the last stride-4 layer.
DECODER_ENDPOINTS = {"mobilenet_v2": "layer_4/depthwise_output", "mobilenet_v1": "Conv2d_3_pointwise"}


def _voc_labels() -> tuple[str, ...]:
    from ..data.voc import voc_labels

    return voc_labels()


class ConvBnReLU(ConvBnAct):
    """conv (no bias) -> BatchNorm (eps 1e-5) -> ReLU: one DeepLab head scope.

    A `ConvBnAct` with DeepLab's head BN constants and plain ReLU (not ReLU6), so
    `models.deploy.fuse_for_inference` folds it like the backbone's units.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 1, dilation: int = 1, depthwise: bool = False,
                 padding: Padding = "same") -> None:  # fmt: skip
        super().__init__(in_ch, out_ch, kernel, 1, dilation, depthwise=depthwise, padding=padding)
        self.bn.eps, self.bn.momentum = HEAD_BN_EPS, HEAD_BN_MOMENTUM
        self.act = nn.ReLU(inplace=True)


class SeparableConvBnReLU(nn.Module):
    """DeepLab's ``split_separable_conv2d``: 3x3 depthwise (BN, ReLU) then 1x1 pointwise (BN, ReLU).

    TF scopes ``<name>_depthwise`` and ``<name>_pointwise`` are our ``depthwise`` and ``pointwise``.
    """

    def __init__(self, in_ch: int, out_ch: int, dilation: int = 1, padding: Padding = "same") -> None:
        super().__init__()
        self.depthwise = ConvBnReLU(in_ch, in_ch, 3, dilation, depthwise=True, padding=padding)
        self.pointwise = ConvBnReLU(in_ch, out_ch, 1, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    # DeepLab resizes with tf.image.resize_bilinear(..., align_corners=True) everywhere;
    # PyTorch's align_corners=True is the same sampling grid.
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


class Decoder(nn.Module):
    """The v3+ decoder: project the low-level map to 48, concat the upsampled head, two separable 3x3 convs."""

    def __init__(self, head_ch: int, low_ch: int, depth: int = HEAD_DEPTH, padding: Padding = "same") -> None:
        super().__init__()
        self.feature_projection0 = ConvBnReLU(low_ch, DECODER_PROJECTION_DEPTH, 1, padding=padding)
        self.decoder_conv0 = SeparableConvBnReLU(head_ch + DECODER_PROJECTION_DEPTH, depth, padding=padding)
        self.decoder_conv1 = SeparableConvBnReLU(depth, depth, padding=padding)

    def forward(self, x: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        x = torch.cat([_resize(x, low.shape[-2:]), self.feature_projection0(low)], dim=1)
        return self.decoder_conv1(self.decoder_conv0(x))


DEFAULT_RESOLUTION = 257  # Google's deeplabv3.tflite (DeepLab's 513 crop at half size: 8k + 1)


def deeplab_cfg(backbone: str = "mobilenet_v2", depth_multiplier: float = 0.5, num_classes: int = 21,
                output_stride: int = 8, atrous_rates: Sequence[int] = (), image_pooling: bool = True,
                decoder: bool = False, padding: Padding = "same",
                resolution: int = DEFAULT_RESOLUTION) -> PretrainedCfg:  # fmt: skip
    """The contract of a DeepLab v3 model: whole image resized (no crop) to ``resolution``, [-1, 1], VOC labels at 21."""
    arch_cfg = {"backbone": backbone, "depth_multiplier": depth_multiplier, "output_stride": output_stride,
                "atrous_rates": list(atrous_rates), "image_pooling": image_pooling, "decoder": decoder,
                "padding": padding}  # fmt: skip
    return PretrainedCfg(task="segment", arch=f"deeplabv3_{backbone}", arch_cfg=arch_cfg, num_classes=num_classes,
                         label_offset=0, crop_fraction=1.0, input_size=(3, resolution, resolution),
                         labels=_voc_labels() if num_classes == 21 else None)  # fmt: skip


class DeepLabV3(nn.Module):
    """DeepLab v3 over MobileNet v2 (DeepLab's release) or MobileNet v1.

    Args:
        backbone: ``"mobilenet_v2"`` or ``"mobilenet_v1"``.
        depth_multiplier: the backbone's width (v2 ``depth_multiplier``, v1 ``alpha``).
            DeepLab builds v2 with channel rounding 1 (not 8) when it is not 1.0.
        num_classes: output classes (21 for PASCAL VOC: background + 20).
        output_stride: 8 or 16; later backbone strides become dilation.
        atrous_rates: ``None`` (no atrous branches, as DeepLab's MobileNet v2 models),
            ``True`` for DeepLab's rates at this output stride (``DEFAULT_ATROUS_RATES``),
            or explicit rates; each is a separable 3x3 conv ``aspp1``, ``aspp2``, ...
        image_pooling: add the image-level branch.
        decoder: add the v3+ decoder over the stride-4 backbone feature.
        dropout: drop probability after ``concat_projection`` (DeepLab keep_prob 0.9).
        padding: ``"same"`` (TF 'SAME', needed for TF weights) or ``"symmetric"``.

    ``forward`` takes N x 3 x H x W in [-1, 1] (``(x / 255 - 0.5) / 0.5``) and returns
    N x classes x H x W logits.
    """

    def __init__(
        self,
        backbone: str = "mobilenet_v2",
        depth_multiplier: float = 0.5,
        num_classes: int = 21,
        output_stride: int = 8,
        atrous_rates: Sequence[int] | bool | None = None,
        image_pooling: bool = True,
        decoder: bool = False,
        dropout: float = HEAD_DROPOUT,
        padding: Padding = "same",
    ) -> None:
        super().__init__()
        if output_stride not in (8, 16):
            raise ConfigError(f"DeepLab output_stride must be 8 or 16, got {output_stride}")
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ConfigError(f"num_classes must be an integer >= 1, got {num_classes}")
        if atrous_rates is True:
            atrous_rates = DEFAULT_ATROUS_RATES[output_stride]
        atrous_rates = tuple(int(r) for r in (atrous_rates or ()))
        self.backbone_name = backbone
        self.num_classes = num_classes
        self.output_stride = output_stride
        self.atrous_rates = atrous_rates
        if backbone == "mobilenet_v2":
            exact = depth_multiplier == 1.0  # feature_extractor._mobilenet_v2's rounding rule
            self.backbone = MobileNetV2(depth_multiplier, num_classes=0, output_stride=output_stride,
                                        divisible_by=8 if exact else 1, min_depth=8 if exact else 1,
                                        last_conv=False, padding=padding)  # fmt: skip
            self.low_level_endpoint = DECODER_ENDPOINTS[backbone]
        elif backbone == "mobilenet_v1":
            self.backbone = MobileNetV1(depth_multiplier, num_classes=0, output_stride=output_stride, padding=padding)
            self.low_level_endpoint = DECODER_ENDPOINTS[backbone]
        else:
            raise ConfigError(f"backbone must be 'mobilenet_v2' or 'mobilenet_v1', got {backbone!r}")
        in_ch = self.backbone.num_features

        self.image_pooling = ConvBnReLU(in_ch, HEAD_DEPTH, 1, padding=padding) if image_pooling else None
        self.aspp0 = ConvBnReLU(in_ch, HEAD_DEPTH, 1, padding=padding)
        for i, rate in enumerate(atrous_rates, 1):
            self.add_module(f"aspp{i}", SeparableConvBnReLU(in_ch, HEAD_DEPTH, rate, padding=padding))
        n_branches = 1 + len(atrous_rates) + int(image_pooling)
        self.concat_projection = ConvBnReLU(n_branches * HEAD_DEPTH, HEAD_DEPTH, 1, padding=padding)
        self.dropout = nn.Dropout(dropout)
        self.decoder = None
        if decoder:
            self.decoder = Decoder(HEAD_DEPTH, self._low_level_channels(), padding=padding)
        self.logits = make_conv(HEAD_DEPTH, num_classes, 1, bias=True, padding=padding)  # logits/semantic

        self.pretrained_cfg = deeplab_cfg(backbone, depth_multiplier, num_classes, output_stride, atrous_rates,
                                          image_pooling, decoder, padding)  # fmt: skip

    @property
    def name(self) -> str:
        """``deeplabv3_<backbone>_<width>_<resolution>``, e.g. ``deeplabv3_mobilenet_v2_0.5_257``."""
        cfg = self.pretrained_cfg
        return f"{cfg.arch}_{cfg.arch_cfg.get('depth_multiplier', '')}_{cfg.resolution}"

    @property
    def outputs(self) -> tuple[OutputSpec, ...]:
        """What `predict` returns: per-pixel logits at the contract's input size."""
        _, h, w = self.pretrained_cfg.input_size
        return (OutputSpec("logits", (-1, self.num_classes, h, w), meaning="NCHW per-pixel class logits at the input size"),)  # fmt: skip

    def predict(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Eval-mode inference: ``{"logits": N x classes x H x W}`` at the input's size."""
        return {"logits": self.forward(x)}

    # --- backbone access: the one place that knows the backbone's feature API ---------

    def _low_level_channels(self) -> int:
        if isinstance(self.backbone, MobileNetV2):  # layer_4/depthwise_output: the block's inner width
            d = self.backbone.layer_defs[3]
            return d.expand_ch or d.in_ch
        info = {i["name"]: i for i in self.backbone.feature_info}
        return int(info[self.low_level_endpoint]["num_chs"])

    def forward_backbone(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(last feature map at the output stride, the stride-4 map for the decoder or None)."""
        if self.decoder is None:
            return self.backbone.forward_features(x), None
        last = self.backbone.endpoint_names[-1]
        maps = self.backbone.forward_endpoints(x, [self.low_level_endpoint, last])
        return maps[last], maps[self.low_level_endpoint]

    # --- head ---------------------------------------------------------------------------

    def forward_head(self, features: torch.Tensor, low: torch.Tensor | None = None) -> torch.Tensor:
        """Branches, concat_projection and (optionally) the decoder: N x 256 x h x w."""
        branches = []
        if self.image_pooling is not None:
            # DeepLab avg-pools a window of the whole (crop-size) feature map and resizes the
            # 1x1 result back with align_corners=True: a global mean, broadcast.
            # Resizing the 1x1 map (not `expand`) is DeepLab's op and converts to one RESIZE_BILINEAR.
            pooled = self.image_pooling(features.mean(dim=(2, 3), keepdim=True))
            branches.append(_resize(pooled, features.shape[-2:]))
        branches.append(self.aspp0(features))
        for i in range(1, len(self.atrous_rates) + 1):
            branches.append(getattr(self, f"aspp{i}")(features))
        x = self.dropout(self.concat_projection(torch.cat(branches, dim=1)))
        if self.decoder is not None:
            x = self.decoder(x, low)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features, low = self.forward_backbone(x)
        logits = self.logits(self.forward_head(features, low))
        return _resize(logits, x.shape[-2:])


def deeplabv3_mobilenet_v2(depth_multiplier: float = 0.5, num_classes: int = 21, output_stride: int = 8,
                           **kwargs) -> DeepLabV3:  # fmt: skip
    """DeepLab v3 over MobileNet v2 with random weights (Google's release: 0.5, OS 8, 21 classes)."""
    return DeepLabV3("mobilenet_v2", depth_multiplier, num_classes, output_stride, **kwargs)


def deeplabv3_mobilenet_v1(alpha: float = 1.0, num_classes: int = 21, output_stride: int = 16,
                           **kwargs) -> DeepLabV3:  # fmt: skip
    """DeepLab v3 over MobileNet v1 with random weights (no published weights)."""
    return DeepLabV3("mobilenet_v1", alpha, num_classes, output_stride, **kwargs)


# --- the TF variable map (DeepLab checkpoints), as data ----------------------------------

_HEAD_UNIT_RULES = (("conv.weight", "weights"), ("bn.weight", "BatchNorm/gamma"), ("bn.bias", "BatchNorm/beta"),
                    ("bn.running_mean", "BatchNorm/moving_mean"), ("bn.running_var", "BatchNorm/moving_variance"))  # fmt: skip


def tf_name(key: str) -> str:
    """DeepLab's TF variable name for one of our state-dict keys (raises KeyError if none).

    ``backbone.features.expanded_conv_3.expand.conv.weight`` -> ``MobilenetV2/expanded_conv_3/expand/weights``;
    ``aspp1.depthwise.conv.weight`` -> ``aspp1_depthwise/depthwise_weights``;
    ``decoder.decoder_conv0.pointwise.bn.bias`` -> ``decoder/decoder_conv0_pointwise/BatchNorm/beta``;
    ``logits.weight`` -> ``logits/semantic/weights``.
    """
    if key.startswith("backbone."):
        rest = key[len("backbone.") :]
        layer = rest.split(".")[1] if rest.startswith("features.") else ""
        if layer.startswith("expanded_conv") or layer in ("Conv", "Conv_1"):
            from .mobilenet_v2 import slim_name

            return slim_name(rest)
        from .mobilenet_v1 import slim_name as v1_name

        return v1_name(rest)
    if key in ("logits.weight", "logits.bias"):
        return "logits/semantic/" + ("weights" if key.endswith("weight") else "biases")
    parts = key.split(".")
    scope: list[str] = []
    if parts[0] == "decoder":
        scope.append("decoder")
        parts = parts[1:]
    name, rest = parts[0], parts[1:]
    if rest and rest[0] in ("depthwise", "pointwise"):  # split_separable_conv2d scopes
        name, rest = f"{name}_{rest[0]}", rest[1:]
    suffix = ".".join(rest)
    for ours, theirs in _HEAD_UNIT_RULES:
        if suffix == ours:
            if theirs == "weights" and name.endswith("_depthwise"):
                theirs = "depthwise_weights"
            return "/".join([*scope, name, theirs])
    raise KeyError(f"no TF name for {key!r}")


def tf_name_map(model: nn.Module) -> dict[str, str]:
    """``{our state-dict key: DeepLab TF variable name}`` for every tensor of ``model``."""
    return {key: tf_name(key) for key in model.state_dict()}
