"""End to end: tiny VAE, Glow and PGGAN runs plus two tiny predictors on the tiny cache, then scripts/evaluate.py.

Everything runs in this process (a new interpreter costs seconds of imports on a busy machine); the runs are
a few dozen steps, so the numbers are meaningless, but every key, shape and file of the report must be there.
Also: pipeline/registry.py's one-line errors for missing and unknown runs.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from common.attributes import CELEBA_ATTRIBUTES
from common.cli import UserError, run_main

REPO = Path(__file__).resolve().parents[1]
ATTRIBUTES = ["Smiling", "Mouth_Slightly_Open", "pose"]


def run_script(script: str, *args: str) -> tuple[int, str]:
    """Run scripts/<script>'s main() through run_main in this process -> (exit code, stderr)."""
    spec = importlib.util.spec_from_file_location(f"_eval_test_{Path(script).stem}", REPO / "scripts" / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    argv, cwd, err = sys.argv, os.getcwd(), io.StringIO()
    sys.argv = [script, *args]
    os.chdir(REPO)
    try:
        with contextlib.redirect_stderr(err):
            run_main(module.main)
    except SystemExit as exc:
        return int(exc.code or 0), err.getvalue()
    finally:
        sys.argv = argv
        os.chdir(cwd)
    return 0, err.getvalue()


def train_predictor(cache: Path, out: Path, seed: int) -> None:
    code, err = run_script(
        "train_predictor.py", "--config", "configs/predictor/synthetic.yaml", "--out", str(out),
        "--set", f"data.cache={cache}", "--set", "train.device=cpu", "--set", "model.width=8",
        "--set", "model.blocks=[1,1,1,1]", "--set", "train.batch_size=16", "--set", "train.total_images=48",
        "--set", "optim.warmup_images=16", "--set", "eval.val_every_images=48", "--set", "eval.val_images=16",
        "--set", "log.image_every_images=0", "--set", "train.checkpoint_every_images=48",
        "--set", "log.every_images=16", "--set", "log.tensorboard=false", "--set", f"train.seed={seed}")
    assert code == 0, err[-3000:]


def train_vae(cache: Path, out: Path) -> None:
    code, err = run_script(
        "train_vae.py", "--config", "configs/vae/synthetic.yaml", "--out", str(out), "--set", f"data.cache={cache}",
        "--set", "model.widths=[8,16]", "--set", "model.latent_dim=8", "--set", "train.batch_size=32",
        "--set", "train.total_images=96", "--set", "log.every_images=32", "--set", "log.image_every_images=0",
        "--set", "log.tensorboard=false", "--set", "eval.val_every_images=0",
        "--set", "train.checkpoint_every_images=96", "--set", "vae.kl_warmup_images=32", "--set", "train.device=cpu")
    assert code == 0, err[-3000:]


def train_glow(cache: Path, out: Path, levels: int = 2, coupling: str = "affine") -> str | None:
    config = out.parent / f"{out.name}-tiny.yaml"
    config.write_text(f"""
data: {{root: unused, resolution: 32, cache: "{cache}", hflip: false}}
model: {{levels: {levels}, steps: 1, hidden_channels: 8, coupling: {coupling}, n_bits: 5}}
train: {{device: cpu, precision: fp32, batch_size: 16, lr: 1.0e-3, total_images: 32, grad_clip: 50.0,
        checkpoint_every_images: 0}}
log: {{every_images: 16, image_every_images: 0, tensorboard: false}}
glow: {{warmup_images: 16, init_images: 16}}
eval: {{test_every_images: 0, test_images: 16, batch_size: 32, grid_images: 4}}
""")
    code, err = run_script("train_glow.py", "--config", str(config), "--out", str(out))
    return None if code == 0 else err[-2000:]


def train_pggan(cache: Path, out: Path, predictor: Path) -> str | None:
    sets = ["pggan.phase_weights=[1,1,1,1,1,1,1]", "model.latent_dim=16", "model.fmap_base=64", "model.fmap_max=16",
            "model.fmap_min=8", "pggan.batch_sizes=[8,8,8,8]", "train.ema_decay=0.9", "pggan.grid_images=4",
            "log.every_images=16", "train.precision=fp32", "log.image_every_images=0",
            "train.checkpoint_every_images=0", "train.device=cpu", "log.tensorboard=false",
            "train.total_images=56", f"data.cache={cache}", f"edit.predictor={predictor}"]
    args = [a for s in sets for a in ("--set", s)]
    code, err = run_script("train_pggan.py", "--config", "configs/interface_gan/synthetic.yaml", "--out", str(out),
                           *args)
    return None if code == 0 else err[-2000:]


@pytest.fixture(scope="module")
def evaluation(tiny_cache, tmp_path_factory):
    import torch

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("evaluate")
    train_predictor(tiny_cache, root / "predictor", seed=0)
    train_predictor(tiny_cache, root / "judge", seed=1)
    train_vae(tiny_cache, root / "vae")
    runs, problems = [root / "vae"], {}
    for name, train in (("glow", lambda: train_glow(tiny_cache, root / "glow")),
                        ("pggan", lambda: train_pggan(tiny_cache, root / "pggan", root / "predictor"))):
        problem = train()  # the Glow and PGGAN scripts are still being finished: include them only if they run
        if problem is None:
            runs.append(root / name)
        else:
            problems[name] = problem
    out = root / "eval"
    with pytest.MonkeyPatch.context() as patch:  # Glow's convolutional pose flow: a few small epochs here
        patch.setattr("common.editing.CONV_FLOW_EPOCHS", 3)
        patch.setattr("common.editing.CONV_FLOW_HIDDEN", 16)
        code, err = run_script("evaluate.py", "--runs", *map(str, runs), str(root / "missing"), "--judge",
                               str(root / "judge"), "--predictor", str(root / "predictor"), "--num", "4",
                               "--attributes", *ATTRIBUTES, "--steps", "3", "--range", "-2", "2", "--invert", "2",
                               "--inversion-steps", "3", "--inversion-starts", "2", "--samples", "64", "--fd-images", "8", "--grid-rows", "2",
                               "--out", str(out), "--device", "cpu", "--max-train-images", "64")
    assert code == 0, err[-3000:]
    return {"out": out, "runs": runs, "problems": problems, "stderr": err}


def test_metrics_json_has_every_method_attribute_and_shape(evaluation):
    metrics = json.loads((evaluation["out"] / "metrics.json").read_text())
    methods = metrics["methods"]
    assert set(methods) == {run.name for run in evaluation["runs"]}, evaluation["problems"]
    assert metrics["config"]["strengths"] == [-2.0, 0.0, 2.0]
    assert any("missing" in note for note in metrics["notes"])  # skipped with a note, not an error
    assert any("Inception FID skipped" in note for note in metrics["notes"])
    factor_names = metrics["judge"]["factor_names"]
    assert "smile" in factor_names and "yaw" in factor_names
    for result in methods.values():
        assert list(result["attributes"]) == ATTRIBUTES
        matrix = result["leakage_matrix"]
        assert matrix["rows"] == ATTRIBUTES and matrix["columns"] == [*CELEBA_ATTRIBUTES, "pose"]
        values = np.array(matrix["values"], dtype=float)
        assert values.shape == (3, 41) and np.all(values >= 0)
        for entry in result["attributes"].values():
            for side in ("success_positive", "success_negative"):
                assert 0.0 <= entry[side]["success"] <= 1.0 and entry[side]["n"] == 4
            assert 0.0 <= entry["monotonicity"]["monotone_fraction"] <= 1.0
            assert len(entry["score_per_strength"]["mean"]) == 3
            assert entry["content"]["l1"] >= 0 and entry["content"]["feature_distance"] >= 0
            assert set(entry["factor_slopes"]) == set(factor_names)
            assert (evaluation["out"] / entry["grid"]).is_file()
        keep = result["attributes"]["Smiling"]["keep"]
        assert keep["kept"] == ["Mouth_Slightly_Open"]
        assert set(keep["reduction_percent"]) == {"Mouth_Slightly_Open"}
        assert "outside_mouth_l1" in result["attributes"]["Smiling"]["content"]
        assert result["sample_quality"]["frechet_judge"] >= 0
        assert result["sample_quality"]["n_fake"] == 8
        assert result["sample_quality"]["reference_frechet_train_vs_test"] >= 0
        assert set(result["targets"]) == {"smiling_success", "yaw_monotone", "keep_cuts_leakage", "glow_exact"}
        assert result["targets"]["smiling_success"]["status"] in ("pass", "fail")
    vae = methods["vae"]
    assert vae["reconstruction"]["n"] == 4 and vae["reconstruction"]["mean_db"] > 0
    assert vae["targets"]["glow_exact"]["status"] == "n/a"
    if "glow" in methods:  # Glow's inverse is exact: the round trip lands on the n_bits grid exactly
        assert methods["glow"]["reconstruction"]["max_abs_error_on_grid"] == 0
        assert methods["glow"]["targets"]["glow_exact"]["status"] == "pass"
    for name in ("vae", "glow"):  # the turn check: a rendered head turn vs the latent line between its ends
        if name not in methods:
            continue
        turn = methods[name]["turn"]
        assert turn["faces"] == 4 and turn["yaw_degrees"] == [-32.0, -21.3, -10.7, 0.0, 10.7, 21.3, 32.0]
        assert len(turn["psnr_latent_line_db"]) == 7 and len(turn["judge_yaw"]["true"]) == 7
        fade = turn["psnr_crossfade_db"]
        assert fade[0] is None and fade[-1] is None  # the cross-fade's ends are the true end frames (inf PSNR)
        assert 0 < turn["interior_mean_db"]["crossfade"] < 60 and turn["interior_mean_db"]["latent_line"] > 0
        assert turn["ends_mean_db"] > 0 and turn["interior_mean_db"]["reconstruction"] > 0 and (evaluation["out"] / turn["grid"]).is_file()
        shares = turn["path"]["pc_shares"]  # how curved the encoded turn is
        assert len(shares) == 3 and shares[0] >= shares[1] >= shares[2] >= 0 and sum(shares) <= 1 + 1e-6
        assert turn["path"]["chord"] > 0 and turn["path"]["middle_offset"] >= 0
        edits = turn["pose_edits"]  # the pose edits of the frontal frame, against the same true frames
        expected = ["mean", "cflow"]
        assert list(edits["methods"]) == expected and edits["from_frame_degrees"] == 0.0
        for edit in edits["methods"].values():
            assert len(edit["psnr_db"]) == 7 and edit["strengths"][3] == 0.0 and edit["mean_db_other_frames"] > 0
        assert edits["no_edit_mean_db_other_frames"] > 0 and edits["reconstruction_mean_db_other_frames"] > 0
    for name in ("vae", "glow"):
        if name in methods:
            assert methods[name]["attributes"]["pose"]["direction"]["method"] == "cflow"
    if "pggan" in methods:
        assert "turn" not in methods["pggan"]  # inverting the turns' ends is opt-in (--turn-gan)
        assert methods["pggan"]["source"]["kind"] == "samples"
        assert methods["pggan"]["reconstruction"]["n"] == 2
        assert methods["pggan"]["reconstruction"]["steps"] == 3 and methods["pggan"]["reconstruction"]["starts"] == 2


def test_report_mentions_each_method_and_embeds_pictures(evaluation):
    report = (evaluation["out"] / "report.md").read_text()
    metrics = json.loads((evaluation["out"] / "metrics.json").read_text())
    for name in metrics["methods"]:
        assert f"| {name} |" in report and f"- {name}: Smiling edit success" in report
    assert "## Targets" in report and "## Discussion" in report and "Inception FID" in report
    for link in [line.split("](")[1].rstrip(")") for line in report.splitlines() if line.startswith("![")]:
        assert (evaluation["out"] / link).is_file(), link
    assert (evaluation["out"] / "images" / "score_vs_strength.png").is_file()
    # the discussion is generated: the Smiling success it quotes is the measured one
    smile = metrics["methods"]["vae"]["attributes"]["Smiling"]["success_positive"]["success"]
    assert f"vae: Smiling edit success {smile:.0%} towards smiling" in report


def test_registry_errors_name_the_run_and_the_fix(tmp_path, evaluation):
    from pipeline.registry import load_method

    with pytest.raises(UserError, match=r"vae/x: run folder not found; train it first with python "
                                        r"scripts/train_vae.py --config configs/vae/x.yaml"):
        load_method(tmp_path / "vae" / "x", "cpu")
    (tmp_path / "vae" / "y").mkdir(parents=True)
    with pytest.raises(UserError, match="y: no config.yaml; train it first with python scripts/train_vae.py"):
        load_method(tmp_path / "vae" / "y", "cpu")
    (tmp_path / "vae" / "y" / "config.yaml").write_text("method: vea\n")
    with pytest.raises(UserError, match="unknown method 'vea'; choose one of: vae, glow, pggan"):
        load_method(tmp_path / "vae" / "y", "cpu")
    with pytest.raises(UserError, match="predictor judges edits"):
        load_method(evaluation["out"].parent / "judge", "cpu")
    model, find_direction, info = load_method(evaluation["runs"][0], "cpu")
    assert info["method"] == "vae" and info["walk"] == "relative" and info["direction_method"] == "mean"
    direction = find_direction("Smiling", "mean")
    assert direction.dim == model.latent_dim == 8


def test_evaluate_without_any_run_is_a_one_line_error(tmp_path, evaluation):
    code, err = run_script("evaluate.py", "--runs", str(tmp_path / "none"), "--judge",
                           str(evaluation["out"].parent / "judge"), "--out", str(tmp_path / "out"))
    lines = err.strip().splitlines()  # a "note: skipped ..." line per missing run, then the one-line error
    assert code == 2 and lines[-1].startswith("error: no run to evaluate") and "none: run folder not found" in lines[-1]
    code, err = run_script("evaluate.py", "--judge", str(tmp_path / "nojudge"))
    assert code == 2 and "judge predictor run not found" in err


def test_path_shape_tells_a_straight_path_from_a_curved_one():
    import torch

    from pipeline.evaluation.turns import path_shape

    t = torch.linspace(0, 1, 7)
    straight = (t[:, None] * torch.tensor([3.0, 4.0, 0.0]))[None]  # [1, 7, 3], evenly travelled
    shape = path_shape(straight)
    assert np.allclose(shape["pc_shares"], [1, 0, 0], atol=1e-9)
    assert shape["chord"] == pytest.approx(5.0) and shape["middle_offset"] == pytest.approx(0.0, abs=1e-9)
    angle = torch.pi * t  # a half circle of radius 2: chord 4, middle frame 2 off the chord's midpoint
    arc = torch.stack([2 * torch.cos(angle), 2 * torch.sin(angle), torch.zeros(7)], 1)[None]
    shape = path_shape(arc)
    assert shape["chord"] == pytest.approx(4.0) and shape["middle_offset"] == pytest.approx(2.0)
    assert 0.15 < shape["pc_shares"][1] < shape["pc_shares"][0] and shape["pc_shares"][2] == pytest.approx(0, abs=1e-9)
