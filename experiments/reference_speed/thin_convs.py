"""Would Glow's thin 3x3 convolutions run faster as GEMMs plus shifts than in oneDNN?

    OMP_NUM_THREADS=2 python experiments/reference_speed/thin_convs.py

Two kinds, at Glow's reference-size shapes (batch 16, channels_last, bf16). The zero convolutions (512 -> 12/24/48):

oneDNN runs these convolutions at about 200 GFLOP/s in backward (profile_step.py), under half of the bf16 limit:
their output has only 12-48 channels. The same convolution is x [BHW, C] @ W [C, 9 x O] (a GEMM 9x wider)
followed by adding the 9 spatially shifted [B, H, W, O] slices; its backward is the 9 shifted copies of the output
gradient stacked to [BHW, 9 x O], then two GEMMs. Prints the largest difference from oneDNN (bf16 rounding only)
and the median milliseconds of each. The first convolutions (6/12/24 -> 512, with the ReLU fused): im2col of the
thin input ([BHW, 9 x C], cheap) @ W [9 x C, 512], then ReLU; backward two GEMMs and col2im by 9 shifted adds.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.benchmark.train import time_steps

CPU = torch.device("cpu")


def median_ms(fn, n: int = 20) -> float:
    """The median of ``n`` timed calls after 3 untimed ones (the benchmark's time_steps), in milliseconds."""
    return time_steps(fn, n, 3, CPU).seconds * 1e3


def shift_forward(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    bs, c, h, wd = x.shape
    o = w.shape[0]
    p = (x.permute(0, 2, 3, 1).reshape(-1, c) @ w.permute(1, 2, 3, 0).reshape(c, 9 * o)).view(bs, h, wd, 9, o)
    p = F.pad(p, (0, 0, 0, 0, 1, 1, 1, 1))  # [B, H+2, W+2, 9, O]
    out = b.view(1, 1, 1, o).expand(bs, h, wd, o).clone()
    for k in range(9):
        dy, dx = divmod(k, 3)
        out += p[:, dy:dy + h, dx:dx + wd, k, :]
    return out.permute(0, 3, 1, 2)  # [B, O, H, W] channels_last


def shift_backward(g: torch.Tensor, x: torch.Tensor, w: torch.Tensor):
    bs, c, h, wd = x.shape
    o = w.shape[0]
    g2 = g.permute(0, 2, 3, 1)  # [B, H, W, O]
    gp = F.pad(g2, (0, 0, 1, 1, 1, 1))
    shifted = [gp[:, 2 - dy:2 - dy + h, 2 - dx:2 - dx + wd, :] for dy in range(3) for dx in range(3)]
    g_p = torch.stack(shifted, dim=3).view(-1, 9 * o)  # [BHW, 9 O]
    w2 = w.permute(1, 2, 3, 0).reshape(c, 9 * o)
    gx = (g_p @ w2.t()).view(bs, h, wd, c).permute(0, 3, 1, 2)
    gw = (x.permute(0, 2, 3, 1).reshape(-1, c).t() @ g_p).view(c, 3, 3, o).permute(3, 0, 1, 2)
    return gx, gw, g2.sum((0, 1, 2))


def row(bs: int, c: int, h: int, o: int) -> str:
    cl = torch.channels_last
    x = torch.randn(bs, c, h, h).to(torch.bfloat16).contiguous(memory_format=cl)
    w = (torch.randn(o, c, 3, 3) * 0.02).to(torch.bfloat16)
    b = torch.randn(o).to(torch.bfloat16)
    g = torch.randn(bs, o, h, h).to(torch.bfloat16).contiguous(memory_format=cl)

    def onednn_bwd():
        return torch.ops.aten.convolution_backward(g, x, w, [o], [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
                                                   [True, True, True])
    diff_f = (F.conv2d(x, w, b, padding=1).float() - shift_forward(x, w, b).float()).abs().max().item()
    diff_b = max((a.float() - m.float()).abs().max().item() / a.float().abs().max().item()
                 for a, m in zip(onednn_bwd(), shift_backward(g, x, w)))
    t = [median_ms(lambda: F.conv2d(x, w, b, padding=1)), median_ms(lambda: shift_forward(x, w, b)),
         median_ms(onednn_bwd), median_ms(lambda: shift_backward(g, x, w))]
    return (f"{h:2d}x{h:<2d} {c}->{o:<2d}: forward oneDNN {t[0]:.2f} ms, shifts {t[1]:.2f} | backward oneDNN "
            f"{t[2]:.2f} ms, shifts {t[3]:.2f} | max diff forward {diff_f:.3g}, backward (relative) {diff_b:.3g}")


def im2col(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] channels_last -> [BHW, 9 x C] (dy, dx, c order), zero padding 1."""
    bs, c, h, wd = x.shape
    xp = F.pad(x.permute(0, 2, 3, 1), (0, 0, 1, 1, 1, 1))
    return torch.cat([xp[:, dy:dy + h, dx:dx + wd, :] for dy in range(3) for dx in range(3)], dim=3).view(-1, 9 * c)


def first_row(bs: int, c: int, h: int, o: int = 512) -> str:
    cl = torch.channels_last
    x = torch.randn(bs, c, h, h).to(torch.bfloat16).contiguous(memory_format=cl)
    w = (torch.randn(o, c, 3, 3) * 0.1).to(torch.bfloat16)
    b = torch.randn(o).to(torch.bfloat16)
    g = torch.randn(bs, o, h, h).to(torch.bfloat16).contiguous(memory_format=cl)
    w2 = w.permute(0, 2, 3, 1).reshape(o, 9 * c)

    def onednn_fwd():
        return torch.ops.mkldnn._convolution_pointwise(x, w, b, [1, 1], [1, 1], [1, 1], 1, "relu", [], "")

    def gemm_fwd():
        return torch.relu_(torch.addmm(b, im2col(x), w2.t())).view(bs, h, h, o).permute(0, 3, 1, 2)

    def onednn_bwd():
        return torch.ops.aten.convolution_backward(g, x, w, [o], [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
                                                   [True, True, True])

    def gemm_bwd():
        g2 = g.permute(0, 2, 3, 1).reshape(-1, o)
        gw = (g2.t() @ im2col(x)).view(o, 3, 3, c).permute(0, 3, 1, 2)
        gc = (g2 @ w2).view(bs, h, h, 9, c)
        gxp = torch.zeros(bs, h + 2, h + 2, c, dtype=gc.dtype)
        for k in range(9):
            dy, dx = divmod(k, 3)
            gxp[:, dy:dy + h, dx:dx + h, :] += gc[:, :, :, k, :]
        return gxp[:, 1:h + 1, 1:h + 1, :].permute(0, 3, 1, 2), gw, g2.sum(0)
    diff_f = (onednn_fwd().float() - gemm_fwd().float()).abs().max().item()
    diff_b = max((a.float() - m.float()).abs().max().item() / a.float().abs().max().item()
                 for a, m in zip(onednn_bwd(), gemm_bwd()))
    t = [median_ms(onednn_fwd), median_ms(gemm_fwd), median_ms(onednn_bwd), median_ms(gemm_bwd)]
    return (f"{h:2d}x{h:<2d} {c:2d}->{o}: forward oneDNN {t[0]:.2f} ms, im2col GEMM {t[1]:.2f} | backward oneDNN "
            f"{t[2]:.2f} ms, GEMMs {t[3]:.2f} | max diff forward {diff_f:.3g}, backward (relative) {diff_b:.3g}")


def main() -> None:
    torch.manual_seed(0)
    print(f"{torch.get_num_threads()} threads, bf16, channels_last")
    print("zero convolutions (3x3, 512 -> 12/24/48): oneDNN against one wide GEMM plus shifts")
    for shape in [(16, 512, 16, 12), (16, 512, 8, 24), (16, 512, 4, 48)]:
        print(row(*shape))
    print("first convolutions (3x3, 6/12/24 -> 512, ReLU fused): oneDNN against im2col + GEMM")
    for shape in [(16, 6, 16), (16, 12, 8), (16, 24, 4)]:
        print(first_row(*shape))


if __name__ == "__main__":
    main()
