"""The study's conv3x3 is the same function as F.conv2d(padding=1), with exact gradients and double gradients.

    python -m pytest experiments/winograd/check_winograd.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the study's module sits beside this file
import winograd  # noqa: E402


@pytest.mark.parametrize("shape", [(2, 5, 8, 6), (1, 3, 2, 2), (3, 4, 4, 10)])
def test_equals_the_direct_convolution_in_float64(shape):
    torch.manual_seed(0)
    x = torch.randn(*shape, dtype=torch.float64)
    w = torch.randn(7, shape[1], 3, 3, dtype=torch.float64)
    b = torch.randn(7, dtype=torch.float64)
    y = winograd.conv3x3(x, w, b)
    assert y.shape == (shape[0], 7, shape[2], shape[3])
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, F.conv2d(x, w, b, padding=1), rtol=0, atol=1e-12)
    torch.testing.assert_close(winograd.conv3x3(x, w), F.conv2d(x, w, padding=1), rtol=0, atol=1e-12)


def test_float32_error_is_rounding_sized():
    """At PGGAN's width the sums in another order differ from oneDNN's by fp32 rounding, not more."""
    torch.manual_seed(0)
    x = torch.randn(2, 512, 8, 8).contiguous(memory_format=torch.channels_last)
    w = torch.randn(64, 512, 3, 3) / (512 * 9) ** 0.5
    exact = F.conv2d(x.double(), w.double(), padding=1)
    err_w = (winograd.conv3x3(x, w) - exact).abs().max().item()
    err_d = (F.conv2d(x, w, padding=1) - exact).abs().max().item()
    assert err_w < 1e-5 and err_w < 20 * max(err_d, 1e-7)


def test_gradients_and_double_gradients():
    """gradcheck and gradgradcheck: the backward and the gradient penalty's double backward are exact."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(winograd.conv3x3, (x, w, b))
    assert torch.autograd.gradgradcheck(winograd.conv3x3, (x, w, b))


def test_kernel_transform_is_g_g_gt():
    g_mat = torch.tensor([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], dtype=torch.float64)
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    u = winograd.kernel_transform(w)  # [16, C_in, C_out]
    expected = torch.einsum("ia,ocab,jb->ijco", g_mat, w, g_mat)  # [4, 4, C_in, C_out]
    torch.testing.assert_close(u, expected.reshape(16, 2, 3), rtol=0, atol=1e-12)


def test_odd_maps_and_other_kernels_are_refused():
    with pytest.raises(ValueError, match="even H, W"):
        winograd.conv3x3(torch.randn(1, 2, 5, 4), torch.randn(3, 2, 3, 3))
    with pytest.raises(ValueError, match="kernel"):
        winograd.conv3x3(torch.randn(1, 2, 4, 4), torch.randn(3, 2, 5, 5))
