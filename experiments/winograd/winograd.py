"""A 3x3 'same' convolution by Winograd's minimal filtering F(2x2, 3x3): the same function in 2.25x fewer multiplies.

Each 2x2 block of outputs is ``A^T [(G g G^T) * (B^T d B)] A`` for the 4x4 input tile ``d`` around it and the 3x3
kernel ``g`` (Lavin & Gray 2016, "Fast Algorithms for Convolutional Neural Networks"). The 16 elementwise products
of the 4x4 transformed tiles become 16 matrix multiplies over the channels, [tiles, C_in] @ [C_in, C_out]: 16
multiply-adds per 4 outputs and input channel where a direct convolution needs 36. The transforms are sums and
differences (and halves, for the kernel), computed here as strided slices, so they are memory passes, not
multiplies.

Everything is composed of differentiable torch ops, so autograd derives the backward (again 16 matrix multiplies
each for the input's and the kernel's gradients) and the double backward a gradient penalty needs. The result
equals ``F.conv2d(x, weight, bias, padding=1)`` up to floating-point rounding (the sums are taken in another order;
``check_winograd.py`` beside this file bounds it). A study, not used by the product: README.md beside this file
says what it measured and why PGGAN keeps torch's direct convolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _input_transform(x: torch.Tensor, axis: int, tiles: int) -> list[torch.Tensor]:
    """B^T d along one axis: rows 2t..2t+3 of each tile t -> d0-d2, d1+d2, d2-d1, d1-d3 (``tiles`` tiles)."""
    def rows(start: int) -> torch.Tensor:
        return x.narrow(axis, start, 2 * tiles - 1)[(slice(None),) * axis + (slice(None, None, 2),)]
    d0, d1, d2, d3 = rows(0), rows(1), rows(2), rows(3)
    return [d0 - d2, d1 + d2, d2 - d1, d1 - d3]


def _kernel_transform(g: torch.Tensor, axis: int) -> list[torch.Tensor]:
    """G g along one axis of length 3: g0, (g0+g1+g2)/2, (g0-g1+g2)/2, g2."""
    g0, g1, g2 = (g.select(axis, i) for i in range(3))
    even = 0.5 * (g0 + g2)
    return [g0, even + 0.5 * g1, even - 0.5 * g1, g2]


def _output_transform(m: list[torch.Tensor]) -> list[torch.Tensor]:
    """A^T m along one axis: m0+m1+m2, m1-m2-m3."""
    return [m[0] + m[1] + m[2], m[1] - m[2] - m[3]]


def kernel_transform(weight: torch.Tensor) -> torch.Tensor:
    """G g G^T of every (output, input) channel pair as 16 matrices: [C_out, C_in, 3, 3] -> [16, C_in, C_out]."""
    rows = _kernel_transform(weight, 2)  # 4 x [C_out, C_in, 3]
    u = [v for r in rows for v in _kernel_transform(r, 2)]  # 16 x [C_out, C_in]
    return torch.stack(u).transpose(1, 2)


def conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, padding=1)`` for 3x3 kernels and even H, W, by F(2x2, 3x3).

    x [B, C_in, H, W] (any memory format), weight [C_out, C_in, 3, 3] -> [B, C_out, H, W] in channels_last memory.
    """
    b, c_in, h, w = x.shape
    if weight.shape[1:] != (c_in, 3, 3) or h % 2 or w % 2:
        raise ValueError(f"winograd.conv3x3 needs a [C_out, {c_in}, 3, 3] kernel and even H, W; got kernel "
                         f"{tuple(weight.shape)} and a {h}x{w} map")
    th, tw = h // 2, w // 2
    xp = F.pad(x, (1, 1, 1, 1)).permute(0, 2, 3, 1)  # [B, H+2, W+2, C_in] (a view when x is channels_last)
    v = [c for r in _input_transform(xp, 1, th) for c in _input_transform(r, 2, tw)]  # 16 x [B, th, tw, C_in]
    v = torch.stack(v).view(16, b * th * tw, c_in)
    u = kernel_transform(weight)  # [16, C_in, C_out]
    m = torch.bmm(v, u.to(v.dtype) if not torch.is_autocast_enabled(x.device.type) else u)  # [16, N, C_out]
    m = m.view(4, 4, b, th, tw, -1)
    cols = [_output_transform([m[i, j] for j in range(4)]) for i in range(4)]  # 4 x 2 x [B, th, tw, C_out]
    y = [_output_transform([cols[i][q] for i in range(4)]) for q in range(2)]  # y[q][p]: output (p, q) of a block
    out = torch.stack([torch.stack([y[0][p], y[1][p]], dim=3) for p in range(2)], dim=2)  # [B, th, 2, tw, 2, C]
    out = out.view(b, h, w, -1)
    if bias is not None:
        out = out + bias.to(out.dtype)
    return out.permute(0, 3, 1, 2)  # [B, C_out, H, W], channels_last memory
