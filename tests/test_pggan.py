"""Tests for the progressive GAN: layers, growth and fade-in identities, WGAN-GP, the schedule, training and resume."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from interface_gan.losses import drift_penalty, generator_loss, gradient_penalty, interpolate, wasserstein_critic_loss
from interface_gan.pggan import (
    Discriminator,
    EqualizedConv2d,
    EqualizedLinear,
    Generator,
    PGGANError,
    channel_widths,
    downsample2x,
    fade_images,
    minibatch_stddev,
    phase_at,
    phase_lengths,
    pixel_norm,
    project_to_sphere,
    sample_latents,
    upsample2x,
)

REPO = Path(__file__).resolve().parents[1]
TINY = dict(fmap_base=64, fmap_max=16, fmap_min=8)  # widths 16, 8, 8, 8 at 4..32: milliseconds per forward


def tiny_networks(seed: int = 0) -> tuple[Generator, Discriminator]:
    torch.manual_seed(seed)
    return Generator(latent_dim=16, resolution=32, **TINY), Discriminator(resolution=32, **TINY)


def randomise_(module: torch.nn.Module) -> None:
    """Non-zero biases so the identities below are not trivially true."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)


def test_widths_follow_fmap_rule():
    assert channel_widths(128, 16384, 512) == [512, 512, 512, 512, 256, 128]
    assert channel_widths(32, 1024, 128, 16) == [128, 128, 64, 32]
    with pytest.raises(PGGANError, match="power of two"):
        channel_widths(48, 1024, 128)


def test_shapes_at_every_resolution():
    g, d = tiny_networks()
    z = torch.randn(4, 16)
    for depth in range(4):
        r = 4 * 2**depth
        for alpha in (0.0, 0.5, 1.0):
            x = g(z, depth, alpha)
            assert x.shape == (4, 3, r, r)
            assert d(x, depth, alpha).shape == (4,)
        assert g.features(z, depth).shape == (4, g.widths[depth], r, r)
    assert g(z).shape == (4, 3, 32, 32)  # default: full resolution
    with pytest.raises(PGGANError, match="expects 8x8"):
        d(torch.zeros(4, 3, 16, 16), 1)


def test_generator_fade_identities():
    g, _ = tiny_networks()
    randomise_(g)
    z = torch.randn(3, 16)
    for depth in (1, 2, 3):
        previous = upsample2x(g(z, depth - 1, 1.0))
        torch.testing.assert_close(g(z, depth, 0.0), previous)
        new_only = g.to_rgb[depth](g.features(z, depth))
        torch.testing.assert_close(g(z, depth, 1.0), new_only)
        mid = g(z, depth, 0.25)
        torch.testing.assert_close(mid, 0.75 * previous + 0.25 * new_only, atol=1e-5, rtol=1e-5)


def test_discriminator_fade_identities():
    _, d = tiny_networks()
    randomise_(d)
    for depth in (1, 2, 3):
        r = 4 * 2**depth
        x = torch.randn(4, 3, r, r)
        torch.testing.assert_close(d(x, depth, 0.0), d(downsample2x(x), depth - 1, 1.0))
        # alpha = 1: only the new from_rgb + block, then the lower blocks
        h = d.blocks[depth - 1](torch.nn.functional.leaky_relu(d.from_rgb[depth](x), 0.2))
        for k in range(depth - 1, 0, -1):
            h = d.blocks[k - 1](h)
        torch.testing.assert_close(d(x, depth, 1.0), d.head(h))


def test_equalised_lr_scaling():
    torch.manual_seed(0)
    conv = EqualizedConv2d(32, 64, 3)
    torch.testing.assert_close(conv.effective_weight(), conv.weight * math.sqrt(2.0 / (32 * 9)))
    assert abs(conv.weight.std().item() - 1.0) < 0.05  # stored weights ~N(0, 1)
    lin = EqualizedLinear(256, 256, gain=1.0)
    torch.testing.assert_close(lin.effective_weight(), lin.weight / 16.0)
    x = torch.randn(4096, 256)
    assert lin(x).std().item() == pytest.approx(1.0, rel=0.08)  # gain 1: std preserved
    # He's gain sqrt(2) with a ReLU keeps the second moment: E[relu(y)^2] = Var(y) / 2 = Var(x)
    img = torch.randn(16, 32, 16, 16)
    y = torch.relu(conv(img))
    assert y.pow(2).mean().sqrt().item() == pytest.approx(1.0, rel=0.1)


def test_pixel_norm_and_minibatch_stddev():
    x = torch.randn(2, 8, 4, 4) * 5
    assert torch.allclose(pixel_norm(x).pow(2).mean(dim=1), torch.ones(2, 4, 4), atol=1e-4)
    y = minibatch_stddev(torch.ones(8, 3, 4, 4))
    assert y.shape == (8, 4, 4, 4)
    assert torch.allclose(y[:, 3], torch.full((8, 4, 4), 1e-4), atol=1e-4)  # identical samples: ~0 spread
    x = torch.zeros(4, 1, 1, 1)
    x[:, 0, 0, 0] = torch.tensor([0.0, 2.0, 0.0, 2.0])  # one group of 4: population std 1
    assert minibatch_stddev(x, 4)[0, 1, 0, 0].item() == pytest.approx(1.0, abs=1e-4)


def test_latents_on_the_sphere():
    z = sample_latents(10, 64, torch.Generator().manual_seed(0))
    assert torch.allclose(z.norm(dim=1), torch.full((10,), 8.0))
    assert torch.allclose(project_to_sphere(3 * z), z)


def test_gradient_penalty_on_linear_critic():
    # D(x) = w . x + b has gradient w everywhere: GP = lambda * (|w| - 1)^2, whatever the interpolates.
    w = torch.tensor([[3.0, 0.0], [0.0, 4.0]]).reshape(1, 2, 2)  # |w| = 5
    critic = lambda x: (x * w).flatten(1).sum(1) + 0.5  # noqa: E731
    real, fake = torch.randn(6, 1, 2, 2), torch.randn(6, 1, 2, 2)
    assert gradient_penalty(critic, real, fake, weight=10.0).item() == pytest.approx(10.0 * 16.0)
    # a critic with unit gradient everywhere is not penalised
    assert gradient_penalty(lambda x: x.flatten(1)[:, 0], real, fake).item() == pytest.approx(0.0)
    eps = torch.tensor([0.0, 1.0])
    mixed = interpolate(torch.zeros(2, 3), torch.ones(2, 3), eps)
    torch.testing.assert_close(mixed, torch.tensor([[0.0] * 3, [1.0] * 3]))
    # the penalty is differentiable w.r.t. the critic's parameters (double backprop)
    lin = torch.nn.Linear(4, 1)
    gp = gradient_penalty(lambda x: lin(x).squeeze(1), torch.randn(5, 4), torch.randn(5, 4))
    gp.backward()
    expected = 2 * 10.0 * (lin.weight.norm() - 1) * lin.weight / lin.weight.norm()
    torch.testing.assert_close(lin.weight.grad, expected.detach())


def test_wasserstein_drift_and_generator_losses():
    real, fake = torch.tensor([1.0, 3.0]), torch.tensor([-1.0, 0.0])
    assert wasserstein_critic_loss(real, fake).item() == pytest.approx(-0.5 - 2.0)
    assert drift_penalty(real, 0.001).item() == pytest.approx(0.001 * 5.0)
    assert generator_loss(fake).item() == pytest.approx(0.5)


def test_schedule_lengths_and_alpha():
    lengths = phase_lengths(6_600_000, 6)
    assert lengths == [600_000] * 11  # the paper's CelebA recipe: 600k per fade and per stable phase
    lengths = phase_lengths(1000, 4, [1, 1, 1, 2, 2, 3, 5])
    assert sum(lengths) == 1000 and len(lengths) == 7
    p = phase_at(0, lengths)
    assert (p.depth, p.alpha, p.fading, p.resolution) == (0, 1.0, False, 4)
    start = lengths[0] + lengths[1] + lengths[2]  # fade 16x16 starts
    p = phase_at(start + lengths[3] // 2, lengths)
    assert p.depth == 2 and p.fading and p.alpha == pytest.approx(0.5, abs=0.01)
    assert phase_at(10**9, lengths).resolution == 32 and phase_at(10**9, lengths).alpha == 1.0
    with pytest.raises(PGGANError, match="7 positive numbers"):
        phase_lengths(100, 4, [1, 2])


def test_real_images_fade_like_the_generator():
    x = torch.randn(2, 3, 8, 8)
    coarse = upsample2x(downsample2x(x))
    torch.testing.assert_close(fade_images(x, 0.0), coarse)
    torch.testing.assert_close(fade_images(x, 1.0), x)
    torch.testing.assert_close(fade_images(x, 0.3), 0.7 * coarse + 0.3 * x)


# ------------------------------------------------------------------------------------------- training script


def _have_training_stack() -> str | None:
    for module in ("common/run.py", "common/cache.py", "tests/conftest.py"):
        if not (REPO / module).exists():
            return f"{module} is not written yet"
    return None


TRAIN_SETS = ["--set", "pggan.phase_weights=[1,1,1,1,1,1,1]", "--set", "model.latent_dim=16", "--set", "model.fmap_base=64", "--set", "model.fmap_max=16",
              "--set", "model.fmap_min=8", "--set", "pggan.batch_sizes=[8,8,8,8]", "--set", "train.ema_decay=0.9",
              "--set", "pggan.grid_images=4", "--set", "log.every_images=16", "--set", "train.precision=fp32",
              "--set", "log.image_every_images=0", "--set", "train.checkpoint_every_images=0",
              "--set", "train.device=cpu", "--set", "log.tensorboard=false"]


def _train(cache: Path, out: Path, total: int, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO / "scripts" / "train_pggan.py"), "--config",
           str(REPO / "configs" / "interface_gan" / "synthetic.yaml"), "--out", str(out),
           "--set", f"data.cache={cache}", "--set", f"train.total_images={total}", *TRAIN_SETS, *extra]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def cache(request):
    reason = _have_training_stack()
    if reason:
        pytest.skip(reason)
    return request.getfixturevalue("tiny_cache")


def test_train_smoke_and_resume_mid_fade(cache, tmp_path):
    from common.run import load_run_checkpoint

    total = 8 * 14  # 14 steps of 8 images: phases of 16 images, the last one 16 too
    full = _train(cache, tmp_path / "full", total)
    assert full.returncode == 0, full.stderr[-2000:]
    assert (tmp_path / "full" / "metrics.json").exists()
    samples = sorted((tmp_path / "full" / "samples").glob("*.png"))
    assert len(samples) >= 7  # initial grid + one at the end of every phase
    ckpt_full = load_run_checkpoint(tmp_path / "full")
    assert ckpt_full["images_seen"] == total and ckpt_full["depth"] == 3 and ckpt_full["alpha"] == 1.0

    # stop in the middle of the 32x32 fade (phase 5: images 80..96), then resume to the end
    part = _train(cache, tmp_path / "part", total, "--stop-after-images", "88")
    assert part.returncode == 0, part.stderr[-2000:]
    mid = load_run_checkpoint(tmp_path / "part")
    assert mid["images_seen"] == 88 and mid["depth"] == 3 and mid["phase"] == 5
    assert 0.0 < mid["alpha"] < 1.0
    assert not (tmp_path / "part" / "metrics.json").exists()
    resumed = _train(cache, tmp_path / "part", total, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    ckpt_resumed = load_run_checkpoint(tmp_path / "part")
    assert ckpt_resumed["images_seen"] == total
    assert set(ckpt_full["models"]) == {"generator", "discriminator"} and set(ckpt_full["ema"]) == {"generator"}
    for group, name in (("models", "generator"), ("models", "discriminator"), ("ema", "generator")):
        for key, value in ckpt_full[group][name].items():
            torch.testing.assert_close(ckpt_resumed[group][name][key], value, msg=f"{group}.{name}.{key}")


def test_lazy_gradient_penalty_weights_and_skipped_steps(monkeypatch):
    import interface_gan.training as training
    from common.config import ConfigError, load_config
    from common.run import adam
    from common.training import StepTools
    from interface_gan.config import PGGANConfig

    # every k-th step carries k x lambda, the others 0: the same total weight over any k consecutive steps
    assert [training.lazy_gp_weight(10.0, 1, s) for s in range(3)] == [10.0, 10.0, 10.0]
    assert [training.lazy_gp_weight(10.0, 4, s) for s in range(9)] == [40.0, 0, 0, 0, 40.0, 0, 0, 0, 40.0]
    assert sum(training.lazy_gp_weight(10.0, 4, s) for s in range(5, 9)) == 4 * 10.0
    assert load_config(PGGANConfig, REPO / "configs/interface_gan/synthetic.yaml", []).pggan.gp_every == 1
    with pytest.raises(ConfigError, match="gp_every"):
        load_config(PGGANConfig, REPO / "configs/interface_gan/synthetic.yaml", ["pggan.gp_every=0"])

    def run(gp_weight: float) -> dict:
        generator, discriminator = tiny_networks()
        randomise_(discriminator)
        opt_g, opt_d = adam(generator.parameters(), lr=1e-3), adam(discriminator.parameters(), lr=1e-3)
        gen = torch.Generator().manual_seed(0)
        real = torch.rand(4, 3, 32, 32, generator=gen) * 2 - 1
        z_d, z_g = sample_latents(4, 16, gen), sample_latents(4, 16, gen)
        return training.train_step(generator, discriminator, discriminator, opt_g, opt_d, real, z_d, z_g,
                                   torch.rand(4, generator=gen), None, 1.0, StepTools(torch.device("cpu"), "fp32"),
                                   gp_weight)

    with_gp = run(40.0)
    assert with_gp["gp"].item() > 0
    calls = []
    monkeypatch.setattr(training, "gradient_penalty", lambda *a, **k: calls.append(1))
    skipped = run(0.0)  # an off step of a lazy penalty: the penalty is not even computed
    assert calls == [] and skipped["gp"].item() == 0.0 and skipped["gp"].dtype == torch.float32
    # the rest of the critic's loss is the same: d = wasserstein + gp + drift on both steps
    torch.testing.assert_close(skipped["d"], with_gp["d"] - with_gp["gp"])
