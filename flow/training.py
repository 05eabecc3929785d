"""Glow's training: its step (what scripts/benchmark.py times) and its ``Trainer`` for common.training.fit.

Objective: bits per dimension of uniformly dequantised inputs (flow/glow.py):
bpd = (-log p(y) + D ln n_bins) / (D ln 2), y = (k + u) / n_bins - 0.5, u ~ U[0, 1), D = 3*H*W. Its average over
u is an upper bound on the discrete data's bits per dimension, and is what published Glow numbers report.

Before training, actnorm is initialised from ``glow.init_images`` images (statistics averaged across ranks).
Linear learning-rate warm-up over ``glow.warmup_images``; gradient-norm clipping ``train.grad_clip``. A step whose
loss or gradient norm is not finite is skipped (weights untouched), counted in ``train/skipped_steps``; more than
``glow.max_skipped_steps`` in a row stops the run through ctx.check_finite (the last good checkpoint is kept).

Logged: train/bpd, train/logdet and train/prior (nats per dimension: log p(y) = prior + logdet), lr, grad_norm,
perf/img_per_s; test/bpd every ``eval.test_every_images``; sample grids at each ``eval.temperatures``
(TensorBoard and run/samples/). At the end run/metrics.json holds the whole test split's bpd (fp32, uniform
dequantisation with a fixed seed, and at the bin centres) and the exact-reconstruction check.
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import torch

from common.cache import CelebACache, open_training_cache
from common.checkpoint import ema_weights
from common.run import EMA, adam, all_reduce_mean, rank, world_size
from common.training import StepTools, Trainer
from flow.config import GlowConfig
from flow.glow import Glow, apply_if_finite, bits_per_dim, build_model, snap_to_grid


class StepResult(NamedTuple):
    applied: bool  # False: the step was skipped (non-finite loss or gradient norm), weights untouched
    loss: torch.Tensor  # mean bpd of the batch (0-dim, fp32)
    out: dict  # the model's output: log_p, logdet, prior (per image)
    grad_norm: torch.Tensor | None


def train_step(model: torch.nn.Module, glow: Glow, opt: torch.optim.Optimizer, x: torch.Tensor, tools: StepTools,
               clip: float = 0.0, reduce_fn=all_reduce_mean) -> StepResult:
    """One optimiser step on images ``x`` [B, 3, R, R] in [-1, 1], or a skipped one.

    Uniform dequantisation (fp32), forward under autocast (only the coupling networks; log-densities are fp32),
    mean bpd; then backward, grad-norm clip and Adam unless the loss or the gradient norm is not finite
    (apply_if_finite; with fp16, GradScaler skips inf/NaN gradients). ``reduce_fn`` makes every rank agree on
    skipping. ``model`` is what is called (DDP/compiled), ``glow`` the bare module.
    """
    y = glow.preprocess(x, torch.rand(x.shape, device=x.device))  # uniform dequantisation, fp32
    with tools.autocast():
        out = model(y)
    loss = bits_per_dim(out["log_p"], glow.num_dims, glow.n_bins).mean()  # bpd per image [B] -> mean
    if getattr(tools, "scaler", None) is not None:  # fp16 on CUDA: GradScaler already skips inf/NaN gradients
        bad_flag = 1.0 - torch.isfinite(loss.detach()).float()
        bad = (reduce_fn(bad_flag) if reduce_fn is not None else bad_flag).item() > 0
        grad_norm = None if bad else tools.step(loss, opt, clip=clip)
        opt.zero_grad(set_to_none=True)
    else:
        applied, grad_norm = apply_if_finite(loss, opt, clip, reduce_fn=reduce_fn)
        bad = not applied
    if bad:
        opt.zero_grad(set_to_none=True)
    return StepResult(not bad, loss, out, grad_norm)


def stack_images(dataset: CelebACache, indices) -> torch.Tensor:
    return torch.stack([dataset[int(i)]["image"] for i in indices])  # [n, 3, R, R] in [-1, 1]


@torch.no_grad()
def test_bpd(glow: Glow, dataset: CelebACache, limit: int, batch_size: int, device, autocast) -> dict[str, float]:
    """Mean test bpd over the first ``limit`` images (0 = all), sharded over ranks and all-reduced.

    ``bpd`` uses uniform dequantisation with a fixed seed (forked RNG: training's random stream is untouched);
    ``bpd_bin_centre`` the deterministic bin-centre density that log_prob/encode use.
    """
    n = len(dataset) if limit <= 0 else min(limit, len(dataset))
    mine = list(range(rank(), n, world_size()))
    was_training = glow.training
    glow.eval()
    sums = torch.zeros(3, dtype=torch.float64)
    with torch.random.fork_rng(devices=[]):
        gen = torch.Generator().manual_seed(12345 + rank())
        for start in range(0, len(mine), batch_size):
            x = stack_images(dataset, mine[start:start + batch_size]).to(device)
            noise = torch.rand(x.shape, generator=gen).to(device)
            with autocast():
                log_p = glow(glow.preprocess(x, noise))["log_p"]
                centre = glow(glow.preprocess(x))["log_p"]
            sums += torch.tensor([bits_per_dim(log_p, glow.num_dims, glow.n_bins).sum().item(),
                                  bits_per_dim(centre, glow.num_dims, glow.n_bins).sum().item(), len(x)],
                                 dtype=torch.float64)
    glow.train(was_training)
    sums = all_reduce_mean(sums.to(device)).cpu()  # mean of per-rank sums: the ratio below is the global mean
    count = max(float(sums[2]), 1.0)
    return {"bpd": float(sums[0]) / count, "bpd_bin_centre": float(sums[1]) / count, "images": n}


@torch.no_grad()
def log_samples(ctx, glow: Glow, base: torch.Tensor, temperatures: list[float]) -> None:
    """One grid per temperature from fixed standard-normal latents scaled by it (decoded exactly, fp32)."""
    was_training = glow.training
    glow.eval()
    for t in temperatures:
        ctx.log.images(f"samples_t{t:g}", glow.decode(base * t))
    glow.train(was_training)


@torch.no_grad()
def reconstruction_error(glow: Glow, x: torch.Tensor) -> float:
    """max |decode(encode(x)) - snap_to_grid(x)| over images ``x`` in [-1, 1] (0 for an exact inverse)."""
    glow.eval()
    recon = glow.decode(glow.encode(x))
    return (recon - snap_to_grid(x, glow.n_bits)).abs().max().item()


class GlowTrainer(Trainer):
    def __init__(self, cfg: GlowConfig, ctx):
        self.cfg, self.ctx = cfg, ctx
        self.cache_dir, self.dataset = open_training_cache(cfg.data)
        raw = build_model(cfg.model, cfg.data.resolution).to(ctx.device)
        if ctx.is_main:
            params = sum(p.numel() for p in raw.parameters())
            print(f"Glow: {params:,} parameters, L={cfg.model.levels} K={cfg.model.steps} width "
                  f"{cfg.model.hidden_channels} {cfg.model.coupling}, {cfg.model.n_bits}-bit, "
                  f"{cfg.data.resolution}x{cfg.data.resolution}", flush=True)
        self.model = ctx.wrap(raw)
        self.glow: Glow = ctx.unwrap(self.model)
        self.opt = adam(self.glow.parameters(), lr=cfg.train.lr)  # fused Adam (common.run.adam)
        self.ema: EMA | None = None  # made in start()/load_state_dict(): after the actnorm init or the weights
        self.skipped_total, self.skipped_run = 0, 0  # all skipped steps; consecutive ones
        self.last: StepResult | None = None
        self.test_set = CelebACache(self.cache_dir, "test")
        self.base = self.glow.sample_latents(cfg.eval.grid_images, torch.Generator().manual_seed(1234)).to(ctx.device)
        self.step_images = cfg.train.batch_size * ctx.world_size
        self.batches = ctx.batches(self.dataset, cfg.train.batch_size)
        self.model.train()

    @property
    def evaluated(self) -> Glow:
        """What test bpd, samples and metrics use: the EMA weights if any."""
        return self.glow if self.ema is None else self.ema.module

    def _make_ema(self) -> None:
        # EMA weights (optional) are copied after the actnorm init so the average starts from initialised layers.
        self.ema = EMA(self.glow, self.cfg.train.ema_decay) if self.cfg.train.ema_decay > 0 else None

    def state_dict(self) -> dict:
        return {"models": {"glow": self.glow.state_dict()}, "optimizers": {"adam": self.opt.state_dict()},
                "ema": {"glow": self.ema.state_dict()} if self.ema is not None else {},
                "skipped_steps": self.skipped_total}

    def load_state_dict(self, state: dict) -> None:
        self.glow.load_state_dict(state["models"]["glow"])  # restores actnorm's `initialized` flags: no re-init
        self.opt.load_state_dict(state["optimizers"]["adam"])
        self.skipped_total = int(state.get("skipped_steps", 0))
        self._make_ema()
        averaged = ema_weights(state, "glow")
        if self.ema is not None and averaged is not None:
            self.ema.load_state_dict(averaged)

    def start(self) -> None:
        """Data-dependent actnorm init on a random subset (per rank), statistics averaged over ranks."""
        cfg, ctx, glow = self.cfg, self.ctx, self.glow
        gen = torch.Generator().manual_seed(cfg.train.seed * 1000 + ctx.rank)
        idx = torch.randperm(len(self.dataset), generator=gen)[: cfg.glow.init_images]
        x = stack_images(self.dataset, idx).to(ctx.device)
        glow.initialize(glow.preprocess(x, torch.rand(x.shape, generator=gen).to(ctx.device)),
                        reduce_fn=all_reduce_mean)
        self._make_ema()

    def train_step(self) -> tuple[int, dict]:
        cfg, ctx, glow = self.cfg, self.ctx, self.glow
        x = next(self.batches)["image"]  # [B, 3, R, R] in [-1, 1]
        warmup = cfg.glow.warmup_images
        warm = min(1.0, (self.images_seen + self.step_images) / warmup) if warmup else 1.0
        for group in self.opt.param_groups:
            group["lr"] = cfg.train.lr * warm
        result = train_step(self.model, glow, self.opt, x, ctx, cfg.train.grad_clip, reduce_fn=all_reduce_mean)
        if not result.applied:
            self.skipped_run += 1
            self.skipped_total += 1
            if self.skipped_run > cfg.glow.max_skipped_steps:
                ctx.check_finite(torch.tensor(float("nan")), f"loss/bpd ({self.skipped_run} steps in a row)")
        else:
            self.skipped_run = 0
            if self.ema is not None:
                self.ema.update(glow)
        self.last = result
        scalars = {}
        if result.applied:
            out = result.out
            scalars["train/bpd"] = result.loss.detach()
            scalars["train/logdet"] = out["logdet"].detach().mean() / glow.num_dims
            scalars["train/prior"] = out["prior"].detach().mean() / glow.num_dims
            if result.grad_norm is not None:
                scalars["train/grad_norm"] = result.grad_norm.detach()
        scalars["train/skipped_steps"] = float(self.skipped_total)
        scalars["lr"] = self.opt.param_groups[0]["lr"]
        return self.step_images, scalars

    def postfix(self) -> dict | None:
        if self.last is None or not self.last.applied:
            return None
        return {"bpd": f"{self.last.loss.item():.3f}"}

    def after_step(self, step_images: int, done: bool) -> None:
        cfg, ctx, seen = self.cfg, self.ctx, self.images_seen
        if ctx.due(cfg.log.image_every_images, seen, step_images):
            log_samples(ctx, self.evaluated, self.base, cfg.eval.temperatures)
        if ctx.due(cfg.eval.test_every_images, seen, step_images):
            result = test_bpd(self.evaluated, self.test_set, cfg.eval.test_images, cfg.eval.batch_size, ctx.device,
                              ctx.autocast)
            ctx.log.scalar("test/bpd", result["bpd"])
            ctx.log.scalar("test/bpd_bin_centre", result["bpd_bin_centre"])

    def finish(self) -> dict | None:
        cfg, ctx, evaluated = self.cfg, self.ctx, self.evaluated
        if not ctx.due(cfg.log.image_every_images, self.images_seen, self.step_images):  # else just written
            log_samples(ctx, evaluated, self.base, cfg.eval.temperatures)
        # Final number in fp32 (no autocast at all) on the whole test split, on every rank (all-reduced).
        final = test_bpd(evaluated, self.test_set, 0, cfg.eval.batch_size, ctx.device, contextlib.nullcontext)
        x = stack_images(self.test_set, range(min(64, len(self.test_set)))).to(ctx.device)
        recon_error = reconstruction_error(evaluated, x)
        if not ctx.is_main:
            return None
        metrics = {
            "test_bpd": round(final["bpd"], 4),
            "test_bpd_bin_centre": round(final["bpd_bin_centre"], 4),
            "bpd_note": f"test split, {cfg.model.n_bits}-bit data, (-log p(y) + D ln {self.glow.n_bins}) / (D ln 2), "
                        "D = 3*H*W; test_bpd averages one uniform dequantisation draw per image (fixed seed; "
                        "an upper bound on the discrete NLL, as published), test_bpd_bin_centre evaluates the "
                        "density at the bin centres (what encode/log_prob use); fp32",
            "test_images": final["images"],
            "reconstruction_max_abs_error": recon_error,
            "reconstruction_note": "max |decode(encode(x)) - snap_to_grid(x)| over 64 test images ([-1, 1])",
            "skipped_steps": self.skipped_total, "images_seen": self.images_seen, "ema": self.ema is not None,
            "parameters": sum(p.numel() for p in self.glow.parameters()),
        }
        print(f"test bpd {metrics['test_bpd']:.4f} (bin centres {metrics['test_bpd_bin_centre']:.4f}), "
              f"reconstruction max error {recon_error:g}; metrics in {ctx.out / 'metrics.json'}", flush=True)
        return metrics
