"""The README's first command (`make demo`): the whole project on the synthetic CelebA-format set, in minutes.

Each stage is an ordinary command, printed before it runs, and skipped when its output is complete (an interrupted
training resumes). pipeline/stages.py runs two at once, one thread each, once their needs are done. The trainings
are shorter or smaller than configs/*/synthetic.yaml (``SHORT``: what each costs is in docs/results.md, "The
demo's budget"); ``make evaluate`` is the full evaluation.
    python scripts/demo.py [--num 6000] [--only STAGE ...] [--jobs 2] [--list]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from common.checkpoint import atomic_write_text
from common.cli import UserError, run_main
from pipeline.registry import POSE_METHODS
from pipeline.stages import Stage, preload, run_stages

REPO = Path(__file__).resolve().parents[1]

DATA_ROOT, RESOLUTION, DEMO_OUT = "data/synthetic", 32, "runs/demo"
CACHE = f"data/cache/synthetic_{RESOLUTION}"
# Overrides of the synthetic configs for the demo (what each costs: docs/results.md, "The demo's budget").
SHORT = {"predictor": ("model.width=16", "model.blocks=[1,1,1,1]", "train.batch_size=32", "train.lr=4e-3",
                       "train.total_images=16000", "optim.warmup_images=1000", "eval.val_every_images=8000"),
         "vae": ("train.total_images=40000", "vae.kl_warmup_images=10000", "eval.val_every_images=40000"),
         "glow": ("train.total_images=12000", "eval.test_every_images=12000"),
         "pggan": ("model.fmap_base=512", "model.fmap_max=64", "model.fmap_min=16", "train.total_images=24000",
                   "edit.samples=6000")}
POSE_IMAGES = 2000  # encoded training images the pose cflow is fitted on (the edit scripts' default: 20000)
# Glow's pose in the demo: its mean direction. The cflow fitted on POSE_IMAGES took 149 s on one thread (half the
# demo) and measured no closer to the rendered turn than the mean direction at this budget (docs/results.md).
POSE = {**POSE_METHODS, "glow": "mean"}


def python(*args: str) -> list[str]:
    return [sys.executable, *args]


def train_stage(name: str, script: str, config: str, run: str, extra: tuple[str, ...] = ()) -> Stage:
    method = "predictor" if "predictor" in script else name
    overrides = [item for value in SHORT[method] for item in ("--set", value)]
    return Stage(name, python(script, "--config", config, "--out", run, *overrides, *extra), f"{run}/metrics.json",
                 run, needs=("prepare",))


def stages(num: int) -> list[Stage]:
    """The plan, in the order stages start when their needs are met: PGGAN, the longest, first. The evaluation
    comes last, so it reads the directions the edits found (RUN/directions/) instead of fitting them again."""
    edits = [*edit_stages("vae", "scripts/edit_vae.py", "runs/vae/synthetic", "mean"),
             *edit_stages("glow", "scripts/edit_glow.py", "runs/glow/synthetic", "mean"),
             *edit_stages("pggan", "scripts/edit_interface_gan.py", "runs/pggan/synthetic", "boundary", ("predictor",))]
    return [
        Stage("synthetic", python("scripts/make_synthetic_celeba.py", "--out", DATA_ROOT, "--num", str(num),
                                  "--seed", "0"), f"{DATA_ROOT}/list_attr_celeba.txt"),
        Stage("prepare", python("scripts/prepare_data.py", "--root", DATA_ROOT, "--resolution", str(RESOLUTION)),
              f"{CACHE}/manifest.json", needs=("synthetic",)),
        train_stage("pggan", "scripts/train_pggan.py", "configs/interface_gan/synthetic.yaml", "runs/pggan/synthetic"),
        train_stage("predictor", "scripts/train_predictor.py", "configs/predictor/synthetic.yaml",
                    "runs/predictor/synthetic"),
        # the judge: a second predictor with another seed, so evaluation does not grade directions with the
        # same network that found them
        train_stage("judge", "scripts/train_predictor.py", "configs/predictor/synthetic.yaml",
                    "runs/predictor/synthetic-judge", ("--set", "train.seed=1")),
        train_stage("vae", "scripts/train_vae.py", "configs/vae/synthetic.yaml", "runs/vae/synthetic"),
        train_stage("glow", "scripts/train_glow.py", "configs/flow/synthetic.yaml", "runs/glow/synthetic"),
        Stage("contact-sheet", python("scripts/contact_sheet.py", "--cache", CACHE, "--out",
                                      f"{DEMO_OUT}/synthetic_samples.png"), f"{DEMO_OUT}/synthetic_samples.png",
              needs=("prepare",)),
        *edits,
        # a short evaluation: 16 faces, smile and pose, a small Frechet distance, two rendered turns
        Stage("evaluate", python("scripts/evaluate.py", "--num", "16", "--attributes", "Smiling", "pose",
                                 "--fd-images", "200", "--turn-faces", "2", "--invert", "2", "--out",
                                 "runs/evaluation-short", "--pose-method", *(f"{m}={h}" for m, h in POSE.items())),
              "runs/evaluation-short/report.md", needs=("judge", *(s.name for s in edits))),
    ]


def edit_stages(name: str, script: str, run: str, method: str, needs: tuple[str, ...] = ()) -> list[Stage]:
    """Grids and GIFs for one method from the script's default source (encoded test images; random samples for
    the GAN): smile, smile with the mouth kept, and pose (``POSE``: the VAE turns heads with cflow, fitted on
    POSE_IMAGES training images)."""
    out, result = f"{run}/edits", []
    for attribute, keep in (("Smiling", ()), ("Smiling", ("--keep", "Mouth_Slightly_Open")), ("pose", ())):
        how = POSE.get(name, method) if attribute == "pose" else method
        fit = ("--max-train-images", str(POSE_IMAGES)) if how == "cflow" else ()
        stem = f"{attribute}{'-keep-' + keep[1] if keep else ''}-{how}"
        command = python(script, "--run", run, "--attribute", attribute, *keep, *fit, "--method", how, "--out", out)
        # one after another within a method: each reuses the encodings (RUN/directions/encoded.pt) or scored
        # samples (samples.npz) the first one stored, instead of computing them alongside it
        after = (result[-1].name,) if result else ()
        result.append(Stage(f"edit-{name}-{stem}", command, f"{out}/{stem}.json", needs=(name, *needs, *after)))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num", type=int, default=6000, help="synthetic images to generate (default 6000)")
    parser.add_argument("--only", nargs="+", help="run only these stages (see --list)")
    parser.add_argument("--list", action="store_true", help="list the stages and exit")
    parser.add_argument("--jobs", type=int, default=1 if torch.cuda.is_available() else 2,
                        help="stages at once (default: 2 on a CPU, each with half the cores; 1 on a GPU). With 1, "
                        "each stage prints to the terminal; with more, to runs/demo/logs/<stage>.log")
    args = parser.parse_args()
    if args.jobs < 1:
        raise UserError(f"--jobs {args.jobs}: expected 1 or more")
    plan = stages(args.num)
    if args.list:
        print("\n".join(f"{stage.name:16s} {' '.join(stage.command[1:])}" for stage in plan))
        return 0
    if args.only:
        unknown = sorted(set(args.only) - {s.name for s in plan})
        if unknown:
            raise UserError(f"unknown stage(s) {', '.join(unknown)}; choose from {', '.join(s.name for s in plan)}")
        plan = [s for s in plan if s.name in args.only]
    out = REPO / DEMO_OUT
    out.mkdir(parents=True, exist_ok=True)
    timings_path = out / "timings.json"
    # seconds per stage, kept across runs: a stage skipped now keeps the time it took when it ran
    timings = json.loads(timings_path.read_text()) if timings_path.exists() else {}

    def record(stage: Stage, seconds: float) -> None:
        timings[stage.name] = round(seconds, 1)
        atomic_write_text(timings_path, json.dumps(timings, indent=2) + "\n")

    start = time.perf_counter()
    fork = hasattr(os, "fork") and not torch.cuda.is_available()
    if fork:
        preload()
    run_stages(plan, REPO, args.jobs, out / "logs", fork=fork, on_done=record)
    print(f"[demo] finished in {time.perf_counter() - start:.0f} s; stage timings in {DEMO_OUT}/timings.json")
    return 0


if __name__ == "__main__":
    run_main(main)
