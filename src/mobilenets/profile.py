"""MACs and parameters, measured by running the module (forward hooks), not by a formula.

Conventions (those of the published MobileNet table):
- MACs: every convolution (stem, depthwise, pointwise) and the logits layer, one
  multiply-accumulate per weight per output position; BN, ReLU6, pooling and biases are
  not counted.
- ``params``: what the module holds as trainable parameters (includes BN gamma).
- ``params_table``: conv weights + three BN variables per channel (beta, moving mean,
  moving variance; TF-Slim's MobileNet has no gamma) + logits weights and biases.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Profile:
    macs: int
    params: int
    params_table: int
    macs_by_layer: dict[str, int]


def count_macs(model: nn.Module, resolution: int, in_chans: int = 3) -> dict[str, int]:
    """MACs of every conv for one ``resolution`` x ``resolution`` image, by module name."""
    macs: dict[str, int] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):

            def hook(mod: nn.Conv2d, _inp, out: torch.Tensor, name: str = name) -> None:
                per_position = mod.weight.numel() // mod.out_channels  # (in / groups) * kh * kw
                macs[name] = macs.get(name, 0) + out[0].numel() * per_position

            hooks.append(module.register_forward_hook(hook))
    was_training = model.training
    try:
        model.eval()
        ref = next(model.parameters())
        with torch.no_grad():
            model(torch.zeros(1, in_chans, resolution, resolution, device=ref.device, dtype=ref.dtype))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return macs


def count_params(model: nn.Module) -> tuple[int, int]:
    """``(params, params_table)`` as defined in the module docstring."""
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    table = 0
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            table += module.weight.numel() + (module.bias.numel() if module.bias is not None else 0)
        elif isinstance(module, nn.BatchNorm2d):
            table += 3 * module.num_features  # beta, moving_mean, moving_variance
    return params, table


def profile_model(model: nn.Module, resolution: int) -> Profile:
    """Measure MACs (at ``resolution``) and both parameter counts of ``model``."""
    by_layer = count_macs(model, resolution)
    params, table = count_params(model)
    return Profile(macs=sum(by_layer.values()), params=params, params_table=table, macs_by_layer=by_layer)
