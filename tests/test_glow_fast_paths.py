"""Glow's training-only fast paths compute the same function as the step-by-step layers.

The training forward folds each level's actnorm + LU 1x1 conv pairs into affine maps assembled in batched ops
(flow.layers.folded_actnorm_invconv).
"""

from __future__ import annotations

import pytest
import torch

from flow.glow import Glow
from flow.layers import affine_channels, folded_actnorm_invconv


def _trained_looking_glow(dtype: torch.dtype, coupling: str = "affine") -> tuple[Glow, torch.Tensor]:
    torch.manual_seed(0)
    glow = Glow(16, levels=2, steps=3, hidden_channels=16, coupling=coupling).to(dtype)
    with torch.no_grad():
        for p in glow.parameters():  # every parameter non-trivial, so every gradient is
            p.add_(torch.randn_like(p) * 0.05)
    y = torch.rand(4, 3, 16, 16, dtype=dtype) - 0.5  # [B, 3, H, W] flow input
    glow.initialize(y)
    return glow, y


def _outputs(glow: Glow, y: torch.Tensor, fold: bool) -> list[torch.Tensor]:
    glow.zero_grad(set_to_none=True)
    _, logdet, prior = glow._forward_flow(y, None, fold=fold)
    (logdet + prior).sum().backward()
    return [logdet.detach(), prior.detach()] + [p.grad for p in glow.parameters()]


@pytest.mark.parametrize("coupling", ["affine", "additive"])
def test_folded_training_forward_matches_step_by_step_layers(coupling: str):
    glow, y = _trained_looking_glow(torch.float64, coupling)
    folded, plain = _outputs(glow, y, fold=True), _outputs(glow, y, fold=False)
    for a, b in zip(folded, plain, strict=True):
        assert a.shape == b.shape
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-10 * float(b.abs().max()))


def test_training_forward_folds_and_encode_does_not():
    glow, y = _trained_looking_glow(torch.float32)
    calls = []
    original = glow.flows[0][0].forward_folded
    glow.flows[0][0].forward_folded = lambda *a, **k: calls.append(1) or original(*a, **k)
    glow.train()
    glow(y)
    assert calls == [1]
    glow.encode(y * 2)
    with torch.no_grad():
        glow(y)
    assert calls == [1]  # encode and no-grad forwards keep the step-by-step layers (bit-stable encode)


def test_folded_affine_is_actnorm_then_invconv():
    glow, y = _trained_looking_glow(torch.float64)
    steps = glow.flows[0]
    weights, biases, log_det_pixel = folded_actnorm_invconv([s.actnorm for s in steps], [s.invconv for s in steps])
    x = torch.randn(2, 12, 8, 8, dtype=torch.float64)
    expected_ld = 0.0
    for k, step in enumerate(steps):
        a, ld1 = step.actnorm(x)
        b, ld2 = step.invconv(a)
        folded = affine_channels(x, weights[k], biases[k])  # [B, C, H, W]
        assert torch.allclose(folded, b, rtol=1e-12, atol=1e-12)
        nhwc = affine_channels(x.contiguous(memory_format=torch.channels_last), weights[k], biases[k])
        assert torch.allclose(nhwc, b, rtol=1e-12, atol=1e-12)
        expected_ld = expected_ld + (ld1 + ld2)[0]
    assert torch.allclose(64 * log_det_pixel, expected_ld, rtol=1e-12)

