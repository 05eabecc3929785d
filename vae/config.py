"""The VAE's typed configuration: common.config's data/train/log sections plus ``model``, ``vae`` and ``eval``.

Loaded strictly from YAML by ``common.config.load_config(VAEConfig, path, overrides)``; every field is explained
here because the YAML files only set values.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from common.config import DataConfig, LogConfig, TrainConfig


@dataclass
class VAEModelConfig:
    """Architecture and decoder likelihood (the image resolution is ``data.resolution``)."""

    # Size of the Gaussian latent z (the editing space).
    latent_dim: int = field(default=128, metadata={"min": 1})
    # Channels of the stride-2 encoder blocks, first to last; the decoder mirrors them. The resolution must be
    # divisible by 2 ** len(widths) (64x64 with 5 widths ends at 2x2, like PyTorch-VAE's VanillaVAE).
    widths: list[int] = field(default_factory=lambda: [32, 64, 128, 256, 512])
    # Normalisation after each conv: batch | group | none. GroupNorm behaves identically in train and eval mode.
    norm: str = field(default="batch", metadata={"choices": ("batch", "group", "none")})
    # Decoder output: tanh (mean bounded to [-1, 1]) | linear (unbounded mean, clamped to [-1, 1] for images).
    output: str = field(default="tanh", metadata={"choices": ("tanh", "linear")})
    # Standard deviation of the Gaussian decoder p(x|z) in [-1, 1] pixel units. The reconstruction loss is
    # sum_pixels (x - x_mean)^2 / (2 sigma^2) + log sigma + 0.5 log(2 pi): a smaller sigma weighs reconstruction
    # more against the KL (sharper images, more active latent dimensions).
    decoder_sigma: float = field(default=0.1, metadata={"min": 1e-4})
    # Learn sigma (one scalar, initialised at decoder_sigma) instead of keeping it fixed.
    learn_sigma: bool = False


@dataclass
class VAELossConfig:
    """The objective: total = recon + beta_t * kl (nats per image; kl is positive and summed over latent dims)."""

    # Weight of the KL term. 1 gives the true negative ELBO; > 1 is beta-VAE (smoother, more disentangled
    # latents, blurrier images); < 1 favours reconstruction. This replaces PyTorch-VAE's unexplained kld_weight.
    beta: float = field(default=1.0, metadata={"min": 0.0})
    # Linear KL warm-up: beta_t = beta * min(1, images_seen / kl_warmup_images); 0 disables it. Warm-up keeps
    # the KL from collapsing latent dimensions before the decoder has learned to use them.
    kl_warmup_images: int = field(default=0, metadata={"min": 0})


@dataclass
class VAEEvalConfig:
    """Validation during training and the final test metrics."""

    # Validation loss (same formula and scale as training, on the valid split) every this many images; 0 = never.
    val_every_images: int = field(default=10000, metadata={"min": 0})
    # How many validation images each validation pass uses (0 = the whole split).
    val_images: int = field(default=1000, metadata={"min": 0})
    # How many test images the final reconstruction PSNR uses (0 = the whole split).
    test_images: int = field(default=0, metadata={"min": 0})
    # Batch size for validation and test passes.
    batch_size: int = field(default=256, metadata={"min": 1})
    # Images shown in the reconstruction / sample grids.
    grid_images: int = field(default=32, metadata={"min": 1})


@dataclass
class VAEConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: VAEModelConfig = field(default_factory=VAEModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)
    vae: VAELossConfig = field(default_factory=VAELossConfig)
    eval: VAEEvalConfig = field(default_factory=VAEEvalConfig)
