"""Train the VAE. Usage: python scripts/train_vae.py --config configs/vae/synthetic.yaml [--set train.total_images=2000]

The objective, what is logged and what metrics.json holds: vae/training.py. Resume with --resume, stop with Ctrl-C
(a checkpoint is saved), many GPUs with torchrun (README).
"""

from __future__ import annotations

import argparse

from common.cache import open_training_cache
from common.cli import run_main
from common.config import load_config
from common.run import RunContext, add_train_arguments
from common.training import fit
from vae.config import VAEConfig
from vae.model import check_architecture
from vae.training import VAETrainer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_train_arguments(parser)
    args = parser.parse_args()
    cfg = load_config(VAEConfig, args.config, args.set)
    if not args.dry_run:  # fail on a bad architecture or a missing cache before a run folder is created
        check_architecture(cfg.data.resolution, cfg.model.widths)
        open_training_cache(cfg.data)
    ctx = RunContext.create("vae", cfg, args)
    if ctx is None:
        return 0  # --dry-run
    fit(ctx, VAETrainer(cfg, ctx), cfg.train.total_images, cfg.train.checkpoint_every_images)
    return 0


if __name__ == "__main__":
    run_main(main)
