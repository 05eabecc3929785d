"""The shared training run context: device, seeding, autocast, DDP, checkpoints, resume, logging, signals.

Every method's training script writes its own loop and calls this (see docs/contracts.md):

    parser = argparse.ArgumentParser(); add_train_arguments(parser)
    args = parser.parse_args()
    cfg = load_config(VAEConfig, args.config, args.set)
    ctx = RunContext.create("vae", cfg, args)          # None with --dry-run (the config was printed)
    model = ctx.wrap(VAE(cfg.model)); opt = torch.optim.Adam(model.parameters(), cfg.train.lr)
    ema = EMA(model, cfg.train.ema_decay)               # after ctx.wrap, so every rank starts from rank 0's weights
    state = ctx.load_checkpoint()                       # after building everything that consumes randomness
    images_seen = state["images_seen"] if state else 0  # (and load_state_dict of models/optimizers/EMA)
    batches = ctx.batches(dataset, cfg.train.batch_size)
    with ctx.progress(cfg.train.total_images, initial=images_seen) as bar:
        while images_seen < cfg.train.total_images and not ctx.should_stop:
            batch = next(batches)
            with ctx.autocast():
                loss = ...
            ctx.check_finite(loss, "loss/total")
            ctx.step(loss, opt); ema.update(model)
            n = batch["image"].shape[0] * ctx.world_size; images_seen += n; bar.update(n)
            ctx.log.scalar("loss/total", loss); ctx.log.advance(images_seen)
            if ctx.due(cfg.train.checkpoint_every_images, images_seen, n):
                ctx.save_checkpoint({"models": {"vae": ctx.unwrap(model)}, "ema": {"vae": ema}, ...})
    ctx.save_checkpoint({...}); ctx.close()

Semantics worth knowing:
- Every rank calls every method; only rank 0 writes files (config.yaml, TensorBoard events, stats.jsonl,
  checkpoints/last.pt). ``should_stop``, ``check_finite`` and ``log.advance`` (on write) are collectives under
  torchrun, so all ranks must call them at the same steps.
- RNG states: rank 0's are in last.pt; each other rank writes its own to ``checkpoints/rng/rank<r>.pt`` (tagged
  with the checkpoint's step and images seen) when it calls save_checkpoint, and restores it on resume; a
  missing or stale file means that rank is reseeded from (seed, rank, images seen) with a warning.
- ``ctx.batches`` is resumable: an epoch's order is a pure function of (train.seed, iterator number, epoch)
  (RandomSampler with a seeded generator, or DistributedSampler.set_epoch); the epoch and the batches consumed
  are saved in the checkpoint and resuming skips the consumed indices without loading them. With
  ``num_workers=0`` "train N, stop, resume, train N" equals 2N exactly; with workers the order is still exact,
  but random augmentations inside workers are seeded per (epoch, resume) rather than continued.
- Signals: the first SIGINT/SIGTERM sets ``should_stop`` (finish the step, checkpoint, exit); a second one
  gets the default behaviour (KeyboardInterrupt / termination).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import os
import shutil
import signal
import subprocess
import sys
import threading
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from common.batches import ResumableBatches
from common.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    atomic_path,
    atomic_torch_save,
    atomic_write_text,
    get_rng_state,
    load_checkpoint_file,
    load_run_checkpoint,
    set_rng_state,
    strip_model_prefixes,
    strip_prefixes,
)
from common.cli import UserError
from common.config import PRECISIONS, RUN_METADATA_KEYS, ConfigError, LogConfig, config_to_dict, dump_config
from common.distributed import (
    all_reduce_any,
    all_reduce_mean,
    barrier,
    broadcast_from_main,
    distributed_on,
    is_main,
    local_rank,
    rank,
    resolve_device,
    resolve_precision,
    seed_everything,
    world_size,
)
from common.logging_utils import RunLogger, crossed
from common.training import StepTools

__all__ = [
    "RunContext",
    "RunExistsError",
    "NonFiniteLossError",
    "CheckpointError",
    "EMA",
    "add_train_arguments",
    "load_run_checkpoint",
    "strip_prefixes",
    "unwrap",
    "resolve_device",
    "seed_everything",
    "git_commit",
    "is_main",
    "rank",
    "world_size",
    "local_rank",
    "all_reduce_mean",
    "barrier",
    "CHECKPOINT_FORMAT",
    "adam",
    "keep_freed_memory",
]

# Run-folder entries that --overwrite removes; anything else in the folder is left alone.
_RUN_ENTRIES = ("config.yaml", "stats.jsonl", "checkpoints", "samples", "directions", "edits")


class RunExistsError(UserError):
    """The run folder already holds a run and neither --resume nor --overwrite was given."""


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN/inf; training stops and the last good checkpoint is kept."""


# ---------------------------------------------------------------------------------------------------------------
# Small pieces usable on their own.


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags every training script shares."""
    parser.add_argument("--config", required=True, help="YAML config file, e.g. configs/vae/synthetic.yaml")
    parser.add_argument("--out", default=None, help="run folder (default runs/<method>/<config file stem>)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.lr=1e-4 (repeatable)")
    parser.add_argument("--resume", action="store_true", help="continue the run in the run folder")
    parser.add_argument("--overwrite", action="store_true", help="delete the run folder's previous run first")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    return parser


def git_commit() -> str | None:
    """The repository's HEAD commit (with '-dirty' when tracked files changed), or None outside git."""
    repo = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=5)
        if head.returncode != 0:
            return None
        commit = head.stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                                capture_output=True, text=True, timeout=5)
        return commit + ("-dirty" if status.returncode == 0 and status.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def unwrap(model: nn.Module) -> nn.Module:
    """The bare module inside DistributedDataParallel / torch.compile wrappers (any nesting)."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed blocks up to 32 MiB in the heap; True when it took effect.

    PyTorch's CPU allocator is plain malloc. By default glibc serves big blocks with a fresh mmap and unmaps them
    on free (and trims the heap top back to the OS), so every training step page-faults its activations and
    gradients in again, a fifth of a CPU step or more (docs/findings.md, "Speed on CPUs"). A fixed 32 MiB mmap
    threshold (glibc's largest) and a 1 GiB trim threshold let the next step reuse the same pages. Blocks above
    32 MiB are still mapped and returned; the cost is that up to the step's peak stays resident, which training
    holds anyway. No-op (False) off glibc.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
        return bool(libc.mallopt(m_mmap_threshold, 32 << 20)) and bool(libc.mallopt(m_trim_threshold, 1 << 30))
    except (OSError, AttributeError):
        return False


def adam(params, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
         decoupled: bool = False) -> torch.optim.Optimizer:
    """Adam (AdamW when ``decoupled``) with the fastest exact implementation for the parameters' device.

    ``fused=True`` (one kernel over all parameters) is several times faster than ``foreach`` on the CPU and is what
    CUDA recommends too; the same fp32 update, in another operation order.
    Elsewhere (e.g. MPS) ``foreach``. Every trainer and scripts/benchmark.py build their optimisers here.
    """
    params = list(params)
    first = next((p for g in params for p in (g["params"] if isinstance(g, dict) else [g])), None)
    device = first.device if first is not None else "cpu"
    fast = {"fused": True} if torch.device(device).type in ("cpu", "cuda") else {"foreach": True}
    cls = torch.optim.AdamW if decoupled else torch.optim.Adam
    return cls(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, **fast)


@torch.no_grad()
def lerp_parameters_(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema = decay * ema + (1 - decay) * model for every floating parameter, in one multi-tensor op.

    The two modules must have the same parameters (ValueError otherwise); decay 0 copies exactly.
    """
    ema_params, new_params = [], []
    for e, p in zip(ema.parameters(), model.parameters(), strict=True):
        if e.is_floating_point():
            ema_params.append(e)
            new_params.append(p.detach().to(e.dtype))
    if ema_params:
        if decay == 0.0:
            torch._foreach_copy_(ema_params, new_params)  # exact copy (lerp by 1 is not bit-exact)
        else:
            torch._foreach_lerp_(ema_params, new_params, 1.0 - decay)


class EMA:
    """Exponential moving average of a model's weights: a deep copy, updated in fp32 with foreach lerp.

    ``update(model)`` does ``ema = decay * ema + (1 - decay) * model`` for floating parameters and copies
    buffers (BatchNorm statistics, ...). ``decay`` 0 makes the copy follow the model exactly.
    """

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 <= float(decay) <= 1.0:
            raise ConfigError(f"train.ema_decay must be in [0, 1], got {decay!r}")
        self.decay = float(decay)
        self.module = copy.deepcopy(unwrap(model)).eval().requires_grad_(False)
        for p in self.module.parameters():
            if p.is_floating_point() and p.dtype != torch.float32:
                p.data = p.data.float()  # accumulate in fp32 even when the model is bf16/fp16

    @torch.no_grad()
    def update(self, model: nn.Module, decay: float | None = None) -> None:
        src = unwrap(model)
        lerp_parameters_(self.module, src, self.decay if decay is None else float(decay))
        for e, b in zip(self.module.buffers(), src.buffers(), strict=True):
            e.copy_(b)

    def state_dict(self) -> dict:
        return self.module.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.module.load_state_dict(strip_prefixes(state_dict))


# ---------------------------------------------------------------------------------------------------------------
# The run context.


class RunContext(StepTools):
    """One training run's shared machinery; build it with ``RunContext.create(method, cfg, args)``."""

    def __init__(self, method: str, cfg: Any, args: Any, out: Path, device: torch.device, distributed: bool):
        self.method, self.cfg, self.args, self.out, self.device = method, cfg, args, Path(out), device
        self.config_dict = config_to_dict(cfg)
        self.distributed = distributed
        self.rank, self.world_size = rank(), world_size()
        self.is_main = self.rank == 0
        train = cfg.train
        self.seed = int(train.seed)
        self.channels_last = bool(getattr(train, "channels_last", False))
        self.precision = self._effective_precision(str(train.precision))
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" else None
        self.default_clip = float(getattr(train, "grad_clip", 0.0) or 0.0)
        self.checkpoint_dir = self.out / "checkpoints"
        self.last_checkpoint: Path | None = None
        self.resume = bool(getattr(args, "resume", False))
        self.git_commit = None
        log_cfg = getattr(cfg, "log", None) or LogConfig()
        self.log = RunLogger(self.out, log_cfg.every_images, log_cfg.tensorboard, self.is_main, distributed)
        self._iterators: list[ResumableBatches] = []
        self._pending_iterators: list[dict] = []
        self._stop_requested = False
        self._stop_agreed = False
        self._stop_checked_at = -1
        self._poisoned = False
        self._old_handlers: dict[int, Any] = {}
        self._owns_process_group = False
        self._closed = False

    # -- construction -------------------------------------------------------------------------------------------
    @classmethod
    def create(cls, method: str, cfg: Any, args: Any) -> RunContext | None:
        """Set up the run (see the module docstring); ``None`` after printing the config for --dry-run."""
        out = Path(args.out) if getattr(args, "out", None) else Path("runs") / method / _config_stem(args)
        if getattr(args, "dry_run", False):
            print(f"# method: {method}\n# run folder: {out}\n{dump_config(cfg)}", end="", flush=True)
            return None
        if getattr(args, "resume", False) and getattr(args, "overwrite", False):
            raise UserError("--resume and --overwrite contradict each other; pass one of them")
        train = getattr(cfg, "train", None)
        if train is None:
            raise TypeError(f"{type(cfg).__name__} has no 'train' section (common.config.TrainConfig)")
        if train.precision not in PRECISIONS:
            raise ConfigError(f"train.precision must be one of {', '.join(PRECISIONS)}, got {train.precision!r}")

        distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
        owns_group = False
        if distributed and not distributed_on():
            device = resolve_device(train.device, local_rank())
            if device.type == "cuda":
                torch.cuda.set_device(device)
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", init_method="env://")
            owns_group = True
        else:
            device = resolve_device(train.device, local_rank())
            distributed = distributed or world_size() > 1
        ctx = cls(method, cfg, args, out, device, distributed)
        ctx._owns_process_group = owns_group
        try:
            ctx._setup()
        except BaseException:
            ctx._teardown_group()
            raise
        return ctx

    def _setup(self) -> None:
        keep_freed_memory()  # 20-25% faster CPU steps: no page faults on every step's activations
        seed_everything(self.seed + self.rank)
        error = self._prepare_folder() if self.is_main else None
        # Rank 0 decides for all (shared folder or not): every rank fails the same way, none waits forever.
        error, self.resume = broadcast_from_main((error, self.resume))
        if error is not None:
            raise RunExistsError(error)
        if self.is_main:
            self.git_commit = git_commit()
            if self.resume:
                _report_config_changes(self.out / "config.yaml", self.config_dict)
            # workdir: where relative data paths in the config are read from (the edit scripts resolve them there)
            config_text = dump_config({"method": self.method, "git_commit": self.git_commit,
                                       "workdir": str(Path.cwd()), **self.config_dict})
            atomic_write_text(self.out / "config.yaml", config_text)
            auto = " (auto)" if self.cfg.train.precision == "auto" else ""
            print(f"run folder: {self.out}  (method {self.method}, device {self.device}, precision "
                  f"{self.precision}{auto}, world size {self.world_size}{', resuming' if self.resume else ''})")
            print(dump_config(self.config_dict), end="", flush=True)
        self.git_commit = broadcast_from_main(self.git_commit)
        barrier()
        self._install_signal_handlers()

    def _prepare_folder(self) -> str | None:
        """Rank 0: refuse, clear (--overwrite) or keep (--resume) the run folder; an error message or None."""
        out = self.out
        has_run = (out / "config.yaml").exists() or (
            (out / "checkpoints").is_dir() and any((out / "checkpoints").iterdir()))
        if has_run and not self.resume and not getattr(self.args, "overwrite", False):
            return (f"{out} already holds a run; pass --resume to continue it or --overwrite to start over "
                    f"(or choose another --out)")
        if has_run and getattr(self.args, "overwrite", False):
            for name in _RUN_ENTRIES:
                target = out / name
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
            for events in out.glob("events.out.tfevents.*"):
                events.unlink()
        if self.resume and not (self.checkpoint_dir / "last.pt").is_file():
            print(f"note: --resume but {self.checkpoint_dir / 'last.pt'} does not exist; starting a new run",
                  file=sys.stderr)
            self.resume = False
        out.mkdir(parents=True, exist_ok=True)
        return None

    # -- precision and models ------------------------------------------------------------------------------------
    def _effective_precision(self, precision: str) -> str:
        effective, note = resolve_precision(precision, self.device)
        if note and self.is_main:
            warnings.warn(note, stacklevel=3)
        return effective

    def wrap(self, model: nn.Module, find_unused_parameters: bool = False) -> nn.Module:
        """to(device), channels_last, DistributedDataParallel (models with trainable weights), torch.compile.

        find_unused_parameters: for models that leave some parameters out of a step's graph (PGGAN's blocks
        that are not grown in yet), which DDP otherwise waits for forever.
        """
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if self.distributed and any(p.requires_grad for p in model.parameters()):
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(model, device_ids=device_ids,
                                                        find_unused_parameters=find_unused_parameters)
        if bool(getattr(self.cfg.train, "compile", False)):
            model = torch.compile(model)
        return model

    @staticmethod
    def unwrap(model: nn.Module) -> nn.Module:
        return unwrap(model)

    def check_finite(self, value: torch.Tensor | float, tag: str = "loss/total") -> None:
        """Raise NonFiniteLossError (on every rank) when ``value`` is NaN/inf anywhere; later saves are refused."""
        bad = not bool(torch.isfinite(torch.as_tensor(value).detach().float()).all())
        if self.distributed:
            bad = all_reduce_any(bad, self.device)
        if bad:
            self._poisoned = True
            kept = (f"the last good checkpoint is kept at {self.last_checkpoint}" if self.last_checkpoint
                    else "no checkpoint was written yet")
            raise NonFiniteLossError(
                f"non-finite {tag} at step {self.log.step + 1} (images_seen {self.images_seen}); {kept}; "
                "try a lower train.lr or train.precision=fp32")

    # -- data ---------------------------------------------------------------------------------------------------
    def batches(self, dataset, batch_size: int, drop_last: bool = True) -> ResumableBatches:
        """Endless, resumable iterator of batches already on ctx.device (per-rank batch = batch_size)."""
        number = len(self._iterators)  # iterators are matched to their saved positions by creation order
        iterator = ResumableBatches(
            dataset, batch_size, drop_last=drop_last, seed=self.seed + 10_007 * number, device=self.device,
            num_workers=int(getattr(self.cfg.train, "num_workers", 0)), channels_last=self.channels_last,
            num_replicas=self.world_size if self.distributed else 1, rank=self.rank)
        if number < len(self._pending_iterators):
            iterator.load_state_dict(self._pending_iterators[number])
        self._iterators.append(iterator)
        return iterator

    # -- schedule, progress, logging ------------------------------------------------------------------------------
    @staticmethod
    def due(every_images: int, images_seen: int, batch: int) -> bool:
        """True when a multiple of ``every_images`` was crossed by the step that saw ``batch`` images."""
        return crossed(int(every_images), int(images_seen), int(batch))

    def progress(self, total: int, initial: int = 0):
        """A tqdm bar counted in images (rank 0 only)."""
        from tqdm import tqdm

        return tqdm(total=total, initial=initial, unit="img", unit_scale=True, dynamic_ncols=True,
                    smoothing=0.05, desc=self.method, disable=not self.is_main)

    @property
    def images_seen(self) -> int:
        """Global images seen, as last reported by ``log.advance`` (or restored by load_checkpoint)."""
        return self.log.images_seen

    # -- signals ------------------------------------------------------------------------------------------------
    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old_handlers[signum] = signal.signal(signum, self._on_signal)
            except (ValueError, OSError):
                pass

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._stop_requested:  # second signal: what the user would get without us
            self._restore_signal_handlers()
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self._stop_requested = True
        if self.is_main:
            print(f"\n{signal.Signals(signum).name}: finishing this step, saving a checkpoint and stopping "
                  "(send it again to stop at once)", file=sys.stderr, flush=True)

    def _restore_signal_handlers(self) -> None:
        for signum, handler in self._old_handlers.items():
            with contextlib.suppress(ValueError, OSError, TypeError):
                signal.signal(signum, handler)
        self._old_handlers.clear()

    def request_stop(self) -> None:
        """Ask the loop to stop as a signal would (for tests and callers with their own stop conditions)."""
        self._stop_requested = True

    @property
    def should_stop(self) -> bool:
        """True once a stop was requested on any rank; agreed across ranks at most once per logged step."""
        if not self.distributed:
            return self._stop_requested
        if self._stop_checked_at != self.log.step:
            self._stop_agreed = all_reduce_any(self._stop_requested, self.device)
            self._stop_checked_at = self.log.step
        return self._stop_agreed

    # -- checkpoints --------------------------------------------------------------------------------------------
    def save_checkpoint(self, state: dict, snapshot: bool = False) -> Path | None:
        """Save ``state`` plus the run's own keys to checkpoints/last.pt (rank 0; other ranks their RNG file).

        Modules, optimizers and EMA objects in ``state`` (top level or one dict deep, e.g. ``"ema": {"vae": ema}``,
        the layout of common/checkpoint.py) are turned into state dicts; "models"/"ema" keys lose their DDP/compile
        prefixes. ``snapshot`` also keeps a copy named ``images_<images_seen>.pt``. Refuses (NonFiniteLossError)
        to save non-finite weights, and after a non-finite loss saves nothing at all. Returns the path written on
        rank 0, else None.
        """
        if self._poisoned:
            warnings.warn("not saving a checkpoint after a non-finite loss; the last good one is kept", stacklevel=2)
            return None
        payload = {key: _materialise(value) for key, value in state.items()}
        for key in ("models", "ema"):
            if key in payload:
                payload[key] = _strip_all(payload[key])
                _check_weights_finite(payload[key], key, self)
        images_seen = int(payload.setdefault("images_seen", self.images_seen))
        step = int(payload.setdefault("step", self.log.step))
        rng_id = f"{step}:{images_seen}"
        if not self.is_main:
            atomic_torch_save({"format": CHECKPOINT_FORMAT, "rng_id": rng_id, "rng": get_rng_state()},
                              self.checkpoint_dir / "rng" / f"rank{self.rank}.pt")
            return None
        payload.update({
            "format": CHECKPOINT_FORMAT,
            "method": self.method,
            "config": self.config_dict,
            "git_commit": self.git_commit,
            "world_size": self.world_size,
            "rng": get_rng_state(),
            "rng_id": rng_id,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "data_iterators": [it.state_dict() for it in self._iterators],
            "log_step": self.log.step,
        })
        path = self.checkpoint_dir / "last.pt"
        atomic_torch_save(payload, path)
        if snapshot:
            with atomic_path(self.checkpoint_dir / f"images_{images_seen:010d}.pt") as tmp:
                shutil.copyfile(path, tmp)
        self.last_checkpoint = path
        return path

    def load_checkpoint(self) -> dict | None:
        """With --resume and a checkpoint: load it (weights_only), restore RNG/scaler/data position; else None."""
        path = self.checkpoint_dir / "last.pt"
        if not self.resume or not path.is_file():
            return None
        ckpt = load_checkpoint_file(path, map_location="cpu", method=self.method)
        images_seen = int(ckpt.get("images_seen", 0))
        step = int(ckpt.get("log_step", ckpt.get("step", 0)))
        if int(ckpt.get("world_size", self.world_size)) != self.world_size and self.is_main:
            warnings.warn(f"{path} was written with world size {ckpt.get('world_size')}, resuming with "
                          f"{self.world_size}: the data order and per-rank random streams change", stacklevel=2)
        rng = ckpt.get("rng") if self.is_main else self._rank_rng(ckpt.get("rng_id"))
        if rng is not None:
            set_rng_state(rng)
        else:
            seed_everything(self.seed + self.rank + 1_000_003 * (images_seen + 1))
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self._pending_iterators = list(ckpt.get("data_iterators") or [])
        for iterator, st in zip(self._iterators, self._pending_iterators, strict=False):  # extra saved: unused
            iterator.load_state_dict(st)
        self.log.resume_at(images_seen, step)
        self._stop_checked_at = -1
        self.last_checkpoint = path
        return ckpt

    def _rank_rng(self, rng_id: Any) -> dict | None:
        path = self.checkpoint_dir / "rng" / f"rank{self.rank}.pt"
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            if saved.get("rng_id") == rng_id:
                return saved["rng"]
        except Exception:  # missing or unreadable: reseed below
            pass
        warnings.warn(f"rank {self.rank}: no RNG state matching the checkpoint at {path}; reseeding", stacklevel=3)
        return None

    # -- end ----------------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Flush TensorBoard and stats, restore signal handlers, destroy the process group we created."""
        if self._closed:
            return
        self._closed = True
        self.log.close()
        self._restore_signal_handlers()
        self._teardown_group(sync=True)

    def _teardown_group(self, sync: bool = False) -> None:
        if self._owns_process_group and distributed_on():
            if sync:  # close(): every rank leaves together (not on error paths, where a peer may be gone)
                # A rank destroying its gloo group while its peer is still tearing down aborted with "terminate
                # called without an active exception" in about half of the 2-process test runs (also before
                # this barrier existed); gloo's monitored barrier gives up after a minute instead of hanging.
                with contextlib.suppress(Exception):
                    if dist.get_backend() == "gloo":
                        dist.monitored_barrier(timeout=datetime.timedelta(seconds=60))
                    else:
                        dist.barrier()
            with contextlib.suppress(Exception):
                dist.destroy_process_group()
        self._owns_process_group = False

    def __enter__(self) -> RunContext:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _report_config_changes(previous_path: Path, config: dict) -> None:
    """On --resume, say which keys differ from the run's previous config.yaml (e.g. a longer total_images)."""
    import yaml

    try:
        previous = yaml.safe_load(previous_path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return
    before = {k: v for k, v in _flatten(previous).items() if k.split(".")[0] not in RUN_METADATA_KEYS}
    after = _flatten(config)
    changed = [f"{k}: {before.get(k, '<unset>')!r} -> {after.get(k, '<unset>')!r}"
               for k in sorted(set(before) | set(after)) if before.get(k, "<unset>") != after.get(k, "<unset>")]
    if changed:
        print("note: config changed since the run's previous start: " + "; ".join(changed), file=sys.stderr)


def _config_stem(args: Any) -> str:
    config = getattr(args, "config", None)
    return Path(config).stem if config else "default"


def _materialise(value: Any) -> Any:
    """Modules/optimizers/EMA/schedulers -> their state dicts (top level or one dict deep)."""
    if isinstance(value, nn.Module):
        return unwrap(value).state_dict()
    if isinstance(value, EMA) or (hasattr(value, "state_dict") and not isinstance(value, (dict, torch.Tensor))):
        return value.state_dict()
    if isinstance(value, dict):
        return {k: _materialise(v) if not isinstance(v, dict) else v for k, v in value.items()}
    return value


def _strip_all(obj: Any) -> Any:
    return strip_model_prefixes(obj)


def _check_weights_finite(obj: Any, key: str, ctx: RunContext) -> None:
    tensors = []

    def collect(o: Any) -> None:
        if isinstance(o, torch.Tensor):
            if o.is_floating_point():
                tensors.append(o)
        elif isinstance(o, dict):
            for v in o.values():
                collect(v)

    collect(obj)
    if tensors and not all(bool(torch.isfinite(t).all()) for t in tensors):
        ctx._poisoned = True
        kept = f"the last good checkpoint is kept at {ctx.last_checkpoint}" if ctx.last_checkpoint else \
            "no checkpoint was written yet"
        raise NonFiniteLossError(f"non-finite weights in '{key}' at images_seen {ctx.images_seen}; not saving; "
                                 f"{kept}; try a lower train.lr or train.precision=fp32")

