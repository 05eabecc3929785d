"""Does an identity-pair loss on the pose latent flow bring real-face turns closer to the real second photo?

    python experiments/pair_loss_study/pair_loss_study.py --run runs/vae/celeba-cpu64 \
        --photos ../shared/celeba-real/identities --predictor runs/predictor/celeba-cpu64 \
        --exclude-cache data/cache/celeba_64 --pair-people 120 --test-people 40 --pair-weight 1.0 \
        [--judge RUN] [--max-train-images 20000] [--out runs/pair_loss_study]

The pose ``cflow`` is fitted as the product fits it (common.editing.pose_latent_flow: the run's training cache and
its mirrors with the yaw negated, Glow's top level as maps), once by maximum likelihood alone and once per
``--pair-weight`` with the pair loss of common.latent_flow.fit_latent_flow on same-person pairs: every ordered pair
of one person's photos at least ``--pair-min-gap`` apart in the predictor's yaw (and the same pairs mirrored), at
most ``--pairs-per-person`` of them. Same seed, same likelihood batches. The test people are others, none of them
in ``--exclude-cache``'s training split (the people the run trained on may train the pair loss: they are only
latents to it). Each flow is graded on one pair per test person (common.pair_turns: pick_pairs, pair_turn_check):
face PSNR to the second photo, the judge's feature distance and yaw error, beside the unedited / reconstruction /
cross-fade baselines; the per-pair PSNR gain over the likelihood-only flow with its standard error; and the
transport error in the latents, F(F^-1(z1; y1); y2) against z2 per standardised dimension. Writes
OUT/pair_loss_study.json and prints a table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from common.attributes import POSE
from common.cache import CelebACache, crop_and_resize, uint8_to_model
from common.checkpoint import atomic_write_text
from common.cli import UserError, run_main
from common.directions import regression_direction
from common.editing import CONV_FLOW_EPOCHS, CONV_FLOW_HIDDEN, _encode_positions, _subset
from common.grids import image_grid
from common.latent_flow import fit_latent_flow
from common.pair_turns import (
    BASELINES,
    pair_metrics,
    pair_turn_check,
    pick_pairs,
    read_identity_photos,
    training_identities,
)
from common.predictor import load_predictor, score_images
from pipeline.registry import load_method


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a VAE or Glow run folder")
    p.add_argument("--photos", required=True, help="folder with img_align_celeba/ and identity_CelebA.txt")
    p.add_argument("--predictor", required=True, help="predictor run: reads the photos' yaw and steers the walk")
    p.add_argument("--judge", default=None, help="predictor run that measures (default: --predictor)")
    p.add_argument("--exclude-cache", default=None, help="prepared cache whose training people are not test people")
    p.add_argument("--pair-people", type=int, default=120, help="people whose pairs train the pair loss")
    p.add_argument("--test-people", type=int, default=40, help="other people, one pair each, to grade on")
    p.add_argument("--pair-weight", type=float, nargs="+", default=[1.0], help="pair-loss weights (0 always runs)")
    p.add_argument("--pair-min-gap", type=float, default=0.1, help="least yaw gap of a training pair")
    p.add_argument("--pairs-per-person", type=int, default=200, help="at most this many training pairs a person")
    p.add_argument("--min-gap", type=float, default=0.2, help="least yaw gap of a test pair (as turn_pairs.py)")
    p.add_argument("--max-train-images", type=int, default=20000, help="cache images for the likelihood")
    p.add_argument("--epochs", type=int, default=None, help="latent-flow epochs (default: the product's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--out", default="runs/pair_loss_study", help="output folder")
    args = p.parse_args()
    if args.pair_people < 1 or args.test_people < 1 or min(args.pair_weight) < 0:
        raise UserError("--pair-people and --test-people must be >= 1 and --pair-weight >= 0")
    return args


def encode(model, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """[n, 3, R, R] -> latents [n, D] float32 on the CPU."""
    with torch.no_grad():
        return torch.cat([model.encode(b).detach().float().cpu().reshape(len(b), -1) for b in images.split(batch_size)])


def split_people(identity: np.ndarray, exclude: set, n_pair: int, n_test: int, seed: int) -> tuple[list, list]:
    """Test people from those outside ``exclude``, then pair people from everyone left; seeded, disjoint."""
    rng = np.random.default_rng(seed)
    people = sorted(set(identity.tolist()))
    outside = [people[i] for i in rng.permutation(len(people)) if people[i] not in exclude]
    if len(outside) < n_test:
        raise UserError(f"--test-people {n_test}: only {len(outside)} people are outside the excluded cache")
    test = outside[:n_test]
    rest = [people[i] for i in rng.permutation(len(people)) if people[i] not in set(test)]
    if len(rest) < n_pair:
        raise UserError(f"--pair-people {n_pair}: only {len(rest)} people are left after {n_test} test people")
    return rest[:n_pair], test


def training_pairs(identity, yaw, latents, mirrored, people, min_gap: float, per_person: int, seed: int):
    """Ordered same-person pairs (a, b), |yaw_a - yaw_b| >= min_gap, at most ``per_person`` a person, and the same
    pairs mirrored (yaw negated) -> (z_a [P, D], y_a [P], z_b [P, D], y_b [P])."""
    rng = np.random.default_rng(seed)
    chosen = []
    for person in people:
        rows = np.flatnonzero(identity == person)
        a, b = np.meshgrid(rows, rows, indexing="ij")
        keep = (a != b) & (np.abs(yaw[a] - yaw[b]) >= min_gap)
        found = np.stack([a[keep], b[keep]], 1)  # [p, 2]
        if per_person > 0 and len(found) > per_person:
            found = found[np.sort(rng.choice(len(found), per_person, replace=False))]
        chosen.append(found)
    pairs = np.concatenate(chosen)  # [P, 2] rows of the photos
    if len(pairs) == 0:
        raise UserError(f"no pair-people photos are {min_gap} apart in yaw; lower --pair-min-gap")
    first, second = pairs[:, 0], pairs[:, 1]
    return (torch.cat([latents[first], mirrored[first]]).numpy(), np.concatenate([yaw[first], -yaw[first]]),
            torch.cat([latents[second], mirrored[second]]).numpy(), np.concatenate([yaw[second], -yaw[second]]))


def transport(flow, z_a: torch.Tensor, y_a, z_b: torch.Tensor, y_b) -> tuple[torch.Tensor, float]:
    """F(F^-1(z_a; y_a); y_b) as whole latents [P, D] (the part outside a Glow flow's kept), and its mean squared
    error against z_b per standardised dimension of the flow's part."""
    part = (lambda z: z[:, flow.index]) if flow.full_dim is not None else (lambda z: z)  # noqa: E731
    moved = flow.transport(part(z_a).double(), torch.as_tensor(y_a), torch.as_tensor(y_b))
    error = float((((moved - part(z_b).double()) / flow.z_std) ** 2).mean())
    whole = z_a.clone()
    if flow.full_dim is not None:
        whole[:, flow.index] = moved.float()
    else:
        whole = moved.float()
    return whole, error


def main() -> int:
    args = parse_args()
    model, _, info = load_method(args.run, "cpu", max_train_images=args.max_train_images, batch_size=args.batch_size)
    if info["method"] not in ("vae", "glow"):
        raise UserError(f"{args.run}: a {info['method']} run; the study needs an encoder model (VAE or Glow)")
    predictor = load_predictor(args.predictor)
    judge = load_predictor(args.judge) if args.judge else predictor

    # the people first: a wrong count fails before the encoding
    paths, identity = read_identity_photos(args.photos)
    exclude = training_identities(args.exclude_cache)
    pair_people, test_people = split_people(identity, exclude, args.pair_people, args.test_people, args.seed)

    # the likelihood's data, as pose_latent_flow gathers it
    cache = CelebACache(info["cache"], "train")
    positions = _subset(np.arange(len(cache.labels()[1])), args.max_train_images, args.seed)
    cache_yaw = np.asarray(cache.labels()[1], dtype=np.float64)[positions]
    both = torch.cat([_encode_positions(model, cache, positions, args.batch_size, True, mirror=m)
                      for m in (False, True)])  # [2n, D], the mirrors' yaw negated below
    scores = np.concatenate([cache_yaw, -cache_yaw])
    layout = model.latent_flow_layout()
    shape_args = {} if layout is None else {"hidden": CONV_FLOW_HIDDEN, "epochs": CONV_FLOW_EPOCHS,
                                            "shape": layout[1], "index": np.asarray(layout[0])}
    if args.epochs:
        shape_args["epochs"] = args.epochs

    # their photos and the photos' yaw
    keep = np.flatnonzero(np.isin(identity, pair_people + test_people))  # only their photos are read
    paths, identity = [paths[i] for i in keep], identity[keep]
    images = uint8_to_model(np.stack([crop_and_resize(Image.open(p), int(model.resolution)) for p in paths]))
    yaw = score_images(predictor, images)["yaw"].numpy().astype(np.float64)
    used = np.flatnonzero(np.isin(identity, pair_people))
    latents = torch.zeros(len(paths), both.shape[1])
    mirrored = torch.zeros_like(latents)
    latents[used] = encode(model, images[used], args.batch_size)
    mirrored[used] = encode(model, images[used].flip(-1), args.batch_size)
    pairs = training_pairs(identity, yaw, latents, mirrored, pair_people, args.pair_min_gap, args.pairs_per_person,
                           args.seed)
    test = pick_pairs(identity, yaw, args.min_gap, 0, set(identity.tolist()) - set(test_people))
    if len(test) == 0:
        raise UserError(f"no test person has two photos {args.min_gap} apart in yaw")
    first, second = images[test[:, 0]], images[test[:, 1]]
    z_first, z_second = encode(model, first, args.batch_size), encode(model, second, args.batch_size)
    print(f"{len(both)} cache latents (with mirrors); {len(pairs[0])} training pairs of {len(pair_people)} people "
          f"({len(set(pair_people) & exclude)} trained on by the run); {len(test)} test pairs of other people, "
          f"yaw gap {np.abs(yaw[test[:, 1]] - yaw[test[:, 0]]).mean():.2f}")

    report = {"run": args.run, "photos": args.photos, "predictor": args.predictor,
              "judge": args.judge or args.predictor, "n_cache_latents": int(len(both)),
              "n_training_pairs": int(len(pairs[0])), "pair_min_gap": args.pair_min_gap, "min_gap": args.min_gap,
              "pair_people": [int(v) for v in pair_people], "test_people": [int(v) for v in test_people],
              "test_pairs": [[paths[a].name, paths[b].name] for a, b in test], "fits": {}}
    per_pair, linear, shown = {}, regression_direction(both.double().numpy(), scores), {}
    judged_second = score_images(judge, second)
    y_first, y_second = yaw[test[:, 0]], yaw[test[:, 1]]
    for weight in sorted({0.0, *args.pair_weight}):
        flow, fit = fit_latent_flow(both.numpy(), scores, seed=args.seed, progress=True, pairs=pairs,
                                    pair_weight=weight, **shape_args)
        direction = dataclasses.replace(linear, transport=flow, attribute=POSE, method="cflow")
        result = pair_turn_check(model, direction, info["walk"], first, second, predictor, judge)
        edited = result.pop("images")
        shown[weight] = edited["edit"][:8]
        none = np.zeros((1, 1))  # per-pair PSNR only: features and yaw do not enter it
        per_pair[weight] = np.array([pair_metrics(edited["edit"][i:i + 1], second[i:i + 1], none, none, none, none)
                                     ["psnr_face_db"] for i in range(len(test))])  # [P]
        report["baselines"] = {name: result.pop(name) for name in BASELINES}  # the same for every flow
        # the flow's own answer, without the walk: z1 carried from the predictor's y1 to its y2, decoded
        moved, result["test_transport_mse"] = transport(flow, z_first, y_first, z_second, y_second)
        with torch.no_grad():
            decoded = torch.cat([model.decode(b).detach().float().cpu().clamp(-1, 1)
                                 for b in moved.split(args.batch_size)])
        judged = score_images(judge, decoded)
        result["transport_decoded"] = pair_metrics(decoded, second, judged["features"].numpy(),
                                                   judged_second["features"].numpy(), judged["yaw"].numpy(),
                                                   judged_second["yaw"].numpy())
        gain = per_pair[weight] - per_pair[0.0]
        stderr = float(gain.std(ddof=1) / np.sqrt(len(gain))) if len(gain) > 1 else None
        result["psnr_gain_over_nll_only_db"] = {"mean": float(gain.mean()), "stderr": stderr}
        report["fits"][str(weight)] = {"latent_flow": fit, **result}

    print(f"\n{'':26s} {'face PSNR':>9s} {'gain':>13s} {'judge dist':>10s} {'yaw err':>7s} {'reached':>7s} "
          f"{'test T-mse':>10s} {'train pair-mse':>14s} {'val NLL':>7s}")
    for weight, row in report["fits"].items():
        e, g, t = row["edit"], row["psnr_gain_over_nll_only_db"], row["transport_decoded"]
        gain = f"{g['mean']:+.2f}+-{g['stderr']:.2f}" if g["stderr"] is not None else f"{g['mean']:+.2f}"
        print(f"{'cflow walk, weight ' + weight:26s} {e['psnr_face_db']:9.2f} {gain:>13s} {e['feature_distance']:10.2f}"
              f" {e['yaw_error']:7.2f} {row['reached_fraction']:7.0%} {row['test_transport_mse']:10.3f} "
              f"{row['latent_flow']['pair_mse']:14.3f} {row['latent_flow']['val_nll_per_dim']:7.3f}")
        print(f"{'  transport y1->y2, decoded':26s} {t['psnr_face_db']:9.2f} {'':>13s} {t['feature_distance']:10.2f} "
              f"{t['yaw_error']:7.2f}")
    for name, row in report["baselines"].items():
        print(f"{name:26s} {row['psnr_face_db']:9.2f} {'':>13s} {row['feature_distance']:10.2f} "
              f"{row['yaw_error']:7.2f}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "pair_loss_study.json", json.dumps(report, indent=2) + "\n")
    # a picture: per test pair, the first photo, each flow's edit to the second's yaw, and the second photo
    columns = [first[:8], *(shown[w] for w in sorted(shown)), second[:8]]
    grid = torch.stack(columns, 1).flatten(0, 1)  # [8 * (2 + W), 3, R, R]
    labels = ["first"] + [f"weight {w:g}" for w in sorted(shown)] + ["second"]
    image_grid(grid, len(columns), out / "pair_loss_study.png", labels=labels * len(columns[0]))
    print(f"wrote {out / 'pair_loss_study.json'} and {out / 'pair_loss_study.png'}")
    return 0


if __name__ == "__main__":
    run_main(main)
