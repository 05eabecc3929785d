"""The evaluation's orchestration: every run's edits walked, decoded and judged, into one report dict.

``evaluate_runs`` takes run folders, a loader (``pipeline.registry.load_method`` with its options bound), the
judge and an ``EvaluationOptions``; ``evaluate_method`` does one run. Writing the files is
``pipeline.evaluation.report.write_outputs``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm import tqdm

from common import metrics as M
from common.attributes import POSE, resolve_attribute
from common.cli import UserError
from common.directions import Direction, project_out
from common.editing import EditableModel, FindDirection, direction_path, get_direction
from common.grids import edit_grid
from common.predictor import AttributePredictor, score_images
from pipeline.evaluation.metrics import (
    JUDGED,
    RealFeatures,
    cache_test_images,
    decode_all,
    encode_all,
    grid_file,
    inception_features,
    judge_images,
    run_walk,
    walk_metrics,
)
from pipeline.evaluation.report import targets
from pipeline.evaluation.turns import turn_check
from pipeline.registry import POSE_EDITS

if TYPE_CHECKING:
    from interface_gan.inversion import PGGANEditable

DEFAULT_ATTRIBUTES = ("Smiling", "Narrow_Eyes", "Mouth_Slightly_Open", "pose")
DEFAULT_KEEP = ("Smiling=Mouth_Slightly_Open",)
# run folder -> (model, find_direction, info): pipeline.registry.load_method with the device etc. bound
LoadRun = Callable[[str], tuple[EditableModel, FindDirection, dict]]


@dataclass
class EvaluationOptions:
    """What to measure and how much of it; the defaults are scripts/evaluate.py's."""

    attributes: list[str] = field(default_factory=lambda: list(DEFAULT_ATTRIBUTES))
    keep: dict[str, list[str]] = field(default_factory=lambda: {"Smiling": ["Mouth_Slightly_Open"]})
    strengths: np.ndarray = field(default_factory=lambda: make_strengths(-3.0, 3.0, 7))  # [S], increasing, holds 0
    num: int = 64  # faces edited per method and attribute
    invert: int = 8  # test images inverted for the GAN's PSNR
    inversion_steps: int = 100  # GAN inversion; 0: the run config's
    inversion_starts: int = 2
    fd_images: int = 500  # real and generated images per Frechet distance
    inception: str | None = None  # torchvision inception_v3 state dict: also Inception FID
    turn_faces: int = 4  # rendered head turns (synthetic caches only; 0: off)
    turn_gan: bool = False  # also for the GAN, whose turn ends must be inverted
    grid_rows: int = 4
    seed: int = 0
    batch_size: int = 128


def make_strengths(lo: float, hi: float, steps: int) -> np.ndarray:
    """``steps`` strengths from lo to hi [S], with 0 added when missing (the unedited column every metric uses)."""
    strengths = np.linspace(lo, hi, steps)
    if not np.isclose(strengths, 0.0).any():
        strengths = np.sort(np.append(strengths, 0.0))
    return strengths


def parse_pose_methods(items: list[str]) -> dict[str, str]:
    """--pose-method vae=cflow glow=mean -> {"vae": "cflow", "glow": "mean"}, checked against each method's finders."""
    choices = POSE_EDITS
    result = {}
    for item in items:
        method, _, how = item.partition("=")
        if how not in choices.get(method, ()):
            raise UserError(f"--pose-method {item!r}: expected METHOD=HOW with METHOD one of {', '.join(choices)} "
                            f"and HOW one of {', '.join(choices.get(method, choices['vae']))}")
        result[method] = how
    return result


def parse_keep_map(items: Iterable[str] | None, attributes: Sequence[str]) -> dict[str, list[str]]:
    """["Smiling=Mouth_Slightly_Open"] -> {"Smiling": ["Mouth_Slightly_Open"]} for edited attributes only."""
    out: dict[str, list[str]] = {}
    for item in items if items is not None else DEFAULT_KEEP:
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


def _set_inversion(model: PGGANEditable, steps: int, starts: int) -> tuple[int, int]:
    """The GAN's inversion budget (0 keeps the run config's): a PSNR estimate needs far less than an edit."""
    model.steps = steps or model.steps
    model.starts = starts or model.starts
    return model.steps, model.starts


def _reconstruction(model: EditableModel, info: dict, options: EvaluationOptions) -> tuple:
    """(base latents [N, D], inputs [N, 3, R, R] or None, decoded base [N, 3, R, R], reconstruction, source)."""
    bs = options.batch_size
    if info["method"] == "pggan":  # random samples: inverting --num faces would take too long
        base = model.sample_latents(options.num, torch.Generator().manual_seed(options.seed)).float()  # [N, D]
        recon: dict = {"kind": "GAN inversion", "n": 0}
        if options.invert > 0:
            steps, starts = _set_inversion(model, options.inversion_steps, options.inversion_starts)
            x = cache_test_images(info["cache"], options.invert)
            z = encode_all(model, x, bs)
            recon.update(M.summarize_psnr(M.psnr(decode_all(model, z, bs), x)), steps=steps, starts=starts)
        source = {"kind": "samples", "seed": options.seed, "n": options.num}
        return base, None, decode_all(model, base, bs), recon, source
    inputs = cache_test_images(info["cache"], options.num)  # [N, 3, R, R]
    base = encode_all(model, inputs, bs)
    decoded = decode_all(model, base, bs)
    recon = {"kind": "posterior mean", **M.summarize_psnr(M.psnr(decoded, inputs))}
    if info["method"] == "glow":  # exact up to the model's n_bits quantisation: compare on that grid
        from flow.glow import snap_to_grid

        n_bits = int(info["n_bits"])
        snapped = snap_to_grid(inputs, n_bits)
        recon = {"kind": f"exact inverse ({n_bits}-bit grid)", **M.summarize_psnr(M.psnr(decoded, snapped)),
                 "psnr_vs_input_db": M.summarize_psnr(M.psnr(decoded, inputs))["mean_db"],
                 "max_abs_error_on_grid": float((decoded - snapped).abs().max()), "n_bits": n_bits}
    return base, inputs, decoded, recon, {"kind": "test images", "n": len(inputs)}


def evaluate_method(name: str, model: EditableModel, find_direction: FindDirection, info: dict,
                    judge: AttributePredictor, options: EvaluationOptions, out: Path,
                    reals: RealFeatures | None = None, advance: Callable[[int], object] = lambda n: None,
                    ) -> tuple[dict, dict]:
    """All numbers of one method -> (metrics dict, plot data). Writes the method's grids into out/images/.

    ``info`` is load_method's; ``advance(1)`` is called after each walk and after the sample quality.
    """
    run_dir, out = Path(info["run_dir"]), Path(out)
    method, walk_mode, dmethod = info["method"], info["walk"], info["direction_method"]
    strengths, bs = options.strengths, options.batch_size
    reals = reals or RealFeatures(judge, options.fd_images)
    result: dict = {"run": str(run_dir), "info": info, "attributes": {}}
    started = time.time()

    base, inputs, decoded, result["reconstruction"], result["source"] = _reconstruction(model, info, options)
    pose_method = info.get("pose_method", dmethod)
    directions: dict[tuple[str, str], Direction] = {}

    def direction_for(attribute: str, how: str) -> Direction:  # each direction loaded (or found) once per method
        if (attribute, how) not in directions:
            directions[attribute, how] = get_direction(run_dir, attribute, how, find_direction)
        return directions[attribute, how]

    synthetic = (Path(info["cache"]) / "factors.npy").exists()
    if options.turn_faces > 0 and synthetic and (method != "pggan" or options.turn_gan):
        pose_edits = None if method == "pggan" else {
            m: direction_for(POSE, m) for m in dict.fromkeys([dmethod, pose_method])}
        result["turn"] = turn_check(name, model, walk_mode, judge, decoded.shape[-1], options.turn_faces, bs, out,
                                    encode_every_frame=method != "pggan", pose_edits=pose_edits)
    unedited = judge_images(judge, decoded, bs)  # the a = 0 column of every walk

    plots: dict = {}
    factor_names = list(judge.factor_names)
    for attribute in options.attributes:
        amethod = pose_method if attribute == POSE else dmethod
        direction = direction_for(attribute, amethod)
        if direction.dim != base.shape[1]:
            raise UserError(f"{direction_path(run_dir, attribute, amethod)}.npz: a {direction.dim}-d direction "
                            f"for a {base.shape[1]}-d model; delete it to find the direction again")
        images, scores, feats, factors = run_walk(model, base, direction, strengths, walk_mode, judge, bs, unedited)
        entry = walk_metrics(scores, images, feats, strengths, attribute, factor_names, factors)
        entry["direction"] = {"method": amethod, "scale": direction.scale, "walk": walk_mode,
                              "metrics": direction.metrics}
        rows = min(options.grid_rows, len(images))
        grid = grid_file(out, name, attribute)
        edit_grid(images[:rows], strengths, grid, title=f"{name}: {attribute} ({amethod}, {walk_mode})",
                  marked_column=M.zero_column(strengths), input_images=None if inputs is None else inputs[:rows])
        entry["grid"] = str(grid.relative_to(out))
        plots[attribute] = entry["score_per_strength"]
        advance(1)
        kept_names = options.keep.get(attribute, [])
        if kept_names:
            conditions = [direction_for(k, dmethod) for k in kept_names]
            conditioned = project_out(direction, conditions, keep_names=kept_names)
            c_images, c_scores, c_feats, c_factors = run_walk(model, base, conditioned, strengths, walk_mode,
                                                              judge, bs, unedited)
            c_entry = walk_metrics(c_scores, c_images, c_feats, strengths, attribute, factor_names, c_factors)
            reductions = {k: M.leakage_reduction(entry["leakage"][k], c_entry["leakage"][k]) for k in kept_names}
            entry["keep"] = {"kept": kept_names, "leakage_without": {k: entry["leakage"][k] for k in kept_names},
                             "leakage_with": {k: c_entry["leakage"][k] for k in kept_names},
                             "reduction_percent": reductions,
                             "cosine_to_unconditioned": conditioned.metrics.get("cosine_to_unconditioned"),
                             "success_positive": c_entry["success_positive"],
                             "success_negative": c_entry["success_negative"], "slope": c_entry["slope"],
                             "leakage": c_entry["leakage"]}
            advance(1)
        result["attributes"][attribute] = entry

    result["leakage_matrix"] = {"rows": list(result["attributes"]), "columns": JUDGED,
                                "values": [[a["leakage"][k] for k in JUDGED] for a in result["attributes"].values()]}
    result["sample_quality"] = _sample_quality(model, info, judge, options, reals)
    advance(1)
    result["targets"] = targets(result)
    result["seconds"] = round(time.time() - started, 1)
    return result, plots


def _sample_quality(model: EditableModel, info: dict, judge: AttributePredictor, options: EvaluationOptions,
                    reals: RealFeatures) -> dict:
    """Generated samples vs real test images in the judge's feature space (and Inception's with --inception)."""
    n_fd = options.fd_images
    real, real_f = reals.test(info["cache"])
    latents = model.sample_latents(n_fd, torch.Generator().manual_seed(options.seed + 1)).float()  # [n_fd, D]
    fake = decode_all(model, latents, options.batch_size)
    fake_f = score_images(judge, fake)["features"].numpy()
    quality = {"frechet_judge": M.frechet_distance(real_f, fake_f), "n_real": len(real), "n_fake": len(fake)}
    if "temperature" in info:
        quality["temperature"] = info["temperature"]
    if options.inception:
        quality["inception_fid"] = M.frechet_distance(inception_features(real, options.inception),
                                                      inception_features(fake, options.inception))
    else:
        quality["inception_fid"] = "skipped (pass --inception WEIGHTS.pth)"
    return quality


def evaluate_runs(runs: Sequence[str], load: LoadRun, judge: AttributePredictor, judge_dir: str | Path,
                  options: EvaluationOptions, out: str | Path, command: str,
                  notes: list[str] | None = None) -> tuple[dict, dict]:
    """Evaluate every run -> (the metrics.json report dict, plot data {method: {attribute: score curve}}).

    Runs are loaded one at a time by ``load``; a method name met twice is named by its run folder instead.
    ``notes`` (e.g. skipped runs) go into the report, with notes of this evaluation's own added.
    """
    judge_dir, out, notes = Path(judge_dir), Path(out), list(notes or [])
    started = time.time()
    per_walk = len(options.attributes) + sum(len(v) > 0 for v in options.keep.values())
    report: dict = {"command": command,
                    "config": {"num": options.num, "attributes": list(options.attributes), "keep": options.keep,
                               "strengths": options.strengths, "invert": options.invert,
                               "fd_images": options.fd_images, "seed": options.seed},
                    "judge": {"run": str(judge_dir), "factor_names": list(judge.factor_names)},
                    "methods": {}, "notes": notes}
    plot_data, references = {}, {}
    reals = RealFeatures(judge, options.fd_images)
    with tqdm(total=len(runs) * (per_walk + 1), desc="evaluate", unit="step") as bar:
        for run in runs:
            model, find_direction, info = load(run)
            name = info["method"] if info["method"] not in report["methods"] else Path(run).as_posix()
            if info.get("predictor") and Path(info["predictor"]).resolve() == judge_dir.resolve():
                notes.append(f"{name}: its directions were found by the judge itself ({judge_dir}); the judge "
                             "should be a second predictor")
            bar.set_postfix_str(name)
            report["methods"][name], plot_data[name] = evaluate_method(name, model, find_direction, info, judge,
                                                                       options, out, reals, bar.update)
            if info["cache"] not in references:
                references[info["cache"]] = reals.reference_frechet(info["cache"])
    for result in report["methods"].values():  # the floor of the method's own data (runs may use other caches)
        result["sample_quality"]["reference_frechet_train_vs_test"] = references[result["info"]["cache"]]
    if not options.inception:
        notes.append("standard Inception FID skipped (pass --inception WEIGHTS.pth, a torchvision inception_v3 "
                     "state dict on disk; nothing is downloaded)")
    report["seconds"] = round(time.time() - started, 1)
    return report, plot_data
