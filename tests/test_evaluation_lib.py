"""Known-answer tests of pipeline/evaluation's pure functions: targets, walk metrics, strengths, --keep parsing,
JSON conversion, slerp and the generated report text, on hand-made arrays and result dicts (no model)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from common.attributes import CELEBA_ATTRIBUTES, attribute_index
from common.cli import UserError
from pipeline.evaluation import (
    JUDGED,
    TARGETS,
    json_ready,
    make_strengths,
    parse_keep_map,
    slerp,
    targets,
    walk_metrics,
    write_report,
)

STRENGTHS = np.array([-2.0, -1.0, 0.0, 1.0, 2.0])


def _result(smile_up: float, smile_down: float, rising: float, reduction: float, grid_error: float | None) -> dict:
    """The keys targets() reads, for one method."""
    keep = {"reduction_percent": {"Mouth_Slightly_Open": reduction}}
    result = {"attributes": {"Smiling": {"success_positive": {"success": smile_up},
                                         "success_negative": {"success": smile_down}, "keep": keep},
                             "pose": {"monotonicity": {"rising_monotone_fraction": rising}}},
              "reconstruction": {}}
    if grid_error is not None:
        result["reconstruction"]["max_abs_error_on_grid"] = grid_error
    return result


def test_targets_pass_and_fail_on_hand_made_results():
    passed = targets(_result(0.95, 0.9, 1.0, 60.0, 0.0))
    assert set(passed) == set(TARGETS)
    assert all(t["status"] == "pass" for t in passed.values())
    assert passed["smiling_success"]["value"] == 0.9  # the worse of the two directions
    failed = targets(_result(1.0, 0.5, 0.8, 10.0, 0.01))
    assert all(t["status"] == "fail" for t in failed.values())
    assert failed["smiling_success"]["value"] == 0.5 and failed["glow_exact"]["value"] == 0.01
    assert targets(_result(1.0, 1.0, 1.0, math.nan, None))["keep_cuts_leakage"]["status"] == "fail"  # nan: no pass
    empty = targets({"attributes": {}, "reconstruction": {}})
    assert all(t == {"status": "n/a", "value": None} for t in empty.values())


def test_walk_metrics_on_a_made_up_monotone_walk():
    n, s = 4, len(STRENGTHS)
    k = attribute_index("Smiling")
    scores = np.full((n, s, len(JUDGED)), 0.5)  # [N, S, 41] every other attribute stays put ...
    scores[:, :, k] = np.linspace(0.1, 0.9, s)  # ... and the smile rises 0.2 per unit strength
    scores[:, :, attribute_index("Young")] = np.linspace(0.5, 0.7, s)  # a leak of 0.1 at the + end
    images = torch.zeros(n, s, 3, 8, 8)  # [N, S, 3, R, R]
    images[:, -1] += 0.5  # only the + end differs from the unedited column
    feats = np.ones((n, s, 6))  # [N, S, Df]
    factors = np.broadcast_to(STRENGTHS[None, :, None] * [1.0, -0.5], (n, s, 2))  # [N, S, F]
    m = walk_metrics(scores, images, feats, STRENGTHS, "Smiling", ["smile", "yaw"], factors)
    assert m["success_positive"]["success"] == 1.0 and m["success_negative"]["success"] == 1.0
    assert m["monotonicity"]["rising_monotone_fraction"] == 1.0
    assert m["monotonicity"]["spearman_mean"] == pytest.approx(1.0)
    assert m["slope"]["mean"] == pytest.approx(0.2)
    np.testing.assert_allclose(m["score_per_strength"]["mean"], np.linspace(0.1, 0.9, s))
    assert m["leakage"]["Smiling"] == pytest.approx(0.4) and m["leakage"]["Young"] == pytest.approx(0.1)
    assert m["leakage"]["Male"] == 0.0 and list(m["leakage"]) == [*CELEBA_ATTRIBUTES, "pose"]
    assert m["content"]["l1"] == pytest.approx(0.25)  # half the pairs (the + end) differ by 0.5
    assert m["content"]["feature_distance"] == 0.0 and "outside_mouth_l1" in m["content"]
    assert m["factor_slopes"] == pytest.approx({"smile": 1.0, "yaw": -0.5})


def test_strengths_always_hold_the_unedited_column():
    np.testing.assert_allclose(make_strengths(-3, 3, 7), [-3, -2, -1, 0, 1, 2, 3])
    np.testing.assert_allclose(make_strengths(-1, 2, 4), [-1, 0, 1, 2])
    np.testing.assert_allclose(make_strengths(-2, 2, 4), [-2, -2 / 3, 0, 2 / 3, 2])  # 0 added


def test_keep_map_parsing_and_its_errors():
    assert parse_keep_map(None, ["Smiling", "pose"]) == {"Smiling": ["Mouth_Slightly_Open"]}
    assert parse_keep_map(["smiling=Male,Young"], ["Smiling"]) == {"Smiling": ["Male", "Young"]}
    assert parse_keep_map(["Smiling=Male"], ["pose"]) == {}  # not edited: nothing to compare
    with pytest.raises(UserError, match="expected ATTRIBUTE=KEPT"):
        parse_keep_map(["Smiling"], ["Smiling"])
    with pytest.raises(UserError, match="cannot hold fixed the attribute being edited"):
        parse_keep_map(["Smiling=Smiling"], ["Smiling"])


def test_json_ready_makes_plain_json_without_inf_or_nan():
    value = {"a": np.array([1.0, np.inf]), 2: (np.float32(0.5), torch.tensor(3)), "b": math.nan, "c": "x"}
    ready = json_ready(value)
    assert ready == {"a": [1.0, None], "2": [0.5, 3], "b": None, "c": "x"}
    json.dumps(ready, allow_nan=False)


def test_slerp_ends_and_norm():
    a, b = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 4.0]])
    path = slerp(a, b, torch.linspace(0, 1, 3))  # [1, 3, 2]
    torch.testing.assert_close(path[0, 0], a[0])
    torch.testing.assert_close(path[0, -1], b[0])
    torch.testing.assert_close(path[0, 1], torch.full((2,), 3.0 / math.sqrt(2)))  # 45 degrees, norm 3 (linear)


def test_report_text_quotes_the_measured_numbers():
    result = _result(0.75, 1.0, 1.0, 60.0, None)
    smile = result["attributes"]["Smiling"]
    smile.update(slope={"mean": 0.01}, leakage={k: 0.0 for k in JUDGED}, content={"l1": 0.1},
                 monotonicity={"monotone_fraction": 1.0, "rising_monotone_fraction": 1.0, "spearman_mean": 1.0},
                 grid="images/vae-Smiling.png", factor_slopes={})
    smile["success_positive"].update(mean_end_score=0.6)
    smile["success_negative"].update(mean_end_score=0.1)
    smile["keep"].update(kept=["Mouth_Slightly_Open"], leakage_without={"Mouth_Slightly_Open": 0.2},
                         leakage_with={"Mouth_Slightly_Open": 0.08}, success_positive={"success": 0.7},
                         cosine_to_unconditioned=0.9)
    del result["attributes"]["pose"]
    result.update(reconstruction={"kind": "posterior mean", "mean_db": 20.0, "n": 4, "exact_fraction": 0.0},
                  sample_quality={"frechet_judge": 2.0, "reference_frechet_train_vs_test": 0.5,
                                  "inception_fid": "skipped (pass --inception WEIGHTS.pth)"})
    result["targets"] = targets(result)
    report = {"command": "python scripts/evaluate.py", "config": {"num": 4, "attributes": ["Smiling"],
                                                                  "fd_images": 8},
              "judge": {"run": "runs/predictor/judge", "factor_names": []}, "notes": ["a note"],
              "methods": {"vae": result}}
    text = write_report(report, [], STRENGTHS)
    assert "- vae: Smiling edit success 75% towards smiling and 100% away from it (fail)." in text
    assert "barely moves the judge's score (slope +0.010" in text  # 0.01 * 2 < 0.2: the direction misses
    assert "(+60%)" in text and "- Note: a note" in text and "4.0x the real-vs-real floor" in text


def test_grid_files_of_runs_named_by_their_folder_stay_in_the_output(tmp_path):
    # two runs of one method are named by their folders; an absolute folder must not escape out/images
    from pipeline.evaluation.metrics import grid_file

    out = tmp_path / "eval"
    for name, expected in (("pggan", "pggan-Smiling.png"), ("/tmp/lazy/gp4", "tmp_lazy_gp4-Smiling.png"),
                           ("runs/pggan/a b", "runs_pggan_a_b-Smiling.png"), ("..", "run-Smiling.png")):
        path = grid_file(out, name, "Smiling")
        assert path == out / "images" / expected and path.resolve().parent == (out / "images").resolve()
