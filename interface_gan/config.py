"""The PGGAN's typed configuration: common.config's data/train/log sections plus ``model``, ``pggan`` and ``edit``.

Loaded strictly from YAML by ``common.config.load_config(PGGANConfig, path, overrides)``; every field is
explained here because the YAML files only set values. The training length is ``train.total_images``: the growth
schedule splits it into phases (stable 4x4, then fade + stable for every further resolution) by
``pggan.phase_weights``. ``train.lr`` is Adam's learning rate for both networks (betas are the paper's (0, 0.99))
and ``train.ema_decay`` the generator average's decay (0.999 in the paper's code). ``train.batch_size`` is only
the fallback when ``pggan.batch_sizes`` is empty.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from common.config import DataConfig, LogConfig, TrainConfig


@dataclass
class PGGANModelConfig:
    """Network widths and latent size (the final resolution is ``data.resolution``, a power of two >= 4)."""

    # Size of z. z ~ N(0, I) is pixel-normalised in the generator, so it effectively lives on the sqrt(D) sphere.
    latent_dim: int = field(default=512, metadata={"min": 1})
    # Feature maps at resolution r: min(fmap_max, max(fmap_min, fmap_base // r)); the paper uses 16384 / 512
    # (512 channels up to 32x32, 256 at 64, 128 at 128).
    fmap_base: int = field(default=16384, metadata={"min": 1})
    fmap_max: int = field(default=512, metadata={"min": 1})
    fmap_min: int = field(default=1, metadata={"min": 1})
    # Group size of the critic's minibatch standard deviation feature.
    mbstd_group: int = field(default=4, metadata={"min": 1})


@dataclass
class PGGANTrainingConfig:
    """The progressive schedule and the WGAN-GP objective."""

    # Relative lengths of the phases [stable 4x4, fade 8x8, stable 8x8, fade 16x16, ...] (2 * levels - 1 numbers);
    # they are scaled so that the phases sum to train.total_images. Empty = equal shares (the paper: 600k images
    # per fade and per stable phase).
    phase_weights: list[float] = field(default_factory=list)
    # Minibatch per resolution 4, 8, 16, ... (one entry per level); empty = train.batch_size everywhere.
    batch_sizes: list[int] = field(default_factory=list)
    # Gradient-penalty weight lambda (WGAN-GP) and drift weight epsilon_drift.
    gp_weight: float = field(default=10.0, metadata={"min": 0.0})
    drift_weight: float = field(default=0.001, metadata={"min": 0.0})
    # Lazy gradient penalty: compute the penalty on every gp_every-th critic step only, weighted gp_every x
    # gp_weight, as StyleGAN2 does for R1 (its expected weight per step is unchanged). 1 = every step (WGAN-GP as
    # published, the default). Each skipped penalty saves about a third of an iteration (docs/results.md).
    gp_every: int = field(default=1, metadata={"min": 1})
    # Adam's betas (the paper: 0 and 0.99) and epsilon.
    beta1: float = field(default=0.0, metadata={"min": 0.0})
    beta2: float = field(default=0.99, metadata={"min": 0.0})
    adam_eps: float = field(default=1e-8, metadata={"min": 0.0})
    # Images in the fixed-latent sample grids (EMA generator; saved under run/samples/ at every phase change).
    grid_images: int = field(default=64, metadata={"min": 1})


@dataclass
class InterFaceGANConfig:
    """Finding directions in the trained generator's z space (scripts/edit_interface_gan.py)."""

    # Latents sampled, generated and scored by the attribute predictor (saved in run/directions/samples.npz).
    samples: int = field(default=20000, metadata={"min": 10})
    # Fraction of the samples kept at each end of the score ranking to fit a boundary (InterFaceGAN: 0.02 of
    # 500k; with fewer samples a larger fraction keeps enough points).
    boundary_fraction: float = field(default=0.25, metadata={"min": 0.0})
    # Default predictor run used to score samples.
    predictor: str = "runs/predictor/synthetic"
    # GANSpace: which generator block's output (0 = 4x4) and how many samples for the PCA.
    ganspace_depth: int = field(default=0, metadata={"min": 0})
    ganspace_samples: int = field(default=5000, metadata={"min": 10})
    # GAN inversion (encode): Adam steps, learning rate, random starts per image, feature-loss weight.
    inversion_steps: int = field(default=300, metadata={"min": 1})
    inversion_lr: float = field(default=0.1, metadata={"min": 0.0})
    inversion_starts: int = field(default=8, metadata={"min": 1})
    inversion_feature_weight: float = field(default=1.0, metadata={"min": 0.0})


@dataclass
class PGGANConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: PGGANModelConfig = field(default_factory=PGGANModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)
    pggan: PGGANTrainingConfig = field(default_factory=PGGANTrainingConfig)
    edit: InterFaceGANConfig = field(default_factory=InterFaceGANConfig)
