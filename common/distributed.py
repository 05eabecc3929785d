"""Distributed-safe helpers and device/seed set-up, usable anywhere (no-ops in a single process).

The same training code runs on the CPU, one GPU and ``torchrun --nproc_per_node=8``: ``is_main()``,
``rank()``, ``world_size()``, ``all_reduce_mean(tensor)`` and ``barrier()`` degrade to trivial answers when
torch.distributed is not initialised. ``common.run`` re-exports them.
"""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from common.config import ConfigError

__all__ = [
    "world_size", "rank", "local_rank", "is_main", "barrier", "all_reduce_mean", "all_reduce_any",
    "broadcast_from_main", "resolve_device", "native_bf16", "resolve_precision", "seed_everything",
]


def distributed_on() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if distributed_on() else 1


def rank() -> int:
    return dist.get_rank() if distributed_on() else 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def all_reduce_mean(tensor: torch.Tensor | float) -> torch.Tensor:
    """Mean of ``tensor`` over ranks (a new tensor; the input is untouched). One process: a float copy."""
    out = torch.as_tensor(tensor).detach().clone()
    if not out.is_floating_point():
        out = out.float()
    if world_size() > 1:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        out /= world_size()
    return out


def all_reduce_any(flag: bool, device: torch.device) -> bool:
    """True when ``flag`` is True on any rank (one small all_reduce; free in one process)."""
    if world_size() == 1:
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def broadcast_from_main(obj: Any) -> Any:
    """Rank 0's ``obj`` (picklable) on every rank."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def resolve_device(spec: str, local: int = 0) -> torch.device:
    """'auto' -> cuda:<local rank> | mps | cpu; 'cuda' -> cuda:<local rank>; 'cpu', 'cuda:N', 'mps' as given."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local % torch.cuda.device_count())
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ConfigError(f"train.device: {spec!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"train.device: {spec!r} is not supported; use auto, cpu, cuda, cuda:N or mps")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device={spec!r} but CUDA is not available here; use train.device=auto or cpu")
        index = local if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise ConfigError(f"train.device={spec!r}: only {torch.cuda.device_count()} CUDA device(s) here")
        return torch.device("cuda", index)
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("train.device='mps' but MPS is not available here; use train.device=auto or cpu")
    return device


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 in hardware; elsewhere bf16 autocast is emulated and slower than fp32.

    CPUs: oneDNN's own test (AVX-512 BW/VL/DQ or AVX-NE-CONVERT); on an AVX2-only CPU bf16 autocast is emulated
    and about 10x slower than fp32 (docs/findings.md, "Speed on CPUs"). CUDA: Ampere and newer. MPS: no
    (autocast support there depends on the OS version).
    """
    if device.type == "cuda":
        # including_emulation=False: pre-Ampere GPUs (V100, T4) "support" bf16 only by emulation
        if not torch.cuda.is_available():
            return False
        with torch.cuda.device(device):
            return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    if device.type == "cpu":
        try:
            return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):  # a private op: checked, never assumed
            return False
    return False


def resolve_precision(precision: str, device: torch.device) -> tuple[str, str | None]:
    """``train.precision`` -> ("bf16" | "fp16" | "fp32", a one-line note for the user or None).

    auto: bf16 where the device computes it natively, else fp32. fp16 needs CUDA (its GradScaler); elsewhere it
    falls back as auto does. An explicit bf16 is kept, with a note when this device only emulates it.
    """
    name = device.type
    if precision == "auto":
        return ("bf16", None) if native_bf16(device) else ("fp32", None)
    if precision == "fp16" and name != "cuda":
        fallback = "bf16" if native_bf16(device) else "fp32"
        return fallback, f"train.precision=fp16 needs CUDA (GradScaler); using {fallback} on {name}"
    if precision == "bf16" and not native_bf16(device):
        return "bf16", (f"train.precision=bf16 but this {name} has no native bf16 (emulated: often 10-100x slower "
                        f"than fp32); train.precision=auto picks the fast one")
    return precision, None


def seed_everything(seed: int) -> None:
    """Seed Python's random, numpy and torch (all devices)."""
    random_seed = int(seed) % (2**32)  # numpy wants 0 <= seed < 2**32
    random.seed(random_seed)
    np.random.seed(random_seed)
    torch.manual_seed(random_seed)
