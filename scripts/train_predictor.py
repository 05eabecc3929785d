"""Train the attribute predictor. Usage: python scripts/train_predictor.py --config configs/predictor/synthetic.yaml
[--set train.total_images=2000] [--set train.seed=1 --out runs/predictor/synthetic-judge]

The objective, what is logged and what metrics.json holds: common/predictor_training.py. Resume with --resume, stop
with Ctrl-C (a checkpoint is saved), many GPUs with torchrun (README).
"""

from __future__ import annotations

import argparse

from common.cli import run_main
from common.config import load_config
from common.predictor_config import PredictorConfig
from common.predictor_training import PredictorTrainer, open_predictor_data
from common.run import RunContext, add_train_arguments
from common.training import fit


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_train_arguments(parser)
    args = parser.parse_args()
    cfg = load_config(PredictorConfig, args.config, args.set)
    if not args.dry_run:  # fail on a missing cache or an empty split before a run folder is created
        open_predictor_data(cfg)
    ctx = RunContext.create("predictor", cfg, args)
    if ctx is None:
        return 0  # --dry-run
    fit(ctx, PredictorTrainer(cfg, ctx), cfg.train.total_images, cfg.train.checkpoint_every_images)
    return 0


if __name__ == "__main__":
    run_main(main)
