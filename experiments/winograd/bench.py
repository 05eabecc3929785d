"""Winograd F(2x2, 3x3) by torch ops against torch's direct convolution, forward and forward + backward.

    OMP_NUM_THREADS=2 python experiments/winograd/bench.py [bf16]

Prints, per layer shape (batch, channels in -> out, map size), the median of 3 timed calls after one untimed one,
in fp32 (or under bf16 autocast with ``bf16``), channels_last.
"""

import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import winograd  # noqa: E402

SHAPES = [(16, 512, 512, 32), (16, 512, 512, 16), (16, 512, 512, 8), (16, 512, 512, 4), (16, 64, 64, 32),
          (16, 128, 128, 32), (16, 256, 256, 16)]


def median_seconds(fn, n: int = 3) -> float:
    fn()
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def row(b: int, c: int, k: int, h: int, bf16: bool) -> str:
    x = torch.randn(b, c, h, h).contiguous(memory_format=torch.channels_last).requires_grad_()
    w = (torch.randn(k, c, 3, 3) * 0.02).requires_grad_()
    bias = torch.zeros(k, requires_grad=True)
    g = torch.randn(b, k, h, h).contiguous(memory_format=torch.channels_last)

    def direct():
        return F.conv2d(x, w, bias, padding=1)

    def wino():
        return winograd.conv3x3(x, w, bias)

    def forward(conv):
        def run():
            with torch.no_grad():
                conv()
        return run

    def both(conv):
        return lambda: conv().backward(g)

    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        fd, fw = median_seconds(forward(direct)), median_seconds(forward(wino))
        bd, bw = median_seconds(both(direct)), median_seconds(both(wino))
    flops = 2 * b * h * h * c * k * 9
    return (f"B{b} C{c}->{k} {h}x{h}: forward direct {fd * 1e3:.1f} ms ({flops / fd / 1e9:.0f} GFLOP/s), "
            f"winograd {fw * 1e3:.1f} ms ({fd / fw:.2f}x); forward + backward direct {bd * 1e3:.1f} ms, "
            f"winograd {bw * 1e3:.1f} ms ({bd / bw:.2f}x)")


def main() -> None:
    torch.manual_seed(0)
    for shape in SHAPES:
        print(row(*shape, bf16="bf16" in sys.argv[1:]), flush=True)


if __name__ == "__main__":
    main()
