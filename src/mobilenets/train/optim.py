"""Optimiser pieces with TF semantics (RMSProp as TF1 computes it, a per-step LR schedule, weight EMA),
and the optimiser, parameter groups and schedule a `Recipe` asks for.

PyTorch's ``RMSprop`` differs from ``tf.train.RMSPropOptimizer`` in three ways that matter
with slim's epsilon of 1.0: TF adds epsilon *inside* the square root, starts the mean
square at 1 (not 0), and multiplies the learning rate into the momentum buffer (so a
decayed rate does not rescale the momentum already built up). `RMSpropTF` is TF's update.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .recipes import Recipe


class RMSpropTF(torch.optim.Optimizer):
    """``tf.compat.v1.train.RMSPropOptimizer`` (non-centred), with L2 weight decay added to the gradient.

    ``ms = rho * ms + (1 - rho) * g^2``; ``mom = momentum * mom + lr * g / sqrt(ms + eps)``;
    ``p -= mom``. ``ms`` starts at 1.
    """

    def __init__(self, params, lr: float, rho: float = 0.9, momentum: float = 0.9, eps: float = 1.0,
                 weight_decay: float = 0.0) -> None:  # fmt: skip
        super().__init__(params, {"lr": lr, "rho": rho, "momentum": momentum, "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            rho, momentum, eps, wd, lr = (
                group["rho"],
                group["momentum"],
                group["eps"],
                group["weight_decay"],
                group["lr"],
            )
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad.add(p, alpha=wd) if wd else p.grad
                state = self.state[p]
                if not state:
                    state["ms"] = torch.ones_like(p, memory_format=torch.preserve_format)
                    state["mom"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                ms, mom = state["ms"], state["mom"]
                ms.mul_(rho).addcmul_(grad, grad, value=1 - rho)
                mom.mul_(momentum).addcdiv_(grad, ms.add(eps).sqrt_(), value=lr)
                p.sub_(mom)
        return loss


@dataclass(frozen=True)
class LRSchedule:
    """Learning-rate factor as a function of the global step (for ``LambdaLR``); plain data, so it pickles.

    ``exponential``: ``decay_rate ** (step // decay_steps)`` (TF staircase ``exponential_decay``).
    ``cosine``: half cosine from 1 to ``min_ratio`` over ``total_steps``. Both after a linear
    warmup of ``warmup_steps`` from 0.
    """

    kind: str
    total_steps: int
    warmup_steps: int = 0
    decay_steps: int = 1
    decay_rate: float = 1.0
    min_ratio: float = 0.0

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.kind == "exponential":
            return self.decay_rate ** (step // self.decay_steps)
        span = max(self.total_steps - self.warmup_steps, 1)
        progress = min((step - self.warmup_steps) / span, 1.0)
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class ModelEma(nn.Module):
    """Exponential moving average of every float tensor in the state dict (weights and BN statistics).

    TF's ``ExponentialMovingAverage(decay, num_updates)``: the decay used at update ``n`` is
    ``min(decay, (1 + n) / (10 + n))``, so early averages are not dominated by the init.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        super().__init__()
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        n = int(self.num_updates)
        d = min(self.decay, (1 + n) / (10 + n))
        source = model.state_dict()
        for key, avg in self.module.state_dict().items():
            if avg.is_floating_point():
                avg.lerp_(source[key].to(avg.dtype), 1 - d)
            else:
                avg.copy_(source[key])
        self.num_updates += 1


# --- from a recipe -----------------------------------------------------------------------------


def param_groups(model: nn.Module, recipe: Recipe, lr: float) -> list[dict[str, Any]]:
    """Trainable parameters split by weight decay (conv kernels, depthwise per recipe) and head/backbone lr."""
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        kernel = name.endswith("conv.weight") or name == "classifier.weight"
        decay = kernel and (recipe.decay_depthwise or "_depthwise." not in name)
        groups.setdefault((name.startswith("classifier."), decay), []).append(p)
    return [
        {"params": ps, "lr": lr * (1.0 if head else recipe.backbone_lr_scale),
         "weight_decay": recipe.weight_decay if decay else 0.0}
        for (head, decay), ps in sorted(groups.items())
    ]  # fmt: skip


def make_optimizer(model: nn.Module, recipe: Recipe, lr: float) -> torch.optim.Optimizer:
    groups = param_groups(model, recipe, lr)
    if recipe.optimizer == "rmsprop_tf":
        return RMSpropTF(groups, lr, rho=recipe.rmsprop_decay, momentum=recipe.momentum, eps=recipe.eps)
    return torch.optim.SGD(groups, lr, momentum=recipe.momentum, nesterov=recipe.nesterov)


def make_schedule(recipe: Recipe, steps_per_epoch: int, num_train: int, global_batch: int) -> LRSchedule:
    # slim: decay_steps = int(num_samples_per_epoch * num_epochs_per_decay / batch_size)
    return LRSchedule(
        kind=recipe.schedule,
        total_steps=recipe.epochs * steps_per_epoch,
        warmup_steps=round(recipe.warmup_epochs * steps_per_epoch),
        decay_steps=max(1, int(num_train * recipe.decay_epochs / global_batch)),
        decay_rate=recipe.decay_rate,
        min_ratio=recipe.min_lr_ratio,
    )
