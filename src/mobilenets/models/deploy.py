"""Inference graphs: BatchNorm folded into the convs, TF 'SAME' padding made static, named outputs.

`fuse_for_inference` turns any model built from `ConvBnAct` / `Conv2dSame` (MobileNet v1,
the detection and segmentation heads on it) into the graph that runs: it computes exactly
what the model computes in eval mode, for one input size, with the parts that cost time or
trip exporters rewritten:

- BatchNorm is folded into the preceding conv (``w * gamma / sqrt(var + eps)``, bias
  ``beta - mean * gamma / sqrt(var + eps)``, in float64), as TFLite files store it;
- `Conv2dSame` computes its padding from the input shape at run time, which exporters
  trace into shape arithmetic. For a fixed input size the amounts are constants: a conv
  whose TF 'SAME' padding is symmetric keeps it inside the conv, and the asymmetric ones
  (stride 2 on an even input: nothing top/left, one pixel bottom/right) get a constant
  ``ZeroPad2d`` that LiteRT and ONNX Runtime fold back into the conv.

`DeployModule` wraps the fused model for the exporters and the torch backend: ``forward``
returns the model's declared outputs (``model.outputs``, computed by ``model.predict``) as
a tuple in that order. Dropout is gone (eval).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..errors import ConfigError
from .cfg import OutputSpec
from .layers import Conv2dSame, ConvBnAct, same_pad_amounts


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


class FusedConvAct(nn.Sequential):
    """[ZeroPad2d] -> Conv2d (BN folded) -> activation: one conv scope, export-ready."""


def _static(conv: nn.Conv2d, size: tuple[int, int], like: nn.Conv2d | None = None) -> nn.Sequential | nn.Conv2d:
    """``conv`` with the padding of ``like`` (default: itself) for an input of ``size`` (H, W) made constant."""
    like = conv if like is None else like
    pads = []
    for axis in (0, 1):
        k, s, d = like.kernel_size[axis], like.stride[axis], like.dilation[axis]
        pads.append(same_pad_amounts(size[axis], k, s, d) if isinstance(like, Conv2dSame) else (like.padding[axis],) * 2)
    plain = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, 0, conv.dilation,
                      conv.groups, bias=conv.bias is not None)  # fmt: skip
    plain.load_state_dict(conv.state_dict())
    (top, bottom), (left, right) = pads
    if top == bottom and left == right:
        plain.padding = (top, left)
        return plain
    # ZeroPad2d takes (left, right, top, bottom)
    return nn.Sequential(nn.ZeroPad2d((left, right, top, bottom)), plain)


def _input_sizes(model: nn.Module, x: torch.Tensor) -> dict[str, tuple[int, int]]:
    """Spatial input size of every `ConvBnAct` and bare conv, from one forward pass."""
    sizes: dict[str, tuple[int, int]] = {}
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, (ConvBnAct, nn.Conv2d)):
            def hook(mod, args, name=name):
                sizes.setdefault(name, tuple(int(s) for s in args[0].shape[-2:]))
            hooks.append(m.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            run = getattr(model, "predict", model.forward)
            run(x)
    finally:
        for h in hooks:
            h.remove()
    return sizes


def fuse_for_inference(model: nn.Module, input_size: tuple[int, int, int]) -> nn.Module:
    """An eval-mode float copy of ``model`` with every `ConvBnAct` folded and all padding static for ``input_size`` (C, H, W)."""
    model = copy.deepcopy(model).eval().float()
    sizes = _input_sizes(model, torch.zeros(1, *input_size))

    def rewrite(parent: nn.Module, prefix: str) -> None:
        for child_name, child in list(parent.named_children()):
            path = f"{prefix}{child_name}"
            if isinstance(child, ConvBnAct):
                if path not in sizes:
                    continue  # not on the path the outputs take
                folded = _static(fold_conv_bn(child.conv, child.bn), sizes[path], like=child.conv)
                parts = list(folded) if isinstance(folded, nn.Sequential) else [folded]
                act = [] if isinstance(child.act, nn.Identity) else [type(child.act)()]  # ReLU6, or a head's ReLU
                setattr(parent, child_name, FusedConvAct(*parts, *act))
            elif isinstance(child, Conv2dSame) and path in sizes:
                setattr(parent, child_name, _static(child, sizes[path]))
            else:
                rewrite(child, path + ".")

    rewrite(model, "")
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class DeployModule(nn.Module):
    """A model's declared outputs as a tuple, from its fused inference graph, for one input size.

    Args:
        model: any module with ``outputs`` (`OutputSpec` tuple) and ``predict(x) -> dict``.
        input_size: (C, H, W) the graph is made for.
        channels_last: take N x H x W x C input (TFLite's layout) instead of N x C x H x W.
        outputs: the output names to return (default: all of ``model.outputs``).
    """

    def __init__(self, model: nn.Module, input_size: tuple[int, int, int], channels_last: bool = False,
                 outputs: tuple[str, ...] | None = None) -> None:  # fmt: skip
        super().__init__()
        specs: tuple[OutputSpec, ...] = tuple(getattr(model, "outputs", ()))
        if not specs or not hasattr(model, "predict"):
            raise ConfigError(f"{type(model).__name__} declares no outputs (needs .outputs and .predict)")
        names = tuple(s.name for s in specs) if outputs is None else tuple(outputs)
        unknown = [n for n in names if n not in {s.name for s in specs}]
        if unknown:
            raise ConfigError(f"unknown output(s) {unknown}; the model has {[s.name for s in specs]}")
        self.specs = tuple(s for n in names for s in specs if s.name == n)
        self.names = names
        self.input_size = tuple(input_size)
        self.channels_last = channels_last
        self.model = fuse_for_inference(model, self.input_size)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.channels_last:
            x = x.permute(0, 3, 1, 2)
        out = self.model.predict(x)
        return tuple(out[n] for n in self.names)
