"""Compare the methods' edits with one judge: metrics.json and a readable report.md with tables, grids and plots.

    python scripts/evaluate.py [--runs runs/vae/synthetic runs/glow/synthetic runs/pggan/synthetic]
        [--judge runs/predictor/synthetic-judge] [--num 64] [--out runs/evaluation]
        [--attributes Smiling Narrow_Eyes Mouth_Slightly_Open pose] [--keep Smiling=Mouth_Slightly_Open]
        [--range -3 3 --steps 7] [--invert 8] [--fd-images 500] [--turn-faces 4 [--turn-gan]]
        [--inception WEIGHTS.pth]

The judge is a SECOND attribute predictor (another seed than the one that found the GAN's directions), so no
method is graded by the instrument it was fitted to. For every run (missing default runs are skipped with a
note) and attribute: --num faces (encoded test images for the VAE and Glow; random samples for the GAN, whose
inversion is slow: only --invert test images are inverted, for the reconstruction PSNR) are walked from
-max to +max along the run's saved direction (found and saved in RUN/directions/ when missing), decoded, and
re-scored by the judge. Measured: edit success both ways, monotonicity and slope of the judge's score, leakage
into every judged attribute with and without --keep, content preservation (pixels and judge features between
the unedited reconstruction and the walk's ends), reconstruction PSNR, Frechet distance of samples in the
judge's feature space (Inception FID only with --inception: nothing is downloaded), and, when the judge has
synthetic factor heads, how the predicted smile and yaw factors move. On a synthetic cache, a turn check: faces
rendered turning their heads, the latent line between each turn's encoded ends decoded and compared with the
true frames and with a pixel cross-fade (can the latent space turn a head at all? --turn-gan adds the GAN,
whose ends must be inverted). Writes OUT/metrics.json, OUT/report.md
and OUT/images/*.png; the report's discussion is generated from the numbers.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from common import metrics as M
from common.attributes import CELEBA_ATTRIBUTES, POSE, attribute_index, resolve_attribute
from common.cli import UserError, run_main
from common.synthetic import TURN_FRAMES, TURN_YAW, true_turns

DEFAULT_RUNS = ("runs/vae/synthetic", "runs/glow/synthetic", "runs/pggan/synthetic")
DEFAULT_ATTRIBUTES = ("Smiling", "Narrow_Eyes", "Mouth_Slightly_Open", "pose")
JUDGED = list(CELEBA_ATTRIBUTES) + [POSE]  # judge outputs: 40 probabilities, then the predicted yaw
MOUTH_BOX = (0.3, 0.62, 0.7, 0.9)  # where the mouth sits in the cache's face crop (fractions x0, y0, x1, y1)
MOUTH_ATTRIBUTES = ("Smiling", "Mouth_Slightly_Open")
TARGETS = {"smiling_success": "Smiling edit success >= 90% in both directions",
           "yaw_monotone": "pose walk monotone (and rising) in the judge's yaw for >= 90% of faces",
           "keep_cuts_leakage": "--keep cuts leakage into the kept attribute by >= 50%",
           "glow_exact": "Glow reconstruction exact (max pixel error 0 on the n_bits grid)"}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", default=None, help="run folders (default: those of "
                   f"{', '.join(DEFAULT_RUNS)} that exist)")
    p.add_argument("--judge", default="runs/predictor/synthetic-judge", help="the judging predictor run")
    p.add_argument("--predictor", default=None, help="predictor that FINDS the GAN's directions (default: the "
                   "PGGAN config's edit.predictor, runs/predictor/synthetic)")
    p.add_argument("--num", type=int, default=64, help="faces edited per method and attribute (default 64)")
    p.add_argument("--out", default="runs/evaluation", help="output folder (default runs/evaluation)")
    p.add_argument("--attributes", nargs="+", default=list(DEFAULT_ATTRIBUTES), help="attributes to edit")
    p.add_argument("--keep", action="append", default=None, metavar="ATTR=KEPT[,KEPT2]",
                   help="conditional editing to compare (default Smiling=Mouth_Slightly_Open)")
    p.add_argument("--range", nargs=2, type=float, default=(-3.0, 3.0), metavar=("LO", "HI"),
                   help="edit strengths (default -3 3; must straddle 0)")
    p.add_argument("--steps", type=int, default=7, help="strengths along the walk (default 7)")
    p.add_argument("--invert", type=int, default=8, help="test images inverted for the GAN's PSNR (default 8)")
    # The config's inversion (200 steps x 8 random starts) takes minutes on a CPU; the evaluation needs only a
    # PSNR estimate, so it defaults to a quarter of the starts and half the steps (recorded in metrics.json).
    p.add_argument("--inversion-steps", type=int, default=100, help="GAN inversion steps (default 100; 0: config)")
    p.add_argument("--inversion-starts", type=int, default=2,
                   help="GAN inversion random starts per image (default 2; 0: the config's)")
    p.add_argument("--samples", type=int, default=None, help="GAN samples scored to find missing directions "
                   "(default: the config's edit.samples)")
    p.add_argument("--fd-images", type=int, default=500, help="real and generated images per Frechet distance")
    p.add_argument("--inception", default=None, metavar="WEIGHTS.pth", help="torchvision inception_v3 state "
                   "dict on disk: also report standard Inception FID (nothing downloads)")
    p.add_argument("--turn-faces", type=int, default=4, help="synthetic faces rendered turning their head, to "
                   "check the VAE's and Glow's latent line between the turn's ends against the true frames "
                   "(default 4; 0: off; synthetic caches only)")
    p.add_argument("--turn-gan", action="store_true", help="also run that check for the GAN (inverts the turns' "
                   "end frames: ~10 s per frame on 2 CPU cores)")
    p.add_argument("--grid-rows", type=int, default=4, help="faces per grid image (default 4)")
    p.add_argument("--seed", type=int, default=0, help="seed of GAN samples and generated FD samples")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, mps (default auto)")
    p.add_argument("--batch-size", type=int, default=128, help="images per batch (default 128)")
    p.add_argument("--max-train-images", type=int, default=20000,
                   help="training images encoded when a VAE/Glow direction must be found (default 20000)")
    return p.parse_args()


# ----------------------------------------------------------------------------------------------------------
# Small helpers


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def json_ready(value):
    """Numbers/arrays -> plain JSON; inf and nan -> null (JSON has neither)."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [json_ready(v) for v in value]
    if isinstance(value, (np.generic, torch.Tensor)):
        value = value.item()
    if isinstance(value, float):
        return round(value, 6) if math.isfinite(value) else None
    return value


def parse_keep_map(items, attributes: list[str]) -> dict[str, list[str]]:
    """["Smiling=Mouth_Slightly_Open"] -> {"Smiling": ["Mouth_Slightly_Open"]} for edited attributes only."""
    out: dict[str, list[str]] = {}
    for item in items if items is not None else ["Smiling=Mouth_Slightly_Open"]:
        edited, eq, kept = item.partition("=")
        if not eq or not kept.strip():
            raise UserError(f"--keep {item!r}: expected ATTRIBUTE=KEPT[,KEPT2], e.g. Smiling=Mouth_Slightly_Open")
        edited = resolve_attribute(edited.strip())
        names = [resolve_attribute(k.strip()) for k in kept.split(",") if k.strip()]
        if edited in names:
            raise UserError(f"--keep {item!r}: cannot hold fixed the attribute being edited")
        if edited in attributes:
            out[edited] = names
    return out


@torch.no_grad()
def decode_all(model, latents: torch.Tensor, batch_size: int) -> torch.Tensor:
    """latents [N, D] -> images [N, 3, R, R] in [-1, 1], float32 CPU."""
    return torch.cat([model.decode(c).detach().float().cpu().clamp(-1, 1) for c in latents.split(batch_size)])


@torch.no_grad()
def encode_all(model, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """images [N, 3, R, R] -> latents [N, D], float32 CPU."""
    out = [model.encode(c).detach().float().cpu() for c in images.split(batch_size)]
    return torch.cat(out).reshape(len(images), -1)


def judge_columns(scored: dict) -> np.ndarray:
    """score_images output -> [N, 41]: the 40 probabilities, then the predicted yaw (JUDGED's order)."""
    return torch.cat([scored["probs"], scored["yaw"][:, None]], dim=1).numpy().astype(np.float64)


def test_images(cache_dir: str, n: int, offset: int = 0) -> torch.Tensor:
    """The first n images of the cache's test split (after ``offset``) -> [n, 3, R, R] in [-1, 1]."""
    from common.cache import CelebACache, uint8_to_model

    if not (Path(cache_dir) / "manifest.json").exists():
        raise UserError(f"{cache_dir}: prepared cache not found (needed for test images); prepare it with "
                        "python scripts/prepare_data.py")
    cache = CelebACache(cache_dir, "test")
    count = max(0, min(n, len(cache) - offset))
    if count == 0:
        raise UserError(f"{cache_dir}: the test split has no images past {offset}; expected at least one")
    return uint8_to_model(cache.images_uint8(np.arange(offset, offset + count)))


def inception_features(images: torch.Tensor, weights: str, batch_size: int = 32) -> np.ndarray:
    """Pool features [N, 2048] of torchvision's inception_v3 loaded from a local state dict."""
    import torch.nn.functional as F
    from torchvision.models import inception_v3

    if not Path(weights).is_file():
        raise UserError(f"--inception {weights}: file not found; expected a torchvision inception_v3 .pth")
    net = inception_v3(weights=None, aux_logits=True, init_weights=False, transform_input=True)
    try:
        net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    except (RuntimeError, KeyError, TypeError, ValueError, EOFError, pickle.UnpicklingError) as exc:
        raise UserError(f"--inception {weights}: not a torchvision inception_v3 state dict "
                        f"({str(exc).splitlines()[0]})") from None
    net.fc = torch.nn.Identity()
    net.eval()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    out = []
    with torch.no_grad():
        for chunk in images.split(batch_size):
            x = F.interpolate((chunk + 1) / 2, size=(299, 299), mode="bilinear", align_corners=False)
            out.append(net((x - mean) / std).float())
    return torch.cat(out).numpy()


# ----------------------------------------------------------------------------------------------------------
# One walk, one method


def walk_metrics(scores: np.ndarray, images: torch.Tensor, feats: np.ndarray, strengths: np.ndarray, attribute: str,
                 factor_names: list[str], factors: np.ndarray) -> dict:
    """Every per-walk number: scores [N, S, 41], images [N, S, 3, R, R], feats [N, S, Df], factors [N, S, F]."""
    k = len(CELEBA_ATTRIBUTES) if attribute == POSE else attribute_index(attribute)
    own = scores[:, :, k]  # [N, S] the judge's score of the edited attribute
    threshold = 0.0 if attribute == POSE else 0.5
    zero, hi, lo = M.zero_column(strengths), M.end_column(strengths, True), M.end_column(strengths, False)
    inner = np.abs(strengths) <= np.abs(strengths).max() / 2 + 1e-9  # the walk's central half
    ends = [hi, lo]
    x0 = images[:, [zero, zero]].flatten(0, 1)  # [2N, 3, R, R] unedited, twice (once per end)
    xe = images[:, ends].flatten(0, 1)  # [2N, 3, R, R]
    content = M.content_preservation(x0, xe, feats0=feats[:, [zero, zero]].reshape(-1, feats.shape[-1]),
                                     feats_edit=feats[:, ends].reshape(-1, feats.shape[-1]))
    if attribute in MOUTH_ATTRIBUTES:
        outside = M.box_mask(images.shape[-2], images.shape[-1], MOUTH_BOX, inside=False)
        content["outside_mouth_l1"] = M.content_preservation(x0, xe, mask=outside)["l1"]
    return {
        "score_per_strength": {"mean": own.mean(0), "std": own.std(0)},
        "success_positive": M.edit_success(own, strengths, True, threshold),
        "success_negative": M.edit_success(own, strengths, False, threshold),
        "monotonicity": M.monotonicity(own),
        "monotonicity_inner_half": M.monotonicity(own[:, inner]) if inner.sum() >= 2 else None,
        "slope": M.slope(own, strengths),
        "leakage": dict(zip(JUDGED, M.leakage_matrix(scores[:, zero], scores[:, hi]), strict=True)),
        "content": content,
        "factor_slopes": {name: M.slope(factors[:, :, j], strengths)["mean"] for j, name in enumerate(factor_names)},
    }


def judge_images(judge, images: torch.Tensor, batch_size: int) -> tuple:
    """images [M, 3, R, R] -> (images, scores [M, 41], features [M, Df], factors [M, F])."""
    from common.predictor import score_images

    scored = score_images(judge, images, batch_size=max(batch_size, 256))
    return images, judge_columns(scored), scored["features"].numpy(), scored["factors"].numpy()


def run_walk(model, base: torch.Tensor, direction, strengths, walk_mode, judge, batch_size, unedited: tuple):
    """Walk, decode and judge: (images [N, S, 3, R, R], scores [N, S, 41], feats [N, S, Df], factors [N, S, F]).

    ``unedited`` is ``judge_images`` of the decoded base latents: relative and sphere walks return z itself at
    a = 0, so that column is shared by every walk and decoded and judged once per method.
    """
    from common.directions import walk

    zero = M.zero_column(strengths)
    moved = np.flatnonzero(np.arange(len(strengths)) != zero)
    walked = walk(base, direction, strengths[moved], walk_mode).float()  # [N, S-1, D]
    n, s = walked.shape[:2]
    parts = judge_images(judge, decode_all(model, walked.reshape(n * s, -1), batch_size), batch_size)
    out = []
    for part, column in zip(parts, unedited, strict=True):
        part = torch.as_tensor(part).reshape(n, s, *part.shape[1:])
        out.append(torch.cat([part[:, :zero], torch.as_tensor(column)[:, None], part[:, zero:]], dim=1))
    images, scores, feats, factors = out
    return images, scores.numpy(), feats.numpy(), factors.numpy()




def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Great-circle interpolation [N, D] x [N, D] x [S] -> [N, S, D], the norm interpolated linearly."""
    na, nb = a.norm(dim=1, keepdim=True), b.norm(dim=1, keepdim=True)
    ua, ub = a / na, b / nb
    omega = torch.acos((ua * ub).sum(1, keepdim=True).clamp(-1 + 1e-7, 1 - 1e-7))[:, None]  # [N, 1, 1]
    t = t.view(1, -1, 1)
    unit = (torch.sin((1 - t) * omega) * ua[:, None] + torch.sin(t * omega) * ub[:, None]) / torch.sin(omega)
    return unit * ((1 - t) * na[:, None] + t * nb[:, None])


def path_shape(latents: torch.Tensor) -> dict:
    """How curved each face's encoded turn is: latents [n, S, D] (the S frames of n turns) -> means over faces.

    ``pc_shares``: the fraction of the path's variance on its first three principal components (a straight path
    puts everything on the first). ``chord``: the distance between the end frames. ``middle_offset``: the
    distance of the middle frame from the chord's midpoint (0 on a straight, evenly travelled path).
    """
    x = latents.double()
    sv = torch.linalg.svdvals(x - x.mean(1, keepdim=True))  # [n, min(S, D)]
    shares = (sv ** 2 / (sv ** 2).sum(1, keepdim=True)).mean(0)
    middle = x[:, x.shape[1] // 2] - 0.5 * (x[:, 0] + x[:, -1])
    return {"pc_shares": shares[:3].numpy(), "chord": float((x[:, -1] - x[:, 0]).norm(dim=1).mean()),
            "middle_offset": float(middle.norm(dim=1).mean())}




def turn_check(name: str, model, walk_mode: str, judge, resolution: int, args, out: Path,
               encode_every_frame: bool, pose_edits: dict | None = None) -> dict:
    """Ground truth for pose edits: can this model's latent space turn a head at all?

    ``--turn-faces`` synthetic faces are rendered turning from -32 to +32 degrees (everything else fixed). Both
    end frames are encoded and the latent line between them (a great circle for sphere latents) is decoded at
    the frames' positions. Each decoded frame is compared (PSNR) with the true frame, with the pixel cross-fade
    of the two ends (what a double exposure scores) and with the model's own reconstruction of the true frame
    (the best the decoder can do). A latent space in which pose is linear scores near the reconstruction; one
    in which the line cross-fades scores near the cross-fade, and then no linear pose direction can turn a head.
    ``encode_every_frame`` False (a GAN: each encoding is a slow inversion) encodes only the two ends and skips
    the reconstruction column. With every frame encoded, ``path`` says how curved the encoded turns are
    (``path_shape``). ``pose_edits`` ({method: Direction}) adds the edits themselves: each pose
    edit starts from the encoded frontal frame and is walked to the strength of every true frame's yaw (the
    judge's yaw of that frame over the direction's ``score_std``), then compared with the true frames as above.
    """
    from common.directions import walk
    from common.grids import edit_grid

    n, frames, bs = args.turn_faces, TURN_FRAMES, args.batch_size
    yaws = np.linspace(-TURN_YAW, TURN_YAW, frames)
    true = true_turns(n, resolution)  # [n, S, 3, R, R]
    flat = true.flatten(0, 1)
    if encode_every_frame:
        latents = encode_all(model, flat, bs).reshape(n, frames, -1)  # [n, S, D]
        first, last = latents[:, 0], latents[:, -1]
        recon = decode_all(model, latents.flatten(0, 1), bs)
    else:
        ends = encode_all(model, torch.cat([true[:, 0], true[:, -1]]), bs)  # [2n, D]
        first, last, recon = ends[:n], ends[n:], None
    t = torch.linspace(0, 1, frames)
    if walk_mode == "sphere":
        line = slerp(first, last, t)
    else:
        line = (1 - t.view(1, -1, 1)) * first[:, None] + t.view(1, -1, 1) * last[:, None]
    decoded = decode_all(model, line.flatten(0, 1), bs)  # [n*S, 3, R, R]
    crossfade = ((1 - t.view(1, -1, 1, 1, 1)) * true[:, :1] + t.view(1, -1, 1, 1, 1) * true[:, -1:]).flatten(0, 1)

    def per_frame(images) -> np.ndarray:  # mean PSNR over faces of each frame (inf when identical)
        return M.psnr(images, flat).reshape(n, frames).mean(0)

    interior = slice(1, frames - 1)
    line_db, fade_db = per_frame(decoded), per_frame(crossfade)
    result = {"faces": n, "yaw_degrees": (yaws * 40.0).round(1), "interpolation": "slerp" if walk_mode == "sphere"
              else "linear", "psnr_latent_line_db": line_db, "psnr_crossfade_db": fade_db,
              "interior_mean_db": {"latent_line": float(line_db[interior].mean()),
                                   "crossfade": float(fade_db[interior].mean())},
              "ends_mean_db": float(line_db[[0, -1]].mean())}
    if recon is not None:
        recon_db = per_frame(recon)
        result["psnr_reconstruction_db"] = recon_db
        result["interior_mean_db"]["reconstruction"] = float(recon_db[interior].mean())
        result["path"] = path_shape(latents)
    yaw_true = judge_images(judge, flat, bs)[1][:, -1].reshape(n, frames).mean(0)
    yaw_line = judge_images(judge, decoded, bs)[1][:, -1].reshape(n, frames).mean(0)
    result["judge_yaw"] = {"true": yaw_true, "latent_line": yaw_line}
    shown = [("true turn", true), ("latent line", decoded), ("cross-fade", crossfade)]
    if pose_edits and encode_every_frame:
        centre = frames // 2
        frontal = latents[:, centre]  # [n, D]
        result["pose_edits"] = {"from_frame_degrees": float(yaws[centre] * 40.0), "methods": {}}
        same = decode_all(model, frontal, bs).repeat_interleave(frames, 0)  # no edit at all, for scale
        result["pose_edits"]["no_edit_db"] = per_frame(same)
        others = [i for i in range(frames) if i != centre]
        for pose_method, direction in pose_edits.items():
            std = float(direction.metrics.get("score_std", 1.0))
            strengths = (yaw_true - yaw_true[centre]) / std  # [S] the true frames' yaw in strength units
            edited = decode_all(model, walk(frontal, direction, strengths, walk_mode).float().flatten(0, 1), bs)
            db = per_frame(edited)
            result["pose_edits"]["methods"][pose_method] = {
                "strengths": strengths, "psnr_db": db, "mean_db_other_frames": float(db[others].mean()),
                "judge_yaw": judge_images(judge, edited, bs)[1][:, -1].reshape(n, frames).mean(0)}
            shown.append((f"{pose_method} edit", edited))
        result["pose_edits"]["no_edit_mean_db_other_frames"] = float(result["pose_edits"]["no_edit_db"][others].mean())
        if recon is not None:
            result["pose_edits"]["reconstruction_mean_db_other_frames"] = float(recon_db[others].mean())
    rows = min(2, n)
    grid = out / "images" / f"{name}-turn.png"
    images = torch.stack([im.reshape(n, frames, *flat.shape[1:])[:rows] for _, im in shown], 1).flatten(0, 1)
    labels = [f"{label} {i + 1}" for i in range(rows) for label, _ in shown]
    edit_grid(images, yaws * 40.0, grid, title=f"{name}: a true head turn (yaw in degrees), the latent line between "
              "its ends, their cross-fade" + (", pose edits of the frontal frame" if "pose_edits" in result else ""),
              row_labels=labels)
    result["grid"] = str(grid.relative_to(out))
    return result


def evaluate_method(name: str, model, find_direction, info: dict, judge, args, strengths: np.ndarray,
                    keep_map: dict, out: Path, bar) -> tuple[dict, dict]:
    """All numbers of one method -> (metrics dict, plot data). Writes the method's grids into out/images/."""
    from common.directions import project_out
    from common.editing import direction_path, get_direction
    from common.grids import edit_grid
    from common.predictor import score_images

    run_dir = Path(info["run_dir"])
    method, walk_mode, dmethod = info["method"], info["walk"], info["direction_method"]
    result: dict = {"run": str(run_dir), "info": info, "attributes": {}}
    started = time.time()
    bs = args.batch_size

    # Faces to edit and the reconstruction numbers
    if method == "pggan":
        base = model.sample_latents(args.num, torch.Generator().manual_seed(args.seed)).float()  # [N, D]
        inputs = None
        recon: dict = {"kind": "GAN inversion", "n": 0}
        if args.invert > 0:
            model.steps = args.inversion_steps or model.steps
            model.starts = args.inversion_starts or model.starts
            x = test_images(info["cache"], args.invert)
            z = encode_all(model, x, bs)
            recon.update(M.summarize_psnr(M.psnr(decode_all(model, z, bs), x)), steps=model.steps,
                         starts=model.starts)
        source = {"kind": "samples", "seed": args.seed, "n": args.num}
        decoded = decode_all(model, base, bs)
    else:
        inputs = test_images(info["cache"], args.num)  # [N, 3, R, R]
        base = encode_all(model, inputs, bs)
        decoded = decode_all(model, base, bs)
        recon = {"kind": "posterior mean", **M.summarize_psnr(M.psnr(decoded, inputs))}
        if method == "glow":  # exact up to the model's n_bits quantisation: compare on that grid
            from flow.glow import snap_to_grid

            snapped = snap_to_grid(inputs, model.n_bits)
            recon = {"kind": f"exact inverse ({model.n_bits}-bit grid)", **M.summarize_psnr(M.psnr(decoded, snapped)),
                     "psnr_vs_input_db": M.summarize_psnr(M.psnr(decoded, inputs))["mean_db"],
                     "max_abs_error_on_grid": float((decoded - snapped).abs().max()), "n_bits": int(model.n_bits)}
        source = {"kind": "test images", "n": len(inputs)}
    result["reconstruction"], result["source"] = recon, source
    pose_method = info.get("pose_method", dmethod)
    directions: dict = {}

    def direction_for(attribute: str, how: str):  # each direction loaded (or found) once per method
        if (attribute, how) not in directions:
            directions[attribute, how] = get_direction(run_dir, attribute, how, find_direction)
        return directions[attribute, how]

    synthetic = (Path(info["cache"]) / "factors.npy").exists()
    if args.turn_faces > 0 and synthetic and (method != "pggan" or args.turn_gan):
        pose_edits = None if method == "pggan" else {
            m: direction_for("pose", m) for m in dict.fromkeys([dmethod, pose_method])}
        result["turn"] = turn_check(name, model, walk_mode, judge, decoded.shape[-1], args, out,
                                    encode_every_frame=method != "pggan", pose_edits=pose_edits)
    unedited = judge_images(judge, decoded, bs)  # the a = 0 column of every walk

    plots: dict = {}
    factor_names = list(getattr(judge, "factor_names", []))
    for attribute in args.attributes:
        amethod = pose_method if attribute == "pose" else dmethod
        direction = direction_for(attribute, amethod)
        if direction.dim != base.shape[1]:
            raise UserError(f"{direction_path(run_dir, attribute, amethod)}.npz: a {direction.dim}-d direction "
                            f"for a {base.shape[1]}-d model; delete it to find the direction again")
        images, scores, feats, factors = run_walk(model, base, direction, strengths, walk_mode, judge, bs,
                                                  unedited)
        entry = walk_metrics(scores, images, feats, strengths, attribute, factor_names, factors)
        entry["direction"] = {"method": amethod, "scale": direction.scale, "walk": walk_mode,
                              "metrics": direction.metrics}
        rows = min(args.grid_rows, len(images))
        grid = out / "images" / f"{name}-{attribute}.png"
        edit_grid(images[:rows], strengths, grid, title=f"{name}: {attribute} ({amethod}, {walk_mode})",
                  marked_column=M.zero_column(strengths), input_images=None if inputs is None else inputs[:rows])
        entry["grid"] = str(grid.relative_to(out))
        plots[attribute] = entry["score_per_strength"]
        bar.update(1)
        kept_name = keep_map.get(attribute, [])
        if kept_name:
            conditions = [direction_for(k, dmethod) for k in kept_name]
            conditioned = project_out(direction, conditions, keep_names=kept_name)
            c_images, c_scores, c_feats, c_factors = run_walk(model, base, conditioned, strengths, walk_mode,
                                                              judge, bs, unedited)
            c_entry = walk_metrics(c_scores, c_images, c_feats, strengths, attribute, factor_names, c_factors)
            reductions = {k: M.leakage_reduction(entry["leakage"][k], c_entry["leakage"][k]) for k in kept_name}
            entry["keep"] = {"kept": kept_name, "leakage_without": {k: entry["leakage"][k] for k in kept_name},
                             "leakage_with": {k: c_entry["leakage"][k] for k in kept_name},
                             "reduction_percent": reductions,
                             "cosine_to_unconditioned": conditioned.metrics.get("cosine_to_unconditioned"),
                             "success_positive": c_entry["success_positive"],
                             "success_negative": c_entry["success_negative"], "slope": c_entry["slope"],
                             "leakage": c_entry["leakage"]}
            bar.update(1)
        result["attributes"][attribute] = entry

    result["leakage_matrix"] = {"rows": list(result["attributes"]), "columns": JUDGED,
                                "values": [[a["leakage"][k] for k in JUDGED] for a in result["attributes"].values()]}

    # Sample quality: generated samples vs real test images, in the judge's feature space
    n_fd = args.fd_images
    real, real_f = real_test_features(info["cache"], judge, n_fd)
    fake = decode_all(model, model.sample_latents(n_fd, torch.Generator().manual_seed(args.seed + 1)).float(), bs)
    fake_f = score_images(judge, fake)["features"].numpy()
    quality = {"frechet_judge": M.frechet_distance(real_f, fake_f), "n_real": len(real), "n_fake": len(fake)}
    if "temperature" in info:
        quality["temperature"] = info["temperature"]
    if args.inception:
        quality["inception_fid"] = M.frechet_distance(inception_features(real, args.inception),
                                                      inception_features(fake, args.inception))
    else:
        quality["inception_fid"] = "skipped (pass --inception WEIGHTS.pth)"
    result["sample_quality"] = quality
    bar.update(1)
    result["targets"] = targets(result)
    result["seconds"] = round(time.time() - started, 1)
    return result, plots


_REAL_FEATURES: dict = {}  # (cache, n) -> (test images, judge features): shared by every method of a cache


def real_test_features(cache_dir: str, judge, n: int) -> tuple[torch.Tensor, np.ndarray]:
    """The first n test images of a cache [n, 3, R, R] and their judge features [n, Df], computed once."""
    from common.predictor import score_images

    key = (str(Path(cache_dir).resolve()), n, id(judge))
    if key not in _REAL_FEATURES:
        real = test_images(cache_dir, n)
        _REAL_FEATURES[key] = (real, score_images(judge, real)["features"].numpy())
    return _REAL_FEATURES[key]


def reference_frechet(cache_dir: str, judge, n: int) -> float:
    """Frechet distance between n real TRAIN and n real TEST images: the floor a perfect generator would reach."""
    from common.cache import CelebACache, uint8_to_model
    from common.predictor import score_images

    train = CelebACache(cache_dir, "train")
    real_train = uint8_to_model(train.images_uint8(np.arange(min(n, len(train)))))
    return M.frechet_distance(score_images(judge, real_train)["features"].numpy(),
                              real_test_features(cache_dir, judge, n)[1])


# ----------------------------------------------------------------------------------------------------------
# Targets and the generated discussion


def targets(result: dict) -> dict:
    """Pass/fail (or n/a) of the synthetic-set targets for one method, with the measured value."""
    attrs, out = result["attributes"], {}
    smile = attrs.get("Smiling")
    if smile:
        value = min(smile["success_positive"]["success"], smile["success_negative"]["success"])
        out["smiling_success"] = {"status": "pass" if value >= 0.9 else "fail", "value": value}
    pose = attrs.get(POSE)
    if pose:
        value = pose["monotonicity"]["rising_monotone_fraction"]  # a flat walk is monotone but is no yaw walk
        out["yaw_monotone"] = {"status": "pass" if value >= 0.9 else "fail", "value": value}
    reductions = [v for a in attrs.values() if "keep" in a for v in a["keep"]["reduction_percent"].values()]
    if reductions:
        value = min(reductions)
        out["keep_cuts_leakage"] = {"status": "pass" if math.isfinite(value) and value >= 50 else "fail",
                                    "value": value}
    recon = result["reconstruction"]
    if "max_abs_error_on_grid" in recon:
        out["glow_exact"] = {"status": "pass" if recon["max_abs_error_on_grid"] == 0 else "fail",
                             "value": recon["max_abs_error_on_grid"]}
    for key in TARGETS:
        out.setdefault(key, {"status": "n/a", "value": None})
    return out


def explain(name: str, key: str, result: dict, strengths: np.ndarray) -> str:
    """One generated sentence: the measured value of a target and, for a failure, what the numbers point at."""
    t = result["targets"][key]
    attrs = result["attributes"]
    hi = float(np.max(strengths))
    if key == "smiling_success":
        s = attrs["Smiling"]
        up, down, slope = s["success_positive"], s["success_negative"], s["slope"]["mean"]
        text = (f"{name}: Smiling edit success {up['success']:.0%} towards smiling and {down['success']:.0%} "
                f"away from it ({t['status']}).")
        if t["status"] == "fail":
            worst = up if up["success"] < down["success"] else down
            side = "+" if worst is up else "-"
            if abs(slope) * hi < 0.2:
                text += (f" The direction barely moves the judge's score (slope {slope:+.3f} per unit strength), "
                         "so it does not capture the smile the judge sees.")
            else:
                text += (f" The score moves the right way (slope {slope:+.3f}) but at {side}{hi:g} the mean judge "
                         f"score is only {worst['mean_end_score']:.2f}; a longer walk would be needed.")
        return text
    if key == "yaw_monotone":
        p = attrs[POSE]
        mono, inner = p["monotonicity"], p.get("monotonicity_inner_half")
        text = (f"{name}: the judge's yaw rises monotonically along the pose walk for "
                f"{mono['rising_monotone_fraction']:.0%} of faces (monotone including flat walks "
                f"{mono['monotone_fraction']:.0%}, Spearman rho {fmt(mono['spearman_mean'], '.2f')}, slope "
                f"{p['slope']['mean']:+.3f} yaw per unit strength; {t['status']}).")
        if t["status"] == "fail" and mono["monotone_fraction"] - mono["rising_monotone_fraction"] >= 0.5:
            return text + " Most walks are flat: the pose direction does not move the yaw the judge reads."
        if t["status"] == "fail" and inner and inner["rising_monotone_fraction"] >= 0.9:
            text += (f" Within |a| <= {hi / 2:g} it is monotone for {inner['rising_monotone_fraction']:.0%}: the walk "
                     "stops being monotone only at large strengths, consistent with leaving the region the model was "
                     "trained on.")
        elif t["status"] == "fail":
            text += (f" Even within |a| <= {hi / 2:g} only {(inner or mono)['rising_monotone_fraction']:.0%} are "
                     "monotone: the pose direction is entangled with other changes the judge reads as yaw.")
        return text
    if key == "keep_cuts_leakage":
        parts = []
        for attribute, a in attrs.items():
            if "keep" not in a:
                continue
            k = a["keep"]
            before, after = a["success_positive"]["success"], k["success_positive"]["success"]
            for kept, red in k["reduction_percent"].items():
                parts.append(f"editing {attribute} moved {kept} by {k['leakage_without'][kept]:.3f} without "
                             f"--keep and {k['leakage_with'][kept]:.3f} with it ({red:+.0f}%), while the "
                             f"{attribute} success towards + went from {before:.0%} to {after:.0%}")
                if t["status"] == "fail":
                    cos = k.get("cosine_to_unconditioned")
                    if cos is not None and cos > 0.95:
                        parts[-1] += (f"; the conditioned direction is almost the original one (cosine {cos:.2f}), "
                                      "so the two attributes' directions were already nearly orthogonal and the "
                                      "leakage is not linear in the latents")
                    elif k["leakage_without"][kept] < 0.05:
                        parts[-1] += "; there was little leakage to cut in the first place"
                    else:
                        parts[-1] += (f"; the projection changed the direction (cosine {cos:.2f}) but the kept "
                                      "attribute still follows the edit through correlated features")
        return f"{name}: " + "; ".join(parts) + f" ({t['status']})."
    recon = result["reconstruction"]
    return (f"{name}: the largest pixel error of the unedited round trip on the {recon.get('n_bits')}-bit grid is "
            f"{recon['max_abs_error_on_grid']:g} ({t['status']}).")


def other_findings(name: str, result: dict) -> list[str]:
    """Generated remarks beyond the targets: edits that fell short, the worst leakage, sample quality vs floor."""
    out = []
    for attribute, a in result["attributes"].items():
        short = [f"{side} {a[key]['success']:.0%} (mean end score {a[key]['mean_end_score']:.2f})"
                 for side, key in (("+", "success_positive"), ("-", "success_negative")) if a[key]["success"] < 0.9]
        if short and attribute != "Smiling":
            out.append(f"{name}: the {attribute} edit reaches the target side for fewer than 90% of faces: "
                       + ", ".join(short) + f"; slope {a['slope']['mean']:+.3f} per unit strength.")
    leaks = [(v, attribute, judged) for attribute, a in result["attributes"].items()
             for judged, v in a["leakage"].items() if judged != attribute and judged != POSE]
    if leaks:
        v, attribute, judged = max(leaks)
        out.append(f"{name}: largest leakage: editing {attribute} moves the judge's {judged} probability by "
                   f"{v:.3f} on average (its own score moved by "
                   f"{result['attributes'][attribute]['leakage'][attribute]:.3f}).")
    if "turn" in result:
        out.append(turn_finding(name, result["turn"]))
    fd, reference = result["sample_quality"]["frechet_judge"], result["sample_quality"]["reference_frechet_train_vs_test"]
    if reference > 0:
        out.append(f"{name}: sample Frechet distance {fd:.3f} is {fd / reference:.1f}x the real-vs-real floor "
                   f"({reference:.3f}).")
    return out


def turn_finding(name: str, turn: dict) -> str:
    """The turn check in words: does the latent line follow the turn, and how close do the pose edits come?"""
    text = _line_finding(name, turn)
    pe = turn.get("pose_edits")
    if pe:
        parts = [f"{m} {e['mean_db_other_frames']:.1f} dB" for m, e in pe["methods"].items()]
        text += (f" Pose edits of the frontal frame against the true frames: {', '.join(parts)} (no edit "
                 f"{pe['no_edit_mean_db_other_frames']:.1f} dB, reconstruction "
                 f"{fmt(pe.get('reconstruction_mean_db_other_frames'), '.1f')} dB).")
    return text


def _line_finding(name: str, turn: dict) -> str:
    """One sentence on the latent line between a turn's ends: a turn or a cross-fade?"""
    mean = turn["interior_mean_db"]
    line, fade, recon, ends = mean["latent_line"], mean["crossfade"], mean.get("reconstruction"), turn["ends_mean_db"]
    text = (f"{name}: between the encoded ends of a true head turn (ends reconstructed at {ends:.1f} dB), the latent "
            f"line matches the true frames at {line:.1f} dB, the pixel cross-fade of the ends at {fade:.1f} dB"
            + (f", the model's own reconstructions of those frames at {recon:.1f} dB" if recon is not None else ""))
    if ends - fade < 5:
        return text + (": the ends themselves are too far from the true frames for this test to tell a turn from a "
                       "cross-fade; look at the grid.")
    if line - fade < 1.5:
        return text + (": the line is a double exposure, not a turn. Pose is not linear in this latent space, and a "
                       "linear pose direction cannot be expected to turn heads either; the judge still reads the yaw "
                       "moving across it (a cross-fade's features shift), which is why a linear pose walk can pass as monotone.")
    if recon is not None and recon - line < 2:
        return text + ": the line follows the turn."
    return text + ": the line is partly a turn, partly a cross-fade."


def fmt(value, spec: str = ".3f") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "inf" if isinstance(value, float) and value == math.inf else "-"
    if isinstance(value, str):
        return value
    return format(value, spec)


PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189)]


def _pil_plot(plot_data: dict, shown: list[str], strengths: np.ndarray, path: Path) -> None:
    """The same panels drawn with PIL, for installs without matplotlib (mean lines only, no bands)."""
    from PIL import Image, ImageDraw

    from common.grids import atomic_save

    w, h, margin = 420, 300, 48
    canvas = Image.new("RGB", (w * len(shown), h), "white")
    draw = ImageDraw.Draw(canvas)
    for p, attribute in enumerate(shown):
        x0, x1, y0, y1 = p * w + margin, (p + 1) * w - 12, 24, h - margin
        curves = {n: np.asarray(d[attribute]["mean"], dtype=float) for n, d in plot_data.items() if attribute in d}
        lo = min(float(c.min()) for c in curves.values())
        hi = max(float(c.max()) for c in curves.values())
        lo, hi = (lo - 0.05, hi + 0.05) if hi - lo < 1e-6 else (lo, hi)
        if attribute != POSE:  # probabilities: the full [0, 1] axis shows how far from 0.5 the walk gets
            lo, hi = 0.0, 1.0
        box = np.array([x0, x1, y0, y1, lo, hi, strengths[0], strengths[-1]], dtype=float)
        draw.rectangle((x0, y0, x1, y1), outline="black")
        draw.text((x0, 6), f"{attribute}: judge " + ("yaw" if attribute == POSE else "probability"), fill="black")
        for a in strengths:
            draw.text((_plot_xy(box, a, lo)[0] - 8, y1 + 4), f"{a:+.1f}", fill="black")
        for v in (lo, (lo + hi) / 2, hi):
            draw.text((p * w + 4, _plot_xy(box, 0, v)[1] - 6), f"{v:.3g}", fill="black")
        for i, (name, curve) in enumerate(curves.items()):
            colour = PALETTE[i % len(PALETTE)]
            draw.line([_plot_xy(box, a, v) for a, v in zip(strengths, curve, strict=True)], fill=colour, width=2)
            draw.text((x0 + 6, y0 + 4 + 12 * i), name, fill=colour)
        draw.text(((x0 + x1) / 2 - 30, h - 20), "edit strength a", fill="black")
    atomic_save(canvas, path, "PNG")


def _plot_xy(box: np.ndarray, a: float, v: float) -> tuple[float, float]:
    """Data (strength a, value v) -> pixel (x, y) inside box = (x0, x1, y0, y1, lo, hi, a_min, a_max)."""
    x0, x1, y0, y1, lo, hi, a0, a1 = box
    return float(x0 + (a - a0) / (a1 - a0) * (x1 - x0)), float(y1 - (v - lo) / (hi - lo) * (y1 - y0))


def write_plots(plot_data: dict, strengths: np.ndarray, out: Path) -> list[str]:
    """Judge score vs strength per method for Smiling and pose (mean +- std over faces); returns the paths."""
    shown = [a for a in ("Smiling", POSE) if any(a in d for d in plot_data.values())]
    if not shown:
        return []
    path = out / "images" / "score_vs_strength.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import matplotlib
    except ImportError:  # listed in requirements.txt, but the report must not depend on it
        _pil_plot(plot_data, shown, strengths, path)
        return [str(path.relative_to(out))]
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(shown), figsize=(5 * len(shown), 3.6), squeeze=False)
    for ax, attribute in zip(axes[0], shown, strict=True):
        for name, data in plot_data.items():
            if attribute not in data:
                continue
            mean, std = np.asarray(data[attribute]["mean"]), np.asarray(data[attribute]["std"])
            ax.plot(strengths, mean, marker="o", label=name)
            ax.fill_between(strengths, mean - std, mean + std, alpha=0.15)
        ax.set_xlabel("edit strength a")
        ax.set_ylabel("judge: predicted yaw" if attribute == POSE else f"judge: P({attribute})")
        ax.set_title(f"{attribute}: judge score along the walk")
        ax.axvline(0, color="grey", lw=0.5)
        if attribute != POSE:
            ax.set_ylim(0, 1)
        ax.legend()
    fig.tight_layout()
    tmp = path.with_name(".score_vs_strength.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return [str(path.relative_to(out))]


def write_report(report: dict, plots: list[str], strengths: np.ndarray, out: Path) -> str:
    methods = report["methods"]
    names = list(methods)
    lines = ["# Evaluation: the methods compared on the same edits", "",
             f"Command: `{report['command']}`  ", f"Judge: `{report['judge']['run']}` (factor heads: "
             f"{', '.join(report['judge']['factor_names']) or 'none'}); strengths {strengths.min():g}..{strengths.max():g} "
             f"in {len(strengths)} steps; {report['config']['num']} faces per edit.", ""]
    for note in report["notes"]:
        lines.append(f"- Note: {note}")
    lines += ["", "## Targets", "", "| target | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for key, label in TARGETS.items():
        cells = []
        for n in names:
            t = methods[n]["targets"][key]
            spec = {"keep_cuts_leakage": "+.0f", "glow_exact": "g"}.get(key, ".0%")
            unit = "%" if key == "keep_cuts_leakage" else ""
            cells.append(t["status"] if t["value"] is None else f"{t['status']} ({fmt(t['value'], spec)}{unit})")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "## Edits", "", "Success: fraction of faces on the target side at the walk's end (probability "
              "0.5; yaw 0 for pose). Monotone: judge score non-decreasing along the walk. Slope: judge score per "
              "unit strength (probability, or yaw for pose). Content: pixel L1 ([-1, 1] units) and judge-feature "
              "distance (relative to the unedited features' norm) between the unedited reconstruction and the "
              "walk's two ends.", "",
              "| method | attribute | success + | success - | monotone (rising) | Spearman | slope | pixel L1 | "
              "feature dist (rel.) |", "|---|---|---|---|---|---|---|---|---|"]
    for n in names:
        for attribute, a in methods[n]["attributes"].items():
            lines.append(f"| {n} | {attribute} | {a['success_positive']['success']:.0%} | "
                         f"{a['success_negative']['success']:.0%} | {a['monotonicity']['monotone_fraction']:.0%} "
                         f"({a['monotonicity']['rising_monotone_fraction']:.0%}) | "
                         f"{fmt(a['monotonicity']['spearman_mean'], '.2f')} | {a['slope']['mean']:+.3f} | "
                         f"{a['content']['l1']:.3f}"
                         + (f" ({a['content']['outside_mouth_l1']:.3f} outside the mouth)"
                            if "outside_mouth_l1" in a["content"] else "")
                         + f" | {fmt(a['content'].get('feature_distance_relative'), '.3f')} |")
    attributes = report["config"]["attributes"]
    lines += ["", "## Leakage", "", "Mean |change| of the judge's score between a = 0 and the + end of the walk "
              "(rows: edited, columns: judged; the diagonal is the intended change; pose column in yaw units).", ""]
    for n in names:
        lines += [f"**{n}**", "", "| edited | " + " | ".join(attributes) + " | largest other |",
                  "|---|" + "---|" * (len(attributes) + 1)]
        for attribute, a in methods[n]["attributes"].items():
            others = {k: v for k, v in a["leakage"].items() if k not in attributes}
            top = max(others, key=others.get)
            lines.append(f"| {attribute} | " + " | ".join(f"{a['leakage'][k]:.3f}" for k in attributes)
                         + f" | {top} {others[top]:.3f} |")
        lines.append("")
    keep_rows = [(n, attribute, a["keep"]) for n in names for attribute, a in methods[n]["attributes"].items()
                 if "keep" in a]
    if keep_rows:
        lines += ["Conditional editing (--keep):", "", "| method | edit | kept | leakage without | with | reduction "
                  "| success + with keep | cosine to original |", "|---|---|---|---|---|---|---|---|"]
        for n, attribute, k in keep_rows:
            for kept in k["kept"]:
                lines.append(f"| {n} | {attribute} | {kept} | {k['leakage_without'][kept]:.3f} | "
                             f"{k['leakage_with'][kept]:.3f} | {fmt(k['reduction_percent'][kept], '+.0f')}% | "
                             f"{k['success_positive']['success']:.0%} | {fmt(k['cosine_to_unconditioned'], '.3f')} |")
        lines.append("")
    lines += ["## Reconstruction and sample quality", "", f"Frechet distance in the judge's feature space between "
              f"real test images and samples ({report['config']['fd_images']} each); the floor is the distance "
              "between real train and real test images.", "",
              "| method | reconstruction | PSNR (dB) | exact | samples FD (judge) | floor | Inception FID |",
              "|---|---|---|---|---|---|---|"]
    for n in names:
        r, q = methods[n]["reconstruction"], methods[n]["sample_quality"]
        psnr_text = fmt(r.get("mean_db"), ".2f") + (f" (n={r['n']})" if r.get("n") else "")
        if "psnr_vs_input_db" in r:
            psnr_text += f"; {fmt(r['psnr_vs_input_db'], '.2f')} vs the 8-bit input"
        lines.append(f"| {n} | {r['kind']} | {psnr_text} | {fmt(r.get('exact_fraction'), '.0%')} | "
                     f"{q['frechet_judge']:.3f}" + (f" (T={q['temperature']:g})" if "temperature" in q else "")
                     + f" | {q['reference_frechet_train_vs_test']:.3f} | "
                     f"{fmt(q['inception_fid'], '.2f')} |")
    turns = [n for n in names if "turn" in methods[n]]
    if turns:
        lines += ["", "## Can the latent space turn a head?", "",
                  f"Synthetic faces rendered turning from -{TURN_YAW * 40:g} to +{TURN_YAW * 40:g} degrees (all else "
                  "fixed); the two end frames are encoded and the latent line between them decoded. PSNR against the "
                  "true in-between frames (mean of the interior frames): a latent space in which pose is linear "
                  "scores near the model's own reconstruction of those frames, one whose line is a double exposure "
                  "scores near the pixel cross-fade of the ends.", "",
                  "| method | ends (dB) | latent line (dB) | pixel cross-fade (dB) | reconstruction of the true frames "
                  "(dB) | judge yaw along the line | along the true turn |", "|---|---|---|---|---|---|---|"]
        for n in turns:
            tr = methods[n]["turn"]
            mean = tr["interior_mean_db"]
            lines.append(f"| {n} | {tr['ends_mean_db']:.1f} | {mean['latent_line']:.1f} | {mean['crossfade']:.1f} | "
                         f"{fmt(mean.get('reconstruction'), '.1f')} | "
                         + ", ".join(f"{v:+.2f}" for v in tr["judge_yaw"]["latent_line"]) + " | "
                         + ", ".join(f"{v:+.2f}" for v in tr["judge_yaw"]["true"]) + " |")
        paths = [n for n in turns if "path" in methods[n]["turn"]]
        if paths:
            lines += ["", "How curved the encoded turns are: the share of each face's path variance on its first "
                      "three principal components (a straight path has all of it on the first), and how far the "
                      "middle (frontal) frame lies from the midpoint of the chord between the end frames.", "",
                      "| method | variance on PC 1 / 2 / 3 | chord | middle frame off the chord's midpoint |",
                      "|---|---|---|---|"]
            for n in paths:
                pa = methods[n]["turn"]["path"]
                lines.append(f"| {n} | " + " / ".join(f"{v:.0%}" for v in pa["pc_shares"])
                             + f" | {pa['chord']:.1f} | {pa['middle_offset']:.1f} |")
        edits = [n for n in turns if "pose_edits" in methods[n]["turn"]]
        if edits:
            lines += ["", "The pose edits themselves, from the encoded frontal frame of the same turns: each walked to "
                      "the strength of every true frame's yaw and compared with the true frames (mean PSNR over the "
                      "frames other than the frontal one). No edit at all (the frontal reconstruction for every "
                      "frame) is the floor; the reconstruction of the true frames is the ceiling.", "",
                      "| method | pose edit | PSNR vs the true frames (dB) | no edit (dB) | reconstruction (dB) | "
                      "judge yaw along the edit |", "|---|---|---|---|---|---|"]
            for n in edits:
                pe = methods[n]["turn"]["pose_edits"]
                for m, e in pe["methods"].items():
                    lines.append(f"| {n} | {m} | {e['mean_db_other_frames']:.1f} | "
                                 f"{pe['no_edit_mean_db_other_frames']:.1f} | "
                                 f"{fmt(pe.get('reconstruction_mean_db_other_frames'), '.1f')} | "
                                 + ", ".join(f"{v:+.2f}" for v in e["judge_yaw"]) + " |")
        lines += [""] + [f"![{n} turn]({methods[n]['turn']['grid']})" for n in turns]
    factor_names = [f for f in ("smile", "yaw") if f in report["judge"]["factor_names"]]
    if factor_names:
        lines += ["", "## Synthetic ground truth", "", "Judge's predicted factors per unit strength (slope).", "",
                  "| method | edit | " + " | ".join(factor_names) + " |", "|---|---|" + "---|" * len(factor_names)]
        for n in names:
            for attribute, a in methods[n]["attributes"].items():
                lines.append(f"| {n} | {attribute} | " + " | ".join(f"{a['factor_slopes'][f]:+.3f}"
                                                                      for f in factor_names) + " |")
    lines += ["", "## Pictures", ""] + [f"![judge score vs strength]({p})" for p in plots]
    for n in names:
        lines += ["", f"**{n}**", ""] + [f"![{n} {a}]({e['grid']})" for a, e in methods[n]["attributes"].items()]
    lines += ["", "## Discussion", ""]
    for key in TARGETS:
        measured = [n for n in names if methods[n]["targets"][key]["status"] != "n/a"]
        for n in measured:
            lines.append("- " + explain(n, key, methods[n], strengths))
    for n in names:
        lines += ["- " + line for line in other_findings(n, methods[n])]
    if len(names) > 1:
        best_fd = min(names, key=lambda n: methods[n]["sample_quality"]["frechet_judge"])
        lines.append(f"- Lowest sample Frechet distance (judge features): {best_fd} "
                     f"({methods[best_fd]['sample_quality']['frechet_judge']:.3f}).")
        common_attrs = [a for a in attributes if all(a in methods[n]["attributes"] for n in names)]
        for attribute in common_attrs[:1]:
            best = min(names, key=lambda n: methods[n]["attributes"][attribute]["content"]["l1"])
            lines.append(f"- Best content preservation for {attribute} (pixel L1 at the walk ends): {best} "
                         f"({methods[best]['attributes'][attribute]['content']['l1']:.3f}).")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------------


def main() -> int:
    args = parse_args()
    from common.editing import resolve_device
    from common.predictor import load_predictor
    from pipeline.registry import load_method, read_run_method

    if args.num < 2:
        raise UserError(f"--num {args.num}: expected at least 2 faces")
    if args.steps < 3 or not args.range[0] < 0 < args.range[1]:
        raise UserError(f"--range {args.range[0]:g} {args.range[1]:g} --steps {args.steps}: expected LO < 0 < HI "
                        "and at least 3 steps")
    if args.fd_images < 2:
        raise UserError(f"--fd-images {args.fd_images}: expected at least 2")
    args.attributes = list(dict.fromkeys(resolve_attribute(a) for a in args.attributes))
    keep_map = parse_keep_map(args.keep, args.attributes)
    strengths = np.linspace(args.range[0], args.range[1], args.steps)
    if not np.isclose(strengths, 0.0).any():
        strengths = np.sort(np.append(strengths, 0.0))  # the unedited column every metric compares to
    device = resolve_device(args.device)
    judge_dir = Path(args.judge)
    if not (judge_dir / "checkpoints").is_dir():
        raise UserError(f"{judge_dir}: judge predictor run not found; train it with python scripts/"
                        "train_predictor.py --config configs/predictor/synthetic.yaml --set train.seed=1 --out "
                        f"{judge_dir}")
    judge = load_predictor(judge_dir, device)
    out = Path(args.out)
    notes, runs = [], []
    for run in args.runs or DEFAULT_RUNS:
        try:
            read_run_method(run)
            runs.append(run)
        except UserError as exc:
            notes.append(f"skipped {exc}")
            print(f"note: skipped {exc}", file=sys.stderr)
    if not runs:
        raise UserError("no run to evaluate: " + "; ".join(notes))

    started = time.time()
    per_walk = len(args.attributes) + sum(len(v) > 0 for v in keep_map.values())
    report: dict = {"command": "python scripts/evaluate.py " + " ".join(sys.argv[1:]),
                    "config": {"num": args.num, "attributes": args.attributes, "keep": keep_map,
                               "strengths": strengths, "invert": args.invert, "fd_images": args.fd_images,
                               "seed": args.seed},
                    "judge": {"run": str(judge_dir), "factor_names": list(judge.factor_names)},
                    "methods": {}, "notes": notes}
    plot_data, references = {}, {}
    with tqdm(total=len(runs) * (per_walk + 1), desc="evaluate", unit="step") as bar:
        for run in runs:
            model, find_direction, info = load_method(run, device, predictor_run=args.predictor,
                                                      samples=args.samples, max_train_images=args.max_train_images,
                                                      seed=args.seed)
            name = info["method"] if info["method"] not in report["methods"] else Path(run).as_posix()
            if info.get("predictor") and Path(info["predictor"]).resolve() == judge_dir.resolve():
                notes.append(f"{name}: its directions were found by the judge itself ({judge_dir}); the judge "
                             "should be a second predictor")
            bar.set_postfix_str(name)
            report["methods"][name], plot_data[name] = evaluate_method(name, model, find_direction, info, judge,
                                                                       args, strengths, keep_map, out, bar)
            if info["cache"] not in references:
                references[info["cache"]] = reference_frechet(info["cache"], judge, args.fd_images)
    for result in report["methods"].values():  # the floor of the method's own data (runs may use other caches)
        result["sample_quality"]["reference_frechet_train_vs_test"] = references[result["info"]["cache"]]
    if not args.inception:
        notes.append("standard Inception FID skipped (pass --inception WEIGHTS.pth, a torchvision inception_v3 "
                     "state dict on disk; nothing is downloaded)")
    report["seconds"] = round(time.time() - started, 1)
    plots = write_plots(plot_data, strengths, out)
    atomic_write_text(out / "metrics.json", json.dumps(json_ready(report), indent=2) + "\n")
    atomic_write_text(out / "report.md", write_report(report, plots, strengths, out))
    print(f"wrote {out / 'metrics.json'} and {out / 'report.md'} ({report['seconds']:.0f} s)")
    for name, result in report["methods"].items():
        print(f"  {name}: " + ", ".join(f"{k} {v['status']}" for k, v in result["targets"].items()))
    return 0


if __name__ == "__main__":
    run_main(main)
