"""Training logs of a run: scalars averaged between writes (reduced across ranks), image grids, stats.jsonl.

``RunLogger`` is what ``ctx.log`` is (see common/run.py). ``scalar(tag, value)`` only accumulates (tensors are
summed on their device, so no GPU sync per step); ``advance(images_seen)``, called once per training step by
every rank, writes the means every ``log.every_images`` images to TensorBoard (``SummaryWriter`` in the run
folder) and as one JSON line to ``stats.jsonl``, together with ``perf/img_per_s``. Only rank 0 writes files;
the reduction across ranks is an ``all_gather_object`` of ``{tag: (sum, count)}``, so ranks may report
different tags. ``images(tag, images)`` writes a grid of [-1, 1] images to TensorBoard and ``samples/`` at once.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from common.checkpoint import atomic_path, atomic_write_text

__all__ = ["RunLogger", "image_grid", "crossed"]


def crossed(every: int, images_seen: int, batch: int) -> bool:
    """True when a multiple of ``every`` lies in (images_seen - batch, images_seen]; never for every <= 0."""
    if every <= 0 or batch <= 0:
        return False
    return images_seen // every > (images_seen - batch) // every


def image_grid(images: torch.Tensor, nrow: int | None = None) -> torch.Tensor:
    """[B, C, H, W] images in [-1, 1] -> [3, H', W'] float grid in [0, 1] (square-ish layout by default)."""
    import torchvision.utils

    if images.dim() != 4:
        raise ValueError(f"image grid: expected images [B, C, H, W], got shape {tuple(images.shape)}")
    images = images.detach().float().cpu().clamp(-1, 1).add(1).div(2)  # [-1, 1] -> [0, 1]
    nrow = nrow or max(1, math.ceil(math.sqrt(images.shape[0])))
    return torchvision.utils.make_grid(images, nrow=nrow, padding=2, pad_value=1.0)  # [3, H', W']


class RunLogger:
    """Scalar accumulation + periodic writes; owned by a RunContext (``ctx.log``)."""

    def __init__(self, out: Path, every_images: int, tensorboard: bool, is_main: bool, distributed: bool):
        self.out = Path(out)
        self.every_images = int(every_images)
        self.tensorboard = bool(tensorboard)
        self.is_main = is_main
        self.distributed = distributed
        self.images_seen = 0
        self.step = 0
        self._sums: dict[str, Any] = {}
        self._counts: dict[str, int] = {}
        self._writer = None
        self._purge_step: int | None = None
        self._last_images = 0
        self._last_time = time.perf_counter()
        self._closed = False

    # -- state --------------------------------------------------------------------------------------------------
    def resume_at(self, images_seen: int, step: int) -> None:
        """Continue from a checkpoint: drop later stats.jsonl lines and TensorBoard events (purge_step)."""
        self.images_seen, self.step = int(images_seen), int(step)
        self._last_images, self._last_time = self.images_seen, time.perf_counter()
        self._sums.clear()
        self._counts.clear()
        if not self.is_main:
            return
        self._purge_step = self.images_seen + 1
        if self._writer is not None:  # reopen so that TensorBoard discards events past the checkpoint
            self._writer.close()
            self._writer = None
        stats = self.out / "stats.jsonl"
        if stats.is_file():
            kept = []
            for line in stats.read_text(encoding="utf-8").splitlines():
                try:
                    if json.loads(line).get("images_seen", 0) <= self.images_seen:
                        kept.append(line)
                except (json.JSONDecodeError, AttributeError):
                    continue  # a torn last line from a killed run
            atomic_write_text(stats, "".join(f"{line}\n" for line in kept))

    @property
    def writer(self):
        """The TensorBoard SummaryWriter (rank 0, log.tensorboard true), created on first use; else None."""
        if self._writer is None and self.is_main and self.tensorboard and not self._closed:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.out), purge_step=self._purge_step)
            self._purge_step = None
        return self._writer

    # -- API ----------------------------------------------------------------------------------------------------
    def scalar(self, tag: str, value: Any) -> None:
        """Accumulate one value for ``tag`` (mean over the steps since the last write is what gets written)."""
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                raise ValueError(f"log.scalar({tag!r}): expected a single number, got a tensor of shape "
                                 f"{tuple(value.shape)}")
            value = value.detach().float().reshape(())
        else:
            value = float(value)
        self._sums[tag] = self._sums[tag] + value if tag in self._sums else value
        self._counts[tag] = self._counts.get(tag, 0) + 1

    def advance(self, images_seen: int) -> bool:
        """Record the global images seen after this step; write on schedule. Returns True when it wrote."""
        batch = int(images_seen) - self.images_seen
        self.images_seen = int(images_seen)
        self.step += 1
        if crossed(self.every_images, self.images_seen, batch):
            self.write()
            return True
        return False

    def write(self) -> dict[str, float]:
        """Reduce the accumulated scalars across ranks and write them now (all ranks must call it together)."""
        local = {tag: (float(self._sums[tag]), self._counts[tag]) for tag in self._sums}
        self._sums.clear()
        self._counts.clear()
        if self.distributed and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, local)
        else:
            gathered = [local]
        totals: dict[str, list[float]] = {}
        for part in gathered:
            for tag, (total, count) in part.items():
                acc = totals.setdefault(tag, [0.0, 0])
                acc[0] += total
                acc[1] += count
        means = {tag: total / count for tag, (total, count) in sorted(totals.items()) if count}
        now = time.perf_counter()
        elapsed = max(now - self._last_time, 1e-9)
        if self.images_seen > self._last_images:
            means["perf/img_per_s"] = (self.images_seen - self._last_images) / elapsed
        self._last_images, self._last_time = self.images_seen, now
        if self.is_main:
            writer = self.writer
            if writer is not None:
                for tag, value in means.items():
                    writer.add_scalar(tag, value, global_step=self.images_seen)
                writer.flush()
            record = {"images_seen": self.images_seen, "step": self.step, "time": time.time(), **means}
            with open(self.out / "stats.jsonl", "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record, allow_nan=True) + "\n")
        return means

    def images(self, tag: str, images: torch.Tensor, nrow: int | None = None) -> Path | None:
        """Write a grid of [-1, 1] images ([B, C, H, W]) to TensorBoard and samples/<tag>_<images>.png (rank 0)."""
        if not self.is_main:
            return None
        grid = image_grid(images, nrow)  # [3, H', W'] in [0, 1]
        writer = self.writer
        if writer is not None:
            writer.add_image(tag, grid, global_step=self.images_seen)
            writer.flush()
        from PIL import Image

        path = self.out / "samples" / f"{tag.replace('/', '_')}_{self.images_seen:010d}.png"
        array = grid.mul(255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()  # [H', W', 3]
        with atomic_path(path) as tmp:
            Image.fromarray(array).save(tmp, format="PNG")
        return path

    def close(self) -> None:
        """Write pending scalars (single process only: a collective here could hang) and close TensorBoard."""
        if self._closed:
            return
        if self._sums and not self.distributed:
            self.write()
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
            self._writer = None
        self._closed = True
