"""Tests of the VAE: shapes, loss math (checked by hand), bf16 vs fp32, and the train / edit scripts end to end."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from common.cli import run_main
from vae.model import (
    ConvVAE,
    EditableVAE,
    VAEModelError,
    count_parameters,
    gaussian_nll,
    kl_divergence,
    kl_loss,
    kl_weight,
    reconstruction_loss,
    vae_loss,
)

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------ model


@pytest.mark.parametrize("resolution,widths,latent", [(32, (8, 16, 16), 12), (64, (8, 8, 16, 16, 32), 20)])
@pytest.mark.parametrize("norm,output", [("batch", "tanh"), ("group", "linear")])
def test_shapes_and_output_range(resolution, widths, latent, norm, output):
    torch.manual_seed(0)
    model = ConvVAE(resolution, latent, widths, norm=norm, output=output)
    x = torch.rand(3, 3, resolution, resolution) * 2 - 1
    out = model(x)
    assert out.x_mean.shape == (3, 3, resolution, resolution)
    assert out.mu.shape == out.logvar.shape == out.z.shape == (3, latent)
    if output == "tanh":
        assert out.x_mean.abs().max() <= 1
    editable = EditableVAE(model)
    z = editable.encode(x)
    assert torch.equal(z, editable.encode(x))  # posterior mean: deterministic
    images = editable.decode(z * 50)  # far outside the prior: still clamped
    assert images.shape == x.shape and images.min() >= -1 and images.max() <= 1
    gen = torch.Generator().manual_seed(1)
    assert editable.sample_latents(5, gen).shape == (5, latent)
    assert editable.latent_dim == latent and editable.resolution == resolution and not editable.latent_on_sphere


def test_reference_size_matches_vanilla_vae():
    # PyTorch-VAE's VanillaVAE at 64x64 with latent 128 and widths 32..512 has ~3.9M parameters
    assert 3.8e6 < count_parameters(ConvVAE(64, 128, (32, 64, 128, 256, 512))) < 4.0e6


def test_bad_configuration_names_the_key():
    with pytest.raises(VAEModelError, match="model.widths"):
        ConvVAE(48, 8, (8, 8, 8, 8, 8))  # 48 is not divisible by 32
    with pytest.raises(VAEModelError, match="model.norm"):
        ConvVAE(32, 8, (8,), norm="layer")
    with pytest.raises(ValueError, match=r"\[B, 3, 32, 32\]"):
        ConvVAE(32, 8, (8,)).encode(torch.zeros(1, 3, 64, 64))


def test_finite_loss_and_backward_reaches_every_parameter():
    torch.manual_seed(0)
    model = ConvVAE(32, 8, (8, 16), norm="batch", learn_sigma=True)
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    out = model(x)
    losses = vae_loss(x, out.x_mean, out.mu, out.logvar, model.log_sigma, beta=1.0)
    assert all(torch.isfinite(v).all() for v in losses.values())
    losses["total"].backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert model.log_sigma.grad.abs() > 0  # the learned sigma is trained


def test_bf16_autocast_loss_close_to_fp32():
    torch.manual_seed(0)
    model = ConvVAE(32, 16, (16, 32, 32)).eval()
    x = torch.rand(8, 3, 32, 32) * 2 - 1
    mu, logvar = model.encode(x)
    full = vae_loss(x, model.decode(mu), mu, logvar, model.log_sigma, 1.0)["total"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mu16, logvar16 = model.encode(x)
        half = vae_loss(x, model.decode(mu16), mu16, logvar16, model.log_sigma, 1.0)["total"]
    assert half.dtype == torch.float32 and torch.isfinite(half)
    assert abs(half.item() - full.item()) / abs(full.item()) < 0.02


# ------------------------------------------------------------------------------------------------ loss math


def test_kl_is_zero_at_the_prior_and_positive_elsewhere():
    zeros = torch.zeros(3, 5)
    assert torch.equal(kl_divergence(zeros, zeros), torch.zeros(3, 5))
    mu, logvar = torch.randn(100, 7), torch.randn(100, 7)
    kl = kl_divergence(mu, logvar)
    assert kl.shape == (100, 7) and (kl >= 0).all()
    # one value by hand: mu=1, logvar=0 -> 0.5 * (1 + 1 - 1 - 0) = 0.5; mu=0, logvar=log 4 -> 0.5 (4 - 1 - log 4)
    hand = kl_divergence(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, math.log(4.0)]]))
    assert torch.allclose(hand, torch.tensor([[0.5, 0.5 * (3 - math.log(4.0))]]))
    # the loss sums over dimensions and averages over the batch
    assert torch.isclose(kl_loss(mu, logvar), kl.sum(dim=1).mean())


def test_reconstruction_loss_sums_pixels_and_averages_batch():
    x = torch.zeros(2, 3, 2, 2)
    x_mean = torch.zeros(2, 3, 2, 2)
    x_mean[0, 0, 0, 0] = 0.5  # image 0: one pixel off by 0.5
    x_mean[1] = 0.1  # image 1: all 12 values off by 0.1
    sigma = 0.5
    const = 12 * (math.log(sigma) + 0.5 * math.log(2 * math.pi))  # 12 values per image
    per_image = torch.tensor([0.25 / (2 * 0.25) + const, 12 * 0.01 / (2 * 0.25) + const])
    assert torch.allclose(gaussian_nll(x, x_mean, math.log(sigma)), per_image)
    assert torch.isclose(reconstruction_loss(x, x_mean, math.log(sigma)), per_image.mean())
    # doubling the batch with copies leaves the loss unchanged (mean over batch), doubling the pixels doubles it
    assert torch.isclose(reconstruction_loss(torch.cat([x, x]), torch.cat([x_mean, x_mean]), math.log(sigma)),
                         per_image.mean())
    assert torch.isclose(reconstruction_loss(torch.cat([x, x], 1), torch.cat([x_mean, x_mean], 1), math.log(sigma)),
                         2 * per_image.mean())


def test_kl_warmup():
    assert kl_weight(2.0, 0, 0) == 2.0
    assert kl_weight(2.0, 1000, 250) == 0.5
    assert kl_weight(2.0, 1000, 5000) == 2.0


# ------------------------------------------------------------------------------------------------ scripts

TINY = ["--set", "model.widths=[8,16]", "--set", "model.latent_dim=8", "--set", "train.batch_size=32",
        "--set", "log.every_images=64", "--set", "log.image_every_images=96", "--set", "log.tensorboard=false",
        "--set", "eval.val_every_images=96", "--set", "train.checkpoint_every_images=96",
        "--set", "vae.kl_warmup_images=64"]


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=120)


def run_main_in_process(monkeypatch, script: str, *args: str) -> tuple[int, str]:
    """Run scripts/<script> through run_main in this process: the command's code path without a new interpreter.

    Returns (exit code, exception text for a failure that was not a SystemExit)."""
    spec = importlib.util.spec_from_file_location(f"_vae_test_{Path(script).stem}", REPO / "scripts" / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(sys, "argv", [script, *args])
    monkeypatch.chdir(REPO)
    try:
        run_main(module.main)
    except SystemExit as exc:
        return int(exc.code or 0), ""
    return 0, ""


@pytest.fixture(scope="module")
def tiny_run(tiny_cache, tmp_path_factory) -> Path:
    """A VAE trained for 192 images on the tiny cache, then resumed to 320 (two subprocess runs)."""
    out = tmp_path_factory.mktemp("vae_run") / "tiny"
    common = ["scripts/train_vae.py", "--config", "configs/vae/synthetic.yaml", "--out", str(out),
              "--set", f"data.cache={tiny_cache}", *TINY]
    first = run_script(*common, "--set", "train.total_images=192")
    assert first.returncode == 0, first.stderr
    ckpt = torch.load(out / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert ckpt["images_seen"] == 192 and ckpt["method"] == "vae"
    first_metrics = json.loads((out / "metrics.json").read_text())
    assert first_metrics["images_seen"] == 192
    # the resume runs in this process (same main(), one torch import less: the test budget is tight)
    with pytest.MonkeyPatch.context() as monkeypatch:
        code, err = run_main_in_process(monkeypatch, "train_vae.py", *common[1:], "--set", "train.total_images=320",
                                        "--resume")
    assert code == 0, err
    return out


def test_train_writes_checkpoint_metrics_and_grids_and_resumes(tiny_run):
    ckpt = torch.load(tiny_run / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert ckpt["images_seen"] == 320 and ckpt["step"] == 10  # 6 steps, then 4 more after the resume
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert metrics["images_seen"] == 320 and metrics["latent_dim"] == 8 and metrics["test_images"] > 0
    assert 5 < metrics["test_psnr_db"] < 60
    assert metrics["test_loss_kl"] > 0 and len(metrics["kl_per_dim_sorted"]) == 8
    stats = [json.loads(line) for line in (tiny_run / "stats.jsonl").read_text().splitlines()]
    train_rows = [row for row in stats if "loss/total" in row]
    assert [row["images_seen"] for row in train_rows] == [64, 128, 192, 256, 320]  # continued, not restarted
    assert all(row["loss/kl"] > 0 and math.isfinite(row["loss/total"]) for row in train_rows)
    assert train_rows[0]["loss/beta"] < train_rows[-1]["loss/beta"] == 1.0  # KL warm-up over 64 images
    assert any("val/total" in row for row in stats)
    samples = sorted(p.name for p in (tiny_run / "samples").glob("*.png"))
    assert "reconstructions_0000000096.png" in samples and "samples_0000000320.png" in samples


def test_load_model_from_run_round_trip(tiny_run):
    from vae.model import load_model_from_run

    model = load_model_from_run(tiny_run)
    assert model.latent_dim == 8 and model.resolution == 32 and not model.vae.training
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    z = model.encode(x)
    assert z.shape == (2, 8)
    assert torch.equal(z, model.encode(x))
    images = model.decode(z)
    assert images.shape == (2, 3, 32, 32) and images.abs().max() <= 1


def run_edit_main(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    capsys.readouterr()
    code, _ = run_main_in_process(monkeypatch, "edit_vae.py", *args)
    return code, capsys.readouterr().err


def test_edit_vae_end_to_end_and_errors(tiny_run, tmp_path, monkeypatch, capsys):
    out = tmp_path / "edits"
    code, err = run_edit_main(monkeypatch, capsys, "--run", str(tiny_run), "--attribute", "Smiling", "--keep",
                              "Mouth_Slightly_Open", "--num", "3", "--seed", "0", "--steps", "5", "--out", str(out))
    assert code == 0, err
    stem = out / "Smiling-keep-Mouth_Slightly_Open-mean"
    for suffix in (".png", ".gif", ".json"):
        assert stem.with_suffix(suffix).is_file()
    record = json.loads(stem.with_suffix(".json").read_text())
    assert record["attribute"] == "Smiling" and record["keep"] == ["Mouth_Slightly_Open"]
    assert record["latent_dim"] == 8 and len(record["strengths"]) == 5
    assert (tiny_run / "directions" / "Smiling-mean.npz").is_file()  # found once, saved for next time
    with Image.open(stem.with_suffix(".png")) as grid:
        assert grid.width > 5 * 32 and grid.height > 3 * 32  # 3 rows x 5 strengths of 32x32 faces, labelled

    code, err = run_edit_main(monkeypatch, capsys, "--run", str(tiny_run), "--attribute", "Smilng")
    assert code == 2 and err.startswith("error: ") and err.strip().count("\n") == 0 and "Smiling" in err
    code, err = run_edit_main(monkeypatch, capsys, "--run", str(tiny_run), "--attribute", "Smiling",
                              "--images", str(tmp_path / "nope.jpg"))
    assert code == 2 and "nope.jpg" in err and err.strip().count("\n") == 0
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    code, err = run_edit_main(monkeypatch, capsys, "--run", str(tiny_run), "--attribute", "Smiling",
                              "--images", str(broken), "--out", str(out))
    assert code == 2 and "broken.png" in err
    code, err = run_edit_main(monkeypatch, capsys, "--run", str(tmp_path / "no_run"), "--attribute", "Smiling")
    assert code == 2 and "no_run" in err


def test_edit_vae_pose_with_the_latent_flow(tiny_run, tmp_path, monkeypatch, capsys):
    out = tmp_path / "edits"
    code, err = run_edit_main(monkeypatch, capsys, "--run", str(tiny_run), "--attribute", "pose", "--method",
                              "cflow", "--num", "2", "--steps", "3", "--out", str(out))
    assert code == 0, err
    record = json.loads((out / "pose-cflow.json").read_text())
    assert record["method"] == "cflow" and record["strengths"] == [-3.0, 0.0, 3.0]
    assert record["direction"]["metrics"]["latent_flow"]["n_train"] > 0
    saved = json.loads((tiny_run / "directions" / "pose-cflow.json").read_text())
    assert saved["transport"]["dim"] == 8  # the flow's weights are in pose-cflow.npz, reused next time
    assert (out / "pose-cflow.png").is_file() and (out / "pose-cflow.gif").is_file()
    code, err = run_edit_main(monkeypatch, capsys, "--run", str(tiny_run), "--attribute", "pose", "--method",
                              "cflow", "--keep", "Smiling", "--num", "2", "--out", str(out))
    assert code == 2 and "--keep" in err and err.strip().count("\n") == 0
    code, err = run_edit_main(monkeypatch, capsys, "--run", str(tiny_run), "--attribute", "Smiling", "--method",
                              "cflow", "--num", "2", "--out", str(out))
    assert code == 2 and "pose" in err and err.strip().count("\n") == 0


def test_train_refuses_bad_architecture_before_creating_a_run(tiny_cache, tmp_path, monkeypatch, capsys):
    out = tmp_path / "bad"
    code, _ = run_main_in_process(monkeypatch, "train_vae.py", "--config", "configs/vae/synthetic.yaml", "--out",
                                  str(out), "--set", f"data.cache={tiny_cache}", "--set", "model.widths=[8,8,8,8,8,8]")
    err = capsys.readouterr().err
    assert code == 2 and "model.widths" in err and "divisible by 64" in err
    assert not out.exists()
