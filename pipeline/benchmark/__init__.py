"""The benchmarks of scripts/benchmark.py as a library.

- ``limits``: the machine, its matmul rate per precision and memory bandwidth (measured in the same run), FLOP
  counting and peak memory;
- ``train``: training throughput of each method's own step, as a fraction of that limit, with pass/fail;
- ``scaling``: step time and memory against resolution and batch, one process per point, and its figure;
- ``other``: the loader, edit latency and boundary-fit benchmarks;
- ``report``: the printed tables, the merged JSON and ``results_markdown`` for docs/results.md.

Each benchmark is ``function(args, limits) -> dict`` with a ``rows`` list, registered in ``BENCHMARKS`` (or
``EXTRA``: only when asked for); ``run_benchmarks`` runs a list of them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from functools import partial

import torch

from common.distributed import resolve_device
from common.run import keep_freed_memory
from pipeline.benchmark.limits import (
    best_limits,
    count_flops,
    machine_info,
    measure_limits,
    measure_limits_apart,
    peak_bytes,
)
from pipeline.benchmark.other import bench_boundary, bench_edit, bench_loader
from pipeline.benchmark.report import TRAINING, limits_line, print_table, results_markdown, write_json
from pipeline.benchmark.scaling import bench_scaling, plot_scaling
from pipeline.benchmark.train import (
    MODES,
    REFERENCES,
    SETUPS,
    TARGETS,
    Flags,
    bench_train,
    flags,
    flags_name,
    fraction_of_limit,
    judge_rows,
    time_steps,
    train_row,
    verdict,
)

BENCHMARKS: dict[str, Callable[..., dict]] = {
    **{method: partial(bench_train, method) for method in TRAINING},
    "boundary": bench_boundary,
    "loader": bench_loader,
    "edit": bench_edit,
}
EXTRA: dict[str, Callable[..., dict]] = {"scaling": bench_scaling}  # slow: only when asked for


def run_benchmarks(names: list[str], args, command: str) -> dict:
    """Run ``names`` (keys of BENCHMARKS / EXTRA) with the options in ``args``; the limits are measured first
    when a training benchmark is among them (in a spawned process: limits.measure_limits_apart) and again after
    the last benchmark; the training rows are judged against the faster of the two (limits.best_limits). Returns
    {"machine", ["limits"], name: entry, ...} for write_json."""
    available = {**BENCHMARKS, **EXTRA}
    keep_freed_memory()  # as RunContext does for every trainer (no page faults on each step's activations)
    device = resolve_device(getattr(args, "device", "auto"))
    machine = machine_info(device)
    results: dict = {"machine": machine}
    limits = None
    if any(name in TRAINING for name in names):
        print("[limits]", flush=True)
        limits = measure_limits_apart(device, n=getattr(args, "matmul_n", None))
        results["limits"] = limits
        print(f"  {limits_line(limits)}", flush=True)
    for name in names:
        print(f"[{name}]", flush=True)
        entry = available[name](args, limits)
        entry.update(command=command, machine=machine, time=time.strftime("%Y-%m-%d %H:%M:%S"),
                     loadavg_1min=round(os.getloadavg()[0], 2), torch_threads=torch.get_num_threads())
        results[name] = entry
        print_table(name, entry["rows"])
    if limits is not None:  # again after the rows: the machine's rate moves; the faster measurement is the limit
        print("[limits, again]", flush=True)
        limits = best_limits([limits, measure_limits_apart(device, n=getattr(args, "matmul_n", None))])
        results["limits"] = limits
        print(f"  {limits_line(limits)}", flush=True)
        for name in names:
            if name in TRAINING:
                judge_rows(results[name]["rows"], limits)
                results[name]["limits"] = limits
                print_table(name, results[name]["rows"])
    return results


__all__ = ["BENCHMARKS", "EXTRA", "MODES", "REFERENCES", "SETUPS", "TARGETS", "TRAINING", "Flags", "best_limits",
           "bench_boundary",
           "bench_edit", "bench_loader", "bench_scaling", "bench_train", "count_flops", "flags", "flags_name",
           "fraction_of_limit", "judge_rows", "machine_info", "measure_limits", "measure_limits_apart", "peak_bytes",
           "plot_scaling", "print_table", "results_markdown", "run_benchmarks", "time_steps", "train_row", "verdict",
           "write_json"]
