"""WGAN-GP losses with the PGGAN drift term, as pure functions of critic scores and a critic callable.

The critic loss is ``E[D(fake)] - E[D(real)] + lambda * E[(||grad D(x_hat)||_2 - 1)^2] + drift * E[D(real)^2]``
with ``x_hat`` uniform on segments between real and fake images (Gulrajani et al. 2017; lambda = 10) and the
drift term (epsilon_drift = 0.001, Karras et al. 2018) that keeps the critic's output from wandering off.
The generator loss is ``-E[D(fake)]``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def wasserstein_critic_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """E[D(fake)] - E[D(real)] (the negative of the critic's Wasserstein estimate).  # [B], [B] -> []"""
    return fake_scores.float().mean() - real_scores.float().mean()


def drift_penalty(real_scores: torch.Tensor, weight: float = 0.001) -> torch.Tensor:
    """weight * E[D(real)^2]: keeps critic outputs near zero.  # [B] -> []"""
    return weight * real_scores.float().pow(2).mean()


def interpolate(real: torch.Tensor, fake: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Points on the segments real -> fake, one mixing weight per sample.  # [B, ...] x2, [B] -> [B, ...]"""
    eps = eps.reshape(-1, *([1] * (real.dim() - 1))).to(real.dtype)
    return real + eps * (fake - real)


def gradient_penalty(critic: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor, fake: torch.Tensor,
                     eps: torch.Tensor | None = None, weight: float = 10.0) -> torch.Tensor:
    """weight * E[(||grad_x D(x_hat)||_2 - 1)^2] at random interpolates (differentiable: create_graph=True).

    ``eps`` [B] in [0, 1] is drawn uniformly when not given. # [B, ...] -> []
    """
    if eps is None:
        eps = torch.rand(real.shape[0], device=real.device)
    x_hat = interpolate(real.detach().float(), fake.detach().float(), eps).requires_grad_(True)
    scores = critic(x_hat)  # [B]
    (grad,) = torch.autograd.grad(scores.float().sum(), x_hat, create_graph=True)
    norms = grad.float().flatten(1).norm(dim=1)  # [B]
    return weight * (norms - 1.0).pow(2).mean()


def generator_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    """-E[D(fake)].  # [B] -> []"""
    return -fake_scores.float().mean()
