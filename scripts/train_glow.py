"""Train Glow. Usage: python scripts/train_glow.py --config configs/flow/synthetic.yaml [--set train.total_images=2000]

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

import argparse
import contextlib
import json
import os
from pathlib import Path

import torch

from common.cache import CelebACache, open_training_cache
from common.cli import run_main
from common.config import load_config
from common.run import EMA, RunContext, adam, add_train_arguments, all_reduce_mean, rank, world_size
from flow.config import GlowConfig
from flow.glow import Glow, apply_if_finite, bits_per_dim, build_model, snap_to_grid


def write_json_atomic(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_train_arguments(parser)
    args = parser.parse_args()
    cfg = load_config(GlowConfig, args.config, args.set)
    ctx = RunContext.create("glow", cfg, args)
    if ctx is None:
        return 0  # --dry-run

    cache_dir, dataset = open_training_cache(cfg.data)
    raw = build_model(cfg.model, cfg.data.resolution).to(ctx.device)
    if ctx.is_main:
        params = sum(p.numel() for p in raw.parameters())
        print(f"Glow: {params:,} parameters, L={cfg.model.levels} K={cfg.model.steps} width "
              f"{cfg.model.hidden_channels} {cfg.model.coupling}, {cfg.model.n_bits}-bit, "
              f"{cfg.data.resolution}x{cfg.data.resolution}", flush=True)
    model = ctx.wrap(raw)
    glow: Glow = ctx.unwrap(model)
    opt = adam(glow.parameters(), lr=cfg.train.lr)  # fused: 4x faster than foreach on the CPU

    images_seen, step, skipped_total = 0, 0, 0
    state = ctx.load_checkpoint()
    if state:
        glow.load_state_dict(state["models"]["glow"])  # restores actnorm's `initialized` flags: no re-init
        opt.load_state_dict(state["optimizers"]["adam"])
        images_seen, step = int(state["images_seen"]), int(state["step"])
        skipped_total = int(state.get("skipped_steps", 0))
    else:
        # Data-dependent actnorm init on a random subset (per rank), statistics averaged over ranks.
        gen = torch.Generator().manual_seed(cfg.train.seed * 1000 + ctx.rank)
        idx = torch.randperm(len(dataset), generator=gen)[: cfg.glow.init_images]
        x = stack_images(dataset, idx).to(ctx.device)
        glow.initialize(glow.preprocess(x, torch.rand(x.shape, generator=gen).to(ctx.device)),
                        reduce_fn=all_reduce_mean)

    # EMA weights (optional) are copied after the actnorm init so the average starts from initialised layers.
    ema = EMA(glow, cfg.train.ema_decay) if cfg.train.ema_decay > 0 else None
    if ema is not None and state and state.get("ema") is not None:
        ema.load_state_dict(state["ema"])
    evaluated = glow if ema is None else ema.module  # what test bpd, samples and metrics use

    def checkpoint() -> None:
        models = {"glow": glow.state_dict()}
        if ema is not None:
            models["glow_ema"] = ema.module.state_dict()
        ctx.save_checkpoint({"models": models, "optimizers": {"adam": opt.state_dict()},
                             "ema": ema.state_dict() if ema is not None else None,
                             "images_seen": images_seen, "step": step, "skipped_steps": skipped_total})

    test_set = CelebACache(cache_dir, "test")
    base = glow.sample_latents(cfg.eval.grid_images, torch.Generator().manual_seed(1234)).to(ctx.device)
    batch_size = cfg.train.batch_size
    step_images = batch_size * ctx.world_size
    skipped_run = 0  # consecutive skipped steps
    batches = ctx.batches(dataset, batch_size)
    bar = ctx.progress(cfg.train.total_images, initial=images_seen)
    model.train()
    while images_seen < cfg.train.total_images and not ctx.should_stop:
        x = next(batches)["image"]  # [B, 3, R, R] in [-1, 1]
        warm = min(1.0, (images_seen + step_images) / cfg.glow.warmup_images) if cfg.glow.warmup_images else 1.0
        for group in opt.param_groups:
            group["lr"] = cfg.train.lr * warm
        y = glow.preprocess(x, torch.rand(x.shape, device=x.device))  # uniform dequantisation, fp32
        with ctx.autocast():
            out = model(y)  # only the coupling networks run under autocast; log-densities are fp32
        bpd = bits_per_dim(out["log_p"], glow.num_dims, glow.n_bins)  # [B]
        loss = bpd.mean()

        # Skip (never apply) a step whose loss or gradient norm is not finite; all ranks agree.
        if ctx.scaler is not None:  # fp16 on CUDA: GradScaler already skips steps with inf/NaN gradients
            finite = torch.isfinite(loss.detach()).float()
            bad = all_reduce_mean(1.0 - finite).item() > 0
            grad_norm = None if bad else ctx.step(loss, opt, clip=cfg.train.grad_clip)
            opt.zero_grad(set_to_none=True)
        else:
            applied, grad_norm = apply_if_finite(loss, opt, cfg.train.grad_clip, reduce_fn=all_reduce_mean)
            bad = not applied
        if bad:
            opt.zero_grad(set_to_none=True)
            skipped_run += 1
            skipped_total += 1
            if skipped_run > cfg.glow.max_skipped_steps:
                ctx.check_finite(torch.tensor(float("nan")), f"loss/bpd ({skipped_run} steps in a row)")
        else:
            skipped_run = 0
            if ema is not None:
                ema.update(glow)
        images_seen += step_images
        step += 1

        if not bad:
            ctx.log.scalar("train/bpd", loss.detach())
            ctx.log.scalar("train/logdet", out["logdet"].detach().mean() / glow.num_dims)
            ctx.log.scalar("train/prior", out["prior"].detach().mean() / glow.num_dims)
            if grad_norm is not None:
                ctx.log.scalar("train/grad_norm", grad_norm.detach())
        ctx.log.scalar("train/skipped_steps", float(skipped_total))
        ctx.log.scalar("lr", opt.param_groups[0]["lr"])
        ctx.log.advance(images_seen)
        bar.update(step_images)
        if not bad:
            bar.set_postfix(bpd=f"{loss.item():.3f}", refresh=False)

        if ctx.due(cfg.log.image_every_images, images_seen, step_images):
            log_samples(ctx, evaluated, base, cfg.eval.temperatures)
        if ctx.due(cfg.eval.test_every_images, images_seen, step_images):
            result = test_bpd(evaluated, test_set, cfg.eval.test_images, cfg.eval.batch_size, ctx.device,
                              ctx.autocast)
            ctx.log.scalar("test/bpd", result["bpd"])
            ctx.log.scalar("test/bpd_bin_centre", result["bpd_bin_centre"])
        if ctx.due(cfg.train.checkpoint_every_images, images_seen, step_images):
            checkpoint()
    bar.close()
    checkpoint()

    if images_seen >= cfg.train.total_images:
        if not ctx.due(cfg.log.image_every_images, images_seen, step_images):  # else just written
            log_samples(ctx, evaluated, base, cfg.eval.temperatures)
        # Final number in fp32 (no autocast at all) on the whole test split.
        final = test_bpd(evaluated, test_set, 0, cfg.eval.batch_size, ctx.device, contextlib.nullcontext)
        x = stack_images(test_set, range(min(64, len(test_set)))).to(ctx.device)
        with torch.no_grad():
            evaluated.eval()
            recon = evaluated.decode(evaluated.encode(x))
            recon_error = (recon - snap_to_grid(x, evaluated.n_bits)).abs().max().item()
        if ctx.is_main:
            metrics = {
                "test_bpd": round(final["bpd"], 4),
                "test_bpd_bin_centre": round(final["bpd_bin_centre"], 4),
                "bpd_note": f"test split, {cfg.model.n_bits}-bit data, (-log p(y) + D ln {glow.n_bins}) / (D ln 2), "
                            "D = 3*H*W; test_bpd averages one uniform dequantisation draw per image (fixed seed; "
                            "an upper bound on the discrete NLL, as published), test_bpd_bin_centre evaluates the "
                            "density at the bin centres (what encode/log_prob use); fp32",
                "test_images": final["images"],
                "reconstruction_max_abs_error": recon_error,
                "reconstruction_note": "max |decode(encode(x)) - snap_to_grid(x)| over 64 test images ([-1, 1])",
                "skipped_steps": skipped_total, "images_seen": images_seen, "ema": ema is not None,
                "parameters": sum(p.numel() for p in glow.parameters()),
            }
            write_json_atomic(ctx.out / "metrics.json", metrics)
            print(f"test bpd {metrics['test_bpd']:.4f} (bin centres {metrics['test_bpd_bin_centre']:.4f}), "
                  f"reconstruction max error {recon_error:g}; metrics in {ctx.out / 'metrics.json'}", flush=True)
    ctx.close()
    return 0


if __name__ == "__main__":
    run_main(main)
