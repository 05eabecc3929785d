"""Edit faces with a trained VAE: walk the posterior means along an attribute direction and decode.

    python scripts/edit_vae.py --run runs/vae/synthetic --attribute Smiling --keep Mouth_Slightly_Open \\
        [--method mean|boundary|cflow] [--images a.jpg b.png | --num 8 --seed 0] [--range -3 3 --steps 7] [--out DIR]
    python scripts/edit_vae.py --run runs/vae/synthetic --attribute Smiling --target 0.1 0.5 0.9 \
        --predictor runs/predictor/synthetic

Images are encoded to their posterior means (user photos are aligned like CelebA first), moved along the
direction found on the run's training split (mean difference or linear boundary of the encoded latents; ``pose``
uses the yaw score; ``--method cflow``, pose only, edits with a conditional flow on the latents instead of a
straight line, see common/latent_flow.py), optionally made orthogonal to the ``--keep`` attributes' directions, and decoded. Writes
``<out>/<attribute>[-keep-...]-<method>.png``, ``.gif`` and ``.json`` (default out: RUN/edits/).
Photos given with ``--images`` (files or folders) are aligned like CelebA first (the largest face, 5 landmarks,
common/align.py; ``--no-align`` for crops that already are), and each edit is pasted back into its photo:
``<out>/<photo stem>-<attribute>-<strength>.jpg`` per strength and ``<photo stem>-<attribute>.gif``
(docs/own-photos.md). ``--target P ...`` walks each face until the ``--predictor`` reads P (strength in attribute
units; the columns are the targets, the JSON's "target" section has each face's strength).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common.align import expand_image_paths
from common.attributes import resolve_attribute
from common.cli import UserError, run_main
from common.editing import (
    add_edit_arguments,
    load_target_predictor,
    parse_keep,
    parse_targets,
    resolve_device,
    run_edit,
)
from pipeline.registry import load_method


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_edit_arguments(parser, methods=("mean", "boundary", "cflow"))
    args = parser.parse_args()
    # cheap checks first, so that a typo fails before the model is loaded
    parse_targets(args.target, resolve_attribute(args.attribute))
    parse_keep(args.keep)
    if args.images:
        expand_image_paths(args.images)  # a missing photo fails before the model is loaded
    run_dir = Path(args.run)
    if not (run_dir / "checkpoints").is_dir():
        raise UserError(f"{run_dir}: not a VAE run folder (expected {run_dir}/checkpoints/ from scripts/train_vae.py)")

    device = resolve_device(args.device)
    predictor = load_target_predictor(args, device)  # None without --target
    # directions come from the run's training cache (or --cache); --predictor labels a label-free cache
    model, find_direction, _ = load_method(run_dir, device, predictor_run=args.predictor, cache=args.cache,
                                           max_train_images=args.max_train_images, expect="vae")
    run_edit(model, run_dir, args, find_direction, predictor=predictor)
    return 0


if __name__ == "__main__":
    run_main(main)
