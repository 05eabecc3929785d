"""Measured throughput of the project's pieces against the machine's own limit: a table, JSON and Markdown.

    python scripts/benchmark.py [--only vae glow pggan predictor boundary loader edit scaling] [--device auto]
        [--steps 10 --warmup 3] [--modes default fp32 channels_last bf16 channels_last+bf16] [--compile]
        [--scaling] [--json runs/benchmark.json] [--markdown PATH]

What each benchmark measures, and how: pipeline/benchmark/ (limits.py: the matmul rate per precision and the
memory bandwidth, measured in the same run before and after the rows, the faster kept; train.py: each method's own
training step, its FLOPs per image and its fraction of that limit, pass/fail by fraction; scaling.py; other.py: loader, edit, boundary). The JSON
keeps the entries of earlier runs of the other benchmarks; --markdown writes the training table for
docs/results.md.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from common.checkpoint import atomic_write_text
from common.cli import UserError, run_main
from pipeline.benchmark import BENCHMARKS, EXTRA, MODES, SETUPS, results_markdown, run_benchmarks, write_json


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", metavar="NAME",
                        help=f"run only these ({', '.join([*BENCHMARKS, *EXTRA])})")
    parser.add_argument("--json", default="runs/benchmark.json", help="results file (merged with earlier runs)")
    parser.add_argument("--markdown", metavar="PATH",
                        help="also write the training table, limits and commands (of the merged JSON) as Markdown")
    parser.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, cuda:N")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per row (median reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed training steps before timing")
    parser.add_argument("--modes", nargs="+", default=[m for m in MODES if m != "compile+bf16"], choices=list(MODES),
                        help="precision / layout modes of the training benchmarks; default = what the size's "
                        "config file sets (train.precision, channels_last, compile)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (slow to compile on CPU)")
    parser.add_argument("--matmul-n", type=int, default=None,
                        help="limits: side of the square matmuls (default: 2048 on a CPU, less when slow; CUDA 8192)")
    parser.add_argument("--root", default="data/synthetic",
                        help="loader: CelebA folder (synthetic images are generated when it holds none)")
    parser.add_argument("--num", type=int, default=2000, help="loader: distinct images to read (default 2000)")
    parser.add_argument("--jpeg-images", type=int, default=1280, help="loader: images timed for the JPEG pipeline")
    parser.add_argument("--seconds", type=float, default=3.0, help="loader: seconds timed per cache pipeline")
    parser.add_argument("--edit-methods", nargs="+", default=["vae", "glow", "pggan"], choices=["vae", "glow", "pggan"])
    parser.add_argument("--boundary-n", type=int, default=500000, help="boundary: latents (InterFaceGAN: 500k)")
    parser.add_argument("--scaling", action="store_true", help="also measure scaling and plot it (--plot)")
    parser.add_argument("--scaling-methods", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    parser.add_argument("--resolutions", nargs="+", type=int, default=[32, 64, 128])
    parser.add_argument("--scaling-batch", type=int, default=16, help="scaling: batch of the resolution sweep")
    parser.add_argument("--batches", nargs="+", type=int, default=[8, 16, 32, 64], help="scaling: batch sweep")
    parser.add_argument("--scaling-steps", type=int, default=3, help="scaling: timed steps per point")
    parser.add_argument("--plot", default="docs/scaling.png", help="scaling: where the figure goes")
    args = parser.parse_args(argv)
    if args.compile and "compile+bf16" not in args.modes:
        args.modes.append("compile+bf16")
    if min(args.steps, args.scaling_steps) < 1 or args.warmup < 0:
        raise UserError("--steps and --scaling-steps must be >= 1 and --warmup >= 0")
    return args


def main() -> int:
    args = parse_args()
    names = list(args.only or BENCHMARKS)
    if args.scaling and "scaling" not in names:
        names.append("scaling")
    unknown = [n for n in names if n not in {**BENCHMARKS, **EXTRA}]
    if unknown:
        raise UserError(f"--only {' '.join(unknown)}: unknown benchmark; choose from "
                        f"{', '.join([*BENCHMARKS, *EXTRA])}")
    command = " ".join(["python scripts/benchmark.py", *map(shlex.quote, sys.argv[1:])])
    results = run_benchmarks(names, args, command)
    merged = write_json(Path(args.json), results)
    print(f"\nwrote {args.json}")
    if args.markdown:
        atomic_write_text(args.markdown, results_markdown(merged))
        print(f"wrote {args.markdown}")
    return 0


if __name__ == "__main__":
    run_main(main)
