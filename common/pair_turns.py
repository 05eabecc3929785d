"""The real-face turn check: edit one photo of a person to the yaw of another photo of the same person, and
measure how close the edit comes to that real second photo.

Real faces have no rendered turn to compare with (the synthetic set's turn check does), but CelebA's identity
labels give pairs of one face at two poses. For each pair (A, B):

- the edit walks A's latent along the pose edit until the direction-finding predictor reads B's yaw
  (``walk_to_target``; the strength is interpolated between grid points, so each face gets its own);
- baselines: A itself (no edit), the model's reconstruction of A (its floor), and a pixel cross-fade of A with
  its mirror image, weighted so that its nominal yaw is B's (a model-free "turn");
- each is compared with B: PSNR of the face region (``FACE_BOX``), the judge's feature distance and the judge's
  yaw error.

The numbers are functions of arrays (``pair_metrics``) so they are unit-tested apart from any model.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from common.cli import UserError
from common.directions import Direction, walk
from common.metrics import box_mask, psnr

# The face region of the 128-pixel CelebA crop, as fractions (x0, y0, x1, y1): cheek to cheek, brows to chin.
FACE_BOX = (0.2, 0.2, 0.8, 0.95)
DEFAULT_STRENGTHS = np.linspace(-4.0, 4.0, 17)
BASELINES = ("unedited", "reconstruction", "crossfade")


def read_identity_photos(root: str | os.PathLike) -> tuple[list[Path], np.ndarray]:
    """The photos of ``root/img_align_celeba`` listed in ``root/identity_CelebA.txt`` -> (paths, identity [N])."""
    from common.celeba import parse_identity_file

    root = Path(root)
    labels, image_dir = root / "identity_CelebA.txt", root / "img_align_celeba"
    if not labels.is_file() or not image_dir.is_dir():
        raise UserError(f"{root}: expected img_align_celeba/ and identity_CelebA.txt (CelebA's identity labels), "
                        "as in ../shared/celeba-real/identities")
    table = parse_identity_file(labels)
    present = set(os.listdir(image_dir))
    keep = [i for i, name in enumerate(table.filenames) if name in present]
    return [image_dir / table.filenames[i] for i in keep], table.values[keep]


def training_identities(cache_dir: str | os.PathLike | None) -> set[int]:
    """The identities in a prepared cache's training split (to leave out of the pairs, so that no person a model
    trained on is judged); an empty set for None. UserError when the cache records no identities."""
    if not cache_dir:
        return set()
    cache = Path(cache_dir)
    if not (cache / "identity.npy").is_file():
        raise UserError(f"{cache}: no identity.npy; expected a prepared cache of a copy with identity_CelebA.txt")
    return set(np.load(cache / "identity.npy")[np.load(cache / "split.npy") == 0].tolist())


def pick_pairs(identity: np.ndarray, yaw: np.ndarray, min_gap: float = 0.2, max_pairs: int = 0,
               exclude: set | None = None, max_gap: float | None = None) -> np.ndarray:
    """One pair per person: the two of their photos farthest apart in yaw, if the yaws differ by ``min_gap``.

    identity [N], yaw [N] -> pairs [P, 2] of row indices (first = edited, second = its target). Without
    ``max_gap`` a pair is the person's most left- and most right-turned photos; with it, the widest pair whose gap
    is at most ``max_gap`` (moderate turns, where a mirror is no longer the answer). The direction alternates from
    person to person (left-to-right, then right-to-left), so both turns are measured. People in ``exclude`` (e.g.
    those a model trained on) are left out; ``max_pairs`` > 0 keeps the widest gaps.
    """
    identity, yaw = np.asarray(identity), np.asarray(yaw, dtype=np.float64)
    pairs, gaps = [], []
    for person in sorted(set(identity.tolist()) - set(exclude or ())):
        rows = np.flatnonzero(identity == person)
        rows = rows[np.argsort(yaw[rows], kind="stable")]  # left to right
        gap = yaw[rows][None, :] - yaw[rows][:, None]  # [n, n], gap[i, j] = yaw_j - yaw_i
        allowed = (gap >= min_gap) & (gap <= (np.inf if max_gap is None else max_gap))
        if not allowed.any():
            continue
        i, j = np.unravel_index(np.argmax(np.where(allowed, gap, -np.inf)), gap.shape)
        lo, hi = rows[i], rows[j]
        pairs.append((lo, hi) if len(pairs) % 2 == 0 else (hi, lo))
        gaps.append(gap[i, j])
    order = np.argsort(gaps)[::-1][:max_pairs] if max_pairs > 0 else np.arange(len(pairs))
    return np.array([pairs[i] for i in sorted(order)], dtype=np.int64).reshape(-1, 2)


def crossfade_to_yaw(images: torch.Tensor, yaw: np.ndarray, target: np.ndarray) -> torch.Tensor:
    """(1 - t) A + t mirror(A), t = (yaw_A - target) / (2 yaw_A) clipped to [0, 1]: [P, 3, H, W] -> same.

    A mirror negates yaw, so the blend's nominal yaw (1 - 2t) yaw_A is ``target`` where that is reachable.
    """
    yaw, target = np.asarray(yaw, dtype=np.float64), np.asarray(target, dtype=np.float64)
    safe = np.where(np.abs(yaw) < 1e-3, 1e-3, yaw)
    t = torch.from_numpy(np.clip((yaw - target) / (2 * safe), 0.0, 1.0)).float().view(-1, 1, 1, 1)  # [P, 1, 1, 1]
    return (1 - t) * images + t * images.flip(-1)


def crossing(scores: np.ndarray, strengths: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each walk's score first reaches its target, nearest to strength 0: scores [P, S] (at increasing
    ``strengths`` [S]), target [P] -> (strength [P] linearly interpolated between grid points, reached bool [P]).

    A walk that never reaches its target gets the grid strength whose score is closest, and reached = False.
    """
    scores, strengths = np.asarray(scores, dtype=np.float64), np.asarray(strengths, dtype=np.float64)
    out, reached = np.zeros(len(scores)), np.zeros(len(scores), dtype=bool)
    for p, (row, goal) in enumerate(zip(scores, np.asarray(target, dtype=np.float64))):
        diff = row - goal  # [S]
        found = []
        for s in range(len(strengths) - 1):
            if diff[s] == 0 or diff[s] * diff[s + 1] < 0:
                w = 0.0 if diff[s] == 0 else diff[s] / (diff[s] - diff[s + 1])
                found.append(strengths[s] + w * (strengths[s + 1] - strengths[s]))
        if diff[-1] == 0:
            found.append(strengths[-1])
        if found:
            out[p], reached[p] = min(found, key=abs), True
        else:
            out[p] = strengths[int(np.argmin(np.abs(diff)))]
    return out, reached


def walk_to_target(latents: torch.Tensor, direction: Direction, walk_mode: str, target: np.ndarray,
                   decode: Callable[[torch.Tensor], torch.Tensor], score: Callable[[torch.Tensor], np.ndarray],
                   strengths: np.ndarray = DEFAULT_STRENGTHS, refine: int = 0) -> dict:
    """Walk each latent [P, D] until ``score`` (images -> [n]) of its decoded face reaches ``target``: [P] (one
    per face) or [P, T] (T per face, one grid of decodes shared by them).

    The crossing is interpolated between the grid points of ``strengths`` [S]; ``refine`` more decodes per
    reached target then narrow its bracket (false position, Illinois), keeping the strength whose score is
    closest. Returns {"strength", "reached", "score" (the score of the returned face)} shaped like ``target``,
    "images" [P, 3, H, W] or [P, T, 3, H, W] decoded at each face's own strength, their "latents" [P, D] or
    [P, T, D], and "grid_scores" [P, S].
    """
    strengths = np.asarray(strengths, dtype=np.float64)
    goals = np.asarray(target, dtype=np.float64)
    shape = goals.shape
    goals = goals.reshape(len(latents), -1)  # [P, T]
    count = goals.shape[1]
    walked = torch.as_tensor(walk(latents.double().numpy(), direction, strengths, walk_mode)).float()  # [P, S, D]
    grid = np.asarray(score(decode(walked.flatten(0, 1))), dtype=np.float64).reshape(len(latents), len(strengths))
    rows = np.repeat(np.arange(len(latents)), count)  # [P*T], the face of each (face, target)
    goal = goals.ravel()  # [P*T]
    strength, reached = crossing(grid[rows], strengths, goal)  # [P*T]

    def evaluate(which: np.ndarray, at: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        """The (face, target) entries ``which`` walked to strengths ``at``: (latents [n, D], images, scores [n])."""
        moved = torch.stack([torch.as_tensor(walk(latents[r:r + 1].double().numpy(), direction, at[i:i + 1],
                                                  walk_mode)).float()[0, 0]
                             for i, r in enumerate(rows[which])])  # [n, D]
        images = decode(moved)
        return moved, images, np.asarray(score(images), dtype=np.float64).reshape(-1)

    everyone = np.arange(len(goal))
    found, images, value = evaluate(everyone, strength)
    images = images.clone()
    # the grid interval holding each reached crossing: its ends have scores on either side of the goal
    s = np.clip(np.searchsorted(strengths, strength, side="right") - 1, 0, max(len(strengths) - 2, 0))
    lo_a, hi_a = strengths[s], strengths[np.minimum(s + 1, len(strengths) - 1)]
    lo_f, hi_f = grid[rows, s] - goal, grid[rows, np.minimum(s + 1, len(strengths) - 1)] - goal
    bracketed = reached & (lo_f * hi_f < 0)
    x, f, side = strength.copy(), value - goal, np.zeros(len(goal), dtype=np.int8)
    for _ in range(max(0, int(refine))):
        low = np.sign(f) == np.sign(lo_f)  # x replaces the end whose score is on its side of the goal
        lo_a, lo_f = np.where(low, x, lo_a), np.where(low, f, lo_f)
        hi_a, hi_f = np.where(low, hi_a, x), np.where(low, hi_f, f)
        replaced = np.where(low, 1, -1).astype(np.int8)
        lo_f = np.where((replaced == side) & (side == -1), lo_f / 2, lo_f)  # Illinois: an end kept twice counts half
        hi_f = np.where((replaced == side) & (side == 1), hi_f / 2, hi_f)
        side = replaced
        active = np.flatnonzero(bracketed & (f != 0) & (lo_f != hi_f))
        if not len(active):
            break
        x = x.copy()
        x[active] = lo_a[active] + lo_f[active] / (lo_f[active] - hi_f[active]) * (hi_a[active] - lo_a[active])
        tried_latents, tried, tried_value = evaluate(active, x[active])
        f = f.copy()
        f[active] = tried_value - goal[active]
        better = active[np.abs(tried_value - goal[active]) < np.abs(value[active] - goal[active])]
        keep = np.isin(active, better)
        strength[better], value[better] = x[better], tried_value[keep]
        images[better] = tried[torch.from_numpy(keep)]
        found[better] = tried_latents[torch.from_numpy(keep)]
    images = images.reshape(len(latents), count, *images.shape[1:])
    found = found.reshape(len(latents), count, -1)
    if len(shape) == 1:
        images, found = images[:, 0], found[:, 0]
    return {"strength": strength.reshape(shape), "reached": reached.reshape(shape), "score": value.reshape(shape),
            "images": images, "latents": found, "grid_scores": grid}


def pair_metrics(candidate: torch.Tensor, target: torch.Tensor, candidate_features: np.ndarray,
                 target_features: np.ndarray, candidate_yaw: np.ndarray, target_yaw: np.ndarray) -> dict:
    """How close candidate faces come to the target photos: [P, 3, H, W] images in [-1, 1], judge features
    [P, F] and judge yaw [P] of each -> {"psnr_face_db", "feature_distance", "yaw_error"} (means over pairs)."""
    mask = box_mask(candidate.shape[-2], candidate.shape[-1], FACE_BOX).astype(bool)  # [H, W]
    face = lambda x: x.float().numpy()[:, :, mask]  # noqa: E731  [P, 3, M] pixels of the face region
    db = psnr(face(candidate), face(target))  # [P]
    distance = np.linalg.norm(np.asarray(candidate_features) - np.asarray(target_features), axis=1)  # [P]
    return {"psnr_face_db": float(np.mean(np.minimum(db, 99.0))), "feature_distance": float(distance.mean()),
            "yaw_error": float(np.mean(np.abs(np.asarray(candidate_yaw) - np.asarray(target_yaw))))}


def pair_turn_check(model, direction: Direction, walk_mode: str, first: torch.Tensor, second: torch.Tensor,
                    predictor, judge, strengths: np.ndarray = DEFAULT_STRENGTHS, batch_size: int = 64) -> dict:
    """Edit each ``first`` face [P, 3, R, R] to the predictor's yaw of its ``second`` and compare with it.

    Returns {"edit": metrics, "unedited": ..., "reconstruction": ..., "crossfade": ..., "reached_fraction",
    "strength_mean_abs", "images": {name: [P, 3, R, R]}} (metrics as ``pair_metrics``; the judge measures, the
    predictor steers, so the walk is not graded by the network it was tuned on).
    """
    from common.predictor import score_images

    def decode(latents: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([model.decode(c).detach().float().cpu().clamp(-1, 1) for c in latents.split(batch_size)])

    with torch.no_grad():
        latents = torch.cat([model.encode(c).detach().float().cpu().reshape(len(c), -1)
                             for c in first.split(batch_size)])  # [P, D]
    first_yaw = score_images(predictor, first)["yaw"].numpy()
    target_yaw = score_images(predictor, second)["yaw"].numpy()
    walked = walk_to_target(latents, direction, walk_mode, target_yaw, decode,
                            lambda images: score_images(predictor, images)["yaw"].numpy(), strengths)
    images = {"edit": walked["images"], "unedited": first, "reconstruction": decode(latents),
              "crossfade": crossfade_to_yaw(first, first_yaw, target_yaw)}
    judged_target = score_images(judge, second)
    result = {}
    for name, candidate in images.items():
        judged = score_images(judge, candidate)
        result[name] = pair_metrics(candidate, second, judged["features"].numpy(), judged_target["features"].numpy(),
                                    judged["yaw"].numpy(), judged_target["yaw"].numpy())
    result.update(reached_fraction=float(walked["reached"].mean()),
                  strength_mean_abs=float(np.abs(walked["strength"]).mean()), images=images)
    return result
