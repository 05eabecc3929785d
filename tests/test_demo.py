"""make demo's plan: every stage is a command that exists, and every shortened training config is valid (a typo in
an override would otherwise show only minutes into a fresh demo)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _listed() -> dict[str, list[str]]:
    out = subprocess.run([sys.executable, "scripts/demo.py", "--list"], cwd=REPO, capture_output=True, text=True,
                         timeout=120, check=True).stdout
    return {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.strip()}


def test_the_plan_trains_five_runs_edits_three_methods_and_evaluates():
    stages = _listed()
    trainings = [name for name, command in stages.items() if Path(command[0]).name.startswith("train_")]
    assert sorted(trainings) == ["glow", "judge", "pggan", "predictor", "vae"]
    for command in stages.values():
        assert (REPO / command[0]).is_file(), command[0]
    edits = [name for name in stages if name.startswith("edit-")]
    for method in ("vae", "glow", "pggan"):  # smile, smile with the mouth kept, pose: each with a GIF
        assert sum(name.startswith(f"edit-{method}-") for name in edits) == 3
        assert any(name.startswith(f"edit-{method}-pose-") for name in edits)
    assert list(stages)[-1] == "evaluate"
    # the judge is the predictor's config with another seed, trained to the same (shortened) budget
    judge, predictor = stages["judge"], stages["predictor"]
    assert judge[judge.index("--config") + 1] == predictor[predictor.index("--config") + 1]
    assert "train.seed=1" in judge and "train.total_images=16000" in judge and "train.total_images=16000" in predictor


def test_every_shortened_training_is_a_valid_config(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name, command in _listed().items():
        if not Path(command[0]).name.startswith("train_"):
            continue
        out = command.index("--out")
        args = command[:out + 1] + [str(tmp_path / name)] + command[out + 2:]
        result = subprocess.run([sys.executable, *args, "--dry-run"], cwd=REPO, capture_output=True, text=True,
                                timeout=300, env=env)
        assert result.returncode == 0, f"{name}: {result.stderr.strip().splitlines()[-1:]}"
        assert not (tmp_path / name / "checkpoints").exists()  # a dry run writes no checkpoint
