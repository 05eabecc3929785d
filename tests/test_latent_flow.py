"""The conditional latent flow (common/latent_flow.py) and its place in the direction files and walks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.directions import Direction, DirectionError, load_direction, project_out, save_direction, walk
from common.latent_flow import ConditionalLatentFlow, LatentFlowError, fit_latent_flow


def perturbed_flow(dim: int = 6, seed: int = 0, shape=None) -> ConditionalLatentFlow:
    """A float64 flow whose couplings are far from the identity (random last layers)."""
    torch.manual_seed(seed)
    flow = ConditionalLatentFlow(dim, cond_dim=1, blocks=4, hidden=16, seed=seed, shape=shape).double()
    for coupling in flow.couplings:
        torch.nn.init.normal_((coupling.net[-1] if shape is None else coupling.net.layers[-1]).weight, std=0.3)
    return flow.eval()


def test_untrained_flow_is_the_identity_and_couplings_invert():
    z, c = torch.randn(5, 6, dtype=torch.float64), torch.randn(5, 1, dtype=torch.float64)
    identity = ConditionalLatentFlow(6, blocks=3, hidden=8).double()
    assert torch.allclose(identity.transport(z, c, c + 3), z, atol=1e-12)
    flow = perturbed_flow()
    u, _ = flow.to_base(z, c)
    assert not torch.allclose(u, z, atol=1e-2)  # really non-linear
    assert torch.allclose(flow.from_base(u, c), z, atol=1e-10)
    moved = flow.transport(z, c, c + 1)
    assert torch.allclose(flow.transport(moved, c + 1, c), z, atol=1e-10)


@pytest.mark.parametrize("shape", [None, (2, 2, 2)], ids=["dense", "conv"])
def test_log_prob_matches_the_brute_force_jacobian(shape):
    dim = 4 if shape is None else 8
    flow = perturbed_flow(dim=dim, shape=shape)
    z, c = torch.randn(3, dim, dtype=torch.float64), torch.randn(3, 1, dtype=torch.float64)
    for i in range(3):
        ci = c[i:i + 1]
        jac = torch.autograd.functional.jacobian(lambda v, ci=ci: flow.to_base(v[None], ci)[0][0], z[i])  # [D, D]
        u = flow.to_base(z[i:i + 1], c[i:i + 1])[0][0]
        expected = -0.5 * (u ** 2).sum() - dim / 2 * np.log(2 * np.pi) + torch.linalg.slogdet(jac)[1]
        assert float(flow.log_prob(z[i:i + 1], c[i:i + 1])[0].detach()) == pytest.approx(float(expected), abs=1e-9)


def test_convolutional_flow_masks_whole_channels_and_inverts():
    shape = (4, 3, 2)  # C, H, W
    identity = ConditionalLatentFlow(24, blocks=3, hidden=8, shape=shape).double()
    z, c = torch.randn(5, 24, dtype=torch.float64), torch.randn(5, 1, dtype=torch.float64)
    assert torch.allclose(identity.transport(z, c, c + 3), z, atol=1e-12)
    flow = perturbed_flow(dim=24, shape=shape)
    for coupling in flow.couplings:  # a channel is masked at every position or at none
        per_channel = coupling.mask.reshape(4, 6)
        assert torch.equal(per_channel, per_channel[:, :1].expand(4, 6)) and per_channel[:, 0].sum() == 2
    u, _ = flow.to_base(z, c)
    assert not torch.allclose(u, z, atol=1e-2)
    assert torch.allclose(flow.from_base(u, c), z, atol=1e-10)
    dense = ConditionalLatentFlow(768, blocks=1, hidden=128)  # a Glow top level, 48 x 4 x 4
    conv = ConditionalLatentFlow(768, blocks=1, hidden=128, shape=(48, 4, 4))
    assert sum(p.numel() for p in conv.parameters()) < 0.7 * sum(p.numel() for p in dense.parameters())
    with pytest.raises(LatentFlowError, match=r"shape \(4, 3, 3\) is not"):
        ConditionalLatentFlow(24, shape=(4, 3, 3))


def curved_world(n: int, seed: int):
    """Latents whose 'pose' y moves each point along an arc of its own radius (a curve, not a line)."""
    rng = np.random.default_rng(seed)
    y = rng.uniform(-1, 1, n)
    radius = rng.uniform(1.0, 2.0, n)
    rest = rng.normal(0, 0.3, (n, 3))

    def latents(yy, r, other):
        angle = 1.3 * yy  # +-75 degrees of arc
        return np.column_stack([r * np.cos(angle), r * np.sin(angle), other])

    return latents, y, radius, rest


def test_fitted_flow_follows_a_curved_attribute_where_a_straight_walk_cannot():
    latents, y, radius, rest = curved_world(4000, seed=0)
    flow, metrics = fit_latent_flow(latents(y, radius, rest), y, blocks=6, hidden=64, epochs=40, seed=0)
    assert metrics["val_nll_per_dim"] < metrics["train_nll_per_dim"] + 0.2 and metrics["best_epoch"] >= 1
    # new points, moved from y0 to y1: the flow's transport against the truth and against a straight line
    _, y0, r, other = curved_world(300, seed=1)
    y1 = np.clip(y0 + 0.6, -1, 1)
    start, truth = latents(y0, r, other), latents(y1, r, other)
    moved = flow.transport(torch.as_tensor(start), torch.as_tensor(y0), torch.as_tensor(y1)).numpy()
    z_all = latents(y, radius, rest)
    slope = np.linalg.lstsq(np.column_stack([y, np.ones_like(y)]), z_all, rcond=None)[0][0]  # [D] per unit of y
    straight = start + (y1 - y0)[:, None] * slope[None]
    flow_error = np.linalg.norm(moved - truth, axis=1).mean()
    line_error = np.linalg.norm(straight - truth, axis=1).mean()
    assert flow_error < 0.5 * line_error, (flow_error, line_error)
    assert metrics["readout_r2"][0] > 0.8


def test_walk_is_exact_at_zero_and_saturates_outside_the_training_range():
    latents, y, radius, rest = curved_world(600, seed=2)
    flow, _ = fit_latent_flow(latents(y, radius, rest), y, blocks=2, hidden=16, epochs=3, seed=0)
    z = latents(y[:4], radius[:4], rest[:4])
    out = flow.walk(z, np.array([-50.0, -1.0, 0.0, 1.0, 50.0]))
    assert isinstance(out, np.ndarray) and out.shape == (4, 5, 5)
    assert np.array_equal(out[:, 2], z)
    again = flow.walk(z, np.array([-80.0, 80.0]))
    assert np.allclose(again[:, 0], out[:, 0]) and np.allclose(again[:, 1], out[:, 4])  # clipped targets
    assert float(flow.c_high[0]) <= 1.0 and float(flow.c_low[0]) >= -1.0
    as_torch = flow.walk(torch.as_tensor(z, dtype=torch.float32), [0.0, 1.0])
    assert as_torch.dtype == torch.float32 and torch.equal(as_torch[:, 0], torch.as_tensor(z, dtype=torch.float32))


def test_direction_files_keep_the_flow_and_walk_uses_it(tmp_path):
    latents, y, radius, rest = curved_world(400, seed=3)
    flow, metrics = fit_latent_flow(latents(y, radius, rest), y, blocks=2, hidden=16, epochs=2, seed=0)
    direction = Direction(vector=np.eye(5)[1], scale=0.7, attribute="pose", method="cflow", transport=flow,
                          metrics={"latent_flow": metrics})
    save_direction(direction, tmp_path / "pose-cflow")
    loaded = load_direction(tmp_path / "pose-cflow")
    z = latents(y[:3], radius[:3], rest[:3])
    strengths = np.array([-1.0, 0.0, 2.0])
    assert np.allclose(walk(z, loaded, strengths), flow.walk(z, strengths), atol=1e-6)
    assert not np.allclose(walk(z, loaded, strengths), z[:, None] + 0.7 * strengths[None, :, None] * np.eye(5)[1])
    with pytest.raises(DirectionError, match="latent flow, not a vector"):
        project_out(loaded, [Direction(vector=np.eye(5)[0])])
    np.savez(tmp_path / "pose-cflow.npz", vector=np.eye(5)[1])  # the weights lost, the JSON still names them
    with pytest.raises(DirectionError, match="no 'transport.\\*' arrays"):
        load_direction(tmp_path / "pose-cflow")


def test_fit_rejects_bad_input():
    with pytest.raises(LatentFlowError, match="at least 20"):
        fit_latent_flow(np.zeros((5, 4)), np.zeros(5))
    with pytest.raises(LatentFlowError, match="one condition row per latent"):
        fit_latent_flow(np.zeros((30, 4)), np.zeros(20))
    with pytest.raises(LatentFlowError, match=r"latents \[B, 4\]"):
        ConditionalLatentFlow(4).to_base(torch.zeros(2, 3), torch.zeros(2, 1))


def test_a_flow_on_part_of_the_latents_edits_only_that_part_and_is_saved_with_it(tmp_path):
    latents, y, radius, rest = curved_world(400, seed=4)
    rng = np.random.default_rng(0)
    whole = np.column_stack([rng.normal(size=(400, 3)), latents(y, radius, rest), rng.normal(size=(400, 1))])
    index = np.arange(3, 9)  # the curved world and one noise dimension, as [2, 3, 1] maps
    flow, metrics = fit_latent_flow(whole, y, blocks=2, hidden=8, epochs=2, seed=0, shape=(2, 3, 1), index=index)
    assert flow.config()["shape"] == [2, 3, 1] and flow.config()["full_dim"] == 9 and flow.dim == 6
    assert metrics["readout_r2"][0] > 0.8  # y read out of the part
    strengths = np.array([-1.0, 0.0, 1.5])
    out = flow.walk(whole[:4], strengths)  # [4, 3, 9]
    assert out.shape == (4, 3, 9) and np.array_equal(out[:, 1], whole[:4])
    kept = np.setdiff1d(np.arange(9), index)
    assert np.array_equal(out[:, :, kept], np.repeat(whole[:4, None, kept], 3, axis=1))  # outside: untouched
    assert np.abs(out[:, 2, index] - whole[:4, index]).max() > 1e-3  # inside: moved
    direction = Direction(vector=np.eye(9)[4], attribute="pose", method="cflow", transport=flow)
    save_direction(direction, tmp_path / "pose-cflow")
    loaded = load_direction(tmp_path / "pose-cflow")
    assert loaded.transport.index.dtype == torch.int64
    assert np.allclose(walk(whole[:4], loaded, strengths), out, atol=1e-6)
    with pytest.raises(LatentFlowError, match=r"latents \[B, 9\]"):
        flow.walk(whole[:4, :6], strengths)
    with pytest.raises(LatentFlowError, match="index must hold"):
        fit_latent_flow(whole, y, index=[3, 12])


def turning_world(n: int, seed: int, dim: int = 4, turn: float = 1.2):
    """Faces v ~ N(0, I) whose 'pose' y rotates each pair of dimensions by turn * y: p(z | y) = N(0, I) at every
    y, so the likelihood is the same for every flow that rotates with y (the identity among them) and only pairs
    of one face under two poses say which rotation it is. -> (latents(v, y), faces v [n, D], rng)."""
    rng = np.random.default_rng(seed)

    def latents(v, y):
        angle = turn * np.asarray(y)[:, None]  # [n, 1]
        even, odd = v[:, 0::2], v[:, 1::2]
        out = np.empty_like(v)
        out[:, 0::2] = np.cos(angle) * even - np.sin(angle) * odd
        out[:, 1::2] = np.sin(angle) * even + np.cos(angle) * odd
        return out

    return latents, rng.normal(size=(n, dim)), rng


def test_a_fit_without_pairs_is_the_maximum_likelihood_fit_bit_for_bit():
    latents, y, radius, rest = curved_world(300, seed=5)
    z = latents(y, radius, rest)
    pairs = (z[:20], y[:20], z[20:40], y[20:40])
    fits = [fit_latent_flow(z, y, blocks=2, hidden=8, epochs=3, batch_size=64, seed=1, **extra)
            for extra in ({}, {"pairs": None, "pair_weight": 0.0}, {"pairs": pairs, "pair_weight": 0.0})]
    reference = fits[0][0].state_dict()
    for flow, metrics in fits[1:]:
        assert all(torch.equal(reference[k], v) for k, v in flow.state_dict().items())
        assert metrics["val_nll_per_dim"] == fits[0][1]["val_nll_per_dim"]
        assert metrics["best_epoch"] == fits[0][1]["best_epoch"]
    assert "pair_mse" not in fits[1][1] and fits[2][1]["pair_mse"] > 0 and fits[2][1]["n_pairs"] == 20


def test_the_pair_loss_teaches_the_flow_which_latent_is_the_same_face():
    latents, faces, rng = turning_world(1500, seed=0)
    y = rng.uniform(-1, 1, len(faces))
    paired, pair_rng = turning_world(300, seed=1)[1:]
    y_a, y_b = pair_rng.uniform(-1, 1, 300), pair_rng.uniform(-1, 1, 300)
    pairs = (latents(paired, y_a), y_a, latents(paired, y_b), y_b)
    held_out, test_rng = turning_world(200, seed=2)[1:]  # other faces
    t_a, t_b = test_rng.uniform(-1, 1, 200), test_rng.uniform(-1, 1, 200)
    start, truth = latents(held_out, t_a), latents(held_out, t_b)
    errors, fits = [], []
    for weight in (0.0, 1.0):
        flow, metrics = fit_latent_flow(latents(faces, y), y, blocks=6, hidden=32, epochs=20, batch_size=128,
                                        seed=0, patience=100, pairs=pairs, pair_weight=weight)
        moved = flow.transport(torch.as_tensor(start), torch.as_tensor(t_a), torch.as_tensor(t_b)).numpy()
        errors.append(float(((moved - truth) ** 2).mean()))
        fits.append(metrics)
    unmoved = float(((start - truth) ** 2).mean())
    assert errors[0] > 0.8 * unmoved, (errors, unmoved)  # likelihood alone: about the identity
    assert errors[1] < 0.5 * errors[0], errors  # with the pairs: most of the turn, on faces it never saw
    assert fits[1]["pair_mse"] < 0.5 * fits[0]["pair_mse"] and "val_pair_mse" in fits[1]
    assert fits[1]["val_nll_per_dim"] < fits[0]["val_nll_per_dim"] + 0.1  # at little cost in likelihood


def test_pairs_are_checked_and_follow_the_flow_onto_part_of_the_latents():
    rng = np.random.default_rng(0)
    z, y = rng.normal(size=(200, 5)), rng.uniform(-1, 1, 200)
    with pytest.raises(LatentFlowError, match="needs pairs"):
        fit_latent_flow(z, y, pair_weight=1.0)
    with pytest.raises(LatentFlowError, match=r"pairs of latents \[P, 5\]"):
        fit_latent_flow(z, y, pairs=(z[:4, :3], y[:4], z[4:8, :3], y[4:8]), pair_weight=1.0)
    with pytest.raises(LatentFlowError, match="a tuple"):
        fit_latent_flow(z, y, pairs=(z[:4], y[:4]), pair_weight=1.0)
    with pytest.raises(LatentFlowError, match="non-finite"):
        fit_latent_flow(z, y, pairs=(z[:4] * np.nan, y[:4], z[4:8], y[4:8]), pair_weight=1.0)
    flow, metrics = fit_latent_flow(z, y, blocks=2, hidden=8, epochs=2, seed=0, shape=(2, 2, 1), index=[0, 1, 3, 4],
                                    pairs=(z[:30], y[:30], z[30:60], y[30:60]), pair_weight=1.0)
    assert flow.dim == 4 and metrics["n_pairs"] == 30 and metrics["n_val_pairs"] == 3
    assert np.isfinite(metrics["pair_mse"]) and np.isfinite(metrics["train_pair_mse"])
