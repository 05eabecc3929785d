"""Where one training step's time goes: torch.profiler over the benchmark's reference-size step, by op and shape.

    OMP_NUM_THREADS=2 python experiments/reference_speed/profile_step.py glow [--steps 3] [--warmup 3] [--rows 25]

Builds ``pipeline.benchmark.train``'s setup at size "reference" in mode "default" (what scripts/benchmark.py and
reference_speed.py time), runs ``--warmup`` untimed steps, then profiles ``--steps`` steps. Prints the median
step time, then per (op, input shapes) the milliseconds per step, the share of the profiled time and, for
matrix multiplies and convolutions, the GFLOP/s it ran at (torch's flop counter formula applied to the shapes;
convolution_backward counted as 2x its forward). A study tool: its output is read, not asserted.
"""

from __future__ import annotations

import argparse

import torch

from pipeline.benchmark.train import flags, glow_setup, pggan_setup, time_steps

SETUPS = {"glow": glow_setup, "pggan": pggan_setup}


def _conv_flops(out_shape, weight_shape) -> float:
    """2 x output elements x (C_in x kH x kW): one convolution's forward multiply-adds, counted as 2 FLOPs."""
    b, c_out, h, w = out_shape
    _, c_in, kh, kw = weight_shape
    return 2.0 * b * c_out * h * w * c_in * kh * kw


def event_gflop(name: str, shapes: list) -> float | None:
    """GFLOP one call does, from its recorded input shapes; None for ops that are not products."""
    try:
        if name in ("aten::mm", "aten::addmm"):
            a, b = (shapes[-2], shapes[-1]) if name == "aten::addmm" else (shapes[0], shapes[1])
            return 2.0 * a[0] * a[1] * b[1] / 1e9
        if name == "aten::bmm":
            a, b = shapes[0], shapes[1]
            return 2.0 * a[0] * a[1] * a[2] * b[2] / 1e9
        if name in ("aten::mkldnn_convolution", "mkldnn::_convolution_pointwise"):
            x, w = shapes[0], shapes[1]  # stride 1, 'same' padding in both methods' 3x3/1x1 layers
            return _conv_flops([x[0], w[0], x[2], x[3]], w) / 1e9
        if name == "aten::convolution_backward":
            grad, _, w = shapes[0], shapes[1], shapes[2]
            return 2.0 * _conv_flops(grad, w) / 1e9  # grad_input + grad_weight
    except (IndexError, TypeError, ValueError):
        return None
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("method", choices=sorted(SETUPS))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rows", type=int, default=25)
    args = parser.parse_args()

    device = torch.device("cpu")
    setup = SETUPS[args.method]("reference", device)
    f = flags("default", setup.train_cfg, device)
    step = setup.make_step(f)
    med = time_steps(step, args.steps, max(args.warmup, 1), device).seconds  # warm-up untimed, then the median
    print(f"{args.method} reference size, mode {f}, {torch.get_num_threads()} threads: median step "
          f"{med * 1e3:.1f} ms, {setup.batch / med:.2f} img/s")

    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(args.steps):
            step()
    events = prof.key_averages(group_by_input_shape=True)
    total = sum(e.self_cpu_time_total for e in events)  # microseconds over all profiled steps
    rows = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:args.rows]
    print(f"profiled {args.steps} steps, {total / 1e3 / args.steps:.1f} ms a step of self CPU time\n")
    print(f"{'ms/step':>8} {'share':>6} {'calls':>6} {'GFLOP/s':>8}  op  shapes")
    for e in rows:
        ms = e.self_cpu_time_total / 1e3 / args.steps
        gflop = event_gflop(e.key, e.input_shapes)
        rate = f"{gflop * e.count / (e.self_cpu_time_total / 1e6):8.0f}" if gflop else f"{'':8}"
        shapes = str([s for s in e.input_shapes if s])[:90]
        print(f"{ms:8.2f} {e.self_cpu_time_total / total:6.1%} {e.count // args.steps:6d} {rate}  {e.key}  {shapes}")


if __name__ == "__main__":
    main()
