"""experiments/glow_pose_study/glow_pose_study.py on a tiny 3-level Glow trained on the tiny synthetic cache: rows, invariants, errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from test_evaluate import run_script, train_glow

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def glow_run(tiny_cache, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pose_study")
    problem = train_glow(tiny_cache, root / "glow", levels=3, coupling="additive")
    assert problem is None, problem
    return root / "glow"


def test_study_writes_every_row_with_consistent_numbers(glow_run, tmp_path):
    out = tmp_path / "study.json"
    code, err = run_script("../experiments/glow_pose_study/glow_pose_study.py", "--run", str(glow_run), "--faces", "2", "--max-images", "64",
                           "--flow", "top:8", "lv12:conv", "--hidden", "8", "--epochs", "2", "--out", str(out))
    assert code == 0, err[-2000:]
    result = json.loads(out.read_text())
    rows = result["psnr_db_non_frontal"]
    expected = {"none", "cross-fade (inner frames)", "straight", "oracle upper two levels swapped in", "flow top:8", "flow lv12:conv", *(
        f"oracle level {i} swapped in" for i in range(3)), *(
        f"oracle displacement on top {k} components" for k in (64, 128, 256))}
    assert set(rows) == expected
    assert all(math.isfinite(v) and 5 < v < 60 for v in rows.values())
    assert result["latents"] == 2 * 64  # 64 training images and their mirrors
    assert result["faces"] == 2 and len(result["target_yaw"]) == result["frames"]
    shares = [result["displacement_share_on_top_components"][k] for k in ("64", "128", "256")]
    assert all(0 <= s <= 1 + 1e-9 for s in shares) and shares == sorted(shares)  # more components hold more
    assert set(result["latent_flow_fits"]) == {"flow top:8", "flow lv12:conv"}
    from PIL import Image

    with Image.open(out.with_suffix(".png")) as picture:  # 8 rows (2 faces x true turn, straight, 2 flows), 7 frames
        assert picture.height > picture.width > 0


@pytest.mark.parametrize("args, message", [
    (["--flow", "middle:8"], "expected PART:K"),
    (["--flow", "top:100000"], "expected PART:K"),
    (["--epochs", "0"], "--epochs >= 1"),
])
def test_bad_arguments_are_one_line_errors(glow_run, args, message):
    code, err = run_script("../experiments/glow_pose_study/glow_pose_study.py", "--run", str(glow_run), *args)
    assert code == 2 and message in err and "Traceback" not in err


def test_a_folder_without_a_glow_checkpoint_is_a_one_line_error(tmp_path):
    code, err = run_script("../experiments/glow_pose_study/glow_pose_study.py", "--run", str(tmp_path))
    assert code == 2 and "not a Glow run folder" in err and "Traceback" not in err


@pytest.mark.parametrize("condition, extra", [("colour", 6), ("factors", 20)])
def test_flows_conditioned_on_more_than_yaw(glow_run, tmp_path, condition, extra):
    out = tmp_path / "study.json"
    code, err = run_script("../experiments/glow_pose_study/glow_pose_study.py", "--run", str(glow_run), "--faces", "1", "--max-images", "64",
                           "--flow", "top:8", "--hidden", "8", "--epochs", "1", "--condition", condition,
                           "--out", str(out))
    assert code == 0, err[-2000:]
    result = json.loads(out.read_text())
    names = result["flow_conditions"]
    assert names[0] == "yaw" and len(names) == 1 + extra and "yaw" not in names[1:]
    label = f"flow top:8 | {condition}"
    assert label in result["psnr_db_non_frontal"] and math.isfinite(result["psnr_db_non_frontal"][label])
    assert len(result["latent_flow_fits"][label]["readout_r2"]) == len(names)  # one read-out per condition


def test_colour_stats_are_region_means_and_mirror_invariant():

    import importlib.util

    import numpy as np

    path = Path(__file__).resolve().parents[1] / "experiments" / "glow_pose_study" / "glow_pose_study.py"
    spec = importlib.util.spec_from_file_location("_glow_pose_study", path)
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    colour_stats = study.colour_stats

    images = np.zeros((2, 32, 32, 3), dtype=np.uint8)
    images[0] = 255  # white everywhere
    images[1, :, :, 0] = 51  # red channel 0.2 everywhere ...
    images[1, 8:24, 8:24, 1] = 255  # ... and a green centre square (the central half exactly)
    images[1, :, :16, 2] = 255  # blue on the left half only: breaks the mirror symmetry of the raw pixels
    stats = colour_stats(images)
    assert stats.shape == (2, 6)
    np.testing.assert_allclose(stats[0], 1.0)
    np.testing.assert_allclose(stats[1], [0.2, 1.0, 0.5, 0.2, 0.0, 0.5])  # centre RGB, border RGB
    np.testing.assert_allclose(colour_stats(images[:, :, ::-1]), stats)  # a mirror keeps them
