"""The README's first command (`make demo`): the whole project on the synthetic CelebA-format set, in minutes.

Stages run in order, each skipped when its output is complete (an interrupted training resumes). Every stage is
an ordinary command, printed before it runs. The trainings are shorter than configs/*/synthetic.yaml (``SHORT``:
what each cut costs is in docs/results.md, "The demo's budget"); ``make evaluate`` is the full evaluation.
    python scripts/demo.py [--num 6000] [--only STAGE ...] [--list]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from common.checkpoint import atomic_write_text
from common.cli import UserError, run_main
from pipeline.registry import POSE_METHODS

REPO = Path(__file__).resolve().parents[1]

DATA_ROOT, RESOLUTION, DEMO_OUT = "data/synthetic", 32, "runs/demo"
CACHE = f"data/cache/synthetic_{RESOLUTION}"
# Overrides of the synthetic configs for the demo: a quarter to a half of each full run.
SHORT = {"predictor": ("train.total_images=16000", "optim.warmup_images=1000", "eval.val_every_images=8000"),
         "vae": ("train.total_images=40000", "vae.kl_warmup_images=10000", "eval.val_every_images=40000"),
         "glow": ("train.total_images=12000", "eval.test_every_images=12000"),
         "pggan": ("train.total_images=24000", "edit.samples=6000")}
POSE_IMAGES = 2000  # encoded training images the pose cflow is fitted on (the edit scripts' default: 20000)


@dataclass
class Stage:
    name: str
    command: list[str]
    done_marker: str  # a file that exists only when the stage finished
    resumable_dir: str | None = None  # a run folder: resume it if it exists but is incomplete


def python(*args: str) -> list[str]:
    return [sys.executable, *args]


def train_stage(name: str, script: str, config: str, run: str, extra: tuple[str, ...] = ()) -> Stage:
    method = "predictor" if "predictor" in script else name
    overrides = [item for value in SHORT[method] for item in ("--set", value)]
    return Stage(name, python(script, "--config", config, "--out", run, *overrides, *extra), f"{run}/metrics.json",
                 run)


def stages(num: int) -> list[Stage]:
    return [
        Stage("synthetic", python("scripts/make_synthetic_celeba.py", "--out", DATA_ROOT, "--num", str(num),
                                  "--seed", "0"), f"{DATA_ROOT}/list_attr_celeba.txt"),
        Stage("prepare", python("scripts/prepare_data.py", "--root", DATA_ROOT, "--resolution", str(RESOLUTION)),
              f"{CACHE}/manifest.json"),
        Stage("contact-sheet", python("scripts/contact_sheet.py", "--cache", CACHE, "--out",
                                      f"{DEMO_OUT}/synthetic_samples.png"), f"{DEMO_OUT}/synthetic_samples.png"),
        train_stage("predictor", "scripts/train_predictor.py", "configs/predictor/synthetic.yaml",
                    "runs/predictor/synthetic"),
        # the judge: a second predictor with another seed, so evaluation does not grade directions with the
        # same network that found them
        train_stage("judge", "scripts/train_predictor.py", "configs/predictor/synthetic.yaml",
                    "runs/predictor/synthetic-judge", ("--set", "train.seed=1")),
        train_stage("vae", "scripts/train_vae.py", "configs/vae/synthetic.yaml", "runs/vae/synthetic"),
        train_stage("glow", "scripts/train_glow.py", "configs/flow/synthetic.yaml", "runs/glow/synthetic"),
        train_stage("pggan", "scripts/train_pggan.py", "configs/interface_gan/synthetic.yaml", "runs/pggan/synthetic"),
        *edit_stages("vae", "scripts/edit_vae.py", "runs/vae/synthetic", "mean"),
        *edit_stages("glow", "scripts/edit_glow.py", "runs/glow/synthetic", "mean"),
        *edit_stages("pggan", "scripts/edit_interface_gan.py", "runs/pggan/synthetic", "boundary"),
        # a short evaluation: 16 faces, smile and pose, a small Frechet distance, two rendered turns
        Stage("evaluate", python("scripts/evaluate.py", "--num", "16", "--attributes", "Smiling", "pose",
                                 "--fd-images", "200", "--turn-faces", "2", "--invert", "2", "--out",
                                 "runs/evaluation-short"), "runs/evaluation-short/report.md"),
    ]


def edit_stages(name: str, script: str, run: str, method: str) -> list[Stage]:
    """Grids and GIFs for one method from the script's default source (encoded test images; random samples for
    the GAN): smile, smile with the mouth kept, and pose (registry.POSE_METHODS: the VAE and Glow turn heads with
    cflow, fitted on POSE_IMAGES training images)."""
    out, result = f"{run}/edits", []
    for attribute, keep in (("Smiling", ()), ("Smiling", ("--keep", "Mouth_Slightly_Open")), ("pose", ())):
        how = POSE_METHODS.get(name, method) if attribute == "pose" else method
        fit = ("--max-train-images", str(POSE_IMAGES)) if how == "cflow" else ()
        stem = f"{attribute}{'-keep-' + keep[1] if keep else ''}-{how}"
        command = python(script, "--run", run, "--attribute", attribute, *keep, *fit, "--method", how, "--out", out)
        result.append(Stage(f"edit-{name}-{stem}", command, f"{out}/{stem}.json"))
    return result


def run_stage(stage: Stage) -> float:
    """Run one stage unless it is already complete; returns the seconds it took (0 when skipped)."""
    if (REPO / stage.done_marker).exists():
        print(f"[demo] {stage.name}: already done ({stage.done_marker})", flush=True)
        return 0.0
    command = list(stage.command)
    if stage.resumable_dir and (REPO / stage.resumable_dir / "checkpoints" / "last.pt").exists():
        command.append("--resume")
    elif stage.resumable_dir and (REPO / stage.resumable_dir).exists():
        command.append("--overwrite")  # a folder without a checkpoint holds nothing worth keeping
    shown = " ".join(c if c != sys.executable else "python" for c in command)
    print(f"[demo] {stage.name}: {shown}", flush=True)
    start = time.perf_counter()
    result = subprocess.run(command, cwd=REPO)
    if result.returncode != 0:
        raise UserError(f"demo stage '{stage.name}' failed (exit code {result.returncode}): {shown}")
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num", type=int, default=6000, help="synthetic images to generate (default 6000)")
    parser.add_argument("--only", nargs="+", help="run only these stages (see --list)")
    parser.add_argument("--list", action="store_true", help="list the stages and exit")
    args = parser.parse_args()
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
    start = time.perf_counter()
    for stage in plan:
        seconds = run_stage(stage)
        if seconds:
            timings[stage.name] = round(seconds, 1)
            atomic_write_text(timings_path, json.dumps(timings, indent=2) + "\n")
    print(f"[demo] finished in {time.perf_counter() - start:.0f} s; stage timings in {DEMO_OUT}/timings.json")
    return 0


if __name__ == "__main__":
    run_main(main)
