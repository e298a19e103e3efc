"""Building blocks: a conv with TF 'SAME' padding, and conv -> BN -> ReLU6.

TensorFlow's 'SAME' padding pads ``max((ceil(n / s) - 1) * s + k_eff - n, 0)`` pixels in
total and puts the odd one at the bottom/right. PyTorch's symmetric padding puts it on
both sides, so TF weights give different outputs at every stride-2 layer unless the
padding is reproduced exactly.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Padding = Literal["same", "symmetric"]

# TF decay 0.9997 means running = 0.9997 * running + 0.0003 * batch; PyTorch's momentum
# is the weight of the *new* value, so momentum = 1 - decay.
BN_EPS = 1e-3
BN_MOMENTUM = 3e-4
WEIGHT_INIT_STD = 0.09  # TF-Slim's truncated_normal_initializer(stddev=0.09) in the MobileNet training scopes


def slim_init_(module: nn.Module) -> None:
    """TF-Slim init of every layer in ``module``: truncated normal (std 0.09, within 2 std) conv weights,
    zero biases, identity BatchNorm."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.trunc_normal_(m.weight, std=WEIGHT_INIT_STD, a=-2 * WEIGHT_INIT_STD, b=2 * WEIGHT_INIT_STD)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            m.reset_parameters()


def same_pad_amounts(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """(before, after) padding TF 'SAME' uses along one axis of length ``size``."""
    k_eff = (kernel - 1) * dilation + 1
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + k_eff - size, 0)
    return total // 2, total - total // 2


class Conv2dSame(nn.Conv2d):
    """``nn.Conv2d`` that pads like TensorFlow's ``padding='SAME'`` for any input size."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs["padding"] = 0
        super().__init__(*args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        top, bottom = same_pad_amounts(int(ih), self.kernel_size[0], self.stride[0], self.dilation[0])
        left, right = same_pad_amounts(int(iw), self.kernel_size[1], self.stride[1], self.dilation[1])
        if top == bottom and left == right:
            # Symmetric case: let the conv kernel pad, which is faster than a separate pad op.
            return F.conv2d(x, self.weight, self.bias, self.stride, (top, left), self.dilation, self.groups)
        x = F.pad(x, (left, right, top, bottom))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def make_conv(
    in_ch: int,
    out_ch: int,
    kernel: int,
    stride: int = 1,
    dilation: int = 1,
    groups: int = 1,
    bias: bool = False,
    padding: Padding = "same",
) -> nn.Conv2d:
    """A conv with TF 'SAME' or PyTorch-style symmetric padding."""
    if padding == "same":
        return Conv2dSame(in_ch, out_ch, kernel, stride, dilation=dilation, groups=groups, bias=bias)
    if padding == "symmetric":
        pad = (kernel - 1) * dilation // 2
        return nn.Conv2d(in_ch, out_ch, kernel, stride, pad, dilation=dilation, groups=groups, bias=bias)
    raise ValueError(f"padding must be 'same' or 'symmetric', got {padding!r}")


class BatchNorm2d(nn.BatchNorm2d):
    """BatchNorm with TF-Slim's epsilon and decay and no ``num_batches_tracked`` buffer.

    The counter only matters when ``momentum=None``; without it the state dict is exactly
    the set of TF-Slim variables (plus gamma), and the slim name map stays one to one.
    """

    def __init__(self, channels: int) -> None:
        super().__init__(channels, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.register_buffer("num_batches_tracked", None)

    def reset_running_stats(self) -> None:
        self.running_mean.zero_()
        self.running_var.fill_(1)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args, **kwargs) -> None:
        # Accept (and drop) the counter from stock-BatchNorm state dicts; version 2 stops
        # the parent from inventing one for dicts without metadata (e.g. safetensors).
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, {**local_metadata, "version": 2}, *args, **kwargs)


class ConvBnAct(nn.Module):
    """conv (no bias) -> BatchNorm -> ReLU6 (or no activation: ``act=False``): one TF-Slim conv scope.

    `models.deploy.fuse_for_inference` folds every ConvBnAct of any model into one conv.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int,
        stride: int = 1,
        dilation: int = 1,
        depthwise: bool = False,
        padding: Padding = "same",
        act: bool = True,
    ) -> None:
        super().__init__()
        groups = in_ch if depthwise else 1
        self.conv = make_conv(in_ch, out_ch, kernel, stride, dilation, groups, padding=padding)
        self.bn = BatchNorm2d(out_ch)
        self.act = nn.ReLU6(inplace=True) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))
