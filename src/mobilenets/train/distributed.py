"""Distributed data parallel: process group from torchrun's environment, a resumable sampler, SyncBN.

``torchrun --nnodes N --nproc-per-node M -m mobilenets train ...`` sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` (and the rendezvous); `init_distributed` joins the group
with NCCL on CUDA and gloo on CPU. Rank 0 alone logs and writes checkpoints.

`ResumableSampler` shards like ``DistributedSampler`` (rank r takes every world-th index
of one seeded permutation) but can start mid-epoch, and it drops the global remainder
instead of padding: the union of the ranks' k-th batches is exactly the k-th batch of a
single process with the same global batch, for any world size. PyTorch's
``SyncBatchNorm`` refuses CPU tensors, so `SyncBatchNorm2d` (gloo-capable, autograd
through ``all_reduce``) replaces it and keeps our state-dict names.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Sampler

from ..errors import MobilenetsError
from ..models.layers import BatchNorm2d


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: rank, world size, and the device it trains on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str | None = None) -> DistInfo:
    """Join the process group torchrun describes (no-op for a plain run) and pick the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise MobilenetsError("--device cuda: no CUDA device is available")
        dev = torch.device("cuda", local if device == "cuda" else torch.device(device).index)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank, world, local, dev)


def all_reduce_sum(values: list[float], info: DistInfo) -> list[float]:
    """Sum a few numbers over all processes (identity when not distributed)."""
    if not info.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=info.device)
    dist.all_reduce(t)
    return t.tolist()


class ResumableSampler(Sampler):
    """Yields ``(index, epoch)`` keys for this rank: a seeded permutation per epoch, sharded, resumable.

    Epoch ``e`` uses ``randperm(n, seed + e)`` cut to whole global batches; ``start_batch``
    skips that many global batches (resume mid-epoch). The epoch travels with the index so
    dataset workers can derive each image's augmentation seed without shared state.
    """

    def __init__(self, n: int, global_batch: int, info: DistInfo, seed: int, shuffle: bool = True) -> None:
        self.n, self.global_batch, self.info, self.seed, self.shuffle = n, global_batch, info, seed, shuffle
        self.epoch, self.start_batch = 0, 0

    @property
    def batches_per_epoch(self) -> int:
        return self.n // self.global_batch

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()
        else:
            order = list(range(self.n))
        order = order[self.start_batch * self.global_batch : self.batches_per_epoch * self.global_batch]
        for i in order[self.info.rank :: self.info.world_size]:
            yield i, self.epoch

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * (self.global_batch // self.info.world_size)


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes; the gradient of a sum that every rank uses is the sum of their gradients."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class SyncBatchNorm2d(BatchNorm2d):
    """BatchNorm whose training statistics span all processes (any backend, CPU included).

    Mean first, then the variance around it (two all-reduces), which matches one process
    normalising the concatenated batch to float rounding. Eval mode is plain BatchNorm.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        count = torch.tensor([x.numel() // x.shape[1]], dtype=x.dtype, device=x.device)
        dist.all_reduce(count)
        mean = _AllReduceSum.apply(x.sum(dim=(0, 2, 3))) / count
        centred = x - mean[None, :, None, None]
        var = _AllReduceSum.apply(centred.square().sum(dim=(0, 2, 3))) / count
        with torch.no_grad():
            self.running_mean.lerp_(mean, self.momentum)
            self.running_var.lerp_(var * (count / (count - 1).clamp(min=1)), self.momentum)  # unbiased, as BN
        y = centred * torch.rsqrt(var + self.eps)[None, :, None, None]
        return y * self.weight[None, :, None, None] + self.bias[None, :, None, None]


def convert_sync_batchnorm(model: nn.Module) -> nn.Module:
    """Swap every `BatchNorm2d` for a `SyncBatchNorm2d` holding the same tensors (in place)."""
    for name, child in model.named_children():
        if isinstance(child, BatchNorm2d) and not isinstance(child, SyncBatchNorm2d):
            sync = SyncBatchNorm2d(child.num_features)
            sync.load_state_dict(child.state_dict())
            sync.momentum, sync.eps = child.momentum, child.eps
            sync.weight.requires_grad_(child.weight.requires_grad)
            sync.bias.requires_grad_(child.bias.requires_grad)
            setattr(model, name, sync.to(child.weight.device).train(child.training))
        else:
            convert_sync_batchnorm(child)
    return model
