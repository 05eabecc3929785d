"""The VAE's training: its step (timed as is by scripts/benchmark.py) and its ``Trainer`` for common.training.fit.

Objective (nats per image, see vae/model.py): total = recon + beta_t * kl, with recon the Gaussian NLL of the
[-1, 1] image summed over pixels and kl = KL(q(z|x) || N(0, I)) summed over latent dimensions (logged positive),
both averaged over the batch; beta_t ramps linearly to vae.beta over vae.kl_warmup_images.

Logged: loss/total, loss/recon, loss/kl, loss/beta, loss/sigma, kl/active_dims (latent dimensions whose average
KL is above 0.01 nats) and a KL-per-dimension histogram, lr, perf/img_per_s; reconstruction and prior-sample grids
every log.image_every_images (TensorBoard and run/samples/*.png); val/total, val/recon, val/kl, val/psnr_db on the
valid split every eval.val_every_images (same formula). metrics.json: the test split's reconstruction PSNR
(posterior mean decoded and clamped, images mapped from [-1, 1] to [0, 1], peak 1) and the final losses.
"""

from __future__ import annotations

import contextlib

import torch

from common.cache import CelebACache, open_training_cache, uint8_to_model
from common.checkpoint import ema_weights
from common.metrics import psnr
from common.run import EMA, adam
from common.training import StepTools, Trainer
from vae.config import VAEConfig
from vae.model import ConvVAE, build_model, count_parameters, kl_weight, vae_loss

ACTIVE_KL_NATS = 0.01  # a latent dimension whose average KL is below this carries (almost) no information


def train_step(model: torch.nn.Module, vae: ConvVAE, opt: torch.optim.Optimizer, x: torch.Tensor, beta: float,
               tools: StepTools, clip: float | None = None) -> dict[str, torch.Tensor]:
    """One optimiser step on images ``x`` [B, 3, R, R] in [-1, 1]: forward under autocast, loss in fp32, finite
    check, backward, clip, Adam. ``model`` is what is called (DDP/compiled), ``vae`` the bare module."""
    with tools.autocast():
        out = model(x)
    losses = vae_loss(x, out.x_mean, out.mu, out.logvar, vae.log_sigma, beta)  # float32
    tools.check_finite(losses["total"], "loss/total")
    tools.step(losses["total"], opt, clip=clip)
    return losses


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
            sums["psnr_db"] += float(psnr(x, mean_image.float().clamp(-1, 1)).sum())
            seen += len(x)
            if seen >= n:
                break
    vae.train(was_training)
    return {key: value / max(n, 1) for key, value in sums.items()} | {"images": n}


class VAETrainer(Trainer):
    def __init__(self, cfg: VAEConfig, ctx):
        self.cfg, self.ctx = cfg, ctx
        self.cache_dir, self.dataset = open_training_cache(cfg.data)
        raw = build_model(cfg.model, cfg.data.resolution)
        if ctx.is_main:
            print(f"VAE: {count_parameters(raw):,} parameters, latent {cfg.model.latent_dim}, widths "
                  f"{list(cfg.model.widths)}, {cfg.data.resolution}x{cfg.data.resolution}", flush=True)
        self.model = ctx.wrap(raw)
        self.vae: ConvVAE = ctx.unwrap(self.model)
        self.opt = adam(self.vae.parameters(), lr=cfg.train.lr)  # fused Adam (common.run.adam)
        self.ema = EMA(self.vae, cfg.train.ema_decay) if cfg.train.ema_decay > 0 else None
        self.kl_dims = torch.zeros(cfg.model.latent_dim, device=ctx.device)  # running average KL per dim [D]
        # fixed inputs for the image grids, so that successive grids are comparable
        grid_n = min(cfg.eval.grid_images, len(self.dataset))
        self.grid_real = uint8_to_model(self.dataset.images_uint8(range(grid_n))).to(ctx.device)  # [n, 3, R, R]
        self.grid_z = torch.randn(grid_n, cfg.model.latent_dim,
                                  generator=torch.Generator().manual_seed(1234)).to(ctx.device)
        self.valid = CelebACache(self.cache_dir, "valid") if cfg.eval.val_every_images > 0 else None
        self.batches = ctx.batches(self.dataset, cfg.train.batch_size)
        self.beta_t = 0.0
        self.model.train()

    def state_dict(self) -> dict:
        return {"models": {"vae": self.vae}, "optimizers": {"adam": self.opt}, "kl_dims": self.kl_dims.cpu(),
                "ema": {"vae": self.ema} if self.ema is not None else {}}  # load_model_from_run prefers the average

    def load_state_dict(self, state: dict) -> None:
        self.vae.load_state_dict(state["models"]["vae"])
        self.opt.load_state_dict(state["optimizers"]["adam"])
        averaged = ema_weights(state, "vae")
        if self.ema is not None and averaged is not None:
            self.ema.load_state_dict(averaged)
        self.kl_dims = state.get("kl_dims", self.kl_dims).float().to(self.ctx.device)

    def train_step(self) -> tuple[int, dict]:
        cfg = self.cfg
        x = next(self.batches)["image"]  # [B, 3, R, R] in [-1, 1]
        self.beta_t = kl_weight(cfg.vae.beta, cfg.vae.kl_warmup_images, self.images_seen)
        losses = train_step(self.model, self.vae, self.opt, x, self.beta_t, self.ctx, cfg.train.grad_clip or None)
        if self.ema is not None:
            self.ema.update(self.vae)
        # tensors, not .item(): the logger sums on the device, so there is no GPU sync per step
        self.kl_dims.mul_(0.95).add_(losses["kl_per_dim"].detach(), alpha=0.05)
        scalars = {f"loss/{key}": losses[key].detach() for key in ("total", "recon", "kl")}
        scalars.update({"loss/beta": self.beta_t, "loss/sigma": self.vae.log_sigma.detach().exp(),
                        "kl/active_dims": (self.kl_dims > ACTIVE_KL_NATS).sum().float(),
                        "lr": self.opt.param_groups[0]["lr"]})
        return cfg.train.batch_size * self.ctx.world_size, scalars

    def after_step(self, step_images: int, done: bool) -> None:
        cfg, ctx, seen = self.cfg, self.ctx, self.images_seen
        if ctx.due(cfg.log.image_every_images, seen, step_images) or done:
            self.log_images()
        if self.valid is not None and ctx.due(cfg.eval.val_every_images, seen, step_images):
            val = evaluate(self.vae, self.valid, cfg.eval.val_images, cfg.eval.batch_size, self.beta_t, ctx.device,
                           ctx.autocast)
            for key in ("total", "recon", "kl", "psnr_db"):
                ctx.log.scalar(f"val/{key}", val[key])

    def finish(self) -> dict | None:
        cfg, ctx = self.cfg, self.ctx
        if not ctx.is_main:
            return None
        beta, final = cfg.vae.beta, self.vae if self.ema is None else self.ema.module
        test_split = CelebACache(self.cache_dir, "test")
        test = evaluate(final, test_split, cfg.eval.test_images, cfg.eval.batch_size, beta, ctx.device, ctx.autocast)
        # the same evaluation without autocast: how far the reduced-precision forward pass is from fp32
        test_fp32 = evaluate(final, test_split, cfg.eval.test_images, cfg.eval.batch_size, beta, ctx.device,
                             contextlib.nullcontext)
        active = int((self.kl_dims > ACTIVE_KL_NATS).sum())
        print(f"test PSNR {test['psnr_db']:.2f} dB ([0, 1] images), active latent dims {active}/"
              f"{cfg.model.latent_dim}; metrics in {ctx.out / 'metrics.json'}", flush=True)
        return {
            "test_psnr_db": round(test["psnr_db"], 3),
            "psnr_note": "test split, posterior mean decoded and clamped, images mapped from [-1, 1] to [0, 1] "
                         "(peak 1)",
            "test_loss_total": round(test["total"], 3), "test_loss_recon": round(test["recon"], 3),
            "test_loss_kl": round(test["kl"], 3), "test_images": test["images"],
            "loss_note": "nats per image: recon = Gaussian NLL summed over pixels, kl summed over latent dims, "
                         f"total = recon + {beta} * kl (vae.beta)",
            "active_dims": active, "latent_dim": cfg.model.latent_dim,
            "kl_per_dim_sorted": [round(v, 4) for v in sorted(self.kl_dims.tolist(), reverse=True)],
            "test_loss_total_fp32": round(test_fp32["total"], 3), "test_psnr_db_fp32": round(test_fp32["psnr_db"], 3),
            "parameters": count_parameters(self.vae), "ema": self.ema is not None,
        }

    @torch.no_grad()
    def log_images(self) -> None:
        """Reconstruction (real above, posterior-mean reconstruction below) and prior-sample grids, KL histogram."""
        ctx, vae, real = self.ctx, self.vae, self.grid_real
        was_training = vae.training
        vae.eval()
        with ctx.autocast():
            recon = vae.decode(vae.encode(real)[0]).float().clamp(-1, 1)  # [n, 3, R, R]
            samples = vae.decode(self.grid_z).float().clamp(-1, 1)
        vae.train(was_training)
        nrow = min(8, len(real))
        pairs = torch.cat([torch.stack([real[i:i + nrow], recon[i:i + nrow]]).flatten(0, 1)
                           for i in range(0, len(real), nrow)])  # rows alternate: real, reconstruction
        ctx.log.images("reconstructions", pairs, nrow=nrow)  # also run/samples/<tag>_<images seen>.png
        ctx.log.images("samples", samples, nrow=nrow)
        writer = ctx.log.writer if ctx.is_main else None  # TensorBoard (None when log.tensorboard is false)
        if writer is not None:
            writer.add_histogram("kl/per_dim", self.kl_dims, global_step=ctx.log.images_seen)
