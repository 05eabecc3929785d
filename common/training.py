"""The one training loop every method runs; each method's package supplies a ``Trainer`` with its step.

    ctx = RunContext.create("vae", cfg, args)          # run folder, device, precision, DDP, signals, logging
    trainer = VAETrainer(cfg, ctx)                     # vae/training.py: models, optimisers, EMA, data
    fit(ctx, trainer, cfg.train.total_images, cfg.train.checkpoint_every_images)

``fit`` owns what is the same for every method: resume from the checkpoint, the progress bar, the stop on
SIGINT/SIGTERM (or ``stop_at`` images), the checkpoint cadence, the final checkpoint and the
metrics.json written atomically. A ``Trainer`` owns what differs: its models and what goes into the checkpoint
(``state_dict``), one optimiser step (``train_step``, built on the package's pure ``train_step`` function that the
benchmark times too), its periodic grids and validation (``after_step``) and its final test (``finish``).

``StepTools`` is the part of the run context a training step uses (autocast, check_finite, step); the benchmark
builds one bare, so it times exactly the code that trains.
"""

from __future__ import annotations

import contextlib
import json
import time
from abc import ABC, abstractmethod
from typing import Any

import torch

from common.checkpoint import atomic_write_text


class StepTools:
    """autocast / check_finite / step: what one training step needs from its context (RunContext extends it)."""

    def __init__(self, device: torch.device | str = "cpu", precision: str = "fp32", grad_clip: float = 0.0):
        self.device = torch.device(device)
        self.precision = precision
        self.default_clip = float(grad_clip)
        self.scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
        self.distributed = False

    def autocast(self):
        """Context manager for the forward pass: bf16/fp16 autocast, or nothing for fp32."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer, params=None, clip: float | None = None):
        """backward (scaled for fp16), optional grad-norm clip, optimizer step, zero_grad; grad norm or None."""
        clip = self.default_clip if clip is None else float(clip)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()
        norm = None
        if clip > 0:
            if params is None:
                params = [p for group in optimizer.param_groups for p in group["params"]]
            if self.scaler is not None:
                self.scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
            norm = torch.nn.utils.clip_grad_norm_(params, clip)
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return norm

    def check_finite(self, value: torch.Tensor | float, tag: str = "loss/total") -> None:
        """Raise FloatingPointError when ``value`` is NaN/inf anywhere (RunContext: on every rank, with context)."""
        if not bool(torch.isfinite(torch.as_tensor(value).detach().float()).all()):
            raise FloatingPointError(f"non-finite {tag}")


class Trainer(ABC):
    """What a method hands to ``fit``: it must define state_dict, load_state_dict and train_step; the other hooks
    are optional. ``images_seen`` and ``step`` are kept up to date by the loop."""

    images_seen: int = 0
    step: int = 0

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Models, optimisers, EMA and extras for the checkpoint (modules may be given as is)."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from a checkpoint written from ``state_dict`` (called on --resume)."""

    def start(self) -> None:
        """Called once on a fresh (not resumed) run before the first step: data-dependent init, first grids."""
        return None  # optional: nothing by default

    @abstractmethod
    def train_step(self) -> tuple[int, dict[str, Any]]:
        """One optimiser step: (global images it consumed, scalars to log under their TensorBoard names)."""

    def postfix(self) -> dict[str, str] | None:
        """A few numbers for the progress bar, or None."""
        return None

    def after_step(self, step_images: int, done: bool) -> None:
        """Periodic work after a step: grids, validation (``done``: the run just reached its total)."""
        return None  # optional: nothing by default

    def finish(self) -> dict[str, Any] | None:
        """Once the total is reached (every rank calls it): final test numbers for metrics.json, or None."""
        return None


def fit(ctx, trainer: Trainer, total_images: int, checkpoint_every: int, stop_at: int = 0) -> dict | None:
    """Train until ``total_images`` (or ``stop_at`` images, or a signal); checkpoint; the metrics on completion.

    metrics.json (rank 0) holds ``trainer.finish()`` plus precision, images_seen, steps, train_seconds and img_per_s
    of this process. Returns those metrics, or None when the run stopped early. Closes ``ctx``.
    """
    state = ctx.load_checkpoint()
    if state:
        trainer.load_state_dict(state)
        trainer.images_seen, trainer.step = int(state["images_seen"]), int(state["step"])
    else:
        trainer.images_seen, trainer.step = 0, 0
        trainer.start()

    def save() -> None:
        ctx.save_checkpoint({**trainer.state_dict(), "images_seen": trainer.images_seen, "step": trainer.step})

    limit = min(stop_at or total_images, total_images)
    bar = ctx.progress(total_images, initial=trainer.images_seen)
    start_time, start_images = time.perf_counter(), trainer.images_seen
    while trainer.images_seen < limit and not ctx.should_stop:
        step_images, scalars = trainer.train_step()
        trainer.images_seen += step_images
        trainer.step += 1
        for key, value in scalars.items():
            ctx.log.scalar(key, value)
        ctx.log.advance(trainer.images_seen)
        bar.update(step_images)
        postfix = trainer.postfix()
        if postfix:
            bar.set_postfix(postfix, refresh=False)
        trainer.after_step(step_images, trainer.images_seen >= total_images)
        if ctx.due(checkpoint_every, trainer.images_seen, step_images):
            save()
    bar.close()
    seconds = time.perf_counter() - start_time
    save()
    metrics = None
    if trainer.images_seen >= total_images:
        metrics = dict(trainer.finish() or {})
        metrics.update(precision=ctx.precision, images_seen=trainer.images_seen, steps=trainer.step,
                       train_seconds_this_process=round(seconds, 1),
                       img_per_s_this_process=round((trainer.images_seen - start_images) / max(seconds, 1e-9), 1))
        if ctx.is_main:
            atomic_write_text(ctx.out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    ctx.close()
    return metrics
