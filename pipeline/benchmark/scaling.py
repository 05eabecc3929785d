"""Scaling: step time, throughput and peak memory of each method's synthetic architecture against resolution
(batch fixed) and against batch (32x32), in each config's default mode (what training runs).

Every point runs in a fresh (spawned) process, so that its ``peak_MB`` is that process's own peak as the kernel
reports it (VmHWM; CUDA: max_memory_allocated) and not the largest point before it; ``baseline_MB`` is the same
counter once the imports are done (on a CPU mostly torch itself, ~0.65 GB with CUDA builds), before the model is
built. The figure (docs/scaling.png by default) plots step time, throughput and peak - baseline.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch

from common.checkpoint import atomic_path


def scaling_point(method: str, res: int, batch: int, steps: int, device: str, threads: int) -> dict:
    """One point, in the calling process: median step of the default mode after one warm-up step."""
    from common.distributed import resolve_device
    from common.run import keep_freed_memory
    from pipeline.benchmark.limits import peak_bytes
    from pipeline.benchmark.train import SETUPS, flags, time_steps

    torch.set_num_threads(threads)
    keep_freed_memory()
    dev = resolve_device(device)
    baseline = peak_bytes(dev)
    setup = SETUPS[method]("synthetic", dev, resolution=res, batch=batch)
    seconds, _ = time_steps(setup.make_step(flags("default", setup.train_cfg, dev)), steps, 1, dev)
    return {"step_ms": round(seconds * 1e3, 1), "img_per_s": round(batch / seconds, 2),
            "peak_MB": round(peak_bytes(dev) / 2**20, 1), "baseline_MB": round(baseline / 2**20, 1),
            "load1": round(os.getloadavg()[0], 2)}


def bench_scaling(args, limits: dict | None = None) -> dict:
    """The sweeps of ``args.scaling_methods`` over ``args.resolutions`` and ``args.batches``; plots to args.plot."""
    rows = []
    threads = torch.get_num_threads()
    for method in args.scaling_methods:
        sweeps = [("resolution", r, args.scaling_batch) for r in args.resolutions] + \
                 [("batch", 32, b) for b in args.batches]
        for sweep, res, batch in sweeps:
            with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
                point = pool.submit(scaling_point, method, res, batch, args.scaling_steps, args.device,
                                    threads).result()
            rows.append({"method": method, "sweep": sweep, "res": res, "batch": batch, **point})
            print(f"  {method:9s} {sweep:10s} {res:4d}px batch {batch:4d}: {point['step_ms']:9.1f} ms "
                  f"{point['peak_MB']:8.1f} MB", flush=True)
    plot_scaling(rows, Path(args.plot))
    return {"device": args.device, "mode": "default", "threads": threads, "plot": str(args.plot),
            "peak_memory": "each point's own process: VmHWM (CUDA: max_memory_allocated)", "rows": rows}


def plot_scaling(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    for method in dict.fromkeys(r["method"] for r in rows):
        res_rows = [r for r in rows if r["method"] == method and r["sweep"] == "resolution"]
        batch_rows = [r for r in rows if r["method"] == method and r["sweep"] == "batch"]
        for ax, sweep_rows, x, y in ((axes[0, 0], res_rows, "res", "step_ms"),
                                     (axes[0, 1], res_rows, "res", "grown"),
                                     (axes[1, 0], batch_rows, "batch", "img_per_s"),
                                     (axes[1, 1], batch_rows, "batch", "grown")):
            if sweep_rows:
                ys = [r["peak_MB"] - r.get("baseline_MB", 0.0) if y == "grown" else r[y] for r in sweep_rows]
                ax.plot([r[x] for r in sweep_rows], ys, marker="o", label=method)
    titles = (("step time vs resolution", "resolution (px)", "ms per training step"),
              ("peak memory vs resolution", "resolution (px)", "peak above the imports (MB)"),
              ("throughput vs batch (32x32)", "batch size", "images / s"),
              ("peak memory vs batch (32x32)", "batch size", "peak above the imports (MB)"))
    for ax, (title, xlabel, ylabel) in zip(axes.flat, titles):
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle("Training step scaling: synthetic architectures, each config's default mode, "
                 f"{torch.get_num_threads()} threads, one process per point\n"
                 "python scripts/benchmark.py --only scaling")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
