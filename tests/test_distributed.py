"""Every training script under torchrun: 2 gloo processes on the CPU, a few steps on the tiny cache.

Each trainer is launched exactly as a user would on a multi-GPU machine (``python -m torch.distributed.run
--standalone --nproc_per_node=2 scripts/train_X.py --config configs/X/synthetic.yaml --out RUN --set ...``), with
its model shrunk through ``--set`` so the run takes seconds. The test checks what a finished distributed run must
leave behind: exit code 0, a checkpoint written by rank 0 that records world size 2 and the global image count
(both ranks' images), rank 1's own RNG file, reduced scalars in stats.jsonl and the script's metrics.json.

All trainers are launched at once (each worker with one thread) and awaited together, so the file's wall time
is about that of the slowest trainer rather than the sum.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common.run import load_run_checkpoint

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 150  # seconds per launch; a hang (e.g. ranks waiting on different collectives) fails instead of blocking

# trainer -> (script, config, overrides that shrink the model and the run, images per global step)
# Per-rank batch 8, two ranks: 16 images per step; total 48 images = 3 steps.
TRAINERS = {
    "vae": ("scripts/train_vae.py", "configs/vae/synthetic.yaml", [
        "model.latent_dim=8", "model.widths=[8,16]", "train.batch_size=8", "train.total_images=48",
        "vae.kl_warmup_images=16", "eval.val_every_images=32", "eval.val_images=16", "eval.test_images=16",
        "eval.batch_size=16", "eval.grid_images=4", "log.image_every_images=1000"], 16),
    "glow": ("scripts/train_glow.py", "configs/flow/synthetic.yaml", [
        "model.levels=2", "model.steps=2", "model.hidden_channels=8", "train.batch_size=8",
        "train.total_images=48", "glow.warmup_images=16", "glow.init_images=16", "eval.test_every_images=32",
        "eval.test_images=16", "eval.batch_size=16", "eval.grid_images=4", "eval.temperatures=[0.7]",
        "log.image_every_images=1000"], 16),
    "predictor": ("scripts/train_predictor.py", "configs/predictor/synthetic.yaml", [
        "model.width=8", "model.blocks=[1,1,1,1]", "train.batch_size=8", "train.total_images=48",
        "optim.warmup_images=16", "eval.val_every_images=32", "eval.val_images=16", "eval.batch_size=16",
        "log.image_every_images=1000"], 16),
    "pggan": ("scripts/train_pggan.py", "configs/interface_gan/synthetic.yaml", [
        "model.latent_dim=16", "model.fmap_base=64", "model.fmap_max=16", "model.fmap_min=8",
        "pggan.batch_sizes=[8,8,8,8]", "pggan.grid_images=4", "train.total_images=112",
        "log.image_every_images=1000"], 16),
}


def _command(name: str, cache: Path, out: Path) -> list[str]:
    script, config, overrides = TRAINERS[name][:3]
    common = [f"data.cache={cache}", "train.device=cpu", "train.checkpoint_every_images=32",
              "log.every_images=16", "log.tensorboard=false", "train.num_workers=0"]
    sets = [item for kv in common + overrides for item in ("--set", kv)]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            str(REPO / script), "--config", str(REPO / config), "--out", str(out), *sets]


def _available(name: str) -> bool:
    return (REPO / TRAINERS[name][0]).is_file() and (REPO / TRAINERS[name][1]).is_file()


@pytest.fixture(scope="module")
def distributed_runs(tiny_cache, tmp_path_factory) -> dict[str, tuple[Path, subprocess.CompletedProcess]]:
    """Launch every available trainer under torchrun concurrently; {name: (run folder, completed process)}."""
    root = tmp_path_factory.mktemp("ddp")
    # One thread per worker: 2 trainers x 2 ranks already oversubscribe 2 cores; more threads only thrash.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1"}
    running = {}
    for name in TRAINERS:
        if not _available(name):
            continue
        out = root / name
        log = open(root / f"{name}.log", "w+")  # noqa: SIM115 (closed below)
        proc = subprocess.Popen(_command(name, tiny_cache, out), env=env, cwd=root, stdout=log,
                                stderr=subprocess.STDOUT, text=True)
        running[name] = (out, proc, log, time.monotonic())
    results = {}
    for name, (out, proc, log, start) in running.items():
        try:
            proc.wait(timeout=max(1.0, TIMEOUT - (time.monotonic() - start)))
        except subprocess.TimeoutExpired:
            proc.kill()  # our own child (the torchrun launcher); its workers die with its process group below
            proc.wait()
        log.seek(0)
        results[name] = (out, subprocess.CompletedProcess(proc.args, proc.returncode, log.read(), ""))
        log.close()
    return results


@pytest.mark.parametrize("name", list(TRAINERS))
def test_trainer_runs_under_torchrun_with_two_processes(distributed_runs, name):
    if name not in distributed_runs:
        pytest.skip(f"{TRAINERS[name][0]} is not in the checkout yet")
    out, result = distributed_runs[name]
    assert result.returncode == 0, f"{name} under torchrun failed:\n{result.stdout[-4000:]}"
    total = next(int(kv.split("=")[1]) for kv in TRAINERS[name][2] if kv.startswith("train.total_images="))

    ckpt = load_run_checkpoint(out)
    assert ckpt["world_size"] == 2
    assert ckpt["images_seen"] >= total  # global count: both ranks' images
    assert ckpt["images_seen"] % TRAINERS[name][3] == 0
    assert ckpt["method"] == name
    weights = [t for model in ckpt["models"].values() for t in model.values() if t.is_floating_point()]
    assert weights and all(bool(t.isfinite().all()) for t in weights)
    # rank 1 saved its own RNG state for exact resume; rank 0's is inside last.pt
    assert (out / "checkpoints" / "rng" / "rank1.pt").is_file()
    assert (out / "config.yaml").is_file()

    rows = [json.loads(line) for line in (out / "stats.jsonl").read_text().splitlines()]
    assert rows, "no scalars were written"
    assert [r["images_seen"] for r in rows] == sorted(r["images_seen"] for r in rows)
    assert rows[-1]["images_seen"] == ckpt["images_seen"]
    loss_tags = [k for k in rows[-1] if k.startswith("loss/") or k.startswith("train/")]
    assert loss_tags and all(isinstance(rows[-1][k], (int, float)) for k in loss_tags)

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics.get("images_seen", ckpt["images_seen"]) == ckpt["images_seen"]
