"""What the machine does fast: the autocast dtype per device, native bf16 on the CPU, and glibc heap reuse.

`keep_freed_memory` is the one process-wide setting in training. The engine applies it
when a run on the CPU is about to take its first step (not on import, not for
evaluation, not on CUDA), once per process, and says so in the log;
``TrainConfig(heap_reuse=False)`` (``--no-heap-reuse``) leaves the allocator alone.
"""

from __future__ import annotations

import sys

import torch

_heap_reuse: bool | None = None  # the outcome of this process's one mallopt attempt (None: not tried)


def native_cpu_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), where oneDNN's bf16 kernels win."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype. ``auto``: bf16 on CUDA (fp16 without bf16 support) and on CPUs with native bf16.

    Measured for 1.0_224 at batch 32 (benchmarks/train_throughput.json): on an AVX512-BF16
    CPU bf16 autocast trains faster than fp32; on an AVX2 CPU it was ~12x slower, so
    there auto stays fp32.
    """
    if amp == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if device.type == "cpu" and native_cpu_bf16() else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[amp]


def keep_freed_memory() -> bool:
    """glibc only: serve big tensors from the heap and keep freed memory for reuse (process-wide, no undo).

    By default glibc maps big blocks (always those over 32 MB) fresh from the kernel and
    unmaps them on free, so each training step page-faults its activations in again: a
    quarter of a CPU step for 1.0_224 at batch 32 (benchmarks/train_throughput.json).
    jemalloc or tcmalloc avoid this for PyTorch CPU training; ``mallopt`` does it with
    glibc. The cost: freed memory returns to the OS only when the process ends.

    Only the first call in a process calls ``mallopt``; later ones return its outcome.
    False where it does not apply (not Linux, not glibc).
    """
    global _heap_reuse
    if _heap_reuse is None:
        _heap_reuse = _mallopt_keep()
    return _heap_reuse


def heap_reuse_applied() -> bool:
    """Whether `keep_freed_memory` has changed this process's allocator."""
    return bool(_heap_reuse)


def _mallopt_keep() -> bool:
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if sys.platform != "linux" or name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        m_trim_threshold, m_mmap_max = -1, -4  # <malloc.h>
        return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))
    except (OSError, AttributeError):  # not glibc
        return False
