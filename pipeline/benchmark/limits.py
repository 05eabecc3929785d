"""The machine, its limits and the counters every benchmark row is read with.

- ``machine_info``: the CPU's model name (lscpu, else /proc/cpuinfo) and family, whether its flags include
  avx512_bf16 and AMX, the cores this process may use, torch's thread count and version, the device (and GPU
  name) and the date.
- ``measure_limits``: what the hardware does in the same run, on every thread torch uses: the rate of a square
  n x n matrix multiply (2 n^3 FLOPs; n = 2048 on a CPU, smaller when one product would take over ~1 s, as with
  emulated bf16; 8192 on CUDA) and of a large 3x3 convolution in each precision (fp32, bf16; fp16 too on CUDA),
  the median of ``repeats`` timed calls after one untimed one, in GFLOP/s; the limit is the faster of the two
  (oneDNN's convolutions outrun torch.mm's GEMM on some CPUs); and a memory bandwidth, ``dst.copy_(src)`` of a 64 MiB fp32 tensor
  (1 GiB on CUDA) counted as read + write, median of ``repeats``, in GB/s.
  ``measure_limits_apart`` does it in a fresh (spawned) process with the same thread count, so that the
  benchmark process's peak memory (VmHWM) does not start at the limits' buffers. A run measures it before and
  after its training rows and keeps the faster of each (``best_limits``).
- ``count_flops``: the FLOPs of one call, counted by torch.utils.flop_counter.FlopCounterMode: matrix multiplies
  and convolutions, forward and backward (a gradient penalty's double backward included). Elementwise work, norms
  and the optimiser step have no formula there and count 0, so FLOPs x rate / limit is a lower bound of how busy
  the multiply units were.
- ``peak_bytes``: the whole process's peak memory as the kernel reports it, VmHWM from /proc/self/status (never
  reset, so it never decreases from one row to the next; ru_maxrss off Linux), or on CUDA the allocator's
  torch.cuda.max_memory_allocated since ``reset_peak`` (per row).
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def status_kib(field_name: str) -> int:
    """A field of /proc/self/status in KiB (VmHWM, VmRSS); ru_maxrss (KiB on Linux) where /proc is absent."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def reset_peak(device: torch.device) -> None:
    """CUDA: start the allocator's peak counter afresh. The CPU's VmHWM is never reset (no clear_refs)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_bytes(device: torch.device) -> int:
    """The process's peak resident set (VmHWM) in bytes, or CUDA's max_memory_allocated since reset_peak."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return status_kib("VmHWM") * 1024


def peak_kind(device: torch.device) -> str:
    if device.type == "cuda":
        return "torch.cuda.max_memory_allocated during the row"
    return "VmHWM: the process's peak resident set so far (never reset)"


class _GlobalOnly:
    """Stands in for FlopCounterMode's per-module tracker, whose backward hooks make torch.autograd.grad on a
    leaf (the gradient penalty's) raise; only the total ("Global") is kept."""

    parents = ("Global",)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None


def _fused_conv_flops(x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
    """oneDNN's fused convolution (mkldnn._convolution_pointwise, Glow's bf16 conv + ReLU): a convolution's FLOPs."""
    from torch.utils.flop_counter import conv_flop_count

    return conv_flop_count(x_shape, w_shape, out_shape, transposed=False)


def best_limits(measured: list[dict]) -> dict:
    """One limit from several measurements of it in a run: per precision the fastest.

    The machine's rate moves over minutes here (a shared host: 50 and 80 GFLOP/s fp32 within an hour); a slow
    moment only lowers a measurement, so the fastest is the closest to what the hardware does, and a step measured
    at a faster moment than the limit cannot read as more than all of it. ``measurements`` keeps each one's rates.
    """
    best = dict(measured[0])
    for key in ("gflops", "matmul_gflops", "conv_gflops"):
        if all(key in m for m in measured):
            best[key] = {p: max(m[key][p] for m in measured) for p in measured[0][key]}
    best["measurements"] = [m["gflops"] for m in measured]
    return best


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of ``fn`` as FlopCounterMode counts them (matmuls and convolutions, forward + backward).

    torch's counter knows aten's convolutions, not oneDNN's fused one, which it would count as 0: without its
    formula, Glow's bf16 step (whose coupling conv + ReLU pairs run fused) read 27% fewer FLOPs than it does.
    """
    from torch.utils.flop_counter import FlopCounterMode

    mapping = {}
    if hasattr(torch.ops.mkldnn, "_convolution_pointwise"):
        mapping[torch.ops.mkldnn._convolution_pointwise] = _fused_conv_flops
    counter = FlopCounterMode(display=False, custom_mapping=mapping)
    counter.mod_tracker = _GlobalOnly()  # totals only: no module hooks
    with counter:
        fn()
    return int(counter.get_total_flops())


def _cpu_model_and_flags() -> tuple[str, set[str], str]:
    """(model name, flags, "family F model M" or "")."""
    model, flags, ids = "", set(), {}
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10,
                              env={**os.environ, "LC_ALL": "C"}).stdout
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Model name" and not model:
                model = value.strip()
            elif key.strip() == "Flags":
                flags = set(value.split())
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not model:
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
            elif key.strip() in ("cpu family", "model") and key.strip() not in ids:
                ids[key.strip()] = value.strip()
    except OSError:
        pass
    family = f"family {ids['cpu family']} model {ids['model']}" if len(ids) == 2 else ""
    return model or platform.processor() or platform.machine(), flags, family


def machine_info(device: torch.device) -> dict:
    """What the numbers were measured on (see the module docstring)."""
    from common.distributed import native_bf16

    model, flags, family = _cpu_model_and_flags()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    info = {"cpu": model, "cpu_family": family, "avx512_bf16": "avx512_bf16" in flags,
            "amx": any(f.startswith("amx") for f in flags), "avx2": "avx2" in flags, "cores": usable,
            "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "arch": platform.machine(), "device": str(device),
            "native_bf16": native_bf16(device),
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_seconds(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    times = []
    for _ in range(max(repeats, 1)):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_gflops(precision: str, device: torch.device, n: int | None = None, repeats: int = 5,
                  budget_s: float = 1.0) -> tuple[float, int]:
    """(GFLOP/s, n) of an n x n @ n x n product in ``precision``; n None: 8192 on CUDA, else the largest of 2048,
    1024, 512 whose product is estimated (from one 512 product) to take under ``budget_s`` seconds."""
    dtype = DTYPES[precision]
    gen = torch.Generator().manual_seed(0)

    def operands(size: int):
        return [torch.randn(size, size, generator=gen).to(device=device, dtype=dtype) for _ in range(2)]

    if n is None and device.type == "cuda":
        n = 8192
    if n is None:
        a, b = operands(512)
        torch.mm(a, b)
        rate = 2 * 512**3 / max(_median_seconds(lambda: torch.mm(a, b), 1, device), 1e-9)
        n = next((size for size in (2048, 1024) if 2 * size**3 / rate < budget_s), 512)
    a, b = operands(n)
    torch.mm(a, b)  # untimed: kernels chosen, pages touched
    seconds = _median_seconds(lambda: torch.mm(a, b), repeats, device)
    return 2 * n**3 / seconds / 1e9, n


def conv_gflops(precision: str, device: torch.device, repeats: int = 5) -> float:
    """GFLOP/s of a 3x3, 512 -> 512 channel convolution on 16 x 16 maps (batch 16; channels_last), the shape of a
    large model's convolutions: on some CPUs oneDNN's convolutions run faster than torch.mm (MKL's GEMM)."""
    dtype = DTYPES[precision]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(16, 512, 16, 16, generator=gen).to(device=device, dtype=dtype, memory_format=torch.channels_last)
    w = torch.randn(512, 512, 3, 3, generator=gen).to(device=device, dtype=dtype, memory_format=torch.channels_last)
    torch.nn.functional.conv2d(x, w, padding=1)  # untimed
    seconds = _median_seconds(lambda: torch.nn.functional.conv2d(x, w, padding=1), repeats, device)
    return 2 * 16 * 512 * 512 * 9 * 16 * 16 / seconds / 1e9


def copy_gb_per_s(device: torch.device, mib: int | None = None, repeats: int = 5) -> tuple[float, int]:
    """(GB/s, MiB) of dst.copy_(src) on fp32 tensors of ``mib`` MiB, bytes read + written."""
    mib = mib or (1024 if device.type == "cuda" else 64)
    src = torch.ones(mib * 2**20 // 4, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    seconds = _median_seconds(lambda: dst.copy_(src), repeats, device)
    return 2 * src.numel() * 4 / seconds / 1e9, mib


def measure_limits(device: torch.device, n: int | None = None, repeats: int = 5, copy_mib: int | None = None
                   ) -> dict:
    """{"gflops": {precision: the faster of matmul and conv}, "matmul_gflops", "conv_gflops", "matmul_n",
    "copy_gb_per_s", ...}: see the docstring."""
    precisions = ["fp32", "bf16"] + (["fp16"] if device.type == "cuda" else [])
    gflops, matmul, conv, sizes = {}, {}, {}, {}
    for precision in precisions:
        rate, size = matmul_gflops(precision, device, n, repeats)
        matmul[precision], sizes[precision] = round(rate, 2), size
        conv[precision] = round(conv_gflops(precision, device, repeats), 2) if size >= 1024 else 0.0  # not emulated
        gflops[precision] = max(matmul[precision], conv[precision])
    bandwidth, mib = copy_gb_per_s(device, copy_mib, repeats)
    return {"gflops": gflops, "matmul_gflops": matmul, "conv_gflops": conv, "matmul_n": sizes, "repeats": repeats,
            "copy_gb_per_s": round(bandwidth, 2), "copy_mib": mib, "threads": torch.get_num_threads(),
            "device": str(device),
            "how": "per precision the faster of a square matmul (2 n^3 FLOPs) and a 3x3 512-channel convolution, "
                   "medians; dst.copy_(src) counted read + write"}


def _limits_in_child(device: str, n: int | None, threads: int) -> dict:
    torch.set_num_threads(threads)
    return measure_limits(torch.device(device), n)


def measure_limits_apart(device: torch.device, n: int | None = None) -> dict:
    """measure_limits in a spawned process on as many threads as this one (this process's VmHWM stays its own)."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        limits = pool.submit(_limits_in_child, str(device), n, torch.get_num_threads()).result()
    return {**limits, "process": "a spawned process of the same run"}
