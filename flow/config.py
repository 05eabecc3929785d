"""Glow's typed configuration: common.config's data/train/log sections plus ``model``, ``glow`` and ``eval``.

Loaded strictly from YAML by ``common.config.load_config(GlowConfig, path, overrides)``; every field is explained
here because the YAML files only set values.

Precision: ``train.precision: bf16`` runs only the coupling networks under autocast. Everything that enters the
likelihood (actnorm, the 1x1 convolutions, the coupling's scale/shift arithmetic, the log-determinant and the
log-prob sums) stays in fp32: the log-determinant is a sum over every pixel and channel (thousands of terms of
similar size), and bf16 keeps only 8 bits of mantissa, so a bf16 sum would be wrong in its third significant digit
and the reported bits per dimension with it. encode/decode always run in fp32 with TF32 off so that
``decode(encode(x)) == x`` holds exactly on the n_bits grid.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from common.config import DataConfig, LogConfig, TrainConfig


@dataclass
class GlowModelConfig:
    """Architecture and the quantisation grid (the image resolution is ``data.resolution``)."""

    # Number of levels L (each: squeeze, K steps, then split except the last). The resolution must be divisible
    # by 2 ** levels.
    levels: int = field(default=3, metadata={"min": 1})
    # Flow steps K per level (actnorm -> invertible 1x1 conv -> coupling).
    steps: int = field(default=8, metadata={"min": 1})
    # Hidden channels of each coupling network (conv3x3 -> ReLU -> conv1x1 -> ReLU -> zero-init conv3x3).
    hidden_channels: int = field(default=64, metadata={"min": 1})
    # affine: scale = sigmoid(h + 2) and shift (Glow's default); additive: shift only (volume preserving).
    coupling: str = field(default="affine", metadata={"choices": ("affine", "additive")})
    # Bits per colour channel of the data grid. Drives the whole likelihood path: quantisation, uniform
    # dequantisation during training, bits per dimension, and the grid decode() returns.
    n_bits: int = field(default=5, metadata={"min": 1})
    # Learn the top level's prior mean / log-std (zero-initialised, so it starts as N(0, I)).
    learn_top: bool = True
    # Recompute each flow step in the backward pass (torch.utils.checkpoint): less memory, ~30% more compute.
    checkpointing: bool = False


@dataclass
class GlowTrainingConfig:
    """Glow-specific training knobs (the shared ones are in ``train``)."""

    # Linear learning-rate warm-up from 0 to train.lr over this many images (Glow is unstable without it).
    warmup_images: int = field(default=10000, metadata={"min": 0})
    # Images used for the data-dependent actnorm initialisation before training (per rank; stats all-reduced).
    init_images: int = field(default=256, metadata={"min": 1})
    # A non-finite loss skips the step (weights untouched); after this many skipped steps in a row the run
    # stops with a clear error (ctx.check_finite) instead of looping forever.
    max_skipped_steps: int = field(default=20, metadata={"min": 0})


@dataclass
class GlowEvalConfig:
    """Test bits per dimension during and after training, and sample grids."""

    # Test bpd every this many images; 0 = only at the end.
    test_every_images: int = field(default=20000, metadata={"min": 0})
    # Test images used by the periodic test bpd (0 = the whole split); the final one always uses the whole split.
    test_images: int = field(default=500, metadata={"min": 0})
    # Batch size of test passes and sampling.
    batch_size: int = field(default=128, metadata={"min": 1})
    # Sampling temperatures of the sample grids (one grid per temperature).
    temperatures: list[float] = field(default_factory=lambda: [0.5, 0.7, 1.0])
    # Images per sample grid.
    grid_images: int = field(default=32, metadata={"min": 1})


@dataclass
class GlowConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: GlowModelConfig = field(default_factory=GlowModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)
    glow: GlowTrainingConfig = field(default_factory=GlowTrainingConfig)
    eval: GlowEvalConfig = field(default_factory=GlowEvalConfig)
