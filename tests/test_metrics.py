"""Known-answer tests of common/metrics.py: PSNR, walk metrics, leakage, content preservation, Frechet distance."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from common.metrics import (
    MetricInputError,
    box_mask,
    content_preservation,
    edit_success,
    frechet_distance,
    frechet_from_stats,
    leakage_matrix,
    leakage_reduction,
    monotonicity,
    psnr,
    slope,
    slope_per_walk,
    sqrtm_psd,
    summarize_psnr,
)

STRENGTHS = np.array([-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0])


def test_psnr_identical_is_inf_and_known_noise():
    x = torch.rand(3, 3, 8, 8) * 2 - 1
    assert np.all(np.isinf(psnr(x, x)))
    # a constant offset of 0.2 in [-1, 1] units is 0.1 on [0, 1]: MSE 0.01 -> 20 dB
    values = psnr(x, x + 0.2)
    assert values.shape == (3,)
    np.testing.assert_allclose(values, 20.0, atol=1e-9)
    # the one psnr of the project takes reduced-precision tensors too (autocast outputs)
    np.testing.assert_allclose(psnr(x.bfloat16(), (x + 0.2).bfloat16()), 20.0, atol=0.5)
    summary = summarize_psnr(np.array([np.inf, 20.0, 30.0]))
    assert summary["mean_db"] == 25.0 and summary["exact_fraction"] == pytest.approx(1 / 3)
    with pytest.raises(MetricInputError, match="shapes differ"):
        psnr(np.zeros((2, 3, 4, 4)), np.zeros((2, 3, 4, 5)))


def test_edit_success_counts_the_walk_end_on_the_target_side():
    scores = np.array([
        [0.1, 0.2, 0.3, 0.4, 0.6, 0.8, 0.9],   # crosses upward
        [0.1, 0.1, 0.1, 0.2, 0.2, 0.3, 0.4],   # never reaches 0.5
        [0.6, 0.7, 0.8, 0.9, 0.9, 0.9, 0.95],  # already positive
        [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3],   # goes the wrong way
    ])
    up = edit_success(scores, STRENGTHS, target_positive=True)
    assert up["success"] == 0.5 and up["start_fraction"] == 0.5
    assert up["crossed_fraction"] == 0.5  # of the two starting below 0.5, one ended above
    assert up["end_strength"] == 3.0 and up["mean_end_score"] == pytest.approx((0.9 + 0.4 + 0.95 + 0.3) / 4)
    down = edit_success(scores, STRENGTHS, target_positive=False)
    assert down["success"] == 0.5 and down["end_strength"] == -3.0  # rows 0 and 1 end below 0.5
    yaw = edit_success(np.array([[-0.3, 0.0, 0.3]]), [-1, 0, 1], target_positive=True, threshold=0.0)
    assert yaw["success"] == 1.0
    with pytest.raises(MetricInputError, match="strengths"):
        edit_success(scores, STRENGTHS[:3], True)


def test_monotonicity_tolerates_tiny_noise_and_spearman():
    rising = np.linspace(0, 1, 7)
    noisy = rising + np.array([0, 0.004, -0.004, 0.003, 0, -0.002, 0])  # dips of < 0.01
    zigzag = np.array([0.1, 0.9, 0.1, 0.9, 0.1, 0.9, 0.1])
    falling = rising[::-1]
    result = monotonicity(np.stack([rising, noisy, zigzag, falling]))
    assert result["monotone_fraction"] == 0.5 and result["rising_monotone_fraction"] == 0.5
    # rho: 1, 1, ~0 (ties: average ranks), -1
    zig_rho = np.corrcoef(np.arange(7), np.array([2, 5.5, 2, 5.5, 2, 5.5, 2]))[0, 1]
    assert result["spearman_mean"] == pytest.approx((1 + 1 + zig_rho - 1) / 4)
    assert result["decreasing_fraction"] == 0.25
    constant = monotonicity(np.ones((2, 5)))
    assert constant["monotone_fraction"] == 1.0 and math.isnan(constant["spearman_mean"])
    assert constant["rising_monotone_fraction"] == 0.0  # flat walks are monotone but move nothing


def test_slope_is_the_least_squares_fit():
    walks = np.stack([0.1 * STRENGTHS + 0.5, -0.2 * STRENGTHS, 0.3 * STRENGTHS + np.array([0, 1, -1, 0, 1, -1, 0]) * 0])
    np.testing.assert_allclose(slope_per_walk(walks, STRENGTHS), [0.1, -0.2, 0.3])
    result = slope(walks, STRENGTHS)
    assert result["mean"] == pytest.approx(0.2 / 3) and result["median"] == pytest.approx(0.1)
    # symmetric noise around a line does not bias the fit
    noisy = (0.5 * STRENGTHS + np.array([1, -1, 0, 0, 0, -1, 1]) * 0.1)[None]
    assert slope(noisy, STRENGTHS)["mean"] == pytest.approx(0.5)


def test_leakage_matrix_finds_planted_changes():
    rng = np.random.default_rng(0)
    start = rng.uniform(0.2, 0.8, size=(2, 50, 4))  # [E, N, K]
    end = start.copy()
    end[0, :, 0] += 0.3   # edit 0 changes attribute 0 (intended)
    end[0, :, 2] -= 0.1   # ... and leaks into attribute 2
    end[1, :, 1] += rng.choice([-0.2, 0.2], size=50)  # edit 1 moves attribute 1 both ways: |change| = 0.2
    matrix = leakage_matrix(start, end)
    assert matrix.shape == (2, 4)
    np.testing.assert_allclose(matrix, [[0.3, 0, 0.1, 0], [0, 0.2, 0, 0]], atol=1e-12)
    np.testing.assert_allclose(leakage_matrix(start[0], end[0]), matrix[0])
    assert leakage_reduction(0.2, 0.05) == pytest.approx(75.0)
    assert math.isnan(leakage_reduction(0.0, 0.1))


def test_content_preservation_pixels_mask_and_features():
    x0 = np.zeros((2, 3, 4, 4))
    edit = x0.copy()
    edit[:, :, 2:, :] = 0.5  # the bottom half changed by 0.5
    everything = content_preservation(x0, edit)
    assert everything["l1"] == pytest.approx(0.25) and everything["rmse"] == pytest.approx(math.sqrt(0.125))
    top = box_mask(4, 4, (0, 0, 1, 0.5))
    assert top.sum() == 8
    untouched = content_preservation(x0, edit, mask=top)
    assert untouched["l1"] == 0.0 and untouched["rmse"] == 0.0
    bottom = content_preservation(x0, edit, mask=box_mask(4, 4, (0, 0, 1, 0.5), inside=False))
    assert bottom["l1"] == pytest.approx(0.5)
    feats = content_preservation(x0, edit, feats0=np.array([[3.0, 0], [0, 2]]), feats_edit=np.array([[3.0, 4],
                                                                                                      [0, 2]]))
    assert feats["feature_distance"] == pytest.approx(2.0)
    assert feats["feature_distance_relative"] == pytest.approx((4 / 3 + 0) / 2)
    with pytest.raises(MetricInputError, match="mask"):
        content_preservation(x0, edit, mask=np.zeros((4, 4)))


def test_frechet_closed_form_and_gaussian_samples():
    rng = np.random.default_rng(0)
    # diagonal covariances: FD = |dmu|^2 + sum (sqrt(s_a) - sqrt(s_b))^2
    mu_a, mu_b = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    var_a, var_b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
    expected = 5.0 + (1 + 1 + 0)
    assert frechet_from_stats(mu_a, np.diag(var_a), mu_b, np.diag(var_b)) == pytest.approx(expected)
    # non-commuting covariances: tr sqrt(C_a C_b) = sum of sqrt of the eigenvalues of C_a C_b
    m = rng.normal(size=(4, 4))
    n = rng.normal(size=(4, 4))
    ca, cb = m @ m.T + np.eye(4), n @ n.T + 0.5 * np.eye(4)
    cross = np.sqrt(np.linalg.eigvals(ca @ cb).real.clip(0)).sum()
    assert frechet_from_stats(np.zeros(4), ca, np.zeros(4), cb) == pytest.approx(np.trace(ca + cb) - 2 * cross)
    root = sqrtm_psd(ca)
    np.testing.assert_allclose(root @ root, ca, atol=1e-10)
    # samples of two Gaussians approach the closed form; identical sets give 0
    a = rng.normal(size=(20000, 3)) * np.sqrt(var_a) + mu_a
    b = rng.normal(size=(20000, 3)) * np.sqrt(var_b) + mu_b
    assert frechet_distance(a, b) == pytest.approx(expected, rel=0.05)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(MetricInputError, match="widths differ"):
        frechet_distance(a, b[:, :2])
