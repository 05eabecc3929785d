"""The PGGAN's training: one WGAN-GP iteration (timed as is by scripts/benchmark.py) and its ``Trainer`` for fit.

Growth: stable 4x4, then fade-in + stable phases for every further resolution up to data.resolution; the phases
split train.total_images by pggan.phase_weights (interface_gan/pggan.py: phase_lengths, phase_at). Real images are
average-pooled to the current resolution and faded exactly like the generator's output (fade_images).
Objective: WGAN-GP (lambda = pggan.gp_weight; with pggan.gp_every = k > 1 the penalty is lazy: computed on every
k-th critic step only, weighted k x lambda) with the drift term pggan.drift_weight, one critic step per
generator step, Adam(train.lr, betas (pggan.beta1, pggan.beta2)), both optimizers reset when a new resolution
starts fading in (as the paper's code does). The EMA generator (train.ema_decay, with a warm-up) is what
sampling, editing and inversion use.

Logged: loss/d, loss/g, loss/wasserstein, loss/gp, loss/drift, progress/resolution, progress/alpha,
perf/img_per_s; fixed-latent EMA sample grids at the start, at every phase end and every log.image_every_images
(TensorBoard and run/samples/*.png, described line by line in run/samples/index.txt). metrics.json: the schedule
(resolution, phase_lengths, batch_sizes), the final losses, train_seconds and img_per_s of this process.

Batches are drawn with replacement by a generator whose state is checkpointed ("sampler_rng"), so resuming (even
mid-fade) gives the same parameters as an uninterrupted run. The checkpoint also records the phase, depth and
alpha it was written at and the phase lengths.
"""

from __future__ import annotations

import copy
import time

import numpy as np
import torch

from common.cache import CelebACache, default_cache_dir
from common.checkpoint import CheckpointError, ema_weights
from common.cli import UserError
from common.run import adam, lerp_parameters_
from common.training import StepTools, Trainer
from interface_gan.config import PGGANConfig
from interface_gan.losses import drift_penalty, generator_loss, gradient_penalty, wasserstein_critic_loss
from interface_gan.pggan import (
    build_networks,
    fade_images,
    num_levels,
    phase_at,
    phase_lengths,
    resize_to,
    sample_latents,
    upsample2x,
)


def growth_schedule(cfg: PGGANConfig, source: str = "config") -> tuple[list[int], list[int]]:
    """(images per phase, batch size per resolution 4..data.resolution); UserError naming ``source`` when the
    batch sizes do not match the levels (PGGANError when data.resolution is not a power of two >= 4)."""
    resolution = cfg.data.resolution
    levels = num_levels(resolution)
    lengths = phase_lengths(cfg.train.total_images, levels, cfg.pggan.phase_weights)
    batch_sizes = list(cfg.pggan.batch_sizes) or [cfg.train.batch_size] * levels
    if len(batch_sizes) != levels:
        raise UserError(f"{source}: key 'pggan.batch_sizes' must list {levels} batch sizes (resolutions 4.."
                        f"{resolution}), got {len(batch_sizes)}")
    return lengths, batch_sizes


def real_batch(dataset: CelebACache, indices: torch.Tensor, flips: torch.Tensor, device) -> torch.Tensor:
    """Cache items -> [B, 3, R, R] float in [-1, 1], flipped where ``flips`` is True."""
    if hasattr(dataset, "images_uint8"):
        array = dataset.images_uint8(indices.numpy())  # [B, R, R, 3] uint8
        x = torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    else:
        x = torch.stack([dataset[int(i)]["image"] for i in indices])
    x = torch.where(flips[:, None, None, None], x.flip(-1), x)
    return x.to(device, non_blocking=True)


def make_optimizers(cfg: PGGANConfig, generator, discriminator):
    """Fresh Adam for the generator and the critic (common.run.adam: fused where the device allows)."""
    kw = dict(lr=cfg.train.lr, betas=(float(cfg.pggan.beta1), float(cfg.pggan.beta2)), eps=cfg.pggan.adam_eps)
    return adam(generator.parameters(), **kw), adam(discriminator.parameters(), **kw)


def lazy_gp_weight(gp_weight: float, gp_every: int, step: int) -> float:
    """The penalty weight of critic step ``step`` (0-based): gp_every x gp_weight on every gp_every-th step, else 0.

    Over any gp_every consecutive steps the weights sum to gp_every x gp_weight, as with the penalty on every step.
    """
    return gp_weight * gp_every if step % gp_every == 0 else 0.0


def train_step(g_model: torch.nn.Module, d_model: torch.nn.Module, discriminator: torch.nn.Module,
               opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer, real: torch.Tensor, z_d: torch.Tensor,
               z_g: torch.Tensor, eps: torch.Tensor, depth: int | None, alpha: float, tools: StepTools,
               gp_weight: float = 10.0, drift_weight: float = 0.001,
               clip: float | None = None) -> dict[str, torch.Tensor]:
    """One WGAN-GP iteration at level of detail (``depth``, ``alpha``): a critic step, then a generator step.

    ``real`` [B, 3, r, r] in [-1, 1] at the current resolution (already faded), ``z_d`` / ``z_g`` [B, D] latents
    for the critic's and the generator's step, ``eps`` [B] the gradient penalty's mixing weights. ``g_model`` and
    ``d_model`` are what is called (DDP/compiled), ``discriminator`` the bare critic, whose weights need no
    gradient in the generator step. Critic: E[D(fake)] - E[D(real)] + GP + drift; generator: -E[D(G(z))]; each
    checked finite (loss/d, loss/g) before its backward, clip and Adam step. ``gp_weight`` 0 skips the penalty
    (not computed: a lazy penalty's off step). Returns detached d, g, wasserstein (the critic's estimate
    E[D(real)] - E[D(fake)]), gp and drift.
    """
    with tools.autocast():
        with torch.no_grad():
            fake = g_model(z_d, depth, alpha)
        real_scores = d_model(real, depth, alpha)
        fake_scores = d_model(fake, depth, alpha)
        wdist = wasserstein_critic_loss(real_scores, fake_scores)
        gp = (gradient_penalty(lambda x: d_model(x, depth, alpha), real, fake, eps, gp_weight) if gp_weight > 0
              else real_scores.new_zeros((), dtype=torch.float32))  # a lazy penalty's skipped step: no graph
        drift = drift_penalty(real_scores, drift_weight)
        d_loss = wdist + gp + drift
    tools.check_finite(d_loss, "loss/d")
    tools.step(d_loss, opt_d, clip=clip)

    discriminator.requires_grad_(False)  # no critic weight gradients needed here: saves a third of its backward
    try:
        with tools.autocast():
            g_loss = generator_loss(d_model(g_model(z_g, depth, alpha), depth, alpha))
        tools.check_finite(g_loss, "loss/g")
        tools.step(g_loss, opt_g, clip=clip)
    finally:
        discriminator.requires_grad_(True)
    return {"d": d_loss.detach(), "g": g_loss.detach(), "wasserstein": -wdist.detach(), "gp": gp.detach(),
            "drift": drift.detach()}


class PGGANTrainer(Trainer):
    def __init__(self, cfg: PGGANConfig, ctx):
        self.cfg, self.ctx = cfg, ctx
        resolution = cfg.data.resolution
        self.lengths, self.batch_sizes = growth_schedule(cfg, str(getattr(ctx.args, "config", None) or "config"))
        cache_dir = cfg.data.cache or default_cache_dir(cfg.data.root, resolution)
        self.dataset = CelebACache(cache_dir, "train", hflip=False)  # flips drawn from self.rng, checkpointed
        if self.dataset.resolution != resolution:
            raise UserError(f"{cache_dir}: cache resolution {self.dataset.resolution} differs from data.resolution "
                            f"{resolution}")
        torch.manual_seed(cfg.train.seed)  # the same initial weights on every rank and every (re)start
        generator, discriminator = build_networks(cfg.model, resolution)
        g_ema = copy.deepcopy(generator).eval().requires_grad_(False)
        # blocks above the current resolution get no gradient until they are grown in
        self.g_model = ctx.wrap(generator, find_unused_parameters=True)
        self.d_model = ctx.wrap(discriminator, find_unused_parameters=True)
        self.generator, self.discriminator = ctx.unwrap(self.g_model), ctx.unwrap(self.d_model)
        self.g_ema = g_ema.to(ctx.device)
        self.opt_g, self.opt_d = make_optimizers(cfg, self.generator, self.discriminator)
        # One generator drives batches, flips, z and the GP's mixing weights: its state in the checkpoint makes a
        # resumed run identical to an uninterrupted one. Ranks differ by seed.
        self.rng = torch.Generator().manual_seed(cfg.train.seed * 1000 + ctx.rank + 1)
        self.grid_z = sample_latents(cfg.pggan.grid_images, cfg.model.latent_dim,
                                     torch.Generator().manual_seed(1234)).to(ctx.device)
        self.samples_dir = ctx.out / "samples"
        if ctx.is_main:
            self.samples_dir.mkdir(parents=True, exist_ok=True)
        self.losses: dict[str, float] = {}
        self.phase = phase_at(0, self.lengths)  # the phase of the latest step
        self.start_time, self.start_images = time.perf_counter(), 0

    def state_dict(self) -> dict:
        phase = phase_at(self.images_seen, self.lengths)
        return {
            "models": {"generator": self.generator.state_dict(), "discriminator": self.discriminator.state_dict()},
            "ema": {"generator": self.g_ema.state_dict()},
            "optimizers": {"generator": self.opt_g.state_dict(), "discriminator": self.opt_d.state_dict()},
            "sampler_rng": self.rng.get_state(),
            "phase": phase.index, "depth": phase.depth, "alpha": phase.alpha, "phase_lengths": self.lengths,
        }

    def load_state_dict(self, state: dict) -> None:
        self.generator.load_state_dict(state["models"]["generator"])
        self.discriminator.load_state_dict(state["models"]["discriminator"])
        averaged = ema_weights(state, "generator")
        if averaged is None:
            raise CheckpointError("checkpoint has no averaged generator (expected ema.generator); cannot resume")
        self.g_ema.load_state_dict(averaged)
        self.opt_g.load_state_dict(state["optimizers"]["generator"])
        self.opt_d.load_state_dict(state["optimizers"]["discriminator"])
        self.rng.set_state(state["sampler_rng"])
        self.start_time, self.start_images = time.perf_counter(), int(state["images_seen"])
        if self.start_images == 0:
            self.sample_grid("phase00", 0)

    def start(self) -> None:
        self.start_time, self.start_images = time.perf_counter(), 0
        self.sample_grid("phase00", 0)

    def train_step(self) -> tuple[int, dict]:
        cfg, ctx, rng = self.cfg, self.ctx, self.rng
        phase = self.phase = phase_at(self.images_seen, self.lengths)
        depth, alpha = phase.depth, phase.alpha
        batch = self.batch_sizes[depth]
        indices = torch.randint(len(self.dataset), (batch,), generator=rng)
        flips = (torch.rand(batch, generator=rng) < 0.5) & bool(cfg.data.hflip)
        real = fade_images(resize_to(real_batch(self.dataset, indices, flips, ctx.device), phase.resolution), alpha)
        z_d = sample_latents(batch, cfg.model.latent_dim, rng).to(ctx.device)
        z_g = sample_latents(batch, cfg.model.latent_dim, rng).to(ctx.device)
        eps = torch.rand(batch, generator=rng).to(ctx.device)
        losses = train_step(self.g_model, self.d_model, self.discriminator, self.opt_g, self.opt_d, real, z_d, z_g,
                            eps, depth, alpha, ctx, lazy_gp_weight(cfg.pggan.gp_weight, cfg.pggan.gp_every, self.step),
                            cfg.pggan.drift_weight, cfg.train.grad_clip or None)
        # EMA with a warm-up (min(decay, (1 + step) / (10 + step)), as TensorFlow's moving averages): with only
        # ~100 steps in the first phase a plain 0.99 average would still be a third initial weights.
        decay = cfg.train.ema_decay
        lerp_parameters_(self.g_ema, self.generator, min(decay, (1 + self.step) / (10 + self.step)) if decay > 0
                         else 0.0)
        self.losses = {key: value.item() for key, value in losses.items()}
        scalars: dict = {f"loss/{key}": value for key, value in self.losses.items()}
        scalars.update({"progress/resolution": float(phase.resolution), "progress/alpha": alpha})
        return batch * ctx.world_size, scalars

    def postfix(self) -> dict:
        return {"alpha": f"{self.phase.alpha:.2f}", "d": f"{self.losses['d']:.2f}", "g": f"{self.losses['g']:.2f}",
                "res": self.phase.resolution}

    def after_step(self, step_images: int, done: bool) -> None:
        cfg, ctx, phase = self.cfg, self.ctx, self.phase
        new_phase = phase_at(self.images_seen, self.lengths)
        if new_phase.depth != phase.depth and not done:
            # A new resolution starts fading in: fresh Adam moments, as in the paper's code.
            self.opt_g, self.opt_d = make_optimizers(cfg, self.generator, self.discriminator)
        if new_phase.index != phase.index or done:
            self.sample_grid(f"phase{phase.index:02d}_end")
        elif ctx.due(cfg.log.image_every_images, self.images_seen, step_images):
            self.sample_grid(f"phase{phase.index:02d}")

    def finish(self) -> dict:
        elapsed = time.perf_counter() - self.start_time
        if self.ctx.is_main:
            print(f"trained {self.images_seen} images in {elapsed:.0f}s; samples in {self.samples_dir}", flush=True)
        return {"images_seen": self.images_seen, "steps": self.step, "resolution": self.cfg.data.resolution,
                "phase_lengths": self.lengths, "batch_sizes": self.batch_sizes, "final_losses": self.losses,
                "train_seconds": round(elapsed, 1),
                "img_per_s": round((self.images_seen - self.start_images) / max(elapsed, 1e-9), 1)}

    @torch.no_grad()
    def sample_grid(self, tag: str, images_seen: int | None = None) -> None:
        """The EMA generator on the fixed latents at the current phase, shown at the final size (nearest)."""
        ctx = self.ctx
        images_seen = self.images_seen if images_seen is None else images_seen
        phase = phase_at(images_seen, self.lengths)
        with ctx.autocast():
            fake = self.g_ema(self.grid_z, phase.depth, phase.alpha).float()  # [n, 3, r, r]
        while fake.shape[-1] < self.cfg.data.resolution:  # every phase at the final size (nearest: blocky, honest)
            fake = upsample2x(fake)
        ctx.log.images("samples", fake)  # TensorBoard + run/samples/samples_<images>.png
        if ctx.is_main:  # which growth phase each grid shows
            with open(self.samples_dir / "index.txt", "a") as handle:
                handle.write(f"samples_{images_seen:010d}.png {tag} {phase.resolution}x{phase.resolution} "
                             f"alpha={phase.alpha:.3f}\n")
