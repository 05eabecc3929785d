"""The real-face turn check's math (common/pair_turns.py), on arrays with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.directions import Direction
from common.pair_turns import crossfade_to_yaw, crossing, pair_metrics, pick_pairs, walk_to_target


def test_crossing_interpolates_the_first_reach_nearest_zero():
    strengths = np.array([-2.0, -1.0, 0.0, 1.0, 2.0])
    scores = np.array([[-0.4, -0.2, 0.0, 0.2, 0.4],  # linear: target 0.3 at strength 1.5
                       [0.5, 0.1, 0.0, 0.1, 0.5],  # symmetric: 0.3 at -1.5 and 1.5, ties go to the first found
                       [0.0, 0.0, 0.0, 0.0, 0.0]])  # never reaches 0.3
    strength, reached = crossing(scores, strengths, np.array([0.3, 0.3, 0.3]))
    np.testing.assert_allclose(strength[:2], [1.5, -1.5])
    assert reached.tolist() == [True, True, False] and strength[2] in strengths


def test_pick_pairs_takes_each_persons_extremes_and_alternates():
    identity = np.array([1, 1, 1, 2, 2, 3, 3, 4])
    yaw = np.array([0.0, -0.3, 0.2, 0.1, 0.15, -0.2, 0.25, 0.5])
    pairs = pick_pairs(identity, yaw, min_gap=0.2)
    assert pairs.tolist() == [[1, 2], [6, 5]]  # person 2's gap is too small, person 4 has one photo
    assert pick_pairs(identity, yaw, min_gap=0.2, exclude={1}).tolist() == [[5, 6]]
    assert pick_pairs(identity, yaw, min_gap=0.2, max_pairs=1).tolist() == [[1, 2]]  # the wider gap (0.5)


def test_pick_pairs_with_a_max_gap_takes_the_widest_pair_under_it():
    identity = np.array([1, 1, 1, 1, 2, 2])
    yaw = np.array([-0.6, -0.1, 0.3, 0.5, 0.0, 0.9])
    # person 1: -0.6 -> 0.5 (1.1) is too wide; the widest under 0.8 is -0.1 -> 0.5 (0.6); person 2's only gap is 0.9
    assert pick_pairs(identity, yaw, min_gap=0.2, max_gap=0.8).tolist() == [[1, 3]]
    assert pick_pairs(identity, yaw, min_gap=0.2, max_gap=1.0).tolist() == [[0, 2], [5, 4]]  # -0.6 -> 0.3 (0.9)
    assert pick_pairs(identity, yaw, min_gap=0.7, max_gap=0.8).tolist() == []


def test_crossfade_blends_with_the_mirror_to_the_target_yaw():
    images = torch.rand(3, 3, 4, 4) * 2 - 1
    out = crossfade_to_yaw(images, np.array([0.4, 0.4, 0.0]), np.array([0.4, -0.4, 0.3]))
    torch.testing.assert_close(out[0], images[0])  # already there: t = 0
    torch.testing.assert_close(out[1], images[1].flip(-1))  # the opposite yaw: the mirror itself
    torch.testing.assert_close(out[2], images[2])  # a frontal face cannot be turned by its mirror


def test_pair_metrics_face_region_and_features():
    target = torch.zeros(2, 3, 8, 8)
    candidate = target.clone()
    candidate[:, :, 0, :] = 1.0  # the top row lies outside the face box: no effect on the face PSNR
    metrics = pair_metrics(candidate, target, np.zeros((2, 4)), np.ones((2, 4)), np.array([0.1, -0.1]),
                           np.array([0.0, 0.0]))
    assert metrics["psnr_face_db"] == 99.0 and metrics["feature_distance"] == pytest.approx(2.0)
    assert metrics["yaw_error"] == pytest.approx(0.1)
    candidate[:, :, 4, 4] = 1.0  # one of the 4 x 6 face pixels off by half the range: MSE 0.25 / 24 on [0, 1]
    db = pair_metrics(candidate, target, np.zeros((2, 4)), np.zeros((2, 4)), np.zeros(2), np.zeros(2))["psnr_face_db"]
    assert db == pytest.approx(10 * np.log10(96))


def test_walk_to_target_reaches_each_faces_own_target():
    # a linear "model": the score of a latent is its first coordinate, the pose direction is that axis
    direction = Direction(vector=np.array([1.0, 0.0]), scale=0.5)
    latents = torch.tensor([[0.0, 1.0], [0.5, -1.0]])
    result = walk_to_target(latents, direction, "relative", np.array([1.0, -0.5]),
                            decode=lambda z: z, score=lambda z: z[:, 0].numpy())
    np.testing.assert_allclose(result["strength"], [2.0, -2.0], atol=1e-9)
    np.testing.assert_allclose(result["images"][:, 0].numpy(), [1.0, -0.5], atol=1e-6)
    np.testing.assert_allclose(result["images"][:, 1].numpy(), [1.0, -1.0])  # the other coordinate is kept
    assert result["reached"].all() and result["grid_scores"].shape == (2, 17)


def test_training_identities_are_the_train_splits_people(tmp_path):
    from common.cli import UserError
    from common.pair_turns import training_identities

    np.save(tmp_path / "identity.npy", np.array([5, 5, 7, 9, 11]))
    np.save(tmp_path / "split.npy", np.array([0, 0, 1, 0, 2]))  # 0 = train
    assert training_identities(tmp_path) == {5, 9}
    assert training_identities(None) == set()
    with pytest.raises(UserError, match="no identity.npy"):
        training_identities(tmp_path / "elsewhere")
