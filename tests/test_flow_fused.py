"""The Glow training fast paths compute the same function as the plain modules.

Coupling networks fuse conv + ReLU into one oneDNN call and run the 1x1 convolution's backward as matmuls
(bf16 autocast on the CPU only); apply_if_finite skips the gradient scaling when the clip factor is exactly 1.
"""

from __future__ import annotations

import pytest
import torch

from flow.glow import apply_if_finite
from flow.layers import Coupling, fused_conv_relu_available

needs_mkldnn = pytest.mark.skipif(not fused_conv_relu_available(),
                                  reason="oneDNN's bf16 convolution needs AVX-512 or AVX-NE-CONVERT")


def _coupling_outputs(coupling: Coupling, x: torch.Tensor, fused: bool) -> list[torch.Tensor]:
    coupling.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    if not fused:
        coupling._run_net = coupling.net  # the plain nn.Sequential: conv, ReLU(inplace), conv, ReLU, ZeroConv2d
    try:
        y, logdet = coupling(x, ("cpu", torch.bfloat16))
    finally:
        coupling.__dict__.pop("_run_net", None)
    (y.square().sum() + logdet.sum()).backward()
    return [y.detach(), logdet.detach(), x.grad] + [p.grad for p in coupling.parameters()]


@needs_mkldnn
@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("size", [8, 4])
def test_fused_coupling_matches_plain_modules_under_bf16_autocast(channels_last: bool, size: int):
    torch.manual_seed(0)
    coupling = Coupling(12, 64)
    for p in coupling.net[4].parameters():  # a trained-looking zero conv, so every gradient is non-trivial
        torch.nn.init.normal_(p, std=0.05)
    x = torch.randn(4, 12, size, size)
    if channels_last:
        coupling = coupling.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    fused = _coupling_outputs(coupling, x, fused=True)
    plain = _coupling_outputs(coupling, x, fused=False)
    for a, b in zip(fused, plain, strict=True):
        # forward, logdet and input gradient are bit-identical; weight gradients of the matmul backward may
        # differ in summation order only (bf16 results, so a relative 1e-2 is one rounding step)
        assert a.dtype == b.dtype and a.shape == b.shape
        assert torch.allclose(a.float(), b.float(), rtol=1e-2, atol=1e-2 * float(b.float().abs().max()))
    assert torch.equal(fused[0], plain[0]) and torch.equal(fused[1], plain[1]) and torch.equal(fused[2], plain[2])


def test_fp32_coupling_takes_the_plain_path():
    torch.manual_seed(1)
    coupling = Coupling(12, 16)
    x = torch.randn(2, 12, 4, 4)
    y, logdet = coupling(x)
    assert y.dtype == torch.float32 and logdet.dtype == torch.float32
    h = coupling.net(x[:, :6])
    assert torch.equal(coupling._run_net(x[:, :6]), h)


def test_clipping_only_scales_when_the_norm_exceeds_the_limit():
    torch.manual_seed(2)
    for clip, expect_scaled in ((1e6, False), (1e-3, True)):
        w = torch.nn.Parameter(torch.randn(5, 3, dtype=torch.float64))
        opt = torch.optim.SGD([w], lr=1.0)
        x = torch.randn(7, 5, dtype=torch.float64)
        grad = torch.autograd.grad((x @ w).square().sum(), w)[0]
        before = w.detach().clone()
        applied, norm = apply_if_finite((x @ w).square().sum(), opt, clip=clip)
        assert applied and torch.allclose(norm, grad.norm())
        step = before - w.detach()
        expected = grad * min(clip / (float(grad.norm()) + 1e-6), 1.0)
        assert torch.allclose(step, expected, rtol=1e-9, atol=1e-12)
        assert torch.equal(w.detach(), before - grad) != expect_scaled  # unscaled: exactly the plain SGD step
