"""The real-face turn check: edit one photo of a person to the yaw of another photo of the same person.

    python scripts/turn_pairs.py --runs runs/vae/celeba-cpu64 runs/glow/celeba-cpu64 \
        --photos ../shared/celeba-real/identities --predictor runs/predictor/celeba-cpu64 \
        --judge runs/predictor/celeba-cpu64-judge --exclude-cache data/cache/celeba_64 --num 40 --out runs/turn_pairs

Per run: PSNR of the face region against the real second photo, the judge's feature distance and yaw error, for
the edit and for three baselines (the unedited first photo, the model's reconstruction of it, a pixel cross-fade
of it with its mirror). Writes OUT/turn_pairs.json and OUT/turn_pairs.png (rows: first photo, each run's edit,
the cross-fade, the second photo). See common/pair_turns.py.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from common.cache import crop_and_resize, uint8_to_model
from common.checkpoint import atomic_write_text
from common.cli import UserError, run_main
from common.editing import get_direction
from common.grids import image_grid
from common.pair_turns import BASELINES, pair_turn_check, pick_pairs, read_identity_photos, training_identities
from common.predictor import load_predictor, score_images
from pipeline.registry import load_method


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", required=True, help="trained VAE / Glow / PGGAN run folders")
    parser.add_argument("--photos", required=True, help="folder with img_align_celeba/ and identity_CelebA.txt")
    parser.add_argument("--predictor", required=True, help="predictor run that steers the walk (reads yaw)")
    parser.add_argument("--judge", required=True, help="second predictor run that measures")
    parser.add_argument("--exclude-cache", default=None,
                        help="prepared cache whose training split's people are left out (they were trained on)")
    parser.add_argument("--method", default=None, help="pose method for every run (default: the run's own)")
    parser.add_argument("--num", type=int, default=40, help="pairs, the widest yaw gaps first (default 40)")
    parser.add_argument("--min-gap", type=float, default=0.2, help="least yaw difference of a pair (default 0.2)")
    parser.add_argument("--max-gap", type=float, default=None,
                        help="most yaw difference of a pair: each person's widest pair under it (default: no limit, "
                             "their most left- and right-turned photos)")
    parser.add_argument("--inversion-steps", type=int, default=0,
                        help="PGGAN: inversion steps per photo (default 0: the run config's)")
    parser.add_argument("--inversion-starts", type=int, default=0,
                        help="PGGAN: random starts per photo (default 0: the run config's)")
    parser.add_argument("--show", type=int, default=6, help="pairs in the picture (default 6)")
    parser.add_argument("--out", default="runs/turn_pairs", help="output folder")
    args = parser.parse_args()
    if args.num < 1:
        raise UserError(f"--num {args.num}: expected at least 1 pair")
    if args.inversion_steps < 0 or args.inversion_starts < 0:
        raise UserError("--inversion-steps and --inversion-starts: expected 0 (the config's) or more")
    if args.max_gap is not None and args.max_gap < args.min_gap:
        raise UserError(f"--max-gap {args.max_gap}: expected at least --min-gap ({args.min_gap})")
    out = Path(args.out)
    predictor, judge = load_predictor(args.predictor), load_predictor(args.judge)
    models = [(Path(run), *load_method(run, "cpu")) for run in args.runs]
    for _, model, _, info in models:
        if info["method"] == "pggan":  # the GAN encodes by inversion: its budget is the run's time
            model.steps, model.starts = args.inversion_steps or model.steps, args.inversion_starts or model.starts
    resolution = int(models[0][1].resolution)

    paths, identity = read_identity_photos(args.photos)
    pixels = np.stack([crop_and_resize(Image.open(p), resolution) for p in paths])  # [N, R, R, 3]
    images = uint8_to_model(pixels)  # [N, 3, R, R]
    exclude = training_identities(args.exclude_cache)
    yaw = score_images(predictor, images)["yaw"].numpy()
    pairs = pick_pairs(identity, yaw, args.min_gap, args.num, exclude, args.max_gap)
    if len(pairs) == 0:
        raise UserError(f"{args.photos}: no person has two photos {args.min_gap} to {args.max_gap or 'any'} apart in "
                        "yaw (after exclusions)")
    first, second = images[pairs[:, 0]], images[pairs[:, 1]]
    print(f"{len(pairs)} pairs of {len(set(identity[pairs[:, 0]].tolist()))} people ({len(exclude)} trained-on "
          f"identities left out); predictor yaw gap {np.abs(yaw[pairs[:, 1]] - yaw[pairs[:, 0]]).mean():.2f}")

    report = {"photos": str(args.photos), "min_gap": args.min_gap, "max_gap": args.max_gap,
              "pairs": [[paths[a].name, paths[b].name] for a, b in pairs], "predictor": args.predictor,
              "judge": args.judge, "runs": {}}
    shown, labels = [first[:args.show]], ["first photo"]
    for run, model, find_direction, info in models:
        if int(model.resolution) != resolution:
            raise UserError(f"{run}: resolution {model.resolution}, the first run's is {resolution}; compare runs "
                            "of one resolution")
        method = args.method or info["pose_method"]
        direction = get_direction(run, "pose", method, find_direction)
        result = pair_turn_check(model, direction, info["walk"], first, second, predictor, judge)
        edited = result.pop("images")
        shown.append(edited["edit"][:args.show])
        labels.append(f"{info['method']} {method}")
        crossfade = edited["crossfade"][:args.show]
        report["runs"][str(run)] = {"method": info["method"], "pose_method": method, **result}
        if info["method"] == "pggan":
            report["runs"][str(run)].update(model.encode_report())
        print(f"{run}: edit {result['edit']['psnr_face_db']:.2f} dB (unedited {result['unedited']['psnr_face_db']:.2f}"
              f", reconstruction {result['reconstruction']['psnr_face_db']:.2f}, cross-fade "
              f"{result['crossfade']['psnr_face_db']:.2f}); judge feature distance {result['edit']['feature_distance']:.2f}"
              f" vs {result['unedited']['feature_distance']:.2f} unedited; reached {result['reached_fraction']:.0%}")
    shown += [crossfade, second[:args.show]]
    labels += ["cross-fade", "second photo"]
    out.mkdir(parents=True, exist_ok=True)
    grid = torch.stack(shown, 1).flatten(0, 1)  # [show * columns, 3, R, R], a row per pair
    image_grid(grid, len(shown), out / "turn_pairs.png", labels=labels * min(args.show, len(pairs)))
    report["baselines"] = list(BASELINES)
    atomic_write_text(out / "turn_pairs.json", json.dumps(report, indent=2) + "\n")
    print(f"wrote {out / 'turn_pairs.json'} and {out / 'turn_pairs.png'}")
    return 0


if __name__ == "__main__":
    run_main(main)
