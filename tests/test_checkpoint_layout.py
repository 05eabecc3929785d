"""One atomic write and one EMA key: common.checkpoint.atomic_path, and every trainer's averaged weights under
state["ema"][name], with checkpoints in the old layouts (before 2026-12-03) still loading and resuming."""

from __future__ import annotations

import argparse
import contextlib
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from common.checkpoint import (
    CHECKPOINT_FORMAT,
    atomic_path,
    atomic_torch_save,
    atomic_write_text,
    averaged_weights,
    ema_weights,
)

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------ atomic_path


def test_atomic_path_replaces_on_success_and_keeps_the_suffix(tmp_path):
    target = tmp_path / "sub" / "grid.png"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.suffix == ".png" and tmp.name.startswith(".grid.png.tmp")
        assert not tmp.exists()  # the writer creates it
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in target.parent.iterdir()] == ["grid.png"]


@pytest.mark.parametrize("create", [True, False])
def test_atomic_path_failing_writer_keeps_the_old_file_and_leaves_no_temp(tmp_path, create):
    target = tmp_path / "samples.npz"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk full"), atomic_path(target) as tmp:
        if create:
            tmp.write_bytes(b"half")
        raise RuntimeError("disk full")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["samples.npz"]


class Unpicklable:
    def __reduce__(self):
        raise RuntimeError("cannot pickle this")


def test_text_and_torch_writes_go_through_atomic_path(tmp_path):
    atomic_write_text(tmp_path / "a.json", "{}\n")
    atomic_write_text(tmp_path / "a.json", "[]\n")
    atomic_torch_save({"x": torch.arange(3)}, tmp_path / "last.pt")
    assert (tmp_path / "a.json").read_text() == "[]\n"
    assert torch.equal(torch.load(tmp_path / "last.pt", weights_only=True)["x"], torch.arange(3))
    with pytest.raises(RuntimeError, match="cannot pickle"):
        atomic_torch_save({"x": torch.zeros(3), "y": Unpicklable()}, tmp_path / "last.pt")  # the old file stays
    assert torch.equal(torch.load(tmp_path / "last.pt", weights_only=True)["x"], torch.arange(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "last.pt"]


# ------------------------------------------------------------------------------------------------ the helper


def test_averaged_weights_new_layout_old_layouts_and_fallback():
    trained, averaged = {"w": torch.zeros(2)}, {"w": torch.ones(2)}
    new = {"models": {"glow": trained}, "ema": {"glow": averaged}}
    assert averaged_weights(new, "glow") is averaged and ema_weights(new, "glow") is averaged
    none = {"models": {"glow": trained}, "ema": {}}
    assert averaged_weights(none, "glow") is trained and ema_weights(none, "glow") is None
    assert ema_weights({"models": {"glow": trained}, "ema": None}, "glow") is None
    # old layouts, before 2026-12-03
    vae = {"models": {"vae": trained}, "ema": averaged}
    assert averaged_weights(vae, "vae") is averaged
    gan = {"models": {"generator": trained, "discriminator": trained, "generator_ema": averaged}}
    assert averaged_weights(gan, "generator") is averaged and averaged_weights(gan, "discriminator") is trained
    glow = {"models": {"glow": trained, "glow_ema": averaged}, "ema": dict(averaged)}
    assert averaged_weights(glow, "glow") is averaged
    # a bare "ema" next to two models names neither of them
    two = {"models": {"a": trained, "b": trained}, "ema": averaged}
    assert ema_weights(two, "a") is None and averaged_weights(two, "b") is trained
    with pytest.raises(KeyError):
        averaged_weights({"models": {}}, "vae")


# ------------------------------------------------------------------------------------------------ trainers


@dataclass
class Method:
    name: str  # RunContext method
    model: str  # the model's name under "models" and "ema"
    config: str
    sets: list[str]
    trainer: Callable  # (cfg, ctx) -> Trainer
    config_cls: Callable
    averaged: Callable  # trainer -> the averaged nn.Module
    load: Callable  # run folder -> the loaded nn.Module (the method's own loader)
    to_old: Callable  # new-layout checkpoint, averaged weights -> the same checkpoint in its old layout
    steps_images: int


def _vae():
    from vae.config import VAEConfig
    from vae.model import load_model_from_run
    from vae.training import VAETrainer

    def to_old(ckpt, avg):
        ckpt.pop("ema")
        return {**ckpt, "ema": avg}  # the VAE kept a bare state dict under "ema"

    return Method("vae", "vae", "configs/vae/synthetic.yaml",
                  ["model.widths=[8,16]", "model.latent_dim=8", "train.batch_size=16", "eval.val_every_images=0",
                   "log.image_every_images=0"],
                  VAETrainer, VAEConfig, lambda t: t.ema.module, lambda run: load_model_from_run(run).vae,
                  to_old, 32)


def _glow():
    from flow.config import GlowConfig
    from flow.glow import load_model_from_run
    from flow.training import GlowTrainer

    def to_old(ckpt, avg):
        ckpt.pop("ema")
        return {**ckpt, "models": {**ckpt["models"], "glow_ema": avg}, "ema": dict(avg)}  # kept twice

    return Method("glow", "glow", "configs/flow/synthetic.yaml",
                  ["model.levels=2", "model.steps=2", "model.hidden_channels=16", "train.batch_size=16",
                   "glow.init_images=32", "glow.warmup_images=0", "eval.test_every_images=0", "eval.grid_images=4",
                   "log.image_every_images=0"],
                  GlowTrainer, GlowConfig, lambda t: t.ema.module, load_model_from_run, to_old, 32)


def _pggan():
    from interface_gan.config import PGGANConfig
    from interface_gan.inversion import load_generator
    from interface_gan.training import PGGANTrainer

    def to_old(ckpt, avg):
        ckpt.pop("ema")
        return {**ckpt, "models": {**ckpt["models"], "generator_ema": avg}}  # no "ema" key at all

    return Method("pggan", "generator", "configs/interface_gan/synthetic.yaml",
                  ["pggan.phase_weights=[1,1,1,1,1,1,1]", "model.latent_dim=16", "model.fmap_base=64",
                   "model.fmap_max=16", "model.fmap_min=8", "pggan.batch_sizes=[8,8,8,8]", "pggan.grid_images=4",
                   "log.image_every_images=0"],
                  PGGANTrainer, PGGANConfig, lambda t: t.g_ema, lambda run: load_generator(run)[0], to_old, 16)


def _predictor():
    from common.predictor import load_predictor
    from common.predictor_config import PredictorConfig
    from common.predictor_training import PredictorTrainer

    def to_old(ckpt, avg):
        ckpt.pop("ema")
        return {**ckpt, "models": {**ckpt["models"], "predictor_ema": avg}, "ema": dict(avg)}  # kept twice

    return Method("predictor", "predictor", "configs/predictor/synthetic.yaml",
                  ["model.width=8", "model.blocks=[1,1,1,1]", "train.batch_size=16", "optim.warmup_images=16",
                   "eval.val_every_images=0", "log.image_every_images=0"],
                  PredictorTrainer, PredictorConfig, lambda t: t.ema.module, load_predictor, to_old, 32)


METHODS = {"vae": _vae, "glow": _glow, "pggan": _pggan, "predictor": _predictor}
TOTAL = 112  # PGGAN's seven phases of 16 images; the runs below stop long before (no final evaluation)


def _fit(method: Method, cache: Path, out: Path, stop_at: int, resume: bool = False):
    """Build the method's trainer on the tiny cache and fit it until ``stop_at`` images; returns the trainer."""
    from common.config import load_config
    from common.run import RunContext, add_train_arguments
    from common.training import fit

    sets = [f"data.cache={cache}", "train.device=cpu", "train.precision=fp32", "train.ema_decay=0.9",
            f"train.total_images={TOTAL}", "train.checkpoint_every_images=0", "log.tensorboard=false",
            "log.every_images=16", *method.sets]
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    argv = ["--config", str(REPO / method.config), "--out", str(out), *(["--resume"] if resume else [])]
    args = parser.parse_args([*argv, *(item for s in sets for item in ("--set", s))])
    cfg = load_config(method.config_cls, args.config, args.set)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        ctx = RunContext.create(method.name, cfg, args)
        trainer = method.trainer(cfg, ctx)
        fit(ctx, trainer, TOTAL, 0, stop_at=stop_at)
    return trainer


def _shifted(module: torch.nn.Module) -> dict:
    """The module's state dict with every parameter moved by 0.25: averaged weights unlike the trained ones."""
    params = {name for name, _ in module.named_parameters()}
    return {k: v + 0.25 if k in params else v.clone() for k, v in module.state_dict().items()}


def _assert_state_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("which", list(METHODS))
def test_trainer_writes_one_ema_key_and_reads_its_old_layout(which, tiny_cache, tmp_path):
    method = METHODS[which]()
    trainer = _fit(method, tiny_cache, tmp_path / "new", stop_at=method.steps_images)
    ckpt = torch.load(tmp_path / "new" / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["images_seen"] == method.steps_images and ckpt["format"] == CHECKPOINT_FORMAT
    # (a) the averaged weights are in ema[name] and nowhere else
    assert set(ckpt["ema"]) == {method.model} and method.model in ckpt["models"]
    assert not [key for key in ckpt["models"] if key.endswith("_ema")]
    _assert_state_equal(ckpt["ema"][method.model], method.averaged(trainer).state_dict())
    trained = ckpt["models"][method.model]
    assert any(not torch.equal(v, ckpt["ema"][method.model][k]) for k, v in trained.items())  # it averages
    _assert_state_equal(method.load(tmp_path / "new").state_dict(), ckpt["ema"][method.model])

    # (b) the same checkpoint in the method's old layout, with averaged weights unlike any trained ones
    avg = _shifted(method.averaged(trainer))
    old = method.to_old(dict(ckpt), avg)
    run = tmp_path / "old"
    (run / "checkpoints").mkdir(parents=True)
    for name in ("config.yaml",):  # what --resume expects of a run folder besides the checkpoint
        (run / name).write_bytes((tmp_path / "new" / name).read_bytes())
    torch.save(old, run / "checkpoints" / "last.pt")
    _assert_state_equal(method.load(run).state_dict(), avg)  # the loader prefers the old average
    # resume: Trainer.load_state_dict takes the old average; the next save writes the new layout
    resumed = _fit(method, tiny_cache, run, stop_at=method.steps_images, resume=True)
    _assert_state_equal(method.averaged(resumed).state_dict(), avg)
    again = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert set(again["ema"]) == {method.model} and not [k for k in again["models"] if k.endswith("_ema")]
    _assert_state_equal(again["ema"][method.model], avg)
    _assert_state_equal(again["models"][method.model], trained)
