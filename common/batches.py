"""Endless, resumable training batches: what ``RunContext.batches`` returns (see common/run.py).

An epoch's order is a pure function of (seed, epoch): a ``RandomSampler`` driven by a generator seeded from
them in one process, ``DistributedSampler(seed=seed).set_epoch(epoch)`` under torchrun (each rank its own
share). The iterator counts the batches it has handed out; ``state_dict()`` goes into every checkpoint and
``load_state_dict()`` makes the next batch the one an uninterrupted run would have drawn, skipping the
consumed indices without loading them. The ``DataLoader`` gets a private generator, so starting an epoch
never draws from the global torch RNG (which the checkpoint restores and the training loop uses).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

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
                 num_replicas: int = 1, rank: int = 0):
        if int(batch_size) < 1:
            raise ConfigError(f"batch size must be >= 1, got {batch_size}")
        self.dataset, self.batch_size, self.drop_last, self.seed = dataset, int(batch_size), drop_last, int(seed)
        self.device = torch.device(device)
        self.num_workers, self.channels_last = int(num_workers), channels_last
        self.num_replicas, self.rank = int(num_replicas), int(rank)
        self.epoch = 0
        self.position = 0  # batches already handed out in this epoch
        self._it: Iterator | None = None

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batch": self.position, "batch_size": self.batch_size}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position, self._it = int(state["epoch"]), int(state["batch"]), None
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
