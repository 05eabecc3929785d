"""Train a progressive GAN from scratch. Usage: python scripts/train_pggan.py --config configs/interface_gan/synthetic.yaml
[--set train.total_images=2000] [--stop-after-images N]

The growth schedule, the objective, what is logged and what metrics.json holds: interface_gan/training.py. Resume
with --resume (even mid-fade: the result equals an uninterrupted run), stop with Ctrl-C (a checkpoint is saved),
many GPUs with torchrun (README). --stop-after-images N saves a checkpoint and stops once N images are seen
(train in sessions; continue with --resume).
"""

from __future__ import annotations

import argparse

from common.cache import open_training_cache
from common.cli import run_main
from common.config import load_config
from common.run import RunContext, add_train_arguments
from common.training import fit
from interface_gan.config import PGGANConfig
from interface_gan.training import PGGANTrainer, growth_schedule


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_train_arguments(parser)
    parser.add_argument("--stop-after-images", type=int, default=0,
                        help="checkpoint and stop once this many images are seen (continue later with --resume)")
    args = parser.parse_args()
    cfg = load_config(PGGANConfig, args.config, args.set)
    growth_schedule(cfg, args.config)  # a bad resolution or batch-size list fails before a run folder is made
    if not args.dry_run:
        open_training_cache(cfg.data)  # so does a missing cache
    ctx = RunContext.create("pggan", cfg, args)
    if ctx is None:
        return 0  # --dry-run
    fit(ctx, PGGANTrainer(cfg, ctx), cfg.train.total_images, cfg.train.checkpoint_every_images,
        stop_at=args.stop_after_images)
    return 0


if __name__ == "__main__":
    run_main(main)
