"""The shared run context (common/run.py): checkpoints, exact resume, DDP, TensorBoard, non-finite losses."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import textwrap
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from common.checkpoint import CheckpointError, get_rng_state, set_rng_state
from common.cli import UserError
from common.config import ConfigError, DataConfig, LogConfig, TrainConfig, dump_config, load_config
from common.distributed import native_bf16, resolve_precision
from common.run import (
    CHECKPOINT_FORMAT,
    EMA,
    NonFiniteLossError,
    RunContext,
    RunExistsError,
    add_train_arguments,
    all_reduce_mean,
    barrier,
    is_main,
    load_run_checkpoint,
    rank,
    strip_prefixes,
    world_size,
)

REPO = Path(__file__).resolve().parents[1]


@dataclass
class ToyModelConfig:
    hidden: int = 16
    dropout: float = 0.3


@dataclass
class ToyConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ToyModelConfig = field(default_factory=ToyModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)


class ToyDataset(torch.utils.data.Dataset):
    """Fixed random 3x4x4 'images' in [-1, 1]; a random horizontal flip draws from the global torch RNG."""

    def __init__(self, n: int = 26):
        self.images = torch.rand(n, 3, 4, 4, generator=torch.Generator().manual_seed(123)) * 2 - 1

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        image = self.images[i]
        if torch.rand(()) < 0.5:
            image = image.flip(-1)
        return {"image": image, "index": torch.tensor(i)}


def toy_model(cfg: ToyConfig) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(48, cfg.model.hidden), nn.ReLU(), nn.Dropout(cfg.model.dropout),
                         nn.Linear(cfg.model.hidden, 48))


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    return parser.parse_args(argv)


def config_file(tmp_path: Path, text: str = "") -> Path:
    base = ("train: {device: cpu, precision: fp32, batch_size: 4, total_images: 96, lr: 0.01, ema_decay: 0.9}\n"
            "log: {every_images: 16, image_every_images: 48}\n")
    path = tmp_path / "toy.yaml"
    path.write_text(base + text)
    return path


def train(config: Path, out: Path, extra: list[str] = (), stop_at: int | None = None, nan_at: int | None = None,
          crash_at: int | None = None):
    """A training loop written the way method scripts write theirs; returns (model, ema, images_seen, ctx).

    ``stop_at`` stops as SIGINT does (checkpoint, then exit); ``crash_at`` leaves without a final checkpoint.
    """
    args = parse(["--config", str(config), "--out", str(out), *extra])
    cfg = load_config(ToyConfig, args.config, args.set)
    ctx = RunContext.create("toy", cfg, args)
    try:
        model = ctx.wrap(toy_model(cfg))
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
        ema = EMA(model, cfg.train.ema_decay)
        state = ctx.load_checkpoint()
        images_seen = 0
        if state is not None:
            ctx.unwrap(model).load_state_dict(state["models"]["toy"])
            optimizer.load_state_dict(state["optimizers"]["toy"])
            ema.load_state_dict(state["ema"]["toy"])
            images_seen = state["images_seen"]
        batches = ctx.batches(ToyDataset(), cfg.train.batch_size)

        def save():
            return ctx.save_checkpoint({"models": {"toy": model}, "optimizers": {"toy": optimizer},
                                        "ema": {"toy": ema}, "images_seen": images_seen})

        with ctx.progress(cfg.train.total_images, initial=images_seen) as bar:
            while images_seen < cfg.train.total_images and not ctx.should_stop:
                batch = next(batches)
                x = batch["image"]  # [B, 3, 4, 4]
                with ctx.autocast():
                    y = model(x).view_as(x)
                    loss = (y - x + 0.1 * torch.randn_like(x)).pow(2).sum(dim=(1, 2, 3)).mean()
                if nan_at is not None and images_seen >= nan_at:
                    loss = loss * float("nan")
                ctx.check_finite(loss, "loss/total")
                ctx.step(loss, optimizer)
                ema.update(model)
                n = x.shape[0] * ctx.world_size
                images_seen += n
                bar.update(n)
                ctx.log.scalar("loss/total", loss)
                ctx.log.scalar("lr", cfg.train.lr)
                ctx.log.advance(images_seen)
                if ctx.due(cfg.log.image_every_images, images_seen, n):
                    ctx.log.images("samples", y.float())
                if ctx.due(cfg.train.checkpoint_every_images, images_seen, n):
                    save()
                if stop_at is not None and images_seen >= stop_at:
                    ctx.request_stop()  # what SIGINT does
                if crash_at is not None and images_seen >= crash_at:
                    return ctx.unwrap(model), ema, images_seen, ctx
        save()
    finally:
        ctx.close()
    return ctx.unwrap(model), ema, images_seen, ctx


def flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.state_dict().values()])


# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("precision, how", [("fp32", "stop"), ("bf16", "crash")])
def test_train_stop_resume_equals_uninterrupted(tmp_path, precision, how):
    config = config_file(tmp_path, "")
    extra = ["--set", f"train.precision={precision}", "--set", "train.checkpoint_every_images=24"]
    full_model, full_ema, full_seen, _ = train(config, tmp_path / "full", extra)
    # Stop mid-epoch (26 items, batch 4: 6 batches per epoch), after a periodic checkpoint at 24 images:
    # "stop" checkpoints at 44 like SIGINT, "crash" leaves last.pt at 24 and later logs that resume must drop.
    if how == "stop":
        _, _, seen, _ = train(config, tmp_path / "split", extra, stop_at=44)
    else:
        _, _, seen, _ = train(config, tmp_path / "split", extra, crash_at=44)
    assert seen == 44
    resumed_from = 44 if how == "stop" else 24
    assert load_run_checkpoint(tmp_path / "split")["images_seen"] == resumed_from
    model, ema, seen, _ = train(config, tmp_path / "split", [*extra, "--resume"])
    assert full_seen == seen == 96
    assert torch.equal(flat(full_model), flat(model))
    assert torch.equal(flat(full_ema.module), flat(ema.module))
    assert not torch.equal(flat(full_model), flat(full_ema.module))  # the EMA really averages
    # stats.jsonl and TensorBoard continue without duplicates: what came after the checkpoint is dropped.
    expected = [16, 32, 44, 48, 64, 80, 96] if how == "stop" else [16, 32, 48, 64, 80, 96]
    lines = [json.loads(line) for line in (tmp_path / "split" / "stats.jsonl").read_text().splitlines()]
    assert [r["images_seen"] for r in lines] == expected
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "split"), size_guidance={"scalars": 0})
    acc.Reload()
    assert [e.step for e in acc.Scalars("loss/total")] == expected


def test_checkpoint_round_trip_weights_only(tmp_path):
    model, ema, _, ctx = train(config_file(tmp_path), tmp_path / "run", ["--set", "train.total_images=8"])
    path = tmp_path / "run" / "checkpoints" / "last.pt"
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["format"] == CHECKPOINT_FORMAT and ckpt["method"] == "toy"
    assert ckpt["config"]["train"]["total_images"] == 8 and ckpt["images_seen"] == 8
    assert ckpt["data_iterators"] == [{"epoch": 0, "batch": 2, "batch_size": 4}]
    for name, tensor in model.state_dict().items():
        assert torch.equal(ckpt["models"]["toy"][name], tensor)
    assert set(ckpt["ema"]) == {"toy"} and set(ckpt["ema"]["toy"]) == set(model.state_dict())
    assert "state" in ckpt["optimizers"]["toy"]
    assert set(ckpt["rng"]) == {"torch", "cuda", "numpy", "python"}
    assert load_run_checkpoint(tmp_path / "run")["models"]["toy"].keys() == model.state_dict().keys()
    assert load_run_checkpoint(path)["images_seen"] == 8
    # The saved config is the resolved one; config.yaml carries method and git commit too.
    written = (tmp_path / "run" / "config.yaml").read_text()
    assert written.startswith("method: toy\ngit_commit: ")
    assert load_config(ToyConfig, tmp_path / "run" / "config.yaml") == ctx.cfg


def test_rng_state_round_trip_through_weights_only(tmp_path):
    import random

    state = get_rng_state()
    torch.save(state, tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1]) and expected[2] == again[2]


def test_load_run_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no such run folder"):
        load_run_checkpoint(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"no checkpoint yet \(expected .*last\.pt\)"):
        load_run_checkpoint(tmp_path / "empty")
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not an expression-synth checkpoint"):
        load_run_checkpoint(tmp_path / "other.pt")
    (tmp_path / "torn.pt").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(CheckpointError, match="cannot load checkpoint"):
        load_run_checkpoint(tmp_path / "torn.pt")


def test_strip_prefixes():
    sd = {"module._orig_mod.a.weight": torch.zeros(1), "_orig_mod.module.b": torch.ones(1),
          "enc._orig_mod.c": torch.ones(2), "plain": torch.ones(3)}
    assert list(strip_prefixes(sd)) == ["a.weight", "b", "enc.c", "plain"]


def test_non_finite_loss_keeps_last_good_checkpoint(tmp_path):
    config = config_file(tmp_path)
    with pytest.raises(NonFiniteLossError) as info:
        train(config, tmp_path / "run", ["--set", "train.checkpoint_every_images=16"], nan_at=40)
    message = str(info.value)
    assert message.startswith("non-finite loss/total at step 11 (images_seen 40); the last good checkpoint is kept at")
    assert "last.pt" in message and "train.lr" in message and "fp32" in message
    ckpt = load_run_checkpoint(tmp_path / "run")
    assert ckpt["images_seen"] == 32
    assert all(torch.isfinite(t).all() for t in ckpt["models"]["toy"].values())


def test_saving_non_finite_weights_is_refused(tmp_path):
    args = parse(["--config", str(config_file(tmp_path)), "--out", str(tmp_path / "run")])
    with RunContext.create("toy", load_config(ToyConfig, args.config), args) as ctx:
        model = toy_model(ctx.cfg)
        ctx.save_checkpoint({"models": {"toy": model}, "images_seen": 4})
        with torch.no_grad():
            model[1].weight[0, 0] = float("inf")
        with pytest.raises(NonFiniteLossError, match="non-finite weights in 'models'"):
            ctx.save_checkpoint({"models": {"toy": model}, "images_seen": 8})
    assert load_run_checkpoint(tmp_path / "run")["images_seen"] == 4


def test_existing_run_folder_is_refused_unless_resume_or_overwrite(tmp_path):
    config = config_file(tmp_path, "")
    train(config, tmp_path / "run", ["--set", "train.total_images=8"])
    with pytest.raises(RunExistsError) as info:
        train(config, tmp_path / "run", ["--set", "train.total_images=8"])
    assert str(info.value) == (f"{tmp_path / 'run'} already holds a run; pass --resume to continue it or "
                               "--overwrite to start over (or choose another --out)")
    (tmp_path / "run" / "keep.txt").write_text("not ours")
    _, _, seen, _ = train(config, tmp_path / "run", ["--set", "train.total_images=4", "--overwrite"])
    assert seen == 4 and load_run_checkpoint(tmp_path / "run")["images_seen"] == 4
    assert (tmp_path / "run" / "keep.txt").exists()  # --overwrite removes only run files
    assert len(list((tmp_path / "run").glob("events.out.tfevents.*"))) == 1
    with pytest.raises(UserError, match="contradict"):
        train(config, tmp_path / "run", ["--resume", "--overwrite"])


def test_resume_finished_run_does_no_more_steps(tmp_path):
    config = config_file(tmp_path, "")
    model, _, _, _ = train(config, tmp_path / "run", ["--set", "train.total_images=8"])
    again, _, seen, _ = train(config, tmp_path / "run", ["--set", "train.total_images=8", "--resume"])
    assert seen == 8 and torch.equal(flat(model), flat(again))


def test_dry_run_prints_config_and_creates_nothing(tmp_path, capsys):
    args = parse(["--config", str(config_file(tmp_path)), "--out", str(tmp_path / "run"), "--dry-run",
                  "--set", "train.lr=0.5"])
    cfg = load_config(ToyConfig, args.config, args.set)
    assert RunContext.create("toy", cfg, args) is None
    printed = capsys.readouterr().out
    assert dump_config(cfg) in printed and "lr: 0.5" in printed
    assert not (tmp_path / "run").exists()


def test_default_run_folder_is_runs_method_config_stem(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = parse(["--config", str(config_file(tmp_path))])
    with RunContext.create("toy", load_config(ToyConfig, args.config), args) as ctx:
        assert ctx.out == Path("runs/toy/toy") and (tmp_path / "runs/toy/toy/config.yaml").is_file()


def test_tensorboard_events_readable(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(config_file(tmp_path), tmp_path / "run", ["--set", "train.total_images=48"])
    acc = EventAccumulator(str(tmp_path / "run"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    assert {"loss/total", "lr", "perf/img_per_s"} <= set(tags["scalars"])
    assert [e.step for e in acc.Scalars("loss/total")] == [16, 32, 48]
    assert acc.Scalars("lr")[0].value == pytest.approx(0.01)
    assert tags["images"] == ["samples"]
    image = acc.Images("samples")[0]
    assert image.step == 48 and image.width > 0 and image.height > 0
    assert (tmp_path / "run" / "samples" / "samples_0000000048.png").is_file()


def test_scalars_are_means_since_last_write(tmp_path):
    args = parse(["--config", str(config_file(tmp_path)), "--out", str(tmp_path / "run")])
    with RunContext.create("toy", load_config(ToyConfig, args.config, ["log.tensorboard=false"]), args) as ctx:
        for i, value in enumerate([1.0, 3.0, 10.0, 20.0]):
            ctx.log.scalar("x", torch.tensor(value))
            ctx.log.advance(8 * (i + 1))
    rows = [json.loads(line) for line in (tmp_path / "run" / "stats.jsonl").read_text().splitlines()]
    assert [(r["images_seen"], r["x"]) for r in rows] == [(16, 2.0), (32, 15.0)]
    assert not list((tmp_path / "run").glob("events.out.tfevents.*"))


def test_step_clips_gradients_and_zeroes_them(tmp_path):
    args = parse(["--config", str(config_file(tmp_path)), "--out", str(tmp_path / "run")])
    with RunContext.create("toy", load_config(ToyConfig, args.config), args) as ctx:
        weight = nn.Parameter(torch.zeros(3))
        optimizer = torch.optim.SGD([weight], lr=1.0)
        norm = ctx.step((weight * torch.tensor([30.0, 40.0, 0.0])).sum(), optimizer, clip=5.0)
        assert norm == pytest.approx(50.0)
        assert torch.allclose(weight.detach(), torch.tensor([-3.0, -4.0, 0.0]))  # clipped to norm 5
        assert weight.grad is None
        assert ctx.step(weight.sum(), optimizer) is None  # train.grad_clip 0: no clipping, no norm


def test_autocast_and_fp16_fallback_on_cpu(tmp_path):
    native = native_bf16(torch.device("cpu"))
    args = parse(["--config", str(config_file(tmp_path)), "--out", str(tmp_path / "run")])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ctx = RunContext.create("toy", load_config(ToyConfig, args.config, ["train.precision=bf16"]), args)
    # an explicit bf16 is kept; on a CPU that only emulates it, the user is told it is slow
    assert any("no native bf16" in str(w.message) for w in caught) == (not native)
    with ctx:
        with ctx.autocast():
            assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    args = parse(["--config", str(config_file(tmp_path)), "--out", str(tmp_path / "run2")])
    with pytest.warns(UserWarning, match="fp16 needs CUDA"):
        ctx = RunContext.create("toy", load_config(ToyConfig, args.config, ["train.precision=fp16"]), args)
    with ctx:
        assert ctx.precision == ("bf16" if native else "fp32") and ctx.scaler is None
    args = parse(["--config", str(config_file(tmp_path)), "--out", str(tmp_path / "run4")])
    with RunContext.create("toy", load_config(ToyConfig, args.config, ["train.precision=auto"]), args) as ctx:
        assert ctx.precision == ("bf16" if native else "fp32")
        with ctx.autocast():
            product = torch.ones(2, 2) @ torch.ones(2, 2)
        assert product.dtype == (torch.bfloat16 if native else torch.float32)
    args = parse(["--config", str(config_file(tmp_path)), "--out", str(tmp_path / "run3")])
    with pytest.raises(ConfigError, match="train.device"):
        RunContext.create("toy", load_config(ToyConfig, args.config, ["train.device=tpu"]), args)


def test_batches_are_endless_dicts_with_a_new_order_each_epoch(tmp_path):
    args = parse(["--config", str(config_file(tmp_path)), "--out", str(tmp_path / "run")])
    with RunContext.create("toy", load_config(ToyConfig, args.config), args) as ctx:
        batches = ctx.batches(ToyDataset(10), 3)
        epochs = [[int(i) for _ in range(3) for i in next(batches)["index"]] for _ in range(3)]
        assert all(len(set(e)) == 9 for e in epochs) and epochs[0] != epochs[1]  # drop_last: 3 batches/epoch
        assert next(batches)["image"].shape == (3, 3, 4, 4)
        with pytest.raises(ConfigError, match="fewer than one batch of 16"):
            next(ctx.batches(ToyDataset(10), 16))


def test_ema_is_an_fp32_lerp_with_buffers_copied():
    model = nn.BatchNorm1d(2)
    ema = EMA(model, 0.75)
    with torch.no_grad():
        model.weight.fill_(5.0)
        model.running_mean.fill_(2.0)
    ema.update(model)
    assert torch.allclose(ema.module.weight, torch.full((2,), 0.75 * 1.0 + 0.25 * 5.0))
    assert torch.equal(ema.module.running_mean, torch.full((2,), 2.0))
    assert not ema.module.weight.requires_grad and not ema.module.training
    half = EMA(nn.Linear(2, 2).to(torch.bfloat16), 0.0)
    assert half.module.weight.dtype == torch.float32
    copy = EMA(model, 0.5)
    copy.load_state_dict({f"module.{k}": v for k, v in EMA(model, 0.0).state_dict().items()})
    assert torch.equal(copy.module.weight, model.weight)


def test_distributed_helpers_are_noops_in_one_process():
    assert (world_size(), rank(), is_main()) == (1, 0, True)
    barrier()
    assert torch.equal(all_reduce_mean(torch.tensor([1, 2])), torch.tensor([1.0, 2.0]))


def test_first_signal_requests_stop_second_interrupts(tmp_path):
    args = parse(["--config", str(config_file(tmp_path)), "--out", str(tmp_path / "run")])
    previous = signal.getsignal(signal.SIGINT)
    with RunContext.create("toy", load_config(ToyConfig, args.config), args) as ctx:
        assert not ctx.should_stop
        os.kill(os.getpid(), signal.SIGTERM)
        assert ctx.should_stop
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is previous


# ---------------------------------------------------------------------------------------------------------------
# Two processes under torchrun (gloo).

DDP_SCRIPT = textwrap.dedent("""
    # A toy training script run by torchrun; self-contained so that workers import only torch and common.
    import argparse, sys
    from dataclasses import dataclass, field
    import torch
    from torch import nn
    from common.config import DataConfig, LogConfig, TrainConfig, load_config
    from common.run import EMA, RunContext, add_train_arguments, all_reduce_mean

    @dataclass
    class ToyConfig:
        data: DataConfig = field(default_factory=DataConfig)
        train: TrainConfig = field(default_factory=TrainConfig)
        log: LogConfig = field(default_factory=LogConfig)

    class ToyDataset(torch.utils.data.Dataset):
        images = torch.rand(26, 3, 4, 4, generator=torch.Generator().manual_seed(123)) * 2 - 1
        def __len__(self):
            return len(self.images)
        def __getitem__(self, i):
            image = self.images[i].flip(-1) if torch.rand(()) < 0.5 else self.images[i]
            return {"image": image, "index": torch.tensor(i)}

    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    args = parser.parse_args()
    cfg = load_config(ToyConfig, args.config, args.set)
    ctx = RunContext.create("toy", cfg, args)
    model = ctx.wrap(nn.Sequential(nn.Flatten(), nn.Linear(48, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 48)))
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    ema = EMA(model, cfg.train.ema_decay)
    batches = ctx.batches(ToyDataset(), cfg.train.batch_size)
    images_seen, seen_indices = 0, []
    while images_seen < cfg.train.total_images and not ctx.should_stop:
        batch = next(batches)
        seen_indices += batch["index"].tolist()
        with ctx.autocast():
            x = batch["image"]
            loss = (model(x).view_as(x) - x + 0.1 * torch.randn_like(x)).pow(2).mean()
        ctx.check_finite(loss, "loss/total")
        ctx.step(loss, optimizer)
        ema.update(model)
        images_seen += x.shape[0] * ctx.world_size
        ctx.log.scalar("loss/rank", float(ctx.rank))
        ctx.log.advance(images_seen)
    ctx.save_checkpoint({"models": {"toy": model}, "ema": {"toy": ema}, "images_seen": images_seen})
    mean = float(all_reduce_mean(torch.tensor(float(ctx.rank))))
    torch.save({"params": ctx.unwrap(model).state_dict(), "ema": ema.state_dict(), "indices": seen_indices,
                "world_size": ctx.world_size, "mean_rank": mean, "device": str(ctx.device)},
               ctx.out / f"final_rank{ctx.rank}.pt")
    ctx.close()
""")


def test_torchrun_two_processes_end_with_identical_weights(tmp_path):
    script = tmp_path / "toy_train.py"
    script.write_text(DDP_SCRIPT)
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    # --standalone: torchrun binds a free port itself (no race with other processes picking ports).
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
               "--config", str(config_file(tmp_path)), "--out", str(out), "--set", "train.total_images=48",
               "--set", "log.tensorboard=false"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(out / f"final_rank{r}.pt", weights_only=True) for r in range(2)]
    assert [r["world_size"] for r in ranks] == [2, 2] and ranks[0]["mean_rank"] == 0.5
    for name, tensor in ranks[0]["params"].items():
        assert torch.equal(tensor, ranks[1]["params"][name]), name
    for name, tensor in ranks[0]["ema"].items():
        assert torch.equal(tensor, ranks[1]["ema"][name]), name
    # Each rank saw its own half of the data: 48 images = 6 steps of 4 per rank, 13 items per rank per epoch.
    first_epoch = [set(r["indices"][:12]) for r in ranks]
    assert not first_epoch[0] & first_epoch[1]
    ckpt = load_run_checkpoint(out)
    assert ckpt["images_seen"] == 48 and ckpt["world_size"] == 2
    assert torch.equal(flat_dict(ckpt["models"]["toy"]), flat_dict(ranks[0]["params"]))
    assert (out / "checkpoints" / "rng" / "rank1.pt").is_file()
    rows = [json.loads(line) for line in (out / "stats.jsonl").read_text().splitlines()]
    assert [r["images_seen"] for r in rows] == [16, 32, 48]
    assert rows[0]["loss/rank"] == 0.5  # reduced across ranks


def flat_dict(state: dict) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in state.values()])


def test_resolve_precision_picks_bf16_only_where_it_is_native(monkeypatch):
    import common.distributed as distributed

    cpu = torch.device("cpu")
    for native in (True, False):
        monkeypatch.setattr(distributed, "native_bf16", lambda device, native=native: native)
        fast = "bf16" if native else "fp32"
        assert resolve_precision("auto", cpu) == (fast, None)
        assert resolve_precision("fp32", cpu) == ("fp32", None)
        precision, note = resolve_precision("fp16", cpu)
        assert precision == fast and note.startswith("train.precision=fp16 needs CUDA") and note.endswith(f"{fast} on cpu")
        precision, note = resolve_precision("bf16", cpu)
        assert precision == "bf16" and (note is None) == native
    # the real answer agrees with oneDNN's own test on this machine
    assert native_bf16(cpu) == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
