"""Multi-scale Glow (Kingma & Dhariwal 2018) with an exact encode/decode pair and honest bits per dimension.

The likelihood path is driven by one setting, ``n_bits`` (n_bins = 2 ** n_bits):

* an image x in [-1, 1] is quantised to its bin k = floor((x + 1) / 2 * n_bins) (for 8-bit data and n_bits=5
  this is exactly uint8 // 8, the published Glow preprocessing);
* the flow's input is y = (k + u) / n_bins - 0.5 in [-0.5, 0.5], with u ~ U[0, 1) while training (uniform
  dequantisation) and u = 1/2, the bin centre, in encode / log_prob / decode (deterministic);
* bits per dimension = (-log p(y) + D ln n_bins) / (D ln 2), D = C*H*W (``bits_per_dim``): log p(y) is a density
  on the unit cube, and D ln n_bins converts it to a probability mass on the n_bins grid of the data;
* decode returns the bin centres 2 * (k + 1/2) / n_bins - 1, so decode(encode(x)) == snap_to_grid(x) exactly.

Latents: ``encode`` returns the standardised latents (z - mean) / std of every level (the factored-out halves,
whose mean and log-std come from the kept half through a zero-initialised conv, then the top level, whose prior
is learned from zeros), flattened and concatenated: [B, D]. Under this change of variables
``log_prob(x) = sum log N(encode(x); 0, I) + log |det d encode / dy|`` (the Jacobian w.r.t. the flow's input y).
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from flow.layers import (
    FlowStep,
    ZeroConv2d,
    amp_state,
    autocast_off,
    folded_actnorm_invconv,
    gaussian_log_prob,
    split_mean_log_std,
    squeeze2d,
    unsqueeze2d,
)

__all__ = [
    "Glow",
    "bits_per_dim",
    "quantize",
    "bins_to_flow_input",
    "flow_output_to_bins",
    "bins_to_image",
    "snap_to_grid",
    "build_model",
    "apply_if_finite",
    "load_model_from_run",
    "exact_math",
]


# ---------------------------------------------------------------------------------------------------------------
# Pure likelihood functions


def bits_per_dim(log_px: torch.Tensor | float, num_dims: int, n_bins: int) -> torch.Tensor | float:
    """Bits per dimension of the discrete data from the continuous log-density log p(y) on the unit cube.

    bpd = (-log p(y) + D ln n_bins) / (D ln 2). A uniform density on [-0.5, 0.5]^D (log p = 0) gives n_bits.
    """
    return (-log_px + num_dims * math.log(n_bins)) / (num_dims * math.log(2.0))


def quantize(x: torch.Tensor, n_bits: int) -> torch.Tensor:
    """Images in [-1, 1] -> integer bins in [0, n_bins) (same shape, int64); the bin of x is the one whose centre
    is nearest, so this is also "round to the nearest grid value"."""
    n_bins = 2**n_bits
    k = torch.floor((x.double() + 1.0) * 0.5 * n_bins)  # double: the bin edges must not move with fp32 rounding
    return k.clamp_(0, n_bins - 1).long()


def bins_to_flow_input(k: torch.Tensor, n_bins: int, noise: torch.Tensor | None = None, dtype=torch.float32):
    """Bins -> the flow's input y in [-0.5, 0.5]: y = (k + u) / n_bins - 0.5, u = noise in [0, 1) or the centre."""
    u = 0.5 if noise is None else noise
    return ((k.to(dtype) + u) / n_bins - 0.5).to(dtype)


def flow_output_to_bins(y: torch.Tensor, n_bins: int) -> torch.Tensor:
    """The flow's input space -> bins (inverse of bins_to_flow_input for any u in [0, 1))."""
    return torch.floor((y.double() + 0.5) * n_bins).clamp_(0, n_bins - 1).long()


def bins_to_image(k: torch.Tensor, n_bins: int, dtype=torch.float32) -> torch.Tensor:
    """Bins -> images in [-1, 1] at the bin centres 2 * (k + 1/2) / n_bins - 1."""
    return ((k.double() + 0.5) * (2.0 / n_bins) - 1.0).to(dtype)


def snap_to_grid(x: torch.Tensor, n_bits: int) -> torch.Tensor:
    """Images in [-1, 1] -> the nearest value of the n_bits grid decode() produces."""
    return bins_to_image(quantize(x, n_bits), 2**n_bits, x.dtype)


@contextlib.contextmanager
def exact_math(device: torch.device):
    """fp32-or-better arithmetic for encode/decode: autocast off and TF32 off (TF32 has a 10-bit mantissa)."""
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        with autocast_off(device.type):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


# ---------------------------------------------------------------------------------------------------------------
# Model


class Glow(nn.Module):
    """Multi-scale Glow implementing common.editing.EditableModel (encode / decode / sample_latents)."""

    latent_on_sphere = False
    sample_temperature = 1.0  # what sample_latents scales by when no temperature is given (editing sets 0.7)

    def __init__(
        self,
        resolution: int,
        in_channels: int = 3,
        levels: int = 3,
        steps: int = 8,
        hidden_channels: int = 64,
        coupling: str = "affine",
        n_bits: int = 5,
        learn_top: bool = True,
        checkpointing: bool = False,
    ):
        super().__init__()
        if resolution % (2**levels):
            raise ValueError(f"model: resolution {resolution} must be divisible by 2 ** levels = {2**levels}")
        self.resolution = resolution
        self.in_channels = in_channels
        self.n_bits = n_bits
        self.n_bins = 2**n_bits
        self.learn_top = learn_top
        self.checkpointing = checkpointing
        self.num_dims = in_channels * resolution * resolution
        self.latent_dim = self.num_dims

        self.flows = nn.ModuleList()
        self.priors = nn.ModuleList()  # conditional priors of the factored-out halves
        self.latent_shapes: list[tuple[int, int, int]] = []  # per level: (C, H, W) of its standardised latent
        c, size = in_channels, resolution
        for level in range(levels):
            c, size = c * 4, size // 2
            self.flows.append(nn.ModuleList([FlowStep(c, hidden_channels, coupling) for _ in range(steps)]))
            if level < levels - 1:
                self.priors.append(ZeroConv2d(c // 2, c))  # kept half -> mean, log-std of the factored half
                self.latent_shapes.append((c // 2, size, size))
                c = c // 2
            else:
                self.latent_shapes.append((c, size, size))
        self.top_shape = (c, size, size)
        # A zero-init conv applied to zeros: a learned per-channel mean and log-std, starting at N(0, I).
        # (Absent without learn_top: unused parameters would break DDP.)
        self.top_prior = ZeroConv2d(c, 2 * c) if learn_top else None
        self.latent_sizes = [ci * hi * wi for ci, hi, wi in self.latent_shapes]

    # -- priors -------------------------------------------------------------------------------------------------

    def _top_prior(self, batch: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = like.new_zeros(1, *self.top_shape)
        if self.top_prior is not None:
            h = self.top_prior(torch.zeros_like(h))  # [1, 2C, H, W]
        else:
            h = h.repeat(1, 2, 1, 1)
        mean, log_std = split_mean_log_std(h)
        return mean.expand(batch, -1, -1, -1), log_std.expand(batch, -1, -1, -1)

    # -- the flow -----------------------------------------------------------------------------------------------

    def _run_step(self, step: FlowStep, z: torch.Tensor, amp, *affine) -> tuple[torch.Tensor, torch.Tensor]:
        fn = step.forward_folded if affine else step
        if self.checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(fn, z, *affine, amp, use_reentrant=False)
        return fn(z, *affine, amp)

    def _forward_flow(self, y: torch.Tensor, amp=None, fold: bool = False):
        """y [B, C, H, W] -> (standardised latents [B, D], flow logdet [B], prior log-density [B]).

        ``fold`` (the training forward only) applies each level's actnorm + 1x1 conv pairs as affine maps
        assembled in batched ops (flow.layers.folded_actnorm_invconv): the same function up to fp32 rounding
        order, with far fewer small ops. encode / log_prob / initialize keep the step-by-step layers.
        """
        batch = y.shape[0]
        z = y
        logdet = y.new_zeros(batch)
        prior_logp = y.new_zeros(batch)
        eps = []
        last = len(self.flows) - 1
        fold = fold and self.is_initialized
        for level, steps in enumerate(self.flows):
            z = squeeze2d(z)
            if fold:
                weights, biases, log_det_pixel = folded_actnorm_invconv([s.actnorm for s in steps],
                                                                        [s.invconv for s in steps])
                logdet = logdet + z.shape[2] * z.shape[3] * log_det_pixel
                for step, weight, bias in zip(steps, weights.unbind(0), biases.unbind(0), strict=True):
                    z, ld = self._run_step(step, z, amp, weight, bias)
                    logdet = logdet + ld
            else:
                for step in steps:
                    z, ld = self._run_step(step, z, amp)
                    logdet = logdet + ld
            if level < last:
                z, z_out = z.chunk(2, dim=1)  # keep [B, C/2, H, W], factor out [B, C/2, H, W]
                mean, log_std = split_mean_log_std(self.priors[level](z))
            else:
                z_out = z
                mean, log_std = self._top_prior(batch, z)
            prior_logp = prior_logp + gaussian_log_prob(z_out, mean, log_std).flatten(1).sum(1)
            eps.append(((z_out - mean) * torch.exp(-log_std)).flatten(1))
        return torch.cat(eps, dim=1), logdet, prior_logp

    def _inverse_flow(self, eps: torch.Tensor, amp=None) -> torch.Tensor:
        """Standardised latents [B, D] -> the flow's input y [B, C, H, W]."""
        if eps.ndim != 2 or eps.shape[1] != self.latent_dim:
            raise ValueError(f"Glow.decode: expected latents [B, {self.latent_dim}], got {list(eps.shape)}")
        batch = eps.shape[0]
        parts = list(torch.split(eps, self.latent_sizes, dim=1))
        z = None
        for level in reversed(range(len(self.flows))):
            e = parts[level].reshape(batch, *self.latent_shapes[level])
            if z is None:
                mean, log_std = self._top_prior(batch, e)
                z = mean + torch.exp(log_std) * e
            else:
                mean, log_std = split_mean_log_std(self.priors[level](z))
                z = torch.cat([z, mean + torch.exp(log_std) * e], dim=1)
            for step in reversed(self.flows[level]):
                z = step.inverse(z, amp)
            z = unsqueeze2d(z)
        return z

    def forward(self, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Training entry point on dequantised inputs y [B, C, H, W] in [-0.5, 0.5].

        Returns per-sample ``log_p`` (= prior + logdet, nats), ``logdet`` and ``prior``, all [B] in fp32 or better.
        Only the coupling networks follow an ambient autocast.
        """
        amp = amp_state(y.device.type)
        with autocast_off(y.device.type):
            y = y.float() if y.dtype in (torch.float16, torch.bfloat16) else y
            _, logdet, prior = self._forward_flow(y, amp, fold=self.training and torch.is_grad_enabled())
        return {"log_p": prior + logdet, "logdet": logdet, "prior": prior}

    # -- public API ---------------------------------------------------------------------------------------------

    @property
    def _exact_dtype(self) -> torch.dtype:
        dtype = next(self.parameters()).dtype
        return torch.float64 if dtype == torch.float64 else torch.float32

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def preprocess(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Images [B, C, H, W] in [-1, 1] -> flow input y; noise in [0, 1) dequantises, None takes bin centres."""
        if x.ndim != 4 or tuple(x.shape[1:]) != (self.in_channels, self.resolution, self.resolution):
            shape = f"[B, {self.in_channels}, {self.resolution}, {self.resolution}]"
            raise ValueError(f"Glow: expected images {shape}, got {list(x.shape)}")
        return bins_to_flow_input(quantize(x, self.n_bits), self.n_bins, noise, self._exact_dtype)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] in [-1, 1] -> standardised latents [B, D] (deterministic, exact inverse of decode)."""
        device = self._device()
        with exact_math(device):
            y = self.preprocess(x.to(device))
            return self._forward_flow(y)[0]

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Standardised latents [B, D] -> images [B, 3, H, W] on the n_bits grid in [-1, 1]."""
        device = self._device()
        with exact_math(device):
            y = self._inverse_flow(latents.to(device=device, dtype=self._exact_dtype))
            # Far off-manifold latents (big edits) can overflow an affine model's inverse; show those pixels as
            # mid-grey rather than letting NaN/inf reach the integer cast (whose result is undefined).
            y = torch.nan_to_num(y, nan=0.0, posinf=0.5, neginf=-0.5)
            return bins_to_image(flow_output_to_bins(y, self.n_bins), self.n_bins, self._exact_dtype)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(y) [B] in nats at the bin centres y of images x (the input encode takes)."""
        device = self._device()
        with exact_math(device):
            _, logdet, prior = self._forward_flow(self.preprocess(x.to(device)))
            return prior + logdet

    def bits_per_dim(self, x: torch.Tensor) -> torch.Tensor:
        """Bits per dimension [B] of images x, evaluated at the bin centres (deterministic)."""
        return bits_per_dim(self.log_prob(x), self.num_dims, self.n_bins)

    def level_maps(self, levels) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """The latents of ``levels`` laid out as maps of the top level's size: (positions [d] in the flat latent,
        (C, H, W)), so that ``latents[:, positions].reshape(-1, C, H, W)`` are those maps. Each lower level is
        squeezed (space to depth, as the flow itself does) down to the top level's size; channels concatenated
        in the order of ``levels``."""
        offsets = [0]
        for size in self.latent_sizes:
            offsets.append(offsets[-1] + size)
        top = self.latent_shapes[-1][1]
        maps = []
        for level in levels:
            c, h, w = self.latent_shapes[level]
            index = torch.arange(offsets[level], offsets[level + 1]).reshape(1, c, h, w)
            while index.shape[-1] > top:
                index = squeeze2d(index)
            maps.append(index[0])
        if not maps:
            raise ValueError("Glow.level_maps: expected at least one level")
        index = torch.cat(maps)  # [C, H, W]
        return index.flatten(), tuple(index.shape)

    def latent_flow_layout(self) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """Where a pose ``cflow`` edits (common.editing.pose_latent_flow): the top level, as its own maps; that
        is where pose lives (docs/findings.md, "Glow's pose")."""
        return self.level_maps([len(self.latent_shapes) - 1])

    def encode_report(self) -> dict:
        return {}  # encode is exact: nothing to report

    def sample_latents(self, n: int, generator: torch.Generator | None = None, temperature: float | None = None):
        """n standard-normal latents [n, D] scaled by ``temperature`` (default ``self.sample_temperature``), on
        the generator's device."""
        device = generator.device if generator is not None else self._device()
        scale = self.sample_temperature if temperature is None else temperature
        return torch.randn(n, self.latent_dim, generator=generator, device=device) * scale

    @torch.no_grad()
    def initialize(self, y: torch.Tensor, reduce_fn=None) -> None:
        """Data-dependent actnorm init from dequantised inputs y; reduce_fn (e.g. all_reduce_mean) pools ranks."""
        actnorms = [m for m in self.modules() if hasattr(m, "initialized") and hasattr(m, "reduce_fn")]
        for m in actnorms:
            m.reduce_fn = reduce_fn
        try:
            with autocast_off(y.device.type):
                self._forward_flow(y)
        finally:
            for m in actnorms:
                m.reduce_fn = None

    @property
    def is_initialized(self) -> bool:
        return all(bool(m.initialized) for m in self.modules() if hasattr(m, "reduce_fn"))


def apply_if_finite(loss: torch.Tensor, optimizer: torch.optim.Optimizer, clip: float = 0.0,
                    reduce_fn=None) -> tuple[bool, torch.Tensor | None]:
    """backward + grad-norm clip + optimizer step, unless the loss or the gradient norm is not finite.

    A skipped step leaves the weights (and Adam's moments) untouched, so one bad batch never poisons the model.
    ``reduce_fn`` (e.g. all_reduce_mean) makes every rank agree on skipping. Returns (applied, grad norm).
    """
    params = [p for group in optimizer.param_groups for p in group["params"]]
    bad = torch.tensor(0.0 if bool(torch.isfinite(loss.detach()).all()) else 1.0, device=loss.device)
    if reduce_fn is not None:
        bad = reduce_fn(bad)
    norm = None
    if bad.item() == 0:
        loss.backward()
        grads = [p for p in params if p.grad is not None]
        # foreach: one multi-tensor norm and scale instead of ~300 per-parameter calls. clip_grad_norm_ always
        # scales by min(clip / (norm + 1e-6), 1); when that factor is exactly 1 (the usual case) the ~300 in-place
        # multiplies by 1.0 change nothing, so they are skipped (same result).
        norm = torch.nn.utils.get_total_norm([p.grad for p in grads], foreach=True)
        if clip > 0 and bool(clip / (norm + 1e-6) < 1.0):
            torch.nn.utils.clip_grads_with_norm_(grads, clip, norm, foreach=True)
        if bool(torch.isfinite(norm)):
            optimizer.step()
        else:
            bad = torch.tensor(1.0)
    optimizer.zero_grad(set_to_none=True)
    return bool(bad.item() == 0), norm


def build_model(model_cfg, resolution: int) -> Glow:
    """A Glow from the ``model`` config section (flow.config.GlowModelConfig) and the data resolution."""
    return Glow(
        resolution=resolution,
        levels=model_cfg.levels,
        steps=model_cfg.steps,
        hidden_channels=model_cfg.hidden_channels,
        coupling=model_cfg.coupling,
        n_bits=model_cfg.n_bits,
        learn_top=model_cfg.learn_top,
        checkpointing=model_cfg.checkpointing,
    )


def load_model_from_run(run_dir: str | Path, device: str | torch.device = "cpu") -> Glow:
    """Rebuild the Glow of a training run from its last checkpoint (EMA weights if any), in eval mode."""
    from common.checkpoint import averaged_weights
    from common.cli import UserError
    from common.config import config_from_dict
    from common.run import load_run_checkpoint
    from flow.config import GlowConfig

    state = load_run_checkpoint(run_dir)
    if "config" not in state or "glow" not in (state.get("models") or {}):
        raise UserError(f"{run_dir}: checkpoint has no Glow weights (expected keys config and models.glow); "
                        "is this a run of scripts/train_glow.py?")
    cfg = config_from_dict(GlowConfig, state["config"])
    model = build_model(cfg.model, cfg.data.resolution)
    model.load_state_dict(averaged_weights(state, "glow"))
    return model.to(device).eval()
