"""Check that the project's CUDA paths work on this machine, in at most 8 minutes; one JSON report and a table.

    python scripts/gpu_check.py [--out runs/gpu_check/report.json] [--device cuda] [--quick] [--budget 480]
        [--only train_vae edit_vae ...] [--cache DIR] [--list]

What it runs (docs/gpu.md says what each item means): the set-up (versions, device, the synthetic data set and
its cache), ``pytest -m cuda``, a short bf16 training run of each method (predictor, VAE, Glow, PGGAN) with a
"half, stop, resume" run compared bit for bit against the uninterrupted one, one edit per method, a one-process
NCCL DDP run, the training-step benchmark at the reference sizes against the CPU figures, an fp16 + GradScaler
run and torch.compile. Items that need CUDA are skipped, with the reason, where there is none; ``--device cpu
--quick`` runs the rest with tiny models on the CPU. Exit code 0 when every item passed or was skipped for a
stated reason, 1 when any failed, 2 for bad options.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path

from common.cli import UserError, run_main
from common.gpu_check import ITEMS, CheckSettings, exit_code, item_names, run_checks


def parse_device(spec: str) -> str:
    import torch

    spec = spec.strip().lower()
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise UserError(f"--device {spec!r}: expected cuda, cuda:N or cpu") from None
    if device.type not in ("cuda", "cpu"):
        raise UserError(f"--device {spec!r}: expected cuda, cuda:N or cpu")
    if device.type == "cuda" and torch.cuda.is_available() and (device.index or 0) >= torch.cuda.device_count():
        raise UserError(f"--device {spec}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return spec


def check_only(names: list[str]) -> tuple[str, ...]:
    known = item_names()
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; choose from {', '.join(known)}"
            raise UserError(f"--only {name}: unknown item{hint}")
    return tuple(names)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/gpu_check/report.json", help="the JSON report (written atomically)")
    parser.add_argument("--work", default=None,
                        help="scratch folder for data, runs and logs (default: 'work' beside --out; emptied first)")
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu to exercise the pipeline")
    parser.add_argument("--quick", action="store_true", help="tiny models and data (a smoke run, e.g. on a CPU)")
    parser.add_argument("--precision", default="", choices=["", "bf16", "fp32", "auto"],
                        help="training precision (default: bf16 on CUDA, auto on the CPU)")
    parser.add_argument("--budget", type=float, default=480.0, help="seconds for the whole check (default 480)")
    parser.add_argument("--only", nargs="+", default=[], metavar="ITEM", help="run only these items (see --list)")
    parser.add_argument("--cache", default=None, help="a prepared 32x32 cache to use instead of the synthetic set")
    parser.add_argument("--python", default=sys.executable,
                        help="interpreter of the child processes (default: this one)")
    parser.add_argument("--list", action="store_true", help="print the items and exit")
    args = parser.parse_args()
    if args.list:
        for item in ITEMS:
            print(f"{item.name:20s} {item.kind:6s} {item.limit_s:4.0f} s  {item.what}")
        return 0
    if args.budget <= 0:
        raise UserError(f"--budget {args.budget:g}: expected a positive number of seconds")
    if args.cache is not None and not (Path(args.cache) / "manifest.json").is_file():
        raise UserError(f"--cache {args.cache}: not a prepared cache (no manifest.json; make one with "
                        "scripts/prepare_data.py --resolution 32)")
    out = Path(args.out)
    if out.suffix != ".json":
        raise UserError(f"--out {out}: expected a .json file name")
    settings = CheckSettings(
        work=Path(args.work) if args.work else out.parent / "work", device=parse_device(args.device),
        quick=args.quick, precision=args.precision, budget_s=args.budget, python=args.python,
        cache=Path(args.cache) if args.cache else None, only=check_only(args.only))
    report = run_checks(settings, report_path=out)
    print(f"report: {out}")
    return exit_code(report)


if __name__ == "__main__":
    run_main(main)
