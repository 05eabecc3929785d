"""Edit faces with a trained PGGAN (InterFaceGAN): walk z along an attribute direction and generate.

    python scripts/edit_interface_gan.py --run runs/pggan/synthetic --attribute Smiling --keep Mouth_Slightly_Open \\
        [--method boundary|mean|pca:K|sefa:K] [--num 8 --seed 0 | --images photo.jpg] [--predictor RUN]
        [--samples 20000] [--range -3 3 --steps 7 | --target P ...] [--walk sphere|relative|absolute] [--out DIR]
    python scripts/edit_interface_gan.py --run runs/pggan/synthetic --attribute pose --list-components

Directions come from N generated samples scored by the predictor (RUN/directions/samples.npz, reused): a linear
boundary (pose: the predicted yaw), a mean difference, or component K of GANSpace (pca) or SeFa; --keep projects
the kept attributes' boundaries out. Default: 8 random samples (seed 0); --images are inverted first. Walks follow
great circles on the sqrt(D) sphere. Writes ``<out>/<attribute>[-keep-...]-<method>.png``, ``.gif`` and ``.json``
(default out: RUN/edits/; the JSON holds the predictor's mean scores per strength). ``--target P ...`` walks each face until the predictor reads P. Photos
(``--images``, files or folders) are aligned first and the edit is pasted back into them (docs/own-photos.md).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common.align import expand_image_paths
from common.attributes import POSE, attribute_index, resolve_attribute
from common.checkpoint import atomic_write_text
from common.cli import UserError, run_main
from common.editing import add_edit_arguments, parse_keep, parse_targets, resolve_device, run_edit
from interface_gan.pca import pca_with_null
from pipeline.registry import load_method


def predicted_per_strength(predictor, images, names: list[str]) -> dict[str, list[float]]:
    """Mean predicted score per strength column for each name (probability, or yaw for pose)."""
    from common.predictor import score_images

    rows, steps = images.shape[:2]
    scored = score_images(predictor, images.reshape(rows * steps, *images.shape[2:]))
    out = {}
    for name in names:
        values = scored["yaw"] if name == POSE else scored["probs"][:, attribute_index(name)]
        out[name] = [round(float(v), 4) for v in values.reshape(rows, steps).mean(dim=0)]
    return out


def component_report(find_direction) -> dict:
    """GANSpace and SeFa components (names, explained variance vs the isotropic null) and PCA straight on z."""
    report = {}
    for kind in ("pca", "sefa"):
        comps = find_direction.components(kind)
        report[kind] = [{"name": comps.names[k], "explained_variance_ratio": float(comps.explained_variance_ratio[k]),
                         "isotropic_null_ratio": float(comps.null_ratio[k]), "is_noise": bool(comps.noise[k]),
                         "top_correlations": dict(list(comps.correlations[k].items())[:4])}
                        for k in range(min(10, len(comps.names)))]
    # PCA straight on z, for contrast: an isotropic Gaussian, so its components are sampling noise
    _, ratios, null, noise = pca_with_null(find_direction.samples().latents[: find_direction.ganspace_samples], 5)
    report["z_pca"] = [{"name": f"zPC{k}", "explained_variance_ratio": float(ratios[k]),
                        "isotropic_null_ratio": float(null[k]), "is_noise": bool(noise[k])} for k in range(5)]
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_edit_arguments(parser, methods=("boundary", "mean", "pca", "sefa"))  # with --predictor RUN (default:
    # the config's edit.predictor), which scores the samples and steers --target
    parser.add_argument("--samples", type=int, default=None,
                        help="latents sampled and scored to find directions (default: the config's edit.samples)")
    parser.add_argument("--measure", default="",
                        help="comma-separated extra attributes whose mean predicted score per strength goes in the "
                             "JSON (leakage), besides the edited and --keep ones")
    parser.add_argument("--list-components", action="store_true",
                        help="also write RUN/directions/components.json (GANSpace and SeFa names, explained "
                             "variance vs the isotropic null) and print it")
    args = parser.parse_args()
    attribute = resolve_attribute(args.attribute)
    parse_targets(args.target, attribute)
    keep = parse_keep(args.keep)
    measured = [attribute, *keep] + [m for m in parse_keep(args.measure) if m not in (attribute, *keep)]
    if keep and args.method.partition(":")[0] in ("pca", "sefa"):
        raise UserError(f"--keep with --method {args.method}: conditional editing needs attribute boundaries; "
                        "use --method boundary or mean")
    if args.images:
        expand_image_paths(args.images)  # a missing photo fails before the model is loaded
    run_dir = Path(args.run)
    if not (run_dir / "checkpoints").is_dir():
        raise UserError(f"{run_dir}: not a PGGAN run folder (expected {run_dir}/checkpoints/ from "
                        "scripts/train_pggan.py)")
    if not args.images and args.num is None and args.cache_images is None:
        args.num = 8  # the classic InterFaceGAN use: random samples; --cache-images N inverts cache images
    if args.seed is None:
        args.seed = 0

    # the predictor (--predictor, default the config's edit.predictor) scores the samples, steers --target and
    # adds its feature loss to the inversion of --images
    model, find_direction, info = load_method(run_dir, resolve_device(args.device), predictor_run=args.predictor,
                                              samples=args.samples, seed=args.seed, expect="pggan")
    args.predictor = info["predictor"]  # recorded in the JSON's "target" section
    result = run_edit(model, run_dir, args, find_direction, predictor=model.predictor,
                      record_extra=lambda r: {"predicted": predicted_per_strength(model.predictor, r["images"],
                                                                                  measured)})
    if "inversion" in result["record"]:
        inversion = result["record"]["inversion"]
        print(f"inversion PSNR {inversion['mean_psnr']:.2f} dB (best random start "
              f"{sum(inversion['random_start_psnr']) / len(inversion['random_start_psnr']):.2f} dB)")
    if args.list_components:
        report = component_report(find_direction)
        atomic_write_text(run_dir / "directions" / "components.json", json.dumps(report, indent=2, default=float))
        for kind, rows in report.items():
            print(f"{kind}:")
            for row in rows:
                print(f"  {row['name']:32s} var {row['explained_variance_ratio']:.3f} (null "
                      f"{row['isotropic_null_ratio']:.3f}){' NOISE' if row['is_noise'] else ''}")
    return 0


if __name__ == "__main__":
    run_main(main)
