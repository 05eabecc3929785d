"""Progressive GAN (Karras et al. 2018) generator and discriminator, grown from 4x4 to the configured resolution.

The layers implement the paper's stabilisers: equalised learning rate (weights stored ~N(0, 1) and multiplied at
run time by He's constant ``gain / sqrt(fan_in)``, so Adam's per-parameter step size is the same for every layer),
pixelwise feature normalisation in the generator, and the minibatch standard deviation feature in the critic.

Growth is described by a *level of detail*: ``depth`` indexes the current top block (0 = 4x4, 1 = 8x8, ...) and
``alpha`` in [0, 1] fades the top block in. At ``alpha = 0`` the networks behave exactly like the previous depth
(the generator's previous RGB output upsampled with nearest neighbours, the critic reading the 2x average-pooled
image); at ``alpha = 1`` only the new block is used. The schedule that turns "images seen" into (depth, alpha) is
``phase_at``; it is a pure function so that resuming mid-fade lands on the same alpha.

Images are float in [-1, 1] (the generator output is linear, as in the paper; ``decode`` clamps it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

SQRT2 = math.sqrt(2.0)


class PGGANError(ValueError):
    """Bad model settings (resolution, widths, schedule) for the PGGAN."""


# ----------------------------------------------------------------------------------------------- pure functions


def pixel_norm(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Normalise each pixel's feature vector to unit RMS over channels (dim 1).  # [B, C, ...] -> same"""
    return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + eps)


def minibatch_stddev(x: torch.Tensor, group_size: int = 4) -> torch.Tensor:
    """Append the mean (over features and pixels) of the per-group standard deviation as one extra channel.

    Gives the critic a cheap statistic of sample variety, which discourages mode collapse.
    # [B, C, H, W] -> [B, C + 1, H, W]
    """
    b, c, h, w = x.shape
    g = min(group_size, b)
    if b % g != 0:  # fall back to the whole batch as one group rather than failing on odd batch sizes
        g = b
    y = x.float().reshape(g, -1, c, h, w)  # [G, M, C, H, W]
    y = y - y.mean(dim=0, keepdim=True)
    y = torch.sqrt(y.pow(2).mean(dim=0) + 1e-8)  # [M, C, H, W]
    y = y.mean(dim=(1, 2, 3))  # [M]
    y = y.reshape(-1, 1, 1, 1).repeat(g, 1, h, w).to(x.dtype)  # [B, 1, H, W]
    return torch.cat([x, y], dim=1)


def upsample2x(x: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour 2x upsampling.  # [B, C, H, W] -> [B, C, 2H, 2W]"""
    return F.interpolate(x, scale_factor=2, mode="nearest")


def downsample2x(x: torch.Tensor) -> torch.Tensor:
    """2x average pooling.  # [B, C, H, W] -> [B, C, H/2, W/2]"""
    return F.avg_pool2d(x, 2)


def fade_images(images: torch.Tensor, alpha: float) -> torch.Tensor:
    """Real images at the current level of detail: blend the image with its downsample-then-upsample by alpha.

    During a fade the generator can only produce the previous resolution's detail (alpha = 0) up to the full
    detail (alpha = 1); showing the critic real images with the same amount of detail keeps the game fair.
    # [B, 3, H, W] -> [B, 3, H, W]
    """
    if alpha >= 1.0:
        return images
    coarse = upsample2x(downsample2x(images))
    return torch.lerp(coarse, images, float(alpha))


def resize_to(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """Average-pool square images down to ``resolution`` (a power-of-two fraction of the input size)."""
    while images.shape[-1] > resolution:
        images = downsample2x(images)
    if images.shape[-1] != resolution:
        raise PGGANError(f"cannot resize {images.shape[-1]}x{images.shape[-1]} images to {resolution}x{resolution}")
    return images


def num_levels(resolution: int) -> int:
    """Number of resolutions from 4x4 up to ``resolution`` (4 -> 1, 8 -> 2, ..., 128 -> 6)."""
    levels = int(round(math.log2(resolution))) - 1
    if resolution < 4 or 2 ** (levels + 1) != resolution:
        raise PGGANError(f"model resolution must be a power of two >= 4, got {resolution}")
    return levels


@dataclass(frozen=True)
class Phase:
    """Where training is in the growth schedule."""

    index: int  # 0 .. 2 * levels - 2 (stable 4x4, fade 8x8, stable 8x8, ...)
    depth: int  # top block (0 = 4x4)
    alpha: float  # fade-in of the top block (1 when stable)
    fading: bool
    start: int  # images seen at the phase's start
    length: int  # images in the phase

    @property
    def resolution(self) -> int:
        return 4 * 2**self.depth


def phase_lengths(total_images: int, levels: int, weights: list[float] | tuple[float, ...] = ()) -> list[int]:
    """Images per phase, summing exactly to ``total_images``.

    Phases are: stable 4x4, then (fade, stable) for every further resolution, ``2 * levels - 1`` in all. Without
    weights every phase gets an equal share (the paper: 600k images per fade and per stable phase); with weights
    the shares are proportional to them.
    """
    count = 2 * levels - 1
    weights = list(weights) if weights else [1.0] * count
    if len(weights) != count or any(w <= 0 for w in weights):
        raise PGGANError(f"phase weights: expected {count} positive numbers (stable 4x4, then fade/stable per "
                         f"resolution), got {weights}")
    total_w = sum(weights)
    bounds = [round(total_images * sum(weights[: i + 1]) / total_w) for i in range(count)]
    return [b - a for a, b in zip([0] + bounds[:-1], bounds, strict=True)]


def phase_at(images_seen: int, lengths: list[int]) -> Phase:
    """The growth phase and fade-in alpha after ``images_seen`` images (alpha is linear in images)."""
    start = 0
    for index, length in enumerate(lengths):
        if images_seen < start + length or index == len(lengths) - 1:
            depth = (index + 1) // 2
            fading = index % 2 == 1
            alpha = min(max((images_seen - start) / max(length, 1), 0.0), 1.0) if fading else 1.0
            return Phase(index, depth, alpha, fading, start, length)
        start += length
    raise PGGANError("empty growth schedule")


# ----------------------------------------------------------------------------------------------------- layers


class EqualizedLinear(nn.Module):
    """Dense layer with equalised learning rate: effective weight = stored weight * gain / sqrt(fan_in)."""

    def __init__(self, in_features: int, out_features: int, gain: float = SQRT2):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.scale = gain / math.sqrt(in_features)

    def effective_weight(self) -> torch.Tensor:
        return self.weight * self.scale  # [out, in]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, in] -> [B, out]
        return F.linear(x, self.effective_weight(), self.bias)


class EqualizedConv2d(nn.Module):
    """Conv layer with equalised learning rate (He's constant applied at run time, 'same' padding)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, gain: float = SQRT2):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.scale = gain / math.sqrt(in_channels * kernel_size * kernel_size)
        self.padding = kernel_size // 2

    def effective_weight(self) -> torch.Tensor:
        return self.weight * self.scale  # [out, in, k, k]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, in, H, W] -> [B, out, H, W]
        return F.conv2d(x, self.effective_weight(), self.bias, padding=self.padding)


def lrelu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.2)


def channel_widths(resolution: int, fmap_base: int, fmap_max: int, fmap_min: int = 1) -> list[int]:
    """Feature maps per resolution 4, 8, ..., ``resolution``: min(fmap_max, fmap_base / res), at least fmap_min."""
    return [min(fmap_max, max(fmap_min, fmap_base // (4 * 2**d))) for d in range(num_levels(resolution))]


class GeneratorBlock(nn.Module):
    """Upsample 2x, then two 3x3 convs, each followed by leaky ReLU and pixel norm."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv1 = EqualizedConv2d(c_in, c_out, 3)
        self.conv2 = EqualizedConv2d(c_out, c_out, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, c_in, H, W] -> [B, c_out, 2H, 2W]
        x = upsample2x(x)
        x = pixel_norm(lrelu(self.conv1(x)))
        return pixel_norm(lrelu(self.conv2(x)))


class Generator(nn.Module):
    """z [B, D] -> image [B, 3, R, R] at the level of detail (depth, alpha)."""

    def __init__(self, latent_dim: int = 512, resolution: int = 128, fmap_base: int = 16384, fmap_max: int = 512,
                 fmap_min: int = 1):
        super().__init__()
        self.latent_dim = latent_dim
        self.resolution = resolution
        self.levels = num_levels(resolution)
        self.widths = channel_widths(resolution, fmap_base, fmap_max, fmap_min)
        c0 = self.widths[0]
        # The paper's first layer: dense z -> 4x4 map (its gain sqrt(2)/4 makes each of the 16 pixels a fan_in-
        # normalised unit), then one 3x3 conv.
        self.dense = EqualizedLinear(latent_dim, c0 * 16, gain=SQRT2 / 4)
        self.conv0 = EqualizedConv2d(c0, c0, 3)
        self.blocks = nn.ModuleList(GeneratorBlock(a, b) for a, b in zip(self.widths[:-1], self.widths[1:], strict=True))
        self.to_rgb = nn.ModuleList(EqualizedConv2d(c, 3, 1, gain=1.0) for c in self.widths)

    def features(self, z: torch.Tensor, depth: int = 0) -> torch.Tensor:
        """The feature map after block ``depth`` (0 = the 4x4 block).  # [B, D] -> [B, C_d, 4*2^d, 4*2^d]"""
        x = pixel_norm(z)  # z lives on the sqrt(D) sphere from here on
        x = self.dense(x).reshape(z.shape[0], self.widths[0], 4, 4)
        x = pixel_norm(lrelu(x))
        x = pixel_norm(lrelu(self.conv0(x)))
        for block in self.blocks[:depth]:
            x = block(x)
        return x

    def forward(self, z: torch.Tensor, depth: int | None = None, alpha: float = 1.0) -> torch.Tensor:
        """# [B, D] -> [B, 3, 4*2^depth, 4*2^depth] (full resolution when depth is None)"""
        depth = self.levels - 1 if depth is None else depth
        if not 0 <= depth < self.levels:
            raise PGGANError(f"generator depth must be in 0..{self.levels - 1}, got {depth}")
        if depth == 0 or alpha >= 1.0:
            return self.to_rgb[depth](self.features(z, depth))
        prev = self.features(z, depth - 1)  # [B, C, h, w]
        old = upsample2x(self.to_rgb[depth - 1](prev))  # [B, 3, 2h, 2w]
        new = self.to_rgb[depth](self.blocks[depth - 1](prev))  # [B, 3, 2h, 2w]
        return torch.lerp(old, new, float(alpha))


class DiscriminatorBlock(nn.Module):
    """Two 3x3 convs with leaky ReLU, then 2x average pooling."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv1 = EqualizedConv2d(c_in, c_in, 3)
        self.conv2 = EqualizedConv2d(c_in, c_out, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, c_in, H, W] -> [B, c_out, H/2, W/2]
        return downsample2x(lrelu(self.conv2(lrelu(self.conv1(x)))))


class Discriminator(nn.Module):
    """WGAN critic: image [B, 3, r, r] at the level of detail (depth, alpha) -> score [B]."""

    def __init__(self, resolution: int = 128, fmap_base: int = 16384, fmap_max: int = 512, fmap_min: int = 1,
                 mbstd_group: int = 4):
        super().__init__()
        self.resolution = resolution
        self.levels = num_levels(resolution)
        self.widths = channel_widths(resolution, fmap_base, fmap_max, fmap_min)
        self.mbstd_group = mbstd_group
        c0 = self.widths[0]
        self.from_rgb = nn.ModuleList(EqualizedConv2d(3, c, 1) for c in self.widths)
        # blocks[d - 1] takes resolution 4*2^d down to 4*2^(d-1)
        self.blocks = nn.ModuleList(DiscriminatorBlock(b, a) for a, b in zip(self.widths[:-1], self.widths[1:], strict=True))
        self.conv_final = EqualizedConv2d(c0 + 1, c0, 3)
        self.dense1 = EqualizedLinear(c0 * 16, c0)
        self.dense2 = EqualizedLinear(c0, 1, gain=1.0)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """4x4 features -> score.  # [B, C0, 4, 4] -> [B]"""
        x = minibatch_stddev(x, self.mbstd_group)
        x = lrelu(self.conv_final(x))
        x = lrelu(self.dense1(x.flatten(1)))
        return self.dense2(x).squeeze(1)

    def forward(self, images: torch.Tensor, depth: int | None = None, alpha: float = 1.0) -> torch.Tensor:
        depth = self.levels - 1 if depth is None else depth
        if not 0 <= depth < self.levels:
            raise PGGANError(f"discriminator depth must be in 0..{self.levels - 1}, got {depth}")
        expected = 4 * 2**depth
        if images.shape[-1] != expected or images.shape[-2] != expected:
            raise PGGANError(f"discriminator at depth {depth} expects {expected}x{expected} images, "
                             f"got {tuple(images.shape[-2:])}")
        x = lrelu(self.from_rgb[depth](images))  # [B, C_depth, r, r]
        if depth > 0:
            x = self.blocks[depth - 1](x)  # [B, C_{depth-1}, r/2, r/2]
            if alpha < 1.0:
                old = lrelu(self.from_rgb[depth - 1](downsample2x(images)))
                x = torch.lerp(old, x, float(alpha))
            for d in range(depth - 1, 0, -1):
                x = self.blocks[d - 1](x)
        return self.head(x)


def build_networks(model_cfg, resolution: int) -> tuple[Generator, Discriminator]:
    """Generator and critic from a ``model`` config section (fields latent_dim, fmap_base, fmap_max, fmap_min)."""
    kwargs = dict(fmap_base=model_cfg.fmap_base, fmap_max=model_cfg.fmap_max, fmap_min=model_cfg.fmap_min)
    generator = Generator(model_cfg.latent_dim, resolution, **kwargs)
    discriminator = Discriminator(resolution, mbstd_group=model_cfg.mbstd_group, **kwargs)
    return generator, discriminator


def sample_latents(n: int, latent_dim: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """z ~ N(0, I) projected to the radius-sqrt(D) sphere (where the generator's pixel norm puts it anyway)."""
    z = torch.randn(n, latent_dim, generator=generator)  # [n, D]
    return project_to_sphere(z)


def project_to_sphere(z: torch.Tensor) -> torch.Tensor:
    """Rescale each row to norm sqrt(D).  # [B, D] -> [B, D]"""
    return z * (math.sqrt(z.shape[-1]) / z.norm(dim=-1, keepdim=True).clamp_min(1e-12))

