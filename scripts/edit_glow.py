"""Edit faces with a trained Glow: encode exactly, walk along an attribute direction, decode exactly.

    python scripts/edit_glow.py --run runs/glow/synthetic --attribute Smiling --keep Mouth_Slightly_Open \\
        [--method mean|boundary|cflow] [--images a.jpg | --num 8 --seed 0 --temperature 0.7] [--range -3 3 --steps 7]
        [--target P ... --predictor runs/predictor/synthetic]

Glow's encoder is the exact inverse of its decoder, so the unedited column reproduces the input exactly (on the
model's n_bits grid). Directions are found in the standardised latent space of all levels flattened, from the
run's labelled training split (common.editing.encoder_direction): ``mean`` is the difference of the class means
(the official Glow demo's manipulation vectors), ``boundary`` a linear classifier's normal; ``--keep`` makes it
orthogonal to the kept attributes' directions. ``--method cflow`` (pose only) turns heads with a conditional flow
on the top level's latents instead of a straight line (common/latent_flow.py, convolutional couplings on its 4x4
maps; the lower levels are kept). Strengths are in units of the direction's scale (strength 1 moves
an average negative to an average positive for ``mean``). Writes ``<out>/<attribute>[-keep-...]-<method>.png``,
``.gif`` and ``.json`` (default out: RUN/edits/); the JSON records the unedited reconstruction's max error.
Photos given with ``--images`` (files or folders) are aligned like CelebA first (the largest face, 5 landmarks,
common/align.py; ``--no-align`` for crops that already are), and each edit is pasted back into its photo:
``<out>/<photo stem>-<attribute>-<strength>.jpg`` per strength and ``<photo stem>-<attribute>.gif``
(docs/own-photos.md). ``--target P ...`` walks each face until the ``--predictor`` reads P (strength in attribute
units; the columns are the targets, the JSON's "target" section has each face's strength).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common.attributes import resolve_attribute
from common.cli import UserError, run_main
from common.editing import add_edit_arguments, load_target_predictor, parse_targets, resolve_device, run_edit
from flow.glow import snap_to_grid
from pipeline.registry import load_method


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_edit_arguments(parser, methods=("mean", "boundary", "cflow"))
    parser.add_argument("--temperature", type=float, default=0.7,
                        help="with --num: sampling temperature of the edited faces (default 0.7)")
    args = parser.parse_args()
    run_dir = Path(args.run)
    if not (run_dir / "checkpoints" / "last.pt").is_file():
        raise UserError(f"{run_dir}: not a Glow run folder (expected {run_dir}/checkpoints/last.pt from "
                        "scripts/train_glow.py)")
    if args.temperature <= 0:
        raise UserError(f"--temperature {args.temperature}: expected a positive number")
    parse_targets(args.target, resolve_attribute(args.attribute))  # a bad target fails before the model is loaded

    device = resolve_device(args.device)
    predictor = load_target_predictor(args, device)  # None without --target
    # directions come from the run's training cache (or --cache); --predictor labels a label-free cache
    model, find_direction, _ = load_method(run_dir, device, predictor_run=args.predictor, cache=args.cache,
                                           glow_temperature=args.temperature, max_train_images=args.max_train_images,
                                           batch_size=args.batch_size, expect="glow")

    def exactness(result: dict) -> dict:
        """The strength-0 column against the input snapped to the model's grid: exact up to float error."""
        marked = result["record"].get("marked_column")
        if result["inputs"] is None or marked is None:
            return {}
        unedited = result["images"][:, marked].float()  # [R, 3, H, W]
        error = (unedited - snap_to_grid(result["inputs"].float(), model.n_bits)).abs().max().item()
        print(f"unedited reconstruction max abs error: {error:g} (on the {model.n_bits}-bit grid)")
        return {"unedited_reconstruction_max_abs_error": error, "n_bits": model.n_bits}

    run_edit(model, run_dir, args, find_direction, predictor=predictor, record_extra=exactness)
    return 0


if __name__ == "__main__":
    run_main(main)
