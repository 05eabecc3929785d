"""Direction math against known answers: planted directions, closed-form projections, walk invariants, files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from common.cli import UserError
from common.directions import (
    Direction,
    DirectionError,
    fit_boundary,
    is_noise,
    isotropic_null,
    linear_boundary,
    load_direction,
    mean_difference,
    pca_directions,
    project_out,
    regression_direction,
    save_direction,
    select_extremes,
    signed_distance,
    walk,
    walk_absolute,
    walk_relative,
    walk_sphere,
)


def unit(v):
    return v / np.linalg.norm(v)


def random_unit(rng, d):
    return unit(rng.standard_normal(d))


# ---------------------------------------------------------------------------------------------- mean difference


def test_mean_difference_known_answer():
    latents = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0], [2.0, 4.0]])
    labels = np.array([False, False, True, True])
    d = mean_difference(latents, labels)
    # means (1, 0) and (1, 4): difference (0, 4)
    np.testing.assert_allclose(d.vector, [0.0, 1.0])
    assert d.scale == pytest.approx(4.0)
    assert d.method == "mean"
    assert d.metrics["n_positive"] == 2 and d.metrics["n_negative"] == 2


def test_mean_difference_recovers_planted_direction_from_torch_inputs():
    rng = np.random.default_rng(0)
    n = random_unit(rng, 16)
    z = rng.standard_normal((4000, 16))
    labels = z @ n > 0
    d = mean_difference(torch.tensor(z, dtype=torch.float32), torch.tensor(labels))
    assert float(d.vector @ n) > 0.99
    # for N(0,1) split at 0 the class means are at +-sqrt(2/pi)
    assert d.scale == pytest.approx(2 * np.sqrt(2 / np.pi), rel=0.05)


def test_regression_direction_known_answer_and_units():
    # z = (2 s, -s, 0) + noise orthogonal to the score: the slope is (2, -1, 0) per unit of s
    rng = np.random.default_rng(1)
    s = rng.normal(0.0, 0.5, size=5000)  # [N] std 0.5
    z = np.stack([2 * s, -s, rng.standard_normal(5000)], axis=1)  # [N, 3]
    d = regression_direction(z, s)
    np.testing.assert_allclose(d.vector[:2], np.array([2.0, -1.0]) / np.sqrt(5), atol=0.02)
    # strength 1 = one standard deviation of the score: |(2, -1)| * 0.5
    assert d.scale == pytest.approx(np.sqrt(5) * 0.5, rel=0.03)
    assert d.metrics["score_std"] == pytest.approx(0.5, rel=0.03)


def test_regression_direction_bad_scores():
    with pytest.raises(DirectionError, match="scores: all scores are equal"):
        regression_direction(np.ones((4, 2)), np.zeros(4))
    with pytest.raises(DirectionError, match="expected 4 scores"):
        regression_direction(np.ones((4, 2)), np.zeros(3))


def test_mean_difference_needs_both_classes():
    with pytest.raises(DirectionError, match="both positive and negative"):
        mean_difference(np.ones((3, 2)), np.array([1, 1, 1]))
    assert issubclass(DirectionError, UserError)  # scripts print it as a one-line error


# ---------------------------------------------------------------------------------------------- linear boundary


def test_select_extremes_picks_top_and_bottom():
    scores = np.array([5.0, 1.0, 9.0, 3.0, 7.0, 0.0, 8.0, 2.0, 6.0, 4.0])
    keep, labels = select_extremes(scores, 0.2)
    assert sorted(scores[keep[labels]].tolist()) == [8.0, 9.0]
    assert sorted(scores[keep[~labels]].tolist()) == [0.0, 1.0]


@pytest.mark.parametrize("positives", [3, 7])
def test_select_extremes_keeps_binary_labels_at_ratio_half(positives):
    labels01 = np.array([1] * positives + [0] * (10 - positives), dtype=float)
    keep, labels = select_extremes(labels01, 0.5)
    assert len(keep) == 10
    np.testing.assert_array_equal(labels, labels01[keep] > 0.5)


def test_linear_boundary_recovers_planted_normal_and_offset():
    rng = np.random.default_rng(1)
    d = 24
    n = random_unit(rng, d)
    z = rng.standard_normal((6000, d))
    scores = z @ n + 0.3 + 0.05 * rng.standard_normal(6000)  # high scores on the n side
    direction = linear_boundary(z, scores, ratio=0.2, val_fraction=0.3, seed=0)
    assert float(direction.vector @ n) > 0.97
    assert np.linalg.norm(direction.vector) == pytest.approx(1.0)
    m = direction.metrics
    assert m["val_accuracy"] > 0.98 and m["train_accuracy"] > 0.98
    assert m["n_train"] + m["n_val"] == 2 * int(6000 * 0.2)
    assert m["n_val"] == round(0.3 * 2 * int(6000 * 0.2))
    # scale is the std of the projections of all latents on the normal (~1 for N(0, I))
    assert direction.scale == pytest.approx(np.std(z @ direction.vector), rel=1e-6)
    # signed distance = z.n + offset: positive on the high side, zero on the boundary, a true distance
    assert np.all(signed_distance(z[scores > 2], direction) > 0)
    on_boundary = -direction.offset * direction.vector
    assert signed_distance(on_boundary, direction) == pytest.approx(0.0, abs=1e-9)
    assert signed_distance(on_boundary + 2.5 * direction.vector, direction) == pytest.approx(2.5)


def test_linear_boundary_is_reproducible_and_seed_dependent():
    rng = np.random.default_rng(2)
    z = rng.standard_normal((2000, 8))
    scores = z[:, 0] + 0.8 * rng.standard_normal(2000)
    a = linear_boundary(z, scores, ratio=0.3, seed=5)
    b = linear_boundary(z, scores, ratio=0.3, seed=5)
    c = linear_boundary(z, scores, ratio=0.3, seed=6)
    np.testing.assert_array_equal(a.vector, b.vector)
    assert a.metrics == b.metrics
    assert not np.array_equal(a.vector, c.vector)


def test_fit_boundary_svm_agrees_with_logistic():
    rng = np.random.default_rng(3)
    n = random_unit(rng, 10)
    z = rng.standard_normal((3000, 10))
    labels = z @ n > 0
    svm = fit_boundary(z, labels, classifier="svm")
    logistic = fit_boundary(z, labels, classifier="logistic")
    assert float(svm.vector @ n) > 0.98 and float(logistic.vector @ n) > 0.98
    assert svm.metrics["val_accuracy"] > 0.95
    with pytest.raises(DirectionError, match="classifier"):
        fit_boundary(z, labels, classifier="rbf")


def test_linear_boundary_rejects_bad_input():
    with pytest.raises(DirectionError, match=r"ratio"):
        linear_boundary(np.zeros((10, 2)), np.arange(10), ratio=0.7)
    with pytest.raises(DirectionError, match="scores"):
        linear_boundary(np.zeros((10, 2)), np.arange(9))
    with pytest.raises(DirectionError, match=r"\[N, D\]"):
        linear_boundary(np.zeros(10), np.arange(10))


# ---------------------------------------------------------------------------------------------- project_out


def interfacegan_one_condition(d, c):
    new = d - (d @ c) * c
    return new / np.linalg.norm(new)


def interfacegan_two_conditions(d, c1, c2):
    """The closed form of the InterFaceGAN paper: n1 - (a n2 + b n3) from the 2x2 normal equations."""
    d1, d2, c12 = d @ c1, d @ c2, c1 @ c2
    a = (d1 - d2 * c12) / (1 - c12 ** 2)
    b = (d2 - d1 * c12) / (1 - c12 ** 2)
    new = d - a * c1 - b * c2
    return new / np.linalg.norm(new)


@pytest.mark.parametrize("k", [1, 2, 5])
def test_project_out_is_orthogonal_to_every_condition(k):
    rng = np.random.default_rng(k)
    d = random_unit(rng, 32)
    conditions = rng.standard_normal((k, 32)) * rng.uniform(0.5, 3.0, size=(k, 1))  # not unit: must not matter
    conditions[0] += 2 * d  # correlated with the direction, as real attributes are
    out = project_out(d, conditions)
    assert np.linalg.norm(out) == pytest.approx(1.0)
    np.testing.assert_allclose(conditions @ out, 0.0, atol=1e-10)
    assert float(out @ d) > 0  # still points the same way


def test_project_out_matches_interfacegan_closed_forms():
    rng = np.random.default_rng(7)
    d, c1, c2 = (random_unit(rng, 20) for _ in range(3))
    c1 = unit(c1 + 0.5 * d)
    c2 = unit(c2 + 0.4 * c1)
    np.testing.assert_allclose(project_out(d, [c1]), interfacegan_one_condition(d, c1), atol=1e-12)
    np.testing.assert_allclose(project_out(d, c1), interfacegan_one_condition(d, c1), atol=1e-12)
    np.testing.assert_allclose(project_out(d, np.stack([c1, c2])), interfacegan_two_conditions(d, c1, c2),
                               atol=1e-10)


def test_project_out_on_directions_records_keep_and_cosine():
    rng = np.random.default_rng(8)
    d = random_unit(rng, 12)
    c = unit(random_unit(rng, 12) + d)
    smile = Direction(vector=d, scale=2.5, offset=0.1, attribute="Smiling", method="mean", metrics={"x": 1})
    mouth = Direction(vector=c, attribute="Mouth_Slightly_Open", method="mean")
    out = project_out(smile, [mouth])
    assert isinstance(out, Direction)
    assert out.keep == ["Mouth_Slightly_Open"]
    assert out.scale == 2.5 and out.offset == 0.1 and out.attribute == "Smiling" and out.metrics["x"] == 1
    assert out.metrics["cosine_to_unconditioned"] == pytest.approx(float(out.vector @ d))
    assert out.metrics["cosine_to_unconditioned"] < 0.99
    assert float(out.vector @ c) == pytest.approx(0.0, abs=1e-12)
    named = project_out(smile, np.stack([c]), keep_names=["mouth"])
    assert named.keep == ["mouth"]


def test_project_out_accepts_torch_and_returns_torch():
    d = torch.tensor([1.0, 1.0, 0.0])
    out = project_out(d, torch.tensor([[1.0, 0.0, 0.0]]))
    assert isinstance(out, torch.Tensor)
    torch.testing.assert_close(out, torch.tensor([0.0, 1.0, 0.0]))


def test_project_out_errors_for_span_and_degenerate_conditions():
    e1, e2 = np.eye(3)[0], np.eye(3)[1]
    with pytest.raises(DirectionError, match="span"):
        project_out(unit(e1 + e2), np.stack([e1, e2]))
    with pytest.raises(DirectionError, match="linearly dependent"):
        project_out(np.eye(3)[2], np.stack([e1, 2 * e1]))
    with pytest.raises(DirectionError, match="zero vector"):
        project_out(e1, np.stack([e2, np.zeros(3)]))


# ---------------------------------------------------------------------------------------------- PCA


def test_pca_on_isotropic_samples_is_noise():
    rng = np.random.default_rng(9)
    z = rng.standard_normal((2000, 32))
    _, ratios, variance = pca_directions(z, 5)
    null = isotropic_null(2000, 32, 5, seed=1)
    assert np.all(np.diff(ratios) <= 0)
    assert is_noise(ratios, null, tol=0.1).all()
    assert variance[0] == pytest.approx(ratios[0] * np.var(z, axis=0, ddof=1).sum())


def test_pca_recovers_planted_low_rank_structure():
    rng = np.random.default_rng(10)
    basis = np.linalg.qr(rng.standard_normal((32, 2)))[0].T  # [2, 32] orthonormal
    z = rng.standard_normal((2000, 32)) + rng.standard_normal((2000, 2)) * np.array([6.0, 4.0]) @ basis
    components, ratios, _ = pca_directions(z, 3)
    assert abs(components[0] @ basis[0]) > 0.99
    assert abs(components[1] @ basis[1]) > 0.99
    np.testing.assert_allclose(components @ components.T, np.eye(3), atol=1e-10)
    flags = is_noise(ratios, isotropic_null(2000, 32, 3, seed=1))
    assert flags.tolist() == [False, False, True]


def test_isotropic_null_marchenko_pastur_matches_simulation():
    simulated = isotropic_null(4000, 64, 4, seed=0, trials=3)
    approximated = isotropic_null(4000, 64, 4, seed=0, max_elements=1000)  # forces Marchenko-Pastur
    np.testing.assert_allclose(approximated, simulated, rtol=0.08)
    assert approximated[0] > 1 / 64  # the top component of pure noise still beats the uniform share


# ---------------------------------------------------------------------------------------------- walks


def test_walk_relative_shapes_and_values():
    direction = Direction(vector=np.array([0.0, 1.0, 0.0]), scale=2.0)
    z = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    out = walk_relative(z, direction, [-1.0, 0.0, 0.5])
    assert out.shape == (2, 3, 3)
    np.testing.assert_allclose(out[0, 0], [1.0, 0.0, 3.0])
    np.testing.assert_allclose(out[:, 1], z)
    np.testing.assert_allclose(out[1, 2], [0.0, 1.0, 0.0])


def test_walk_absolute_sets_the_signed_distance():
    rng = np.random.default_rng(11)
    direction = Direction(vector=random_unit(rng, 6), scale=1.5, offset=-0.4)
    z = rng.standard_normal((4, 6))
    strengths = np.array([-2.0, 0.0, 3.0])
    out = walk_absolute(z, direction, strengths)
    assert out.shape == (4, 3, 6)
    distances = signed_distance(out.reshape(-1, 6), direction).reshape(4, 3)
    np.testing.assert_allclose(distances, np.tile(strengths * 1.5, (4, 1)), atol=1e-12)
    # only the component along n changes
    residual = (out - z[:, None, :]) - ((out - z[:, None, :]) @ direction.vector)[..., None] * direction.vector
    np.testing.assert_allclose(residual, 0.0, atol=1e-12)


def test_walk_sphere_preserves_norms_and_moves_towards_n():
    rng = np.random.default_rng(12)
    d = 16
    direction = Direction(vector=random_unit(rng, d), scale=1.0)
    z = rng.standard_normal((5, d))
    z *= np.sqrt(d) / np.linalg.norm(z, axis=1, keepdims=True)  # PGGAN's normalised z
    strengths = np.linspace(-3, 3, 7)
    out = walk_sphere(torch.tensor(z, dtype=torch.float32), direction, strengths)
    assert isinstance(out, torch.Tensor) and out.shape == (5, 7, d) and out.dtype == torch.float32
    out = out.double().numpy()
    np.testing.assert_allclose(np.linalg.norm(out, axis=2), np.sqrt(d), rtol=1e-5)
    np.testing.assert_allclose(out[:, 3], z, atol=1e-5)  # a = 0 is the identity
    cosines = out @ direction.vector / np.sqrt(d)  # [5, 7] increase with a
    assert np.all(np.diff(cosines, axis=1) > 0)
    # the arc length travelled is a * scale
    angle = np.arccos(np.clip(np.sum(out[:, 4] * z, axis=1) / d, -1, 1))
    np.testing.assert_allclose(angle * np.sqrt(d), 1.0, rtol=1e-3)
    # z parallel to n: no great circle; unchanged
    parallel = walk_sphere(direction.vector[None] * 4.0, direction, [1.0])
    np.testing.assert_allclose(parallel[0, 0], direction.vector * 4.0)


def test_walk_dispatch_and_shape_errors():
    direction = Direction(vector=np.array([1.0, 0.0]))
    assert walk(np.zeros((1, 2)), direction, [1.0], "relative").shape == (1, 1, 2)
    with pytest.raises(DirectionError, match="walk"):
        walk(np.zeros((1, 2)), direction, [1.0], "spiral")
    with pytest.raises(DirectionError, match=r"\[B, 2\]"):
        walk_relative(np.zeros((1, 3)), direction, [1.0])


# ---------------------------------------------------------------------------------------------- files


def test_save_and_load_direction_round_trip(tmp_path):
    direction = Direction(vector=unit(np.arange(1.0, 6.0)), scale=1.7, offset=-0.2, attribute="Smiling",
                          method="boundary", keep=["Male"],
                          metrics={"val_accuracy": np.float64(0.9), "missing": float("nan")})
    npz, sidecar = save_direction(direction, tmp_path / "directions" / "Smiling-boundary.npz")
    assert npz.name == "Smiling-boundary.npz" and sidecar.name == "Smiling-boundary.json"
    meta = json.loads(sidecar.read_text())
    assert meta["metrics"] == {"val_accuracy": 0.9, "missing": None} and meta["keep"] == ["Male"]
    assert sorted(p.name for p in npz.parent.iterdir()) == [sidecar.name, npz.name]  # no temporary files left
    for name in ("Smiling-boundary", "Smiling-boundary.json", "Smiling-boundary.npz"):
        loaded = load_direction(tmp_path / "directions" / name)
        np.testing.assert_array_equal(loaded.vector, direction.vector)
        assert (loaded.scale, loaded.offset, loaded.attribute, loaded.method, loaded.keep) == (
            1.7, -0.2, "Smiling", "boundary", ["Male"])


def test_load_direction_errors_name_the_file(tmp_path):
    with pytest.raises(DirectionError, match="nothing.npz: direction file not found"):
        load_direction(tmp_path / "nothing")
    save_direction(Direction(vector=np.array([1.0, 0.0])), tmp_path / "d")
    (tmp_path / "d.json").write_text("{\n  broken")
    with pytest.raises(DirectionError, match=r"d.json:2: invalid JSON"):
        load_direction(tmp_path / "d")
