"""Checkpoint files: the format tag, atomic writes, RNG states as plain tensors, prefix stripping, loading.

A checkpoint is one dict saved with ``torch.save`` and loaded with ``torch.load(..., weights_only=True)``, so
everything in it is a tensor or a plain Python value (numpy and Python RNG states are converted to tensors and
lists here). ``common.run.RunContext.save_checkpoint`` builds the dict; inference and edit scripts read a
finished run with ``load_run_checkpoint(run_dir)``. Keys written by the run context besides the caller's own:

    "format": "expression-synth/checkpoint/v1", "method", "config" (plain dict), "git_commit" (str or None),
    "world_size", "rng" (rank 0's RNG states), "rng_id", "scaler" (GradScaler state or None),
    "data_iterators" (list of {"epoch", "batch"} per ctx.batches iterator), "images_seen", "step".

Every method's trainer writes "models" ({name: state_dict}) and "ema" ({name: averaged state_dict}, the same
names, only for the models that keep an average; {} when none does). An EMA needs nothing else to resume: its decay
comes from the config and PGGAN's warm-up from "step". ``averaged_weights(state, name)`` is how loaders pick
weights: the average when there is one, else the trained weights.

Ranks other than 0 keep their own RNG states in ``checkpoints/rng/rank<r>.pt`` tagged with the same "rng_id",
so each rank resumes its own random stream without a collective at save time.
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from common.cli import UserError

# torch is imported inside the functions that need it: atomic_path serves modules that never load torch
# (common.synthetic's render workers, common.grids, common.directions).

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "atomic_path",
    "atomic_torch_save",
    "atomic_write_text",
    "averaged_weights",
    "ema_weights",
    "get_rng_state",
    "set_rng_state",
    "strip_prefixes",
    "strip_model_prefixes",
    "check_checkpoint",
    "load_checkpoint_file",
    "load_run_checkpoint",
]

CHECKPOINT_FORMAT = "expression-synth/checkpoint/v1"
_PREFIXES = ("module.", "_orig_mod.")


class CheckpointError(UserError):
    """A checkpoint file is missing, unreadable or not ours; one line naming the file."""


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write to; on success os.replace it onto ``path``, on any exception
    remove it, so readers see the old file or the new one, never half a file.

    The temporary name keeps ``path``'s suffix (PIL, numpy and matplotlib pick the format from it) and matches
    ``.<name>.tmp*``; it is not created here, so the writer creates it with the usual permissions.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a UTF-8 text file atomically (``atomic_path``)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """torch.save atomically (``atomic_path``): a crash mid-write keeps the previous file."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


# ---------------------------------------------------------------------------------------------------------------
# RNG states as weights_only-loadable values.


def content_key(tensor: Any, extra: str = "") -> str:
    """A hash of a tensor's bytes (and ``extra``, e.g. the settings that produced a result from it): the key of the
    remembered encodings and inversions, so a different batch can never get a stale answer."""
    import hashlib

    digest = hashlib.sha1(tensor.detach().cpu().contiguous().numpy().tobytes())
    digest.update(extra.encode())
    return digest.hexdigest()


def load_stamped(path: str | Path | None, stamp: str, field: str) -> dict:
    """``saved[field]`` of a file written by ``save_stamped`` with the same ``stamp`` (what it was computed with,
    e.g. the checkpoint's size and mtime); {} when it is missing, stamped otherwise or unreadable (a remembered
    result is only a shortcut: computing it again is always right)."""
    if path is None or not Path(path).is_file():
        return {}
    import torch

    try:
        saved = torch.load(path, weights_only=True)
        return dict(saved[field]) if saved.get("stamp") == stamp else {}
    except Exception:
        return {}


def save_stamped(path: str | Path, stamp: str, field: str, entries: Mapping[str, Any]) -> None:
    """Write {"stamp": stamp, field: entries} atomically (read back by ``load_stamped``)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save({"stamp": stamp, field: dict(entries)}, path)


def get_rng_state(include_cuda: bool | None = None) -> dict:
    """This process's torch (CPU, CUDA), numpy and Python RNG states as tensors / lists / scalars."""
    import torch

    if include_cuda is None:
        include_cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if include_cuda else [],
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),  # uint32 [624] kept exactly in int64
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": int(version), "state": torch.tensor(py_state, dtype=torch.int64), "gauss": gauss},
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what get_rng_state returned (CUDA states only when CUDA is available and counts match)."""
    import torch

    torch.set_rng_state(state["torch"].cpu())
    cuda_states = state.get("cuda") or []
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states])
    np_state = state["numpy"]
    np.random.set_state((
        np_state["kind"],
        np_state["keys"].numpy().astype(np.uint32),
        np_state["pos"],
        np_state["has_gauss"],
        np_state["cached_gaussian"],
    ))
    py_state = state["python"]
    random.setstate((py_state["version"], tuple(int(v) for v in py_state["state"].tolist()), py_state["gauss"]))


# ---------------------------------------------------------------------------------------------------------------
# State-dict keys of wrapped models.


def _strip_key(key: str) -> str:
    changed = True
    while changed:  # DDP(compile(model)) and compile(DDP(model)) nest the prefixes in either order
        changed = False
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
    # A compiled submodule puts '_orig_mod.' in the middle of the key.
    return key.replace("._orig_mod.", ".")


def strip_prefixes(state_dict: Mapping[str, Any]) -> OrderedDict:
    """Drop DDP's ``module.`` and torch.compile's ``_orig_mod.`` from state-dict keys (metadata kept)."""
    out = OrderedDict((_strip_key(k), v) for k, v in state_dict.items())
    metadata = getattr(state_dict, "_metadata", None)
    if metadata is not None:
        out._metadata = OrderedDict((_strip_key(k), v) for k, v in metadata.items())  # type: ignore[attr-defined]
    return out


def _is_state_dict(obj: Any) -> bool:
    import torch

    return isinstance(obj, Mapping) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def strip_model_prefixes(obj: Any) -> Any:
    """strip_prefixes applied to every state dict found in nested dicts (e.g. ``{"vae": sd, "enc": sd}``)."""
    if _is_state_dict(obj):
        return strip_prefixes(obj)
    if isinstance(obj, Mapping):
        return {k: strip_model_prefixes(v) for k, v in obj.items()}
    return obj


# ---------------------------------------------------------------------------------------------------------------
# Averaged (EMA) weights.


def ema_weights(state: Mapping[str, Any], name: str) -> Mapping[str, Any] | None:
    """The averaged state dict of model ``name`` in a checkpoint dict, or None when it keeps no average of it."""
    ema = state.get("ema")
    if isinstance(ema, Mapping) and isinstance(ema.get(name), Mapping):
        return ema[name]
    # old layout, before 2026-12-03: models["<name>_ema"] (Glow, PGGAN, predictor) or a bare state dict as "ema".
    models = state.get("models") or {}
    if isinstance(models.get(f"{name}_ema"), Mapping):
        return models[f"{name}_ema"]
    trained = [key for key in models if not key.endswith("_ema")]
    if _is_state_dict(ema) and trained == [name]:  # a bare "ema" averaged the checkpoint's only model
        return ema
    return None


def averaged_weights(state: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    """The weights to edit or evaluate model ``name`` with: its average when the checkpoint keeps one, else
    ``state["models"][name]`` (KeyError when neither is there)."""
    weights = ema_weights(state, name)
    return weights if weights is not None else state["models"][name]


# ---------------------------------------------------------------------------------------------------------------
# Loading.


def check_checkpoint(ckpt: Any, path: str | Path, method: str | None = None) -> dict:
    """Check the format tag (and the method, when given); raise CheckpointError naming the file otherwise."""
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path}: not an expression-synth checkpoint (format {found!r}, "
                              f"expected {CHECKPOINT_FORMAT!r})")
    if method is not None and ckpt.get("method") not in (None, method):
        raise CheckpointError(f"{path}: checkpoint was written by method {ckpt.get('method')!r}, not {method!r}")
    return ckpt


def load_checkpoint_file(path: str | Path, map_location: Any = "cpu", method: str | None = None) -> dict:
    """torch.load(weights_only=True) + format check + prefixes stripped from "models" and "ema"."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated file, pickle of a forbidden type, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: cannot load checkpoint: {first}") from None
    ckpt = check_checkpoint(ckpt, path, method)
    for key in ("models", "ema"):
        if key in ckpt:
            ckpt[key] = strip_model_prefixes(ckpt[key])
    return ckpt


def load_run_checkpoint(run_dir: str | Path, map_location: Any = "cpu") -> dict:
    """The latest checkpoint of a run folder (``<run>/checkpoints/last.pt``) or of a ``.pt`` file given directly."""
    run_dir = Path(run_dir)
    if run_dir.is_file():
        return load_checkpoint_file(run_dir, map_location)
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: no such run folder (expected runs/<method>/<name> or a .pt file)")
    path = run_dir / "checkpoints" / "last.pt"
    if not path.is_file():
        raise CheckpointError(f"{run_dir}: no checkpoint yet (expected {path}); train the run first")
    return load_checkpoint_file(path, map_location)
