"""The deployable graph: BatchNorm folded into the convs, TF 'SAME' padding made static.

`DeployModule` is what every exporter traces. It computes exactly what `MobileNetV1` does
in eval mode, for one input size, with the export-hostile parts rewritten:

- BatchNorm is folded into the preceding conv (``w * gamma / sqrt(var + eps)``, bias
  ``beta - mean * gamma / sqrt(var + eps)``), as TFLite files store it;
- `Conv2dSame` computes its padding from the input shape at run time, which exporters
  trace into shape arithmetic. For a fixed resolution the amounts are constants: a conv
  whose TF 'SAME' padding is symmetric keeps it inside the conv, and the asymmetric ones
  (stride 2 on an even input: nothing top/left, one pixel bottom/right) get a constant
  ``ZeroPad2d`` that LiteRT and ONNX Runtime fold back into the conv;
- the outputs are ``(probabilities, embedding)``: softmax over the classes, and the pooled
  pre-logits features ``embed`` uses. Dropout is gone (eval).
"""

from __future__ import annotations

import copy
from collections import OrderedDict

import torch
from torch import nn

from ..models.layers import Conv2dSame, same_pad_amounts


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A plain ``nn.Conv2d`` (no padding) equal to ``bn(conv(x))`` in eval mode, computed in float64."""
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    weight = conv.weight.double() * scale.reshape(-1, 1, 1, 1)
    bias = bn.bias.double() - bn.running_mean.double() * scale
    if conv.bias is not None:
        bias = bias + conv.bias.double() * scale
    out = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, 0, conv.dilation,
                    conv.groups, bias=True)  # fmt: skip
    out.weight.data = weight.float()
    out.bias.data = bias.float()
    return out


class _PaddedConvAct(nn.Sequential):
    """[ZeroPad2d] -> Conv2d (BN folded) -> ReLU6: one TF-Slim ``Conv2d_*`` scope, export-ready."""


def _static_padding(conv: nn.Conv2d, size: int) -> tuple[tuple[int, int], int]:
    """((before, after) padding, output size) of ``conv`` on a ``size`` x ``size`` input."""
    k, s, d = conv.kernel_size[0], conv.stride[0], conv.dilation[0]
    if isinstance(conv, Conv2dSame) or conv.padding == (0, 0):
        before, after = same_pad_amounts(size, k, s, d)
    else:
        before = after = conv.padding[0]
    out = (size + before + after - (k - 1) * d - 1) // s + 1
    return (before, after), out


class DeployModule(nn.Module):
    """``MobileNetV1`` for one input size, folded for export; ``forward`` returns (probabilities, embedding).

    Args:
        model: a `MobileNetV1` with a classifier.
        resolution: the input side the artifact will take.
        channels_last: take N x H x W x 3 input (TFLite's layout) instead of N x 3 x H x W.
    """

    def __init__(self, model: nn.Module, resolution: int, channels_last: bool = False) -> None:
        super().__init__()
        if getattr(model, "num_classes", 0) == 0:
            from ..errors import ConfigError

            raise ConfigError("export needs a model with a classifier (num_classes > 0)")
        model = copy.deepcopy(model).eval().float()
        self.channels_last = channels_last
        layers = []
        size = resolution
        for name, block in model.features.named_children():
            conv = fold_conv_bn(block.conv, block.bn)
            (before, after), size_out = _static_padding(block.conv, size)
            if before == after:
                conv.padding = (before, before)
                seq = [conv, nn.ReLU6()]
            else:
                # ZeroPad2d takes (left, right, top, bottom); square kernels pad both axes alike.
                seq = [nn.ZeroPad2d((before, after, before, after)), conv, nn.ReLU6()]
            layers.append((name, _PaddedConvAct(*seq)))
            size = size_out
        self.features = nn.Sequential(OrderedDict(layers))
        self.pool = nn.AdaptiveAvgPool2d(1)
        head = model.classifier  # a 1x1 conv with bias: 'SAME' padding is zero
        self.classifier = nn.Conv2d(head.in_channels, head.out_channels, 1)
        self.classifier.load_state_dict(head.state_dict())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.channels_last:
            x = x.permute(0, 3, 1, 2)
        pooled = self.pool(self.features(x))
        probs = self.classifier(pooled).flatten(1).softmax(1)
        return probs, pooled.flatten(1)
