"""Where does pose live in a Glow's latents, and how close do pose edits get to a true head turn?

    python experiments/glow_pose_study/glow_pose_study.py --run runs/glow/synthetic [--cache DIR] [--max-images 8000] [--faces 8]
        [--flow all:64 lv12:128 top:256 top:768 top:conv lv12:conv] [--hidden 256] [--epochs 60]
        [--condition yaw|colour|factors] [--out RUN/pose_study.json]

A study, not an edit: it needs a synthetic cache (the rendered head turns are the ground truth). It encodes up
to ``--max-images`` training images and their mirrors (yaw negated), renders ``--faces`` of the evaluation's
turning faces (scripts/evaluate.py, -32..+32 degrees) and edits each turn's encoded frontal frame towards every
other frame's yaw (as the linear read-out of the latents sees that frame). Every row is the PSNR against the true
frames, averaged over the non-frontal frames:

- ``none`` (the frontal frame as is) and ``cross-fade`` (the two end frames blended in pixels: exact at the ends,
  so averaged over the inner frames only);
- ``straight``: the regression direction (common.directions.regression_direction), what ``--method mean`` walks;
- ``flow <part>:<k>``: the conditional latent flow (common.latent_flow) on the top ``k`` principal components of a
  part of the latents (``all`` levels, ``lv12`` the two upper levels, ``top`` the top level), or, ``<part>:conv``,
  with convolutional couplings on that part laid out as maps of the top level's size; the rest of the latent is kept.
  ``--condition`` sets what the flows are conditioned on besides yaw: nothing (``yaw``), the image's colours
  (``colour``: the mean RGB of its centre and of its border, label-free, so it would work on CelebA too) or every
  other factor the synthetic faces were rendered with (``factors``: labels only the synthetic set has). The edit
  moves yaw and keeps the other conditions where the latents' linear read-out puts them;
- oracles, which use the true frame's own latents: that frame's level (or upper two levels) put into the frontal
  frame's latents,
  and the true displacement kept only on the top 64 / 128 / 256 principal components of all levels.

Writes a JSON of every row (default RUN/pose_study.json), a PNG beside it (the true turn, the straight edit and
each flow's edit, for two faces) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from common.cli import UserError, run_main

PARTS = ("all", "lv12", "top")
ORACLE_COMPONENTS = (64, 128, 256)
CONDITIONS = ("yaw", "colour", "factors")
PCA_FIT_ROWS = 6000  # principal components from this many latents: plenty for the top few hundred


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a Glow run folder (scripts/train_glow.py)")
    p.add_argument("--cache", default=None, help="prepared synthetic cache to fit on (default: the run's)")
    p.add_argument("--max-images", type=int, default=8000, help="training images encoded (and mirrored)")
    p.add_argument("--faces", type=int, default=8, help="rendered head turns to compare with")
    p.add_argument("--flow", nargs="*", default=["all:64"], help="latent flows to fit, PART:K or PART:conv (PART: all, lv12, top)")
    p.add_argument("--hidden", type=int, default=256, help="latent-flow hidden units (channels for :conv)")
    p.add_argument("--epochs", type=int, default=60, help="latent-flow epochs (early stopping on validation)")
    p.add_argument("--condition", choices=CONDITIONS, default="yaw",
                   help="what the flows are conditioned on: yaw alone, yaw and the image's colours, or yaw and "
                        "every other synthetic factor")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--out", default=None, help="JSON to write (default RUN/pose_study.json)")
    return p.parse_args()


def parse_flow(spec: str, sizes: dict[str, int]) -> tuple[str, int | str]:
    part, _, k = spec.partition(":")
    if part in PARTS and k == "conv":
        return part, k
    if part not in PARTS or not k.isdigit() or not 2 <= int(k) <= sizes[part]:
        raise UserError(f"--flow {spec!r}: expected PART:K or PART:conv with PART one of {', '.join(PARTS)} and "
                        f"2 <= K <= the part's size ({', '.join(f'{n} {s}' for n, s in sizes.items())})")
    return part, int(k)


def colour_stats(images: np.ndarray) -> np.ndarray:
    """uint8 [n, R, R, 3] -> [n, 6]: the mean RGB (0..1) of the central half of the image (mostly face) and of its
    outer eighth (mostly background). Both are the same for a face and its mirror."""
    pixels = np.asarray(images, dtype=np.float64) / 255.0
    r = pixels.shape[1]
    border = np.ones((r, r), dtype=bool)
    width = max(1, r // 8)
    border[width:-width, width:-width] = False
    centre = pixels[:, r // 4:3 * r // 4, r // 4:3 * r // 4].mean((1, 2))
    return np.concatenate([centre, pixels[:, border].mean(1)], axis=1)


def conditions(kind: str, cache, positions: np.ndarray, yaw: np.ndarray,
               factors: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """The flows' conditions for the images at ``positions`` and then their mirrors: ([2n, K], K names), yaw first.

    ``yaw`` [N] and ``factors`` [N, F] are the split's labels (``cache.labels()``)."""
    from common.cache import MIRROR_ODD_FACTORS

    y = np.asarray(yaw, dtype=np.float64)[positions]
    names, plain, mirrored = ["yaw"], [y[:, None]], [-y[:, None]]
    if kind == "colour":
        stats = colour_stats(cache.images_uint8(positions))
        names += [f"{region}_{c}" for region in ("centre", "border") for c in "rgb"]
        plain.append(stats)
        mirrored.append(stats)
    elif kind == "factors":
        factors = np.asarray(factors, dtype=np.float64)[positions]  # [n, F]
        keep = [i for i, name in enumerate(cache.factor_names) if name != "yaw"]
        sign = np.array([-1.0 if cache.factor_names[i] in MIRROR_ODD_FACTORS else 1.0 for i in keep])
        names += [cache.factor_names[i] for i in keep]
        plain.append(factors[:, keep])
        mirrored.append(factors[:, keep] * sign)
    return np.concatenate([np.concatenate(plain, 1), np.concatenate(mirrored, 1)]), names


def main() -> int:
    args = parse_args()
    run = Path(args.run)
    if not (run / "checkpoints" / "last.pt").is_file():
        raise UserError(f"{run}: not a Glow run folder (expected {run}/checkpoints/last.pt)")
    if args.max_images < 20 or args.faces < 1 or args.epochs < 1:
        raise UserError("--max-images >= 20, --faces >= 1 and --epochs >= 1 expected")

    from common import metrics as M
    from common import synthetic as E  # the turn check's rendered faces
    from common.cache import CelebACache
    from common.checkpoint import atomic_write_text
    from common.directions import regression_direction
    from common.editing import _encode_positions, run_cache_dir
    from common.latent_flow import fit_latent_flow
    from flow.glow import load_model_from_run

    model = load_model_from_run(run, "cpu")
    off = np.cumsum([0, *model.latent_sizes])
    if len(model.latent_sizes) < 3:
        raise UserError(f"{run}: the study needs a Glow with at least 3 levels, this one has {len(off) - 1}")
    parts = {"all": slice(0, int(off[-1])), "lv12": slice(int(off[-3]), int(off[-1])),
             "top": slice(int(off[-2]), int(off[-1]))}
    flows = [parse_flow(s, {n: s.stop - s.start for n, s in parts.items()}) for s in args.flow]
    cache_dir = run_cache_dir(run, args.cache)
    if not (cache_dir / "factors.npy").exists():
        raise UserError(f"{cache_dir}: not a prepared synthetic cache (no factors.npy); the study needs the "
                        "synthetic set's rendered turns")
    cache = CelebACache(cache_dir, "train")
    _, yaw, factors = cache.labels()
    pos = np.arange(len(yaw))
    if len(pos) > args.max_images:
        pos = np.sort(np.random.default_rng(0).choice(len(pos), args.max_images, replace=False))
    started = time.time()
    latents = np.concatenate([_encode_positions(model, cache, pos, args.batch_size, True, mirror=m).double().numpy()
                              for m in (False, True)])  # [2n, D]
    cond, cond_names = conditions(args.condition, cache, pos, yaw, factors)  # [2n, K], yaw first (the column walked)
    score = cond[:, 0]  # the yaw of each latent (negated for the mirrors)
    suffix = "" if args.condition == "yaw" else f" | {args.condition}"

    n = args.faces
    true = E.true_turns(n, model.resolution)  # [n, S, 3, R, R]
    frames = true.shape[1]
    centre = frames // 2
    others = [i for i in range(frames) if i != centre]
    flat = true.flatten(0, 1)
    with torch.no_grad():
        turns = model.encode(flat).double().numpy().reshape(n, frames, -1)  # [n, S, D]
    front = turns[:, centre]  # [n, D]
    readout = np.linalg.lstsq(np.c_[latents, np.ones(len(latents))], score, rcond=None)[0]
    target = (np.c_[turns.reshape(n * frames, -1), np.ones(n * frames)] @ readout).reshape(n, frames).mean(0)

    shown = [("true turn", true)]  # (label, [n, S, 3, R, R]) for the picture

    def db(edited: np.ndarray, label: str | None = None) -> float:  # [n, S, D] latents -> mean PSNR, non-frontal
        with torch.no_grad():
            images = model.decode(torch.as_tensor(edited, dtype=torch.float32).reshape(n * frames, -1))
        if label:
            shown.append((label, images.reshape(true.shape)))
        return float(M.psnr(images, flat).reshape(n, frames)[:, others].mean())

    rows: dict[str, float] = {"none": db(np.repeat(front[:, None], frames, 1))}
    t = torch.linspace(0, 1, frames).view(1, -1, 1, 1, 1)
    fade = ((1 - t) * true[:, :1] + t * true[:, -1:]).flatten(0, 1)
    inner = [i for i in others if 0 < i < frames - 1]  # the cross-fade is exact at the two ends
    rows["cross-fade (inner frames)"] = float(M.psnr(fade, flat).reshape(n, frames)[:, inner].mean())
    straight = regression_direction(latents, score)
    steps = (target - target[centre]) / straight.metrics["score_std"]  # [S] in standard deviations of yaw
    rows["straight"] = db(front[:, None] + steps[None, :, None] * straight.scale * np.asarray(straight.vector)[None, None],
                          "straight")

    mean = latents.mean(0)
    basis = {}  # part -> principal axes [d, d'] of that part, largest first
    for part in {p for p, k in flows if k != "conv"} | {"all"}:
        sl = parts[part]
        basis[part] = np.linalg.svd(latents[:PCA_FIT_ROWS, sl] - mean[sl], full_matrices=False)[2].T
    fits = {}
    n_levels = len(model.latent_sizes)
    levels = {"all": range(n_levels), "lv12": range(n_levels - 2, n_levels), "top": range(n_levels - 1, n_levels)}
    for part, k in flows:
        if k == "conv":  # the edit's own path (common.editing.pose_latent_flow): walk whole latents, keep the rest
            index, shape = model.level_maps(levels[part])
            flow, fit = fit_latent_flow(latents, cond, hidden=args.hidden, epochs=args.epochs, progress=True,
                                        shape=shape, index=index.numpy())
            edited = flow.walk(front, (target - target[centre]) / float(flow.c_std[0]))  # [n, S, D]
        else:
            edited = np.repeat(front[:, None], frames, 1)
            sl, axes = parts[part], basis[part][:, :k]
            coords = (latents[:, sl] - mean[sl]) @ axes  # [2n, k]
            flow, fit = fit_latent_flow(coords, cond, hidden=args.hidden, epochs=args.epochs, progress=True)
            start = (front[:, sl] - mean[sl]) @ axes  # [n, k]
            walked = flow.walk(start, (target - target[centre]) / float(flow.c_std[0]))  # [n, S, k]
            edited[:, :, sl] += (walked - start[:, None]) @ axes.T
        rows[f"flow {part}:{k}{suffix}"] = db(edited, f"flow {part}:{k}{suffix}")
        fits[f"flow {part}:{k}{suffix}"] = fit
    swaps = {f"level {i}": slice(int(off[i]), int(off[i + 1])) for i in range(len(model.latent_sizes))}
    for name, sl in {**swaps, "upper two levels": parts["lv12"]}.items():
        swapped = np.repeat(front[:, None], frames, 1)
        swapped[:, :, sl] = turns[:, :, sl]
        rows[f"oracle {name} swapped in"] = db(swapped)
    for k in ORACLE_COMPONENTS:
        axes = basis["all"][:, :k]
        rows[f"oracle displacement on top {k} components"] = db(front[:, None] + ((turns - front[:, None]) @ axes) @ axes.T)
    displacement = (turns - front[:, None]).reshape(-1, turns.shape[-1])
    share = {k: float(((displacement @ basis["all"][:, :k]) ** 2).sum() / (displacement ** 2).sum())
             for k in ORACLE_COMPONENTS}

    result = {"run": str(run), "cache": str(cache_dir), "latents": len(latents), "faces": n, "frames": frames,
              "flow_conditions": cond_names,
              "target_yaw": target.round(4).tolist(), "psnr_db_non_frontal": {k: round(v, 3) for k, v in rows.items()},
              "displacement_share_on_top_components": {str(k): round(v, 4) for k, v in share.items()},
              "latent_flow_fits": fits, "seconds": round(time.time() - started, 1)}
    out = Path(args.out) if args.out else run / "pose_study.json"
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    from common.grids import edit_grid

    faces = min(2, n)
    grid = edit_grid(torch.stack([images[:faces] for _, images in shown], 1).flatten(0, 1),
                     (E.TURN_YAW * 40.0 * np.linspace(-1, 1, frames)).round(0), out.with_suffix(".png"),
                     title="Glow: a true head turn (yaw in degrees) and pose edits of its frontal frame",
                     row_labels=[f"{label} {i + 1}" for i in range(faces) for label, _ in shown],
                     marked_column=centre)
    width = max(map(len, rows))
    for name, value in rows.items():
        print(f"{name:<{width}}  {value:6.2f} dB")
    print(f"wrote {out} and {grid}")
    return 0


if __name__ == "__main__":
    run_main(main)
