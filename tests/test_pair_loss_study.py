"""experiments/pair_loss_study/pair_loss_study.py end to end on a tiny VAE and predictor trained on the tiny cache,
with the real identity photos (skipped where ../shared/celeba-real is absent): the numbers are meaningless, every
key and the split of the people are checked."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from test_evaluate import run_script, train_predictor, train_vae

pytestmark = pytest.mark.slow
STUDY = "../experiments/pair_loss_study/pair_loss_study.py"


@pytest.fixture(scope="module")
def tiny_runs(tiny_cache, tmp_path_factory):
    root = tmp_path_factory.mktemp("pair_loss_study")
    train_vae(tiny_cache, root / "vae")
    train_predictor(tiny_cache, root / "predictor", seed=0)
    return root / "vae", root / "predictor"


def test_study_fits_both_flows_and_grades_them_on_other_people(tiny_runs, tiny_cache, real_identities, tmp_path):
    vae, predictor = tiny_runs
    code, err = run_script(STUDY, "--run", str(vae), "--photos", str(real_identities), "--predictor", str(predictor),
                           "--exclude-cache", str(tiny_cache), "--pair-people", "6", "--test-people", "3",
                           "--pair-weight", "1.0", "--epochs", "2", "--pair-min-gap", "0", "--min-gap", "0",
                           "--out", str(tmp_path))
    assert code == 0, err[-2000:]
    report = json.loads((tmp_path / "pair_loss_study.json").read_text())
    assert set(report["fits"]) == {"0.0", "1.0"} and set(report["baselines"]) == {"unedited", "reconstruction",
                                                                                 "crossfade"}
    assert len(report["pair_people"]) == 6 and len(report["test_people"]) == 3 and len(report["test_pairs"]) == 3
    assert not set(report["pair_people"]) & set(report["test_people"])
    trained_on = set(np.load(tiny_cache / "identity.npy")[np.load(tiny_cache / "split.npy") == 0].tolist())
    assert not set(report["test_people"]) & trained_on
    assert report["n_cache_latents"] == 2 * 128  # the tiny cache's training split and its mirrors
    for weight, row in report["fits"].items():
        fit = row["latent_flow"]
        assert fit["pair_weight"] == float(weight) and fit["n_pairs"] == report["n_training_pairs"] > 0
        assert ("val_pair_mse" in fit) == (weight != "0.0")
        for metrics in (row["edit"], row["transport_decoded"]):
            assert all(math.isfinite(metrics[k]) for k in ("psnr_face_db", "feature_distance", "yaw_error"))
        assert math.isfinite(row["test_transport_mse"])
    assert report["fits"]["0.0"]["psnr_gain_over_nll_only_db"]["mean"] == 0.0


def test_too_many_test_people_is_a_one_line_error(tiny_runs, tiny_cache, real_identities, tmp_path):
    vae, predictor = tiny_runs
    code, err = run_script(STUDY, "--run", str(vae), "--photos", str(real_identities), "--predictor", str(predictor),
                           "--test-people", "500", "--out", str(tmp_path))
    assert code == 2 and "--test-people 500" in err and "Traceback" not in err
