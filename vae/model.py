"""The convolutional VAE: model, its pure loss functions, and the editable wrapper used by edits and evaluation.

Architecture (PyTorch-VAE's VanillaVAE shape, made configurable): the encoder is ``len(widths)`` stride-2
3x3 conv blocks (conv -> norm -> LeakyReLU), so a ``R x R`` image becomes ``widths[-1] x R/2^L x R/2^L`` and two
linear heads give the posterior mean and log-variance. The decoder mirrors it with stride-2 transposed convs
back to ``R x R`` and a final 3x3 conv to RGB. With latent 128 and widths 32..512 at 64x64 it has ~3.9M
parameters, like VanillaVAE.

Likelihood: the decoder outputs the mean of a Gaussian over [-1, 1] images (the same range as the training
cache: no [0, 1] targets anywhere, see PyTorch-VAE issue #48). The output is either ``tanh`` (mean bounded by
construction) or ``linear`` (unbounded mean, clamped to [-1, 1] only when images are produced). The decoder's
standard deviation sigma is one scalar (in [-1, 1] pixel units), fixed or learned.

Losses (pure functions, nats; the same formula and scale for training and validation):
    recon = mean_b sum_pixels [ (x - x_mean)^2 / (2 sigma^2) + log sigma + 0.5 log(2 pi) ]   (Gaussian NLL)
    kl    = mean_b sum_d 0.5 (mu^2 + exp(logvar) - 1 - logvar)                            (KL(q(z|x) || N(0, I)))
    total = recon + beta_t * kl,   beta_t = beta * min(1, images_seen / kl_warmup_images)
With beta = 1 the total is the negative ELBO per image. A fixed sigma only scales the squared error:
beta = 1 with sigma s is the same optimum as plain sum-of-squares with a KL weight of 2 s^2.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from common.cli import UserError

NORMS = ("batch", "group", "none")
OUTPUTS = ("tanh", "linear")


class VAEModelError(UserError):
    """A model configuration that cannot describe a valid VAE (names the config key and what was expected).

    A ``common.cli.UserError`` (hence a ValueError): scripts report it in one line with exit code 2.
    """


# ----------------------------------------------------------------------------------------------------------
# Pure loss functions


def gaussian_nll(x: torch.Tensor, x_mean: torch.Tensor, log_sigma: torch.Tensor | float) -> torch.Tensor:
    """Per-image negative log-likelihood of ``x`` under N(x_mean, sigma^2 I), summed over pixels, in nats.

    x, x_mean: [B, C, H, W] in [-1, 1]; log_sigma: scalar (float or 0-d tensor). Returns [B].
    Computed in float32 even under autocast: a sum over thousands of pixels loses too much in bf16.
    """
    if x.shape != x_mean.shape:
        raise ValueError(f"gaussian_nll: x has shape {tuple(x.shape)} but x_mean has {tuple(x_mean.shape)}")
    x, x_mean = x.float(), x_mean.float()
    log_sigma = torch.as_tensor(log_sigma, dtype=torch.float32, device=x.device)
    inv_var = torch.exp(-2.0 * log_sigma)  # []
    per_pixel = 0.5 * (x - x_mean).pow(2) * inv_var + log_sigma + 0.5 * math.log(2 * math.pi)  # [B, C, H, W]
    return per_pixel.flatten(1).sum(dim=1)  # [B]


def reconstruction_loss(x: torch.Tensor, x_mean: torch.Tensor, log_sigma: torch.Tensor | float) -> torch.Tensor:
    """Gaussian NLL summed over pixels and averaged over the batch (the project-wide reduction). Returns []."""
    return gaussian_nll(x, x_mean, log_sigma).mean()


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, 1)) per image and latent dimension, in nats (always >= 0).

    mu, logvar: [B, D]. Returns [B, D]; the loss sums over D and averages over B (see ``kl_loss``).
    """
    mu, logvar = mu.float(), logvar.float()
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)  # [B, D]


def kl_loss(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL summed over latent dimensions and averaged over the batch. Returns []."""
    return kl_divergence(mu, logvar).sum(dim=1).mean()


def kl_weight(beta: float, warmup_images: int, images_seen: int) -> float:
    """The KL weight after ``images_seen`` images: beta, ramped linearly from 0 over ``warmup_images`` (0 = none)."""
    if warmup_images <= 0:
        return float(beta)
    return float(beta) * min(1.0, images_seen / warmup_images)


def vae_loss(x: torch.Tensor, x_mean: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
             log_sigma: torch.Tensor | float, beta: float) -> dict[str, torch.Tensor]:
    """The training objective and its parts: ``total = recon + beta * kl`` (all []), plus ``kl_per_dim`` [D].

    Used unchanged for validation, so train and validation numbers are directly comparable.
    """
    recon = reconstruction_loss(x, x_mean, log_sigma)  # []
    kl_dims = kl_divergence(mu, logvar)  # [B, D]
    kl = kl_dims.sum(dim=1).mean()  # []
    return {"total": recon + beta * kl, "recon": recon, "kl": kl, "kl_per_dim": kl_dims.mean(dim=0)}


# ----------------------------------------------------------------------------------------------------------
# Model


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        # 8 groups when the width allows: per-image statistics, so train and eval modes behave the same
        groups = math.gcd(8, channels)
        return nn.GroupNorm(groups, channels)
    return nn.Identity()


# On the CPU a 3x3 convolution touching a map of at most GEMM_MAX_POSITIONS positions (the 2x2 bottom of the VAE)
# runs as im2col + one matrix multiply: oneDNN's convolution kernels for such maps reach a fraction of its GEMM
# rate (about half the speed, docs/findings.md "Speed on CPUs"). Same parameters and the same sums; only the
# order of the fp32 accumulation differs. Larger maps stay convolutions (there the GEMM's copies cost more).
GEMM_MAX_POSITIONS = 4


def _gemm_path(x: torch.Tensor, small_side: int) -> bool:
    return x.device.type == "cpu" and small_side * small_side <= GEMM_MAX_POSITIONS


def _like_input(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """y in x's memory format (channels_last or contiguous), as a convolution would return it."""
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return y.contiguous(memory_format=torch.channels_last)
    return y.contiguous()


class _Conv2d(nn.Conv2d):
    """nn.Conv2d (same parameters and state dict) that runs as im2col + GEMM when its output map is tiny."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s, p = self.kernel_size[0], self.stride[0], self.padding[0]
        out_h, out_w = (x.shape[2] + 2 * p - k) // s + 1, (x.shape[3] + 2 * p - k) // s + 1
        if not _gemm_path(x, min(out_h, out_w)):
            return super().forward(x)
        cols = nn.functional.unfold(x, k, padding=p, stride=s)  # [B, C*k*k, out_h*out_w]
        rows = cols.transpose(1, 2).reshape(-1, cols.shape[1])  # [B*out_h*out_w, C*k*k]
        y = nn.functional.linear(rows, self.weight.flatten(1), self.bias)  # [B*out_h*out_w, C_out]
        return _like_input(y.view(x.shape[0], out_h, out_w, -1).permute(0, 3, 1, 2), x)  # [B, C_out, h, w]


class _ConvTranspose2d(nn.ConvTranspose2d):
    """nn.ConvTranspose2d (same parameters and state dict) that runs as GEMM + col2im when its input map is tiny."""

    def forward(self, x: torch.Tensor, output_size=None) -> torch.Tensor:
        if output_size is not None or not _gemm_path(x, min(x.shape[2], x.shape[3])):
            return super().forward(x, output_size)
        k, s, p, op = self.kernel_size[0], self.stride[0], self.padding[0], self.output_padding[0]
        b, c, h, w = x.shape
        out_h, out_w = (h - 1) * s - 2 * p + k + op, (w - 1) * s - 2 * p + k + op
        rows = x.permute(0, 2, 3, 1).reshape(b * h * w, c)  # [B*h*w, C_in]
        cols = torch.matmul(rows, self.weight.flatten(1))  # [B*h*w, C_out*k*k]
        cols = cols.view(b, h * w, -1).transpose(1, 2)  # [B, C_out*k*k, h*w]
        y = nn.functional.fold(cols, (out_h, out_w), k, padding=p, stride=s)  # [B, C_out, out_h, out_w]
        if self.bias is not None:
            y = y + self.bias.view(1, -1, 1, 1).to(y.dtype)
        return _like_input(y, x)


def _down(c_in: int, c_out: int, norm: str) -> nn.Sequential:
    return nn.Sequential(_Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=norm == "none"),
                         _norm(norm, c_out), nn.LeakyReLU(0.2))


def _up(c_in: int, c_out: int, norm: str) -> nn.Sequential:
    # kernel 3, padding 1, output_padding 1: exactly doubles H and W
    return nn.Sequential(_ConvTranspose2d(c_in, c_out, 3, stride=2, padding=1, output_padding=1,
                                          bias=norm == "none"),
                         _norm(norm, c_out), nn.LeakyReLU(0.2))


def check_architecture(resolution: int, widths) -> int:
    """The encoder's final spatial size for ``resolution``; raises VAEModelError when the widths cannot fit."""
    blocks = len(widths)
    bottom = resolution // 2 ** blocks
    if bottom < 1 or bottom * 2 ** blocks != resolution:
        raise VAEModelError(f"model.widths: {blocks} stride-2 blocks need a resolution divisible by {2 ** blocks}, "
                            f"got data.resolution={resolution}")
    return bottom


class VAEOutput(NamedTuple):
    """What ``ConvVAE.forward`` returns (a NamedTuple so DDP and torch.compile can traverse it)."""

    x_mean: torch.Tensor  # [B, 3, H, W] decoder mean ([-1, 1] for tanh; unclamped for linear)
    mu: torch.Tensor  # [B, D]
    logvar: torch.Tensor  # [B, D]
    z: torch.Tensor  # [B, D] the sample that was decoded


class ConvVAE(nn.Module):
    """Convolutional VAE on ``[B, 3, R, R]`` images in [-1, 1] with a ``latent_dim``-dimensional Gaussian latent."""

    def __init__(self, resolution: int = 64, latent_dim: int = 128, widths: tuple[int, ...] = (32, 64, 128, 256, 512),
                 norm: str = "batch", output: str = "tanh", decoder_sigma: float = 0.1, learn_sigma: bool = False):
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if not widths or any(w <= 0 for w in widths):
            raise VAEModelError(f"model.widths: expected a non-empty list of positive ints, got {list(widths)}")
        if norm not in NORMS:
            raise VAEModelError(f"model.norm: expected one of {', '.join(NORMS)}, got {norm!r}")
        if output not in OUTPUTS:
            raise VAEModelError(f"model.output: expected one of {', '.join(OUTPUTS)}, got {output!r}")
        if latent_dim <= 0:
            raise VAEModelError(f"model.latent_dim: expected a positive int, got {latent_dim}")
        if decoder_sigma <= 0:
            raise VAEModelError(f"model.decoder_sigma: expected a positive float, got {decoder_sigma}")
        bottom = check_architecture(resolution, widths)
        self.resolution, self.latent_dim, self.widths = resolution, latent_dim, widths
        self.norm_kind, self.output, self.bottom = norm, output, bottom

        blocks, c_in = [], 3
        for w in widths:
            blocks.append(_down(c_in, w, norm))
            c_in = w
        self.encoder = nn.Sequential(*blocks)
        flat = widths[-1] * bottom * bottom
        self.fc_mu = nn.Linear(flat, latent_dim)
        self.fc_logvar = nn.Linear(flat, latent_dim)

        self.decoder_input = nn.Linear(latent_dim, flat)
        rev = widths[::-1]
        ups = [_up(rev[i], rev[i + 1], norm) for i in range(len(rev) - 1)]
        ups.append(_up(rev[-1], rev[-1], norm))  # the last doubling keeps the narrowest width
        self.decoder = nn.Sequential(*ups)
        self.to_rgb = nn.Conv2d(rev[-1], 3, 3, padding=1)

        # log sigma of the Gaussian decoder, in [-1, 1] pixel units; a parameter only when learned
        init = torch.tensor(math.log(decoder_sigma))
        if learn_sigma:
            self.log_sigma = nn.Parameter(init)
        else:
            self.register_buffer("log_sigma", init)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior parameters: x [B, 3, R, R] in [-1, 1] -> (mu [B, D], logvar [B, D])."""
        if x.dim() != 4 or x.shape[1] != 3 or x.shape[2] != self.resolution or x.shape[3] != self.resolution:
            raise ValueError(f"ConvVAE.encode: expected images [B, 3, {self.resolution}, {self.resolution}], "
                             f"got {tuple(x.shape)}")
        h = self.encoder(x).flatten(1)  # [B, widths[-1] * bottom^2]
        return self.fc_mu(h), self.fc_logvar(h)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Decoder mean: z [B, D] -> [B, 3, R, R] (in [-1, 1] for tanh output; clamp yourself for linear)."""
        h = self.decoder_input(z).view(z.shape[0], self.widths[-1], self.bottom, self.bottom)  # [B, C, b, b]
        h = self.to_rgb(self.decoder(h))  # [B, 3, R, R]
        return torch.tanh(h) if self.output == "tanh" else h

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """z = mu + sigma * eps, eps ~ N(0, I): a differentiable sample of q(z|x). [B, D]"""
        return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)

    def forward(self, x: torch.Tensor) -> VAEOutput:
        mu, logvar = self.encode(x)  # [B, D] each
        z = self.reparameterize(mu, logvar)
        return VAEOutput(self.decode(z), mu, logvar, z)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build_model(model_cfg, resolution: int) -> ConvVAE:
    """The VAE described by a ``VAEModelConfig`` (``cfg.model``) at ``resolution`` (``cfg.data.resolution``)."""
    return ConvVAE(resolution=resolution, latent_dim=model_cfg.latent_dim, widths=tuple(model_cfg.widths),
                   norm=model_cfg.norm, output=model_cfg.output, decoder_sigma=model_cfg.decoder_sigma,
                   learn_sigma=model_cfg.learn_sigma)


# ----------------------------------------------------------------------------------------------------------
# The editable model (common.editing.EditableModel) and loading a trained run


class EditableVAE:
    """The VAE seen by the shared editing pipeline: latents are the posterior means, images are decoder means.

    ``encode`` returns the posterior mean (no sampling noise, so an unedited round trip is deterministic);
    ``decode`` returns the decoder's Gaussian mean clamped to [-1, 1]; ``sample_latents`` draws from the prior.
    """

    latent_on_sphere = False

    def __init__(self, vae: ConvVAE, device: str | torch.device = "cpu", batch_size: int = 256):
        self.vae = vae.to(device).eval()
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.latent_dim = vae.latent_dim
        self.resolution = vae.resolution

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, R, R] in [-1, 1] -> posterior means [B, D] (float32, on the images' device)."""
        out = [self.vae.encode(chunk.to(self.device, torch.float32))[0]
               for chunk in images.split(self.batch_size)]
        return torch.cat(out).to(images.device)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents [B, D] -> images [B, 3, R, R] in [-1, 1] (float32, on the latents' device)."""
        out = [self.vae.decode(chunk.to(self.device, torch.float32)).clamp(-1, 1)
               for chunk in latents.split(self.batch_size)]
        return torch.cat(out).to(latents.device)

    def sample_latents(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n draws from the prior N(0, I): [n, D] on the CPU (seeded by ``generator``)."""
        return torch.randn(n, self.latent_dim, generator=generator)

    def latent_flow_layout(self) -> None:
        return None  # the pose cflow is a dense flow on all of z

    def encode_report(self) -> dict:
        return {}  # the posterior mean: nothing to report


def load_model_from_run(run_dir: str | Path, device: str | torch.device = "cpu") -> EditableVAE:
    """Rebuild a trained VAE from ``run_dir/checkpoints/last.pt`` (EMA weights when the run kept them).

    The architecture comes from the checkpoint's own config, so the run folder alone is enough.
    """
    from common.checkpoint import averaged_weights
    from common.config import config_from_dict
    from common.run import load_run_checkpoint
    from vae.config import VAEConfig

    state = load_run_checkpoint(run_dir)
    if "config" not in state or "models" not in state or "vae" not in state["models"]:
        raise VAEModelError(f"{run_dir}: checkpoint has no VAE weights (expected keys config and models.vae); "
                            "is this a run of scripts/train_vae.py?")
    cfg = config_from_dict(VAEConfig, state["config"])
    vae = build_model(cfg.model, cfg.data.resolution)
    vae.load_state_dict(averaged_weights(state, "vae"))  # EMA weights when the run kept an average
    return EditableVAE(vae, device)
