"""The PGGAN as an editable model: sampling, decoding with the EMA generator, and encoding by GAN inversion.

A GAN has no encoder, so ``encode`` searches for the z whose generated image reconstructs the photo: Adam on z
from several random starts at once (one batch of images x starts), z projected back onto the sqrt(D) sphere after
every step (the generator pixel-normalises z, so only its direction matters and the sphere is where samples
live), loss = per-pixel MSE + ``feature_weight`` x MSE between the attribute predictor's backbone features (the
perceptual term; optional: without a predictor it is pixels only). The start with the lowest final loss wins;
``last_psnr`` holds each image's reconstruction PSNR (images mapped to [0, 1], peak 1); ``encode_report()``
reports those of every encode since its last call.

``remember(path, stamp)`` keeps every inversion in a file (RUN/directions/inverted.pt from the registry), keyed
by the images' bytes and the inversion budget and tied to ``stamp`` (the checkpoints'), so editing the same photos
for another attribute does not invert them again.

``load_model_from_run(run_dir, device, predictor_run=None)`` rebuilds the EMA generator from a run folder.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from common.checkpoint import content_key, load_stamped, save_stamped
from common.metrics import psnr
from interface_gan.pggan import Generator, build_networks, project_to_sphere, sample_latents


@dataclass
class InversionResult:
    latents: torch.Tensor  # [B, D] on the sqrt(D) sphere
    psnr: torch.Tensor  # [B] dB of the best start
    loss: torch.Tensor  # [B] final loss of the best start
    initial_psnr: torch.Tensor  # [B] dB of the best random start before optimising (the baseline)


def invert(generate: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, latent_dim: int,
           steps: int = 200, lr: float = 0.1, starts: int = 8,
           features: Callable[[torch.Tensor], torch.Tensor] | None = None, feature_weight: float = 1.0,
           generator: torch.Generator | None = None, on_step: Callable[[], None] | None = None) -> InversionResult:
    """Find z with generate(z) ~ images by projected Adam from ``starts`` random starts per image (batched).

    images [B, 3, H, W] in [-1, 1] at the generator's resolution -> InversionResult. The learning rate follows a
    cosine decay to zero, so the last steps settle instead of bouncing on the sphere. ``on_step`` is called after
    each Adam step (a progress bar).
    """
    b = images.shape[0]
    device = images.device
    target = images.float().repeat_interleave(starts, dim=0)  # [B*K, 3, H, W]
    z0 = sample_latents(b * starts, latent_dim, generator).to(device)  # [B*K, D]
    target_feats = features(target).detach().float() if features is not None and feature_weight > 0 else None

    def losses(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = generate(z).float()  # [B*K, 3, H, W]
        pixel = (out - target).pow(2).flatten(1).mean(dim=1)  # [B*K]
        total = pixel
        if target_feats is not None:
            total = total + feature_weight * (features(out).float() - target_feats).pow(2).mean(dim=1)
        return total, out

    with torch.no_grad(), torch.autocast(device.type, enabled=False):
        _, out0 = losses(z0)
        initial = torch.from_numpy(psnr(out0, target)).reshape(b, starts).max(dim=1).values  # [B]
    z = z0.clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    with torch.enable_grad():  # callers (run_edit) may hold torch.no_grad()
        _optimise(z, opt, losses, steps, lr, on_step)
    # the winner is picked and measured at full precision (the search may have run under bf16 autocast)
    with torch.no_grad(), torch.autocast(device.type, enabled=False):
        total, out = losses(z)
        best = total.reshape(b, starts).argmin(dim=1)  # [B]
        pick = torch.arange(b, device=device) * starts + best
        return InversionResult(z.detach()[pick], torch.from_numpy(psnr(out[pick], images)), total[pick], initial)


def _optimise(z: torch.Tensor, opt: torch.optim.Optimizer, losses, steps: int, lr: float,
              on_step: Callable[[], None] | None = None) -> None:
    for i in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1.0 + math.cos(math.pi * i / steps))
        total, _ = losses(z)
        opt.zero_grad(set_to_none=True)
        total.sum().backward()  # samples are independent: the sum gives each its own gradient
        opt.step()
        with torch.no_grad():
            z.copy_(project_to_sphere(z))
        if on_step is not None:
            on_step()


class PGGANEditable:
    """The EditableModel of common/editing.py for a trained PGGAN (EMA generator at full resolution)."""

    latent_on_sphere = True

    def __init__(self, generator: Generator, device: str | torch.device = "cpu", predictor=None,
                 steps: int = 200, lr: float = 0.1, starts: int = 8, feature_weight: float = 1.0,
                 batch_size: int = 64, seed: int = 0, progress: bool = True, precision: str = "auto"):
        self.generator = generator.to(device).eval().requires_grad_(False)
        self.device = torch.device(device)
        self.latent_dim = generator.latent_dim
        self.resolution = generator.resolution
        self.predictor = predictor
        self.steps, self.lr, self.starts, self.feature_weight = steps, lr, starts, feature_weight
        self.batch_size, self.seed, self.progress = batch_size, seed, progress
        # "auto": the search runs under bf16 autocast where bf16 is native (2x on a 2-core Zen 4 CPU, the same
        # PSNR: docs/results.md "Real CelebA"), in fp32 elsewhere; "fp32" forces it off
        self.precision = precision
        self.last_psnr: list[float] = []  # per image of the last encode()
        self.last_initial_psnr: list[float] = []
        self._reported: tuple[list[float], list[float]] = ([], [])  # every encode() since encode_report()
        self.memory_file: Path | None = None
        self.memory_stamp, self.memory = "", None

    def remember(self, path: str | Path, stamp: str) -> None:
        """Keep inversions in ``path`` (read when its stamp is ``stamp``, rewritten atomically after each new one)."""
        self.memory_file, self.memory_stamp, self.memory = Path(path), stamp, None

    def _memory(self) -> dict:
        if self.memory is None:  # read on first use; an unreadable file: invert again, overwrite it
            self.memory = load_stamped(self.memory_file, self.memory_stamp, "inversions")
        return self.memory

    def _memory_key(self, images: torch.Tensor) -> str:
        return content_key(images, f"{self.steps}|{self.starts}|{self.lr}|{self.feature_weight}|{self.seed}|"
                                   f"{self.batch_size}|{self._bf16()}")

    def sample_latents(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return sample_latents(n, self.latent_dim, generator)  # [n, D], norm sqrt(D)

    def latent_flow_layout(self) -> None:
        return None

    def encode_report(self) -> dict:
        """{"inversion": per-image PSNR (best start), its mean, the best random start's PSNR before optimising,
        and the budget} over the encodes since the last call; {} when there were none."""
        psnr, initial = self._reported
        self._reported = ([], [])
        if not psnr:
            return {}
        return {"inversion": {"psnr": [round(v, 3) for v in psnr], "mean_psnr": round(sum(psnr) / len(psnr), 3),
                              "random_start_psnr": [round(v, 3) for v in initial], "steps": self.steps,
                              "starts": self.starts, "feature_weight": self.feature_weight}}

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """z [B, D] -> images [B, 3, R, R] in [-1, 1] (CPU float32)."""
        out = []
        for start in range(0, latents.shape[0], self.batch_size):
            z = torch.as_tensor(latents[start:start + self.batch_size], dtype=torch.float32).to(self.device)
            out.append(self.generator(z).float().clamp(-1, 1).cpu())
        return torch.cat(out) if out else torch.zeros(0, 3, self.resolution, self.resolution)

    def _features(self):
        if self.predictor is None or self.feature_weight <= 0:
            return None
        predictor = self.predictor.to(self.device).eval()
        size = predictor.resolution

        def features(images: torch.Tensor) -> torch.Tensor:
            if images.shape[-1] != size:
                images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False,
                                       antialias=True)
            return predictor.features(images)  # [B, Df]

        return features

    def _bf16(self) -> bool:
        from common.distributed import native_bf16

        return self.precision == "auto" and native_bf16(self.device)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """GAN inversion of images [B, 3, H, W] in [-1, 1] (resized to the generator's resolution) -> z [B, D]."""
        images = images.float()
        if images.shape[-1] != self.resolution or images.shape[-2] != self.resolution:
            images = F.interpolate(images, size=(self.resolution, self.resolution), mode="bilinear",
                                   align_corners=False, antialias=True)
        key = self._memory_key(images) if self.memory_file is not None else None
        if key is not None and key in self._memory():
            saved = self._memory()[key]
            self.last_psnr, self.last_initial_psnr = list(saved["psnr"].tolist()), list(saved["initial"].tolist())
            self._reported[0].extend(self.last_psnr)
            self._reported[1].extend(self.last_initial_psnr)
            return saved["latents"].clone()
        rng = torch.Generator().manual_seed(self.seed)
        latents, self.last_psnr, self.last_initial_psnr = [], [], []
        features = self._features()
        per_chunk = max(1, self.batch_size // self.starts)
        chunks = range(0, images.shape[0], per_chunk)
        # inversion is the slow part of editing a photo with a GAN (minutes on a CPU): show its steps
        with tqdm(total=len(chunks) * self.steps, desc=f"invert {images.shape[0]} images", unit="step",
                  disable=not self.progress or not len(chunks), leave=False) as bar:
            for start in chunks:
                chunk = images[start:start + per_chunk].to(self.device)
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self._bf16()):
                    result = invert(self.generator, chunk, self.latent_dim, self.steps, self.lr, self.starts,
                                    features, self.feature_weight, rng, on_step=lambda: bar.update(1))
                latents.append(result.latents.cpu())
                self.last_psnr += [float(v) for v in result.psnr]
                self.last_initial_psnr += [float(v) for v in result.initial_psnr]
        self._reported[0].extend(self.last_psnr)
        self._reported[1].extend(self.last_initial_psnr)
        found = torch.cat(latents) if latents else torch.zeros(0, self.latent_dim)
        if key is not None:
            self._memory()[key] = {"latents": found.clone(), "psnr": torch.tensor(self.last_psnr),
                                   "initial": torch.tensor(self.last_initial_psnr)}
            save_stamped(self.memory_file, self.memory_stamp, "inversions", self._memory())
        return found


def load_generator(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[Generator, object]:
    """The EMA generator of a PGGAN run folder and the run's config (PGGANConfig)."""
    from common.checkpoint import averaged_weights
    from common.config import config_from_dict
    from common.run import load_run_checkpoint
    from interface_gan.config import PGGANConfig

    ckpt = load_run_checkpoint(run_dir)
    cfg = config_from_dict(PGGANConfig, ckpt["config"], source=f"{run_dir}/checkpoints")
    generator, _ = build_networks(cfg.model, cfg.data.resolution)
    generator.load_state_dict(averaged_weights(ckpt, "generator"))
    return generator.to(device).eval(), cfg


def load_model_from_run(run_dir: str | Path, device: str | torch.device = "cpu",
                        predictor_run: str | Path | None = None) -> PGGANEditable:
    """PGGANEditable for a run folder; with ``predictor_run`` the inversion adds the predictor's feature loss."""
    generator, cfg = load_generator(run_dir, device)
    predictor = None
    if predictor_run:
        from common.predictor import load_predictor

        predictor = load_predictor(predictor_run, device)
    e = cfg.edit
    return PGGANEditable(generator, device, predictor, steps=e.inversion_steps, lr=e.inversion_lr,
                         starts=e.inversion_starts, feature_weight=e.inversion_feature_weight, seed=cfg.train.seed)
