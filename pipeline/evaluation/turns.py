"""The synthetic turn check: can a model's latent space turn a head at all?

Faces rendered turning their heads (``common.synthetic.true_turns``) give the ground truth a pose edit should
reach; the latent line between each turn's encoded ends, and the pose edits themselves, are compared with it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from common import metrics as M
from common.directions import Direction, walk
from common.editing import EditableModel
from common.grids import edit_grid
from common.predictor import AttributePredictor
from common.synthetic import TURN_FRAMES, TURN_YAW, true_turns
from pipeline.evaluation.metrics import decode_all, encode_all, grid_file, judge_images


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


def turn_check(name: str, model: EditableModel, walk_mode: str, judge: AttributePredictor, resolution: int,
               faces: int, batch_size: int, out: Path, encode_every_frame: bool,
               pose_edits: dict[str, Direction] | None = None) -> dict:
    """Ground truth for pose edits: the latent line between a rendered turn's ends, against the true frames.

    ``faces`` synthetic faces are rendered turning from -32 to +32 degrees (everything else fixed). Both end
    frames are encoded and the latent line between them (a great circle for sphere latents) is decoded at the
    frames' positions. Each decoded frame is compared (PSNR) with the true frame, with the pixel cross-fade of
    the two ends (what a double exposure scores) and with the model's own reconstruction of the true frame (the
    best the decoder can do). A latent space in which pose is linear scores near the reconstruction; one in
    which the line cross-fades scores near the cross-fade, and then no linear pose direction can turn a head.
    ``encode_every_frame`` False (a GAN: each encoding is a slow inversion) encodes only the two ends and skips
    the reconstruction column. With every frame encoded, ``path`` says how curved the encoded turns are
    (``path_shape``). ``pose_edits`` ({method: Direction}) adds the edits themselves: each pose edit starts
    from the encoded frontal frame and is walked to the strength of every true frame's yaw (the judge's yaw of
    that frame over the direction's ``score_std``), then compared with the true frames as above. Writes the
    grid OUT/images/<name>-turn.png.
    """
    n, frames, bs = faces, TURN_FRAMES, batch_size
    yaws = np.linspace(-TURN_YAW, TURN_YAW, frames)
    true = true_turns(n, resolution)  # [n, S, 3, R, R]
    flat = true.flatten(0, 1)  # [n*S, 3, R, R]
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
        line = (1 - t.view(1, -1, 1)) * first[:, None] + t.view(1, -1, 1) * last[:, None]  # [n, S, D]
    decoded = decode_all(model, line.flatten(0, 1), bs)  # [n*S, 3, R, R]
    crossfade = ((1 - t.view(1, -1, 1, 1, 1)) * true[:, :1] + t.view(1, -1, 1, 1, 1) * true[:, -1:]).flatten(0, 1)

    def per_frame(images: torch.Tensor) -> np.ndarray:  # mean PSNR over faces of each frame (inf when identical)
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
    grid = grid_file(out, name, "turn")
    # each shown set [n*S, 3, R, R] -> [rows, S, ...]; stacked per face: [rows, sets, S, ...] -> [rows*sets, S, ...]
    images = torch.stack([im.reshape(n, frames, *flat.shape[1:])[:rows] for _, im in shown], 1).flatten(0, 1)
    labels = [f"{label} {i + 1}" for i in range(rows) for label, _ in shown]
    edit_grid(images, yaws * 40.0, grid, title=f"{name}: a true head turn (yaw in degrees), the latent line between "
              "its ends, their cross-fade" + (", pose edits of the frontal frame" if "pose_edits" in result else ""),
              row_labels=labels)
    result["grid"] = str(grid.relative_to(out))
    return result
