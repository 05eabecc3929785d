"""Glow: invertibility, log-determinants against brute-force Jacobians, actnorm init, bpd, exact reconstruction,
and end-to-end runs of scripts/train_glow.py and scripts/edit_glow.py on the tiny cache."""

from __future__ import annotations

import contextlib
import io
import json
import math
import runpy
import sys
from pathlib import Path

import pytest
import torch
from torch.autograd.functional import jacobian

from flow.glow import Glow, apply_if_finite, bins_to_image, bits_per_dim, quantize, snap_to_grid
from flow.layers import ActNorm, Coupling, FlowStep, InvConv1x1LU, squeeze2d, unsqueeze2d

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are tiny: one intra-op thread is much faster than several fighting over busy cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def perturb(module: torch.nn.Module, scale: float = 0.1, seed: int = 0) -> None:
    """Move every parameter off its (identity-like) init so the tests exercise non-trivial maps."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * scale)


def tiny_glow(coupling: str = "affine", dtype=torch.float64, seed: int = 0, **kw) -> Glow:
    torch.manual_seed(seed)
    model = Glow(8, levels=2, steps=2, hidden_channels=8, coupling=coupling, n_bits=5, **kw).to(dtype)
    x = torch.rand(16, 3, 8, 8, dtype=dtype) * 2 - 1
    model.initialize(model.preprocess(x, torch.rand(x.shape, dtype=dtype)))
    perturb(model, 0.05, seed)
    return model


def test_squeeze_unsqueeze_identity_and_layout():
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float64).reshape(2, 3, 4, 6)
    s = squeeze2d(x)
    assert s.shape == (2, 12, 2, 3)
    assert torch.equal(unsqueeze2d(s), x)
    # channel 0 of the squeezed tensor is the top-left corner of each 2x2 block of input channel 0
    assert torch.equal(s[:, 0], x[:, 0, 0::2, 0::2])
    assert torch.equal(s[:, 3], x[:, 0, 1::2, 1::2])


def _layer_cases():
    torch.manual_seed(1)
    return {
        "actnorm": ActNorm(4),
        "invconv": InvConv1x1LU(4),
        "affine": Coupling(4, 8, "affine"),
        "additive": Coupling(4, 8, "additive"),
        "step": FlowStep(4, 8, "affine"),
    }


def test_level_maps_lay_the_upper_levels_out_as_maps_of_the_top_level_size():
    model = Glow(32, levels=3, steps=1, hidden_channels=4, n_bits=5)
    assert model.latent_shapes == [(6, 16, 16), (12, 8, 8), (48, 4, 4)]
    z = torch.randn(2, model.latent_dim)
    index, shape = model.latent_flow_layout()  # the pose flow's part: the top level, as it is
    assert shape == (48, 4, 4) and torch.equal(index, torch.arange(2304, 3072))
    index, shape = model.level_maps([1, 2])
    assert shape == (96, 4, 4) and torch.equal(index.sort().values, torch.arange(1536, 3072))
    maps = z[:, index].reshape(2, *shape)
    assert torch.equal(maps[:, :48], squeeze2d(z[:, 1536:2304].reshape(2, 12, 8, 8)))
    assert torch.equal(maps[:, 48:], z[:, 2304:].reshape(2, 48, 4, 4))
    index, shape = model.level_maps([0])  # squeezed twice
    assert shape == (96, 4, 4) and torch.equal(z[:, index].reshape(2, *shape),
                                               squeeze2d(squeeze2d(z[:, :1536].reshape(2, 6, 16, 16))))


@pytest.mark.parametrize("name", ["actnorm", "invconv", "affine", "additive", "step"])
def test_layer_inverse_and_logdet_match_brute_force_jacobian(name):
    layer = _layer_cases()[name].double()
    x = torch.randn(3, 4, 4, 4, dtype=torch.float64)
    layer(x)  # actnorm's data-dependent init
    perturb(layer, 0.3)
    y, logdet = layer(x)
    assert logdet.shape == (3,)
    assert torch.allclose(layer.inverse(y), x, atol=1e-12)
    for i in range(2):
        jac = jacobian(lambda v: layer(v.reshape(1, 4, 4, 4))[0].reshape(-1), x[i].reshape(-1), vectorize=True)
        assert torch.allclose(torch.linalg.slogdet(jac)[1], logdet[i], atol=1e-9), name
    if name == "invconv":  # closed form H*W*sum(log|s|) equals the log|det| of the weight times H*W
        assert torch.allclose(logdet[0], 16 * torch.linalg.slogdet(layer.weight())[1], atol=1e-10)


def test_invconv_lu_structure_survives_training_style_updates():
    conv = InvConv1x1LU(5).double()
    perturb(conv, 0.5)
    w = conv.weight()
    p_inv_w = conv.perm.T @ w  # = L U
    lower_mask = conv.lower_mask
    assert torch.equal(conv.perm @ conv.perm.T, torch.eye(5, dtype=torch.float64))
    assert torch.allclose(torch.linalg.det(w).abs().log(), conv.log_s.sum(), atol=1e-10)
    assert p_inv_w.shape == (5, 5) and lower_mask.sum() == 10


def test_model_invertible_in_float64():
    model = tiny_glow()
    y = torch.rand(4, 3, 8, 8, dtype=torch.float64) - 0.5
    eps, logdet, prior = model._forward_flow(y)
    assert eps.shape == (4, model.latent_dim) and model.latent_dim == 3 * 8 * 8
    assert torch.allclose(model._inverse_flow(eps), y, atol=1e-11)


@pytest.mark.parametrize("coupling", ["affine", "additive"])
def test_model_log_prob_equals_normal_latents_plus_brute_force_logdet(coupling):
    model = tiny_glow(coupling)
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64) * 2 - 1
    log_p = model.log_prob(x)  # [2]
    eps = model.encode(x)  # [2, 192]
    y = model.preprocess(x)
    normal = (-0.5 * (eps**2 + math.log(2 * math.pi))).sum(1)
    assert torch.allclose(model.log_prob(x[1:]), log_p[1:])  # per-sample: independent of the batch
    jac = jacobian(lambda v: model._forward_flow(v.reshape(1, 3, 8, 8))[0].reshape(-1), y[0].reshape(-1),
                   vectorize=True)  # [192, 192]; vectorize: one batched backward instead of 192
    assert jac.shape == (192, 192)
    brute = torch.linalg.slogdet(jac)[1]
    assert torch.allclose(log_p[0], normal[0] + brute, atol=1e-8)


def test_actnorm_init_statistics_and_state_dict_round_trip():
    torch.manual_seed(0)
    norm = ActNorm(3).double()
    x = torch.randn(64, 3, 5, 5, dtype=torch.float64) * torch.tensor([2.0, 0.5, 7.0]).view(1, 3, 1, 1).double()
    x = x + torch.tensor([3.0, -1.0, 0.2]).view(1, 3, 1, 1).double()
    y, _ = norm(x)
    assert bool(norm.initialized)
    assert torch.allclose(y.mean(dim=(0, 2, 3)), torch.zeros(3, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(y.std(dim=(0, 2, 3), unbiased=False), torch.ones(3, dtype=torch.float64), atol=1e-5)

    # whole model: the flag travels in the state dict, so a fresh model loaded from it never re-initialises
    model = tiny_glow(dtype=torch.float32)
    assert model.is_initialized
    state = model.state_dict()
    assert any(k.endswith("actnorm.initialized") for k in state)
    torch.manual_seed(5)
    fresh = Glow(8, levels=2, steps=2, hidden_channels=8, n_bits=5)
    assert not fresh.is_initialized
    fresh.load_state_dict(state)
    assert fresh.is_initialized
    other = torch.rand(8, 3, 8, 8) * 0.2  # very different statistics: a re-init would change the parameters
    fresh(fresh.preprocess(other))
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert torch.equal(fresh.encode(other), model.encode(other))


def test_actnorm_init_pools_mean_and_second_moment_through_reduce_fn():
    norm = ActNorm(2).double()
    seen = []

    def doubling_reduce(t):  # stands in for all_reduce_mean: what it returns is what init must use
        seen.append(t.clone())
        return t * 2

    norm.reduce_fn = doubling_reduce
    x = torch.randn(32, 2, 4, 4, dtype=torch.float64) + 0.5
    norm(x)
    mean, mean_sq = x.mean(dim=(0, 2, 3), keepdim=True), (x * x).mean(dim=(0, 2, 3), keepdim=True)
    assert len(seen) == 2 and torch.allclose(seen[0], mean) and torch.allclose(seen[1], mean_sq)
    assert torch.allclose(norm.bias, -2 * mean)
    assert torch.allclose(norm.log_scale, -0.5 * torch.log(2 * mean_sq - 4 * mean**2 + norm.eps))


@pytest.mark.parametrize("n_bits", [1, 3, 5, 8])
def test_bits_per_dim_uniform_density_gives_n_bits(n_bits):
    d = 3 * 8 * 8
    assert bits_per_dim(0.0, d, 2**n_bits) == pytest.approx(n_bits, abs=1e-12)
    # one extra bit per dimension of density lost
    assert bits_per_dim(-d * math.log(2), d, 2**n_bits) == pytest.approx(n_bits + 1, abs=1e-12)
    t = bits_per_dim(torch.zeros(4, dtype=torch.float64), d, 2**n_bits)
    assert torch.allclose(t, torch.full((4,), float(n_bits), dtype=torch.float64))


def test_untrained_model_bpd_is_near_gaussian_on_uniform_data():
    # At init (zero-init couplings, priors N(0, I)) on uniform data the bpd is finite and a few bits above n_bits.
    model = Glow(8, levels=2, steps=2, hidden_channels=8, n_bits=5)
    x = torch.rand(32, 3, 8, 8) * 2 - 1
    bpd = model.bits_per_dim(x)
    assert torch.isfinite(bpd).all() and bpd.shape == (32,)
    assert 4.0 < bpd.mean().item() < 8.0


def test_quantize_matches_published_uint8_shift_and_grid():
    u = torch.arange(256)
    x = (u.float() / 127.5 - 1.0).view(1, 1, 1, 256)  # how a cache turns uint8 into [-1, 1]
    assert torch.equal(quantize(x, 5).flatten(), u // 8)
    assert torch.equal(quantize(x, 8).flatten(), u)
    grid = bins_to_image(torch.arange(32), 32)
    assert torch.equal(snap_to_grid(grid, 5), grid)
    assert grid.min() > -1 and grid.max() < 1


def test_decode_encode_is_exact_on_the_grid_in_float32():
    model = tiny_glow(dtype=torch.float32, seed=3)
    model.eval()
    gen = torch.Generator().manual_seed(0)
    bins = torch.randint(0, 32, (16, 3, 8, 8), generator=gen)
    x = bins_to_image(bins, 32)
    z = model.encode(x)
    assert z.dtype == torch.float32 and torch.isfinite(z).all()
    assert torch.equal(model.decode(z), x)  # max pixel error exactly 0
    off_grid = torch.rand(16, 3, 8, 8, generator=gen) * 2 - 1
    assert torch.equal(model.decode(model.encode(off_grid)), snap_to_grid(off_grid, 5))
    # decode works under an ambient bf16 autocast too (encode/decode switch it off)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(model.decode(model.encode(x)), x)


def test_fixed_top_prior_is_standard_normal_and_has_no_parameters():
    model = tiny_glow(learn_top=False)
    assert model.top_prior is None
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64) * 2 - 1
    assert torch.equal(model.decode(model.encode(x)), snap_to_grid(x, 5))


def test_sample_latents_temperature_and_shapes():
    model = Glow(8, levels=2, steps=2, hidden_channels=8)
    a = model.sample_latents(5, torch.Generator().manual_seed(0))
    b = model.sample_latents(5, torch.Generator().manual_seed(0), temperature=0.5)
    assert a.shape == (5, 192) and torch.allclose(b, a * 0.5)
    images = model.decode(b)
    assert images.shape == (5, 3, 8, 8) and images.min() >= -1 and images.max() <= 1
    assert model.latent_on_sphere is False and model.resolution == 8
    # absurd latents (a huge edit) still decode to grid images instead of NaN or an error
    wild = model.decode(torch.full((2, 192), 1e30))
    assert torch.isfinite(wild).all() and torch.equal(snap_to_grid(wild, 5), wild)


def test_autocast_keeps_likelihood_in_fp32_and_checkpointing_matches_gradients():
    model = tiny_glow(dtype=torch.float32, seed=4)
    y = torch.rand(4, 3, 8, 8) - 0.5
    ref = model(y)["log_p"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(y)
    assert out["log_p"].dtype == torch.float32 and out["logdet"].dtype == torch.float32
    assert torch.allclose(out["log_p"], ref, rtol=2e-2)

    model.train()
    loss = -model(y)["log_p"].mean()
    grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
    model.checkpointing = True
    loss_ckpt = -model(y)["log_p"].mean()
    grads_ckpt = torch.autograd.grad(loss_ckpt, list(model.parameters()), allow_unused=True)
    assert torch.allclose(loss, loss_ckpt)
    for g, gc in zip(grads, grads_ckpt, strict=True):
        assert (g is None and gc is None) or torch.allclose(g, gc, atol=1e-6)


def test_non_finite_loss_or_gradient_skips_the_step_without_touching_weights():
    model = tiny_glow(dtype=torch.float32, seed=6)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    y = torch.rand(4, 3, 8, 8) - 0.5

    loss = -model(y)["log_p"].mean() * float("nan")
    applied, norm = apply_if_finite(loss, opt, clip=1.0)
    assert not applied and norm is None

    loss = -model(y)["log_p"].mean()
    model.top_prior.logs.register_hook(lambda g: g * float("inf"))  # finite loss, infinite gradient
    applied, norm = apply_if_finite(loss, opt, clip=1.0)
    assert not applied and not torch.isfinite(norm)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert all(p.grad is None for p in model.parameters()) and not opt.state

    fresh = tiny_glow(dtype=torch.float32, seed=6)
    opt = torch.optim.Adam(fresh.parameters(), lr=1e-2)
    applied, norm = apply_if_finite(-fresh(y)["log_p"].mean(), opt, clip=1.0)
    assert applied and torch.isfinite(norm)
    assert not torch.equal(fresh.top_prior.conv.bias, before["top_prior.conv.bias"])


def test_bad_input_shapes_raise_clear_errors():
    model = Glow(8, levels=2, steps=2, hidden_channels=8)
    with pytest.raises(ValueError, match=r"expected images \[B, 3, 8, 8\]"):
        model.encode(torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match=r"expected latents \[B, 192\]"):
        model.decode(torch.zeros(1, 10))
    with pytest.raises(ValueError, match="divisible by 2 \\*\\* levels"):
        Glow(12, levels=3)


def test_shipped_configs_load_and_match_their_intent():
    from common.config import load_config
    from flow.config import GlowConfig

    synthetic = load_config(GlowConfig, REPO / "configs" / "flow" / "synthetic.yaml", [])
    assert synthetic.data.resolution == 32 and synthetic.model.n_bits == 5
    assert synthetic.data.resolution % 2**synthetic.model.levels == 0
    celeba = load_config(GlowConfig, REPO / "configs" / "flow" / "celeba64.yaml", [])
    assert (celeba.data.resolution, celeba.model.levels, celeba.model.steps) == (64, 4, 32)
    assert (celeba.model.hidden_channels, celeba.model.n_bits, celeba.model.coupling) == (512, 5, "additive")


# ---------------------------------------------------------------------------------------------------------------
# Scripts, end to end on the tiny cache


def _run_in_process(script: str, args: list[str]) -> tuple[int, str]:
    """Run a script's main() here (no interpreter start-up, one thread); returns (exit code, stderr)."""
    argv, err = sys.argv, io.StringIO()
    sys.argv = [script, *args]
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            runpy.run_path(str(REPO / script), run_name="__main__")
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    finally:
        sys.argv = argv
    return code, err.getvalue()


@pytest.fixture(scope="module")
def tiny_run(tiny_cache, tmp_path_factory):
    """A 30-step Glow run on the tiny 32x32 cache (L=2, K=2, width 16)."""
    pytest.importorskip("common.run")
    out = tmp_path_factory.mktemp("glow") / "run"
    config = out.parent / "tiny.yaml"
    config.write_text(f"""
data: {{root: unused, resolution: 32, cache: "{tiny_cache}", hflip: false}}
model: {{levels: 2, steps: 2, hidden_channels: 16, coupling: affine, n_bits: 5}}
train: {{device: cpu, precision: fp32, batch_size: 16, lr: 2.0e-3, total_images: 480, grad_clip: 50.0,
        checkpoint_every_images: 0}}
log: {{every_images: 16, image_every_images: 240, tensorboard: false}}
glow: {{warmup_images: 32, init_images: 64}}
eval: {{test_every_images: 240, test_images: 16, batch_size: 32, grid_images: 8}}
""")
    code, err = _run_in_process("scripts/train_glow.py", ["--config", str(config), "--out", str(out)])
    assert code == 0, err[-3000:]
    return out


def test_train_glow_smoke_bpd_finite_and_decreasing(tiny_run):
    records = [json.loads(line) for line in (tiny_run / "stats.jsonl").read_text().splitlines()]
    bpd = [r["train/bpd"] for r in records if "train/bpd" in r]
    assert len(bpd) >= 25 and all(math.isfinite(b) for b in bpd)
    assert sum(bpd[-5:]) / 5 < sum(bpd[:5]) / 5 - 0.3, bpd
    assert any("test/bpd" in r for r in records)
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert math.isfinite(metrics["test_bpd"]) and 0 < metrics["test_bpd"] < 12
    assert metrics["reconstruction_max_abs_error"] == 0.0
    assert metrics["skipped_steps"] == 0
    samples = sorted(p.name for p in (tiny_run / "samples").glob("*.png"))
    assert any("samples_t0.7" in name for name in samples) and any("samples_t0.5" in name for name in samples)
    assert (tiny_run / "checkpoints" / "last.pt").is_file()


def test_stop_and_resume_equals_uninterrupted_training(tiny_run, tmp_path):
    out = tmp_path / "resumed"
    config = str(tiny_run.parent / "tiny.yaml")
    code, err = _run_in_process("scripts/train_glow.py", ["--config", config, "--out", str(out), "--set",
                                                          "train.total_images=240"])
    assert code == 0, err[-3000:]
    code, err = _run_in_process("scripts/train_glow.py", ["--config", config, "--out", str(out), "--resume"])
    assert code == 0, err[-3000:]
    full = torch.load(tiny_run / "checkpoints" / "last.pt", weights_only=True)
    resumed = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert resumed["images_seen"] == full["images_seen"] == 480
    for key, value in full["models"]["glow"].items():  # actnorm not re-initialised, same data and noise
        assert torch.equal(resumed["models"]["glow"][key], value), key


def test_load_model_from_run_restores_exact_model(tiny_run, tiny_cache):
    from flow.glow import load_model_from_run

    model = load_model_from_run(tiny_run)
    assert model.is_initialized and not model.training and model.resolution == 32
    x = bins_to_image(torch.randint(0, 32, (4, 3, 32, 32), generator=torch.Generator().manual_seed(0)), 32)
    assert torch.equal(model.decode(model.encode(x)), x)


def test_edit_glow_end_to_end(tiny_run, tmp_path):
    pytest.importorskip("common.editing")
    out = tmp_path / "edits"
    code, err = _run_in_process("scripts/edit_glow.py", [
        "--run", str(tiny_run), "--attribute", "Smiling", "--keep", "Mouth_Slightly_Open", "--cache-images", "3",
        "--steps", "3", "--range", "-1", "1", "--out", str(out), "--device", "cpu"])
    assert code == 0, err[-3000:]
    stem = "Smiling-keep-Mouth_Slightly_Open-mean"
    assert (out / f"{stem}.png").is_file() and (out / f"{stem}.gif").is_file()
    record = json.loads((out / f"{stem}.json").read_text())
    assert record["strengths"] == [-1.0, 0.0, 1.0] and record["keep"] == ["Mouth_Slightly_Open"]
    assert record["unedited_reconstruction_max_abs_error"] == 0.0  # Glow's unedited column is exact
    assert record["direction"]["scale"] > 0
    assert sorted(p.name for p in (tiny_run / "directions").glob("*.npz"))  # directions saved for reuse


def test_edit_glow_pose_cflow_edits_only_the_top_level_and_keeps_the_flow(tiny_run, tmp_path, monkeypatch):
    pytest.importorskip("common.editing")
    monkeypatch.setattr("common.editing.CONV_FLOW_EPOCHS", 2)  # a few small epochs: this checks the plumbing
    monkeypatch.setattr("common.editing.CONV_FLOW_HIDDEN", 8)
    out = tmp_path / "edits"
    code, err = _run_in_process("scripts/edit_glow.py", [
        "--run", str(tiny_run), "--attribute", "pose", "--method", "cflow", "--cache-images", "2", "--steps", "3",
        "--out", str(out), "--device", "cpu"])
    assert code == 0, err[-3000:]
    record = json.loads((out / "pose-cflow.json").read_text())
    assert record["method"] == "cflow" and record["unedited_reconstruction_max_abs_error"] == 0.0
    assert (out / "pose-cflow.png").is_file() and (out / "pose-cflow.gif").is_file()
    from common.directions import load_direction
    from flow.glow import load_model_from_run

    model = load_model_from_run(tiny_run)
    direction = load_direction(tiny_run / "directions" / "pose-cflow")
    flow = direction.transport
    top = model.latent_sizes[-1]
    assert flow.config()["shape"] == list(model.latent_shapes[-1]) and flow.config()["full_dim"] == model.latent_dim
    z = model.sample_latents(3, torch.Generator().manual_seed(0)).double()
    walked = flow.walk(z, [-1.0, 0.0, 1.0])  # [3, 3, D]: the lower level kept, the top level moved
    assert torch.equal(walked[:, :, :-top], z[:, None, :-top].expand(-1, 3, -1)) and torch.equal(walked[:, 1], z)


def test_edit_glow_rejects_a_non_glow_folder(tmp_path):
    pytest.importorskip("common.editing")
    code, err = _run_in_process("scripts/edit_glow.py", ["--run", str(tmp_path), "--attribute", "Smiling"])
    assert code == 2 and err.startswith("error: ") and str(tmp_path) in err
