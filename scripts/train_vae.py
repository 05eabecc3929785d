"""Train the VAE. Usage: python scripts/train_vae.py --config configs/vae/synthetic.yaml [--set train.total_images=2000]

Objective (nats per image, see vae/model.py): total = recon + beta_t * kl, with recon the Gaussian NLL of the
[-1, 1] image summed over pixels and kl = KL(q(z|x) || N(0, I)) summed over latent dimensions (logged positive),
both averaged over the batch; beta_t ramps linearly to vae.beta over vae.kl_warmup_images.

Logged: loss/total, loss/recon, loss/kl, loss/beta, kl/active_dims (latent dimensions whose average KL is above
0.01 nats) and a KL-per-dimension histogram, lr, perf/img_per_s; reconstruction and prior-sample grids every
log.image_every_images (TensorBoard and run/samples/*.png); val/total, val/recon, val/kl on the valid split every
eval.val_every_images (same formula). At the end run/metrics.json holds the test split's reconstruction PSNR
(posterior mean decoded and clamped, images mapped from [-1, 1] to [0, 1], peak 1) and the final losses.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from pathlib import Path

import torch

from common.cache import CelebACache, open_training_cache, uint8_to_model
from common.cli import run_main
from common.config import load_config
from common.run import EMA, RunContext, adam, add_train_arguments
from vae.config import VAEConfig
from vae.model import ConvVAE, build_model, check_architecture, count_parameters, kl_weight, psnr, vae_loss

ACTIVE_KL_NATS = 0.01  # a latent dimension whose average KL is below this carries (almost) no information


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


@torch.no_grad()
def evaluate(vae: ConvVAE, dataset: CelebACache, limit: int, batch_size: int, beta: float, device,
             autocast) -> dict[str, float]:
    """Average losses (same formula as training, z sampled) and posterior-mean PSNR over the first ``limit`` items.

    Runs with a fixed seed inside a forked RNG so that evaluating never changes the training's random stream.
    """
    n = len(dataset) if limit <= 0 else min(limit, len(dataset))
    was_training = vae.training
    vae.eval()
    sums = {"total": 0.0, "recon": 0.0, "kl": 0.0, "psnr_db": 0.0}
    seen = 0
    # fork the device's generator too: torch.manual_seed below reseeds every CUDA generator
    with torch.random.fork_rng(devices=[device] if torch.device(device).type == "cuda" else []):
        torch.manual_seed(0)
        for batch in dataset.batches(batch_size, shuffle=False):
            x = batch["image"][: n - seen].to(device)  # [b, 3, R, R]
            with autocast():
                out = vae(x)
                mean_image = vae.decode(out.mu)
            losses = vae_loss(x, out.x_mean, out.mu, out.logvar, vae.log_sigma, beta)
            for key in ("total", "recon", "kl"):
                sums[key] += losses[key].item() * len(x)
            sums["psnr_db"] += psnr(x, mean_image).sum().item()
            seen += len(x)
            if seen >= n:
                break
    vae.train(was_training)
    return {key: value / max(n, 1) for key, value in sums.items()} | {"images": n}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_train_arguments(parser)
    args = parser.parse_args()
    cfg = load_config(VAEConfig, args.config, args.set)
    if not args.dry_run:  # fail on a bad architecture or a missing cache before a run folder is created
        check_architecture(cfg.data.resolution, cfg.model.widths)
        cache_dir, dataset = open_training_cache(cfg.data)
    ctx = RunContext.create("vae", cfg, args)
    if ctx is None:
        return 0  # --dry-run
    raw = build_model(cfg.model, cfg.data.resolution)
    if ctx.is_main:
        print(f"VAE: {count_parameters(raw):,} parameters, latent {cfg.model.latent_dim}, widths "
              f"{list(cfg.model.widths)}, {cfg.data.resolution}x{cfg.data.resolution}", flush=True)
    model = ctx.wrap(raw)
    vae = ctx.unwrap(model)
    opt = adam(vae.parameters(), lr=cfg.train.lr)  # fused: 4x faster than foreach on the CPU
    ema = EMA(vae, cfg.train.ema_decay) if cfg.train.ema_decay > 0 else None

    images_seen, step = 0, 0
    kl_dims = torch.zeros(cfg.model.latent_dim, device=ctx.device)  # running average of the KL per dim [D]
    state = ctx.load_checkpoint()
    if state:
        vae.load_state_dict(state["models"]["vae"])
        opt.load_state_dict(state["optimizers"]["adam"])
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        images_seen, step = int(state["images_seen"]), int(state["step"])
        kl_dims = state.get("kl_dims", kl_dims).float().to(ctx.device)

    def checkpoint() -> None:
        state = {"models": {"vae": vae.state_dict()}, "optimizers": {"adam": opt.state_dict()},
                 "images_seen": images_seen, "step": step, "kl_dims": kl_dims.cpu()}
        if ema is not None:
            state["ema"] = ema.state_dict()  # load_model_from_run prefers these weights
        ctx.save_checkpoint(state)

    # fixed inputs for the image grids, so that successive grids are comparable
    grid_n = min(cfg.eval.grid_images, len(dataset))
    grid_real = uint8_to_model(dataset.images_uint8(range(grid_n))).to(ctx.device)  # [n, 3, R, R]
    grid_z = torch.randn(grid_n, cfg.model.latent_dim, generator=torch.Generator().manual_seed(1234)).to(ctx.device)
    valid = CelebACache(cache_dir, "valid") if cfg.eval.val_every_images > 0 else None

    batch_size = cfg.train.batch_size
    step_images = batch_size * ctx.world_size
    batches = ctx.batches(dataset, batch_size)
    bar = ctx.progress(cfg.train.total_images, initial=images_seen)
    start_time, start_images = time.perf_counter(), images_seen
    model.train()
    while images_seen < cfg.train.total_images and not ctx.should_stop:
        x = next(batches)["image"]  # [B, 3, R, R] in [-1, 1]
        beta_t = kl_weight(cfg.vae.beta, cfg.vae.kl_warmup_images, images_seen)
        with ctx.autocast():
            out = model(x)
        losses = vae_loss(x, out.x_mean, out.mu, out.logvar, vae.log_sigma, beta_t)  # float32
        ctx.check_finite(losses["total"], "loss/total")
        ctx.step(losses["total"], opt, clip=cfg.train.grad_clip or None)
        if ema is not None:
            ema.update(vae)
        images_seen += step_images
        step += 1

        # tensors, not .item(): the logger sums on the device, so there is no GPU sync per step
        kl_dims.mul_(0.95).add_(losses["kl_per_dim"].detach(), alpha=0.05)
        for key in ("total", "recon", "kl"):
            ctx.log.scalar(f"loss/{key}", losses[key].detach())
        ctx.log.scalar("loss/beta", beta_t)
        ctx.log.scalar("loss/sigma", vae.log_sigma.detach().exp())
        ctx.log.scalar("kl/active_dims", (kl_dims > ACTIVE_KL_NATS).sum().float())
        ctx.log.scalar("lr", opt.param_groups[0]["lr"])
        ctx.log.advance(images_seen)
        bar.update(step_images)

        if ctx.due(cfg.log.image_every_images, images_seen, step_images) or images_seen >= cfg.train.total_images:
            log_images(ctx, vae, grid_real, grid_z, kl_dims)
        if valid is not None and ctx.due(cfg.eval.val_every_images, images_seen, step_images):
            val = evaluate(vae, valid, cfg.eval.val_images, cfg.eval.batch_size, beta_t, ctx.device, ctx.autocast)
            for key in ("total", "recon", "kl", "psnr_db"):
                ctx.log.scalar(f"val/{key}", val[key])
        if ctx.due(cfg.train.checkpoint_every_images, images_seen, step_images):
            checkpoint()
    bar.close()
    train_seconds = time.perf_counter() - start_time
    checkpoint()

    if images_seen >= cfg.train.total_images and ctx.is_main:
        beta = cfg.vae.beta
        final = vae if ema is None else ema.module
        test_split = CelebACache(cache_dir, "test")
        test = evaluate(final, test_split, cfg.eval.test_images, cfg.eval.batch_size, beta, ctx.device, ctx.autocast)
        # the same evaluation without autocast: how far the reduced-precision forward pass is from fp32
        test_fp32 = evaluate(final, test_split, cfg.eval.test_images, cfg.eval.batch_size, beta, ctx.device,
                             contextlib.nullcontext)
        metrics = {
            "test_psnr_db": round(test["psnr_db"], 3),
            "psnr_note": "test split, posterior mean decoded and clamped, images mapped from [-1, 1] to [0, 1] "
                         "(peak 1)",
            "test_loss_total": round(test["total"], 3), "test_loss_recon": round(test["recon"], 3),
            "test_loss_kl": round(test["kl"], 3), "test_images": test["images"],
            "loss_note": "nats per image: recon = Gaussian NLL summed over pixels, kl summed over latent dims, "
                         f"total = recon + {beta} * kl (vae.beta)",
            "active_dims": int((kl_dims > ACTIVE_KL_NATS).sum()), "latent_dim": cfg.model.latent_dim,
            "kl_per_dim_sorted": [round(v, 4) for v in sorted(kl_dims.tolist(), reverse=True)],
            "test_loss_total_fp32": round(test_fp32["total"], 3), "test_psnr_db_fp32": round(test_fp32["psnr_db"], 3),
            "precision": ctx.precision,
            "parameters": count_parameters(vae), "images_seen": images_seen, "ema": ema is not None,
            "train_seconds_this_process": round(train_seconds, 1),
            "img_per_s_this_process": round((images_seen - start_images) / max(train_seconds, 1e-9), 1),
        }
        write_atomic(ctx.out / "metrics.json", (json.dumps(metrics, indent=2) + "\n").encode())
        print(f"test PSNR {metrics['test_psnr_db']:.2f} dB ([0, 1] images), active latent dims "
              f"{metrics['active_dims']}/{cfg.model.latent_dim}; metrics in {ctx.out / 'metrics.json'}", flush=True)
    ctx.close()
    return 0


@torch.no_grad()
def log_images(ctx, vae: ConvVAE, real: torch.Tensor, z: torch.Tensor, kl_dims: torch.Tensor) -> None:
    """Reconstruction (real above, posterior-mean reconstruction below) and prior-sample grids, plus KL histogram."""
    was_training = vae.training
    vae.eval()
    with ctx.autocast():
        recon = vae.decode(vae.encode(real)[0]).float().clamp(-1, 1)  # [n, 3, R, R]
        samples = vae.decode(z).float().clamp(-1, 1)
    vae.train(was_training)
    nrow = min(8, len(real))
    pairs = torch.cat([torch.stack([real[i:i + nrow], recon[i:i + nrow]]).flatten(0, 1)
                       for i in range(0, len(real), nrow)])  # rows alternate: real, reconstruction
    # ctx.log.images also writes run/samples/<tag>_<images seen>.png
    ctx.log.images("reconstructions", pairs, nrow=nrow)
    ctx.log.images("samples", samples, nrow=nrow)
    writer = ctx.log.writer if ctx.is_main else None  # TensorBoard (None when log.tensorboard is false)
    if writer is not None:
        writer.add_histogram("kl/per_dim", kl_dims, global_step=ctx.log.images_seen)


if __name__ == "__main__":
    run_main(main)
