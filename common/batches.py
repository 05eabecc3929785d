"""Endless, resumable training batches: what ``RunContext.batches`` returns (see common/run.py).

An epoch's order is a pure function of (seed, epoch): a ``RandomSampler`` driven by a generator seeded from
them in one process, ``DistributedSampler(seed=seed).set_epoch(epoch)`` under torchrun (each rank its own
share). The iterator counts the batches it has handed out; ``state_dict()`` goes into every checkpoint and
``load_state_dict()`` makes the next batch the one an uninterrupted run would have drawn, skipping the
consumed indices without loading them. The ``DataLoader`` gets a private generator, so starting an epoch
never draws from the global torch RNG (which the checkpoint restores and the training loop uses).

Fast path (a dataset with ``uint8_batch``, i.e. ``CelebACache``, and ``num_workers=0``): no DataLoader. Each
batch is one sorted gather of uint8 [B, R, R, 3] rows from the memmap (flipped rows mirrored in uint8), moved
to the device as uint8 (a quarter of the bytes) and converted there to float [-1, 1] by
``uint8_images_to_model`` (bit-identical to the dataset's own items). The same epoch order as the DataLoader
path; the flips are drawn once per epoch from a generator seeded by (seed, epoch, rank), so they too are a pure
function of the position and a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from common.config import ConfigError

__all__ = ["ResumableBatches", "to_device"]


def to_device(obj: Any, device: torch.device, non_blocking: bool = False, channels_last: bool = False) -> Any:
    """Move tensors in (nested) dicts/lists/tuples to ``device``; 4-D float tensors optionally channels_last."""
    if isinstance(obj, torch.Tensor):
        obj = obj.to(device, non_blocking=non_blocking)
        if channels_last and obj.dim() == 4 and obj.is_floating_point():
            obj = obj.contiguous(memory_format=torch.channels_last)
        return obj
    if isinstance(obj, dict):
        return {k: to_device(v, device, non_blocking, channels_last) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        moved = [to_device(v, device, non_blocking, channels_last) for v in obj]
        if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
            return type(obj)(*moved)
        return type(obj)(moved)
    return obj


class ResumableBatches(Iterator):
    """Endless batches of ``dataset`` on ``device``; one epoch after another, position saved in checkpoints."""

    def __init__(self, dataset, batch_size: int, *, drop_last: bool = True, seed: int = 0,
                 device: torch.device | str = "cpu", num_workers: int = 0, channels_last: bool = False,
                 num_replicas: int = 1, rank: int = 0, uint8: bool = False):
        if int(batch_size) < 1:
            raise ConfigError(f"batch size must be >= 1, got {batch_size}")
        self.dataset, self.batch_size, self.drop_last, self.seed = dataset, int(batch_size), drop_last, int(seed)
        self.device = torch.device(device)
        self.num_workers, self.channels_last = int(num_workers), channels_last
        self.num_replicas, self.rank = int(num_replicas), int(rank)
        self.epoch = 0
        self.position = 0  # batches already handed out in this epoch
        self._it: Iterator | None = None
        # fast path: whole uint8 batches straight from the dataset (workers would need the DataLoader)
        self.fast = hasattr(dataset, "uint8_batch") and self.num_workers == 0
        self.uint8 = bool(uint8) and self.fast  # fast path only: leave "image" uint8 [B, R, R, 3] for the caller
        self._order: np.ndarray | None = None  # fast path: this epoch's positions [n] and flips [n] (or None)
        self._flips: np.ndarray | None = None

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batch": self.position, "batch_size": self.batch_size}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position, self._it, self._order = int(state["epoch"]), int(state["batch"]), None, None
        saved_batch = int(state.get("batch_size", self.batch_size))
        if saved_batch != self.batch_size:
            # Another batch size: stay in the epoch, at the same number of samples consumed (rounded down).
            self.position = self.position * saved_batch // self.batch_size

    def epoch_indices(self, epoch: int) -> list[int]:
        """This rank's dataset indices for ``epoch``, in order (a pure function of seed, epoch, rank)."""
        n = len(self.dataset)
        if self.num_replicas > 1:
            sampler = torch.utils.data.DistributedSampler(
                self.dataset, num_replicas=self.num_replicas, rank=self.rank, shuffle=True, seed=self.seed)
            sampler.set_epoch(epoch)
        else:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            sampler = torch.utils.data.RandomSampler(self.dataset, generator=generator)
        indices = list(sampler)
        if n == 0 or (self.drop_last and len(indices) < self.batch_size):
            per_rank = f" ({len(indices)} per rank)" if self.num_replicas > 1 else ""
            raise ConfigError(f"the dataset has {n} items{per_rank}, fewer than one batch of {self.batch_size}; "
                              "lower train.batch_size or use more data")
        return indices

    def _start_fast(self) -> None:
        self._order = np.asarray(self.epoch_indices(self.epoch), dtype=np.int64)  # [n] this rank's positions
        self._flips = None
        if getattr(self.dataset, "hflip", False):
            generator = torch.Generator().manual_seed(
                (self.seed * 1_000_003 + self.epoch) * 1_009 + self.rank + 7)
            self._flips = (torch.rand(len(self._order), generator=generator) < 0.5).numpy()  # [n]

    def _next_fast(self) -> Any:
        from common.cache import uint8_images_to_model

        for _ in range(3):  # at most: the end of this epoch, then the start of the next
            if self._order is None:
                self._start_fast()
            start = self.position * self.batch_size
            stop = min(start + self.batch_size, len(self._order))
            if start >= len(self._order) or (self.drop_last and stop - start < self.batch_size):
                self.epoch, self.position, self._order = self.epoch + 1, 0, None
                continue
            self.position += 1
            flips = None if self._flips is None else self._flips[start:stop]
            batch = self.dataset.uint8_batch(self._order[start:stop], flips)
            batch = to_device(batch, self.device, self.device.type == "cuda")
            if not self.uint8:  # mirror and convert here, on the device ("flip" stays for uint8 callers)
                batch["image"] = uint8_images_to_model(batch["image"], self.channels_last, batch.pop("flip", None))
            return batch
        raise RuntimeError("ctx.batches: the dataset yielded no batch for a whole epoch")

    def _start(self) -> None:
        remaining = self.epoch_indices(self.epoch)[self.position * self.batch_size:]  # skip consumed batches
        # A private generator: starting a loader must not draw from the global RNG (resume would diverge).
        # It seeds the workers too, so augmentations inside workers restart from (seed, epoch, position).
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch * 7919 + self.position)
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_size=self.batch_size, sampler=remaining, drop_last=self.drop_last,
            num_workers=self.num_workers, pin_memory=self.device.type == "cuda", generator=generator)
        self._it = iter(loader)

    def __next__(self) -> Any:
        if self.fast:
            return self._next_fast()
        for _ in range(3):  # at most: the end of this epoch, then the start of the next
            if self._it is None:
                self._start()
            try:
                batch = next(self._it)
            except StopIteration:
                self.epoch, self.position, self._it = self.epoch + 1, 0, None
                continue
            self.position += 1
            return to_device(batch, self.device, self.device.type == "cuda", self.channels_last)
        raise RuntimeError("ctx.batches: the data loader yielded no batch for a whole epoch")
