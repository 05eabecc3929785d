"""Glow's invertible building blocks: squeeze, actnorm, LU 1x1 convolution, coupling, and the pure math they share.

Every layer maps ``x -> (y, logdet)`` with ``logdet`` of shape ``[B]`` (log |det dy/dx| per sample) and has an
exact ``inverse(y) -> x``. The layers run their likelihood arithmetic in the input's dtype with autocast switched
off (see flow/config.py for why); only the coupling networks may run under autocast, passed down as ``amp``
(``None`` or ``(device_type, dtype)``).
"""

from __future__ import annotations

import contextlib
import functools
import math

import torch
from torch import nn

LOG_2PI = math.log(2.0 * math.pi)

# ---------------------------------------------------------------------------------------------------------------
# Pure functions


def squeeze2d(x: torch.Tensor) -> torch.Tensor:
    """Space-to-depth by 2: [B, C, H, W] -> [B, 4C, H/2, W/2] (each output channel is one corner of a 2x2 block)."""
    b, c, h, w = x.shape
    if h % 2 or w % 2:
        raise ValueError(f"squeeze2d needs even height and width, got {h}x{w}")
    x = x.reshape(b, c, h // 2, 2, w // 2, 2)  # [B, C, H/2, 2, W/2, 2]
    x = x.permute(0, 1, 3, 5, 2, 4)  # [B, C, 2, 2, H/2, W/2]
    return x.reshape(b, c * 4, h // 2, w // 2)


def unsqueeze2d(x: torch.Tensor) -> torch.Tensor:
    """Exact inverse of squeeze2d: [B, 4C, H, W] -> [B, C, 2H, 2W]."""
    b, c4, h, w = x.shape
    if c4 % 4:
        raise ValueError(f"unsqueeze2d needs a channel count divisible by 4, got {c4}")
    c = c4 // 4
    x = x.reshape(b, c, 2, 2, h, w)  # [B, C, 2, 2, H, W]
    x = x.permute(0, 1, 4, 2, 5, 3)  # [B, C, H, 2, W, 2]
    return x.reshape(b, c, h * 2, w * 2)


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """Elementwise log N(x; mean, exp(log_std)^2); all shapes broadcast."""
    return -0.5 * (LOG_2PI + 2.0 * log_std + ((x - mean) * torch.exp(-log_std)) ** 2)


def split_mean_log_std(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A prior network's output [B, 2C, H, W] -> (mean, log_std), each [B, C, H, W] (interleaved channels)."""
    return h[:, 0::2], h[:, 1::2]


@contextlib.contextmanager
def autocast_off(device_type: str):
    """Run the enclosed likelihood math without autocast (no-op when autocast is unsupported on the device)."""
    try:
        ctx = torch.autocast(device_type, enabled=False)
    except RuntimeError:
        ctx = contextlib.nullcontext()
    with ctx:
        yield


def amp_state(device_type: str) -> tuple[str, torch.dtype] | None:
    """The ambient autocast setting as ``(device_type, dtype)`` or None, captured before switching it off."""
    try:
        if torch.is_autocast_enabled(device_type):
            return device_type, torch.get_autocast_dtype(device_type)
    except (RuntimeError, TypeError):
        pass
    return None


def _nhwc(t: torch.Tensor) -> bool:
    return t.is_contiguous(memory_format=torch.channels_last)


def _conv1x1_backward(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor):
    """(grad_x, grad_weight, grad_bias) of a 1x1 convolution as three matmul/sum calls on the NHWC views.

    Same products as oneDNN's convolution backward (grad_x bit-identical in our tests; grad_weight differs in
    summation order only), but without its fixed cost, most of the time at Glow's small maps.
    """
    b, c_in, h, w = x.shape
    c_out = weight.shape[0]
    g2 = grad.permute(0, 2, 3, 1).reshape(b * h * w, c_out)  # [BHW, C_out] (a view for channels_last)
    x2 = x.permute(0, 2, 3, 1).reshape(b * h * w, c_in)  # [BHW, C_in]
    grad_x = (g2 @ weight.view(c_out, c_in)).view(b, h, w, c_in).permute(0, 3, 1, 2)  # [B, C_in, H, W] NHWC
    grad_w = (g2.t() @ x2).view(c_out, c_in, 1, 1)
    return grad_x, grad_w, g2.sum(0)


class _ConvReLU(torch.autograd.Function):
    """relu(conv2d(x, w, b)) as one oneDNN convolution with a fused ReLU; backward = ReLU mask + conv backward.

    The same convolution and the same (exact) ReLU as conv2d followed by relu_, so the same numbers, but the
    [B, hidden, H, W] activation is written once instead of written and then rewritten in place (the forward
    ReLUs were ~20% of Glow's forward pass on the CPU: memory-bound passes over the step's biggest tensors).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, padding: int):
        pad = [padding, padding]
        out = torch.ops.mkldnn._convolution_pointwise(x, weight, bias, pad, [1, 1], [1, 1], 1, "relu", [], "")
        ctx.save_for_backward(x, weight, out)
        ctx.padding = pad
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, out = ctx.saved_tensors
        grad_pre = torch.ops.aten.threshold_backward(grad_out, out, 0)  # ReLU's backward, as relu_ records it
        if weight.shape[2:] == (1, 1) and _nhwc(x) and _nhwc(grad_pre):
            return (*_conv1x1_backward(grad_pre, x, weight), None)
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]]
        gx, gw, gb = torch.ops.aten.convolution_backward(
            grad_pre, x, weight, [weight.shape[0]], [1, 1], ctx.padding, [1, 1], False, [0, 0], 1, mask)
        return gx, gw, gb, None


@functools.cache
def fused_conv_relu_available() -> bool:
    """Whether oneDNN's fused bf16 convolution runs here (a private op: checked once by running it, never assumed).

    The op exists in every oneDNN build of torch, but its bf16 kernel needs AVX-512 (BW/VL/DQ) or AVX-NE-CONVERT:
    on an AVX2-only CPU it raises at the first call, so existing is not enough.
    """
    try:
        if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")):
            return False
        x = torch.zeros(1, 1, 2, 2, dtype=torch.bfloat16)
        w = torch.zeros(1, 1, 1, 1, dtype=torch.bfloat16)
        b = torch.zeros(1, dtype=torch.bfloat16)
        torch.ops.mkldnn._convolution_pointwise(x, w, b, [0, 0], [1, 1], [1, 1], 1, "relu", [], "")
        return True
    except (AttributeError, RuntimeError):
        return False


def conv_relu(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """relu(conv(x)) for a stride-1 'same' convolution; fused into one oneDNN call for bf16 CPU activations.

    Only the bf16 autocast path (the coupling networks while training) takes the fused kernel; fp32/fp64 (encode,
    decode, log_prob, tests) run the plain modules. Autocast's casts are done here by hand, so the weight
    gradients still reach the fp32 parameters through the same casts.
    """
    dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
    fusable = (x.device.type == "cpu" and dtype == torch.bfloat16 and x.dim() == 4
               and torch.backends.mkldnn.enabled and fused_conv_relu_available())
    same_conv = (conv.stride == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1 and conv.bias is not None
                 and conv.kernel_size[0] == conv.kernel_size[1] and conv.padding == (conv.kernel_size[0] // 2,) * 2)
    if not (fusable and same_conv):
        return torch.relu_(conv(x))
    with autocast_off(x.device.type):
        return _ConvReLU.apply(x.to(dtype), conv.weight.to(dtype), conv.bias.to(dtype), conv.padding[0])


def lu_weights(invconvs) -> tuple[torch.Tensor, torch.Tensor]:
    """W = P L (U + diag(sign(s) exp(log|s|))) of K ``InvConv1x1LU`` layers in batched ops: (W [K, C, C], log|s| [K, C]).

    The masks and identity are the same constants in every layer, so the first layer's buffers serve all.
    """
    first = invconvs[0]
    log_s = torch.stack([m.log_s for m in invconvs])  # [K, C]
    lower = torch.stack([m.lower for m in invconvs]) * first.lower_mask + first.eye  # [K, C, C]
    diag = torch.diag_embed(torch.stack([m.sign_s for m in invconvs]) * torch.exp(log_s))  # [K, C, C]
    upper = torch.stack([m.upper for m in invconvs]) * first.lower_mask.T + diag  # [K, C, C]
    return torch.stack([m.perm for m in invconvs]) @ lower @ upper, log_s


def folded_actnorm_invconv(actnorms, invconvs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The K actnorm -> LU 1x1 conv pairs of one level as K affine maps y = W' x + b', assembled in batched ops.

    W (x + bias) * exp(log_scale) = W' x + b' with W' = W diag(exp(log_scale)) and b' = W' bias, so each pair
    becomes one matmul; W = P L U is built for all K steps at once (``lu_weights``) instead of step by step (the
    ~20 small ops per pair, forward and backward, were fixed cost on the CPU). Returns W' [K, C, C], b' [K, C] and
    the pairs' summed log |det| per pixel (a scalar): sum of log_scale + sum of log|s| over the K steps.
    """
    weight, log_s = lu_weights(invconvs)  # [K, C, C], [K, C]
    log_scale = torch.cat([a.log_scale.view(1, -1) for a in actnorms])  # [K, C]
    weight = weight * torch.exp(log_scale).unsqueeze(1)  # W diag(exp(log_scale))
    bias = (weight @ torch.cat([a.bias.view(-1, 1, 1) for a in actnorms]).view(len(actnorms), -1, 1)).squeeze(2)
    return weight, bias, log_scale.sum() + log_s.sum()


def affine_channels(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """y[b, :, i, j] = weight @ x[b, :, i, j] (+ bias): a 1x1 convolution as one matrix multiply(-add). [B, C, H, W]

    A 12-48 channel 1x1 convolution is almost all fixed cost in oneDNN on the CPU; a matmul on the same memory is
    far cheaper and sums the same products. NHWC stays NHWC.
    """
    b, c, h, w = x.shape
    if _nhwc(x) and not x.is_contiguous():
        return torch.nn.functional.linear(x.permute(0, 2, 3, 1), weight, bias).permute(0, 3, 1, 2)  # NHWC
    flat = x.reshape(b, c, h * w)  # [B, C, HW]
    if bias is None:
        return torch.matmul(weight, flat).view(b, -1, h, w)
    return torch.baddbmm(bias.view(1, -1, 1), weight.expand(b, -1, -1), flat).view(b, -1, h, w)


# ---------------------------------------------------------------------------------------------------------------
# Layers


class ActNorm(nn.Module):
    """Per-channel affine y = (x + bias) * exp(log_scale), initialised from data so y has zero mean, unit std.

    The ``initialized`` flag is a registered buffer, so it travels with the state dict: a model loaded from a
    checkpoint is not re-initialised by its first batch. ``reduce_fn`` (set by Glow.initialize) averages the
    statistics across ranks under DDP so every rank starts from identical parameters.
    """

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.register_buffer("initialized", torch.tensor(False))
        self.eps = eps
        self.reduce_fn = None

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        mean = x.mean(dim=(0, 2, 3), keepdim=True)  # [1, C, 1, 1]
        mean_sq = (x * x).mean(dim=(0, 2, 3), keepdim=True)  # [1, C, 1, 1]
        if self.reduce_fn is not None:
            # Average E[x] and E[x^2] (not the std) so the pooled variance is exact across ranks.
            mean, mean_sq = self.reduce_fn(mean), self.reduce_fn(mean_sq)
        var = (mean_sq - mean * mean).clamp_min(0.0)
        self.bias.copy_(-mean)
        self.log_scale.copy_(-0.5 * torch.log(var + self.eps))
        self.initialized.fill_(True)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not bool(self.initialized):
            self.initialize(x)
        y = (x + self.bias) * torch.exp(self.log_scale)  # [B, C, H, W]
        logdet = x.shape[2] * x.shape[3] * self.log_scale.sum()
        return y, logdet.expand(x.shape[0])

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return y * torch.exp(-self.log_scale) - self.bias


class InvConv1x1LU(nn.Module):
    """Invertible 1x1 convolution with W = P L (U + diag(sign(s) * exp(log|s|))), logdet = H*W*sum(log|s|).

    P (a permutation) and sign(s) are fixed buffers; L is unit lower-triangular and U strictly upper-triangular
    (masked parameters). Initialised from a random rotation, so the layer starts volume preserving.
    """

    def __init__(self, channels: int):
        super().__init__()
        w = torch.linalg.qr(torch.randn(channels, channels))[0]  # [C, C] orthogonal
        p, lower, upper = torch.linalg.lu(w)
        s = torch.diagonal(upper)
        self.register_buffer("perm", p)
        self.register_buffer("sign_s", torch.sign(s))
        self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), -1))
        self.register_buffer("eye", torch.eye(channels))
        self.lower = nn.Parameter(lower * self.lower_mask)
        self.upper = nn.Parameter(torch.triu(upper, 1))
        self.log_s = nn.Parameter(torch.log(torch.abs(s)))

    def weight(self) -> torch.Tensor:
        return lu_weights([self])[0][0]  # [C, C]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = affine_channels(x, self.weight())
        logdet = x.shape[2] * x.shape[3] * self.log_s.sum()
        return y, logdet.expand(x.shape[0])

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return affine_channels(y, torch.linalg.inv(self.weight()))


class ZeroConv2d(nn.Module):
    """3x3 convolution initialised to output zeros, with a learned per-channel output scale exp(3 * logs).

    Used as the last layer of coupling and prior networks so every flow step starts (near) identity and every
    prior starts as N(0, I); the exp(3 * logs) factor lets the output scale grow fast (Glow's choice).
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)
        self.logs = nn.Parameter(torch.zeros(1, out_channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) * torch.exp(self.logs * 3.0)


class Coupling(nn.Module):
    """Affine (scale = sigmoid(h + 2), shift) or additive coupling: the second half is transformed given the first.

    The network's output is cast to the input dtype before any likelihood arithmetic, so it may run under
    autocast while the log-determinant stays in fp32.
    """

    def __init__(self, channels: int, hidden: int, kind: str = "affine"):
        super().__init__()
        if kind not in ("affine", "additive"):
            raise ValueError(f"coupling must be 'affine' or 'additive', got {kind!r}")
        if channels % 2:
            raise ValueError(f"coupling needs an even channel count, got {channels}")
        self.kind = kind
        half = channels // 2
        out = channels if kind == "affine" else half
        # the ReLU modules document the architecture; _run_net applies them itself (conv_relu, in place)
        self.net = nn.Sequential(
            nn.Conv2d(half, hidden, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 1),
            nn.ReLU(inplace=True),
            ZeroConv2d(hidden, out),
        )

    def _run_net(self, xa: torch.Tensor) -> torch.Tensor:
        """self.net(xa), with each conv + ReLU pair fused where conv_relu can (same function, fewer passes)."""
        conv_in, _, mix, _, conv_out = self.net
        return conv_out(conv_relu(mix, conv_relu(conv_in, xa)))  # [B, C/2 or C, H, W]

    def _params(self, xa: torch.Tensor, amp) -> tuple[torch.Tensor, torch.Tensor | None]:
        if amp is not None:
            with torch.autocast(amp[0], dtype=amp[1]):
                h = self._run_net(xa)
        else:
            h = self._run_net(xa)
        h = h.to(xa.dtype)
        if self.kind == "additive":
            return h, None
        shift, raw = h[:, 0::2], h[:, 1::2]
        return shift, torch.sigmoid(raw + 2.0)  # scale in (0, 1): bounded, so it never explodes

    def forward(self, x: torch.Tensor, amp=None) -> tuple[torch.Tensor, torch.Tensor]:
        xa, xb = x.chunk(2, dim=1)  # [B, C/2, H, W] each
        shift, scale = self._params(xa, amp)
        if scale is None:
            return torch.cat([xa, xb + shift], dim=1), x.new_zeros(x.shape[0])
        yb = (xb + shift) * scale
        logdet = torch.log(scale).flatten(1).sum(1)  # [B]
        return torch.cat([xa, yb], dim=1), logdet

    def inverse(self, y: torch.Tensor, amp=None) -> torch.Tensor:
        ya, yb = y.chunk(2, dim=1)
        shift, scale = self._params(ya, amp)
        xb = yb - shift if scale is None else yb / scale - shift
        return torch.cat([ya, xb], dim=1)


class FlowStep(nn.Module):
    """One Glow step: ActNorm -> invertible 1x1 conv -> coupling."""

    def __init__(self, channels: int, hidden: int, coupling: str = "affine"):
        super().__init__()
        self.actnorm = ActNorm(channels)
        self.invconv = InvConv1x1LU(channels)
        self.coupling = Coupling(channels, hidden, coupling)

    def forward(self, x: torch.Tensor, amp=None) -> tuple[torch.Tensor, torch.Tensor]:
        x, ld1 = self.actnorm(x)
        x, ld2 = self.invconv(x)
        x, ld3 = self.coupling(x, amp)
        return x, ld1 + ld2 + ld3

    def forward_folded(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, amp=None):
        """The step with actnorm and 1x1 conv applied as one affine map (folded_actnorm_invconv's W', b').

        Returns (y, coupling logdet [B]); the actnorm and 1x1 conv log-determinants are the caller's.
        """
        return self.coupling(affine_channels(x, weight, bias), amp)

    def inverse(self, y: torch.Tensor, amp=None) -> torch.Tensor:
        y = self.coupling.inverse(y, amp)
        y = self.invconv.inverse(y)
        return self.actnorm.inverse(y)
