"""Train Glow. Usage: python scripts/train_glow.py --config configs/flow/synthetic.yaml [--set train.total_images=2000]

The objective (bits per dimension of uniformly dequantised inputs), the actnorm init, warm-up, skipped steps, what
is logged and what metrics.json holds: flow/training.py. Resume with --resume, stop with Ctrl-C (a checkpoint is
saved), many GPUs with torchrun (README).
"""

from __future__ import annotations

import argparse

from common.cache import open_training_cache
from common.cli import run_main
from common.config import load_config
from common.run import RunContext, add_train_arguments
from common.training import fit
from flow.config import GlowConfig
from flow.training import GlowTrainer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_train_arguments(parser)
    args = parser.parse_args()
    cfg = load_config(GlowConfig, args.config, args.set)
    if not args.dry_run:  # a missing cache fails before a run folder is created
        open_training_cache(cfg.data)
    ctx = RunContext.create("glow", cfg, args)
    if ctx is None:
        return 0  # --dry-run
    fit(ctx, GlowTrainer(cfg, ctx), cfg.train.total_images, cfg.train.checkpoint_every_images)
    return 0


if __name__ == "__main__":
    run_main(main)
