"""CUDA paths (``pytest -m cuda``; skipped where torch.cuda.is_available() is False): device placement, bf16 and fp16
autocast with GradScaler, channels_last, checkpoints moved between GPU and CPU, CPU-vs-CUDA agreement, determinism.

They are written to run on one GPU; scripts/gpu_check.py runs them and records the result in its report.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from test_run import ToyConfig, config_file, parse, toy_model  # the run-context test helpers

from common.cache import CelebACache
from common.checkpoint import load_checkpoint_file, set_rng_state
from common.config import load_config
from common.editing import encoder_direction
from common.run import RunContext, adam
from vae.model import ConvVAE, EditableVAE, vae_loss

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: torch.cuda.is_available() is False"),
]

REPO = Path(__file__).resolve().parents[1]


def cuda_context(tmp_path: Path, *sets: str, name: str = "run", resume: bool = False) -> RunContext:
    """The toy run context of tests/test_run.py on cuda:0 with the given --set overrides."""
    argv = ["--config", str(config_file(tmp_path)), "--out", str(tmp_path / name), "--set", "train.device=cuda",
            "--set", "log.tensorboard=false", *[a for s in sets for a in ("--set", s)]]
    args = parse(argv + (["--resume"] if resume else []))
    return RunContext.create("toy", load_config(ToyConfig, args.config, args.set), args)


def small_vae(seed: int = 0) -> ConvVAE:
    torch.manual_seed(seed)
    return ConvVAE(resolution=32, latent_dim=8, widths=(8, 16))


@pytest.fixture
def no_tf32():
    """fp32 means fp32: TF32 (a 10-bit mantissa) off for cuBLAS and cuDNN while the test runs."""
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def test_model_data_and_directions_live_on_the_gpu(tmp_path, tiny_cache):
    from common.distributed import resolve_device
    from common.editing import resolve_device as edit_device

    assert resolve_device("auto") == torch.device("cuda", 0) == resolve_device("cuda")  # train.device
    assert resolve_device("auto", local=1) == torch.device("cuda", 1 % torch.cuda.device_count())  # rank 1
    assert edit_device("auto").type == "cuda"  # the edit scripts' --device auto
    with cuda_context(tmp_path, "train.channels_last=true") as ctx:
        assert ctx.device == torch.device("cuda", 0)
        model = ctx.wrap(small_vae())
        assert {t.device for t in [*model.parameters(), *model.buffers()]} == {ctx.device}
        dataset = CelebACache(tiny_cache, "train")
        batch = next(ctx.batches(dataset, 8))
        x = batch["image"]  # [8, 3, 32, 32], converted from uint8 on the GPU
        assert x.device == ctx.device and x.dtype == torch.float32 and x.shape == (8, 3, 32, 32)
        assert x.is_contiguous(memory_format=torch.channels_last) and -1 <= x.min() and x.max() <= 1
        assert all(v.device == ctx.device for v in batch.values() if isinstance(v, torch.Tensor))

        editable = EditableVAE(ctx.unwrap(model), ctx.device)
        direction = encoder_direction(editable, dataset, "Smiling", "mean", batch_size=32, progress=False,
                                      max_images=64)
        assert direction.vector.shape == (8,) and np.isclose(np.linalg.norm(direction.vector), 1.0)
        z = editable.encode(x)  # [8, 8] on the images' device
        assert z.device == ctx.device
        from common.directions import walk

        walked = walk(z, direction, np.array([-1.0, 0.0, 1.0]))  # [8, 3, 8], kept on the GPU
        assert walked.device == ctx.device and walked.shape == (8, 3, 8)
        assert torch.allclose(walked[:, 1], z)
        images = editable.decode(walked.reshape(-1, 8))
        assert images.device == ctx.device and images.shape == (24, 3, 32, 32) and torch.isfinite(images).all()


def test_pinned_loader_batches_equal_the_fast_path_on_the_gpu(tiny_cache, monkeypatch):
    """With workers, batches come through a DataLoader into pinned memory, then a non-blocking copy to the GPU."""
    from common.batches import ResumableBatches

    pinned = []

    class SpyLoader(torch.utils.data.DataLoader):
        def __init__(self, *args, **kwargs):
            pinned.append(kwargs.get("pin_memory"))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(torch.utils.data, "DataLoader", SpyLoader)
    dataset = CelebACache(tiny_cache, "train", hflip=False)
    fast = ResumableBatches(dataset, 8, seed=3, device="cuda", num_workers=0)
    loader = ResumableBatches(dataset, 8, seed=3, device="cuda", num_workers=1)
    assert fast.fast and not loader.fast
    for _ in range(3):  # the same order and the same pixels either way
        a, b = next(fast)["image"], next(loader)["image"]
        assert a.device.type == b.device.type == "cuda" and torch.equal(a, b)
    assert pinned == [True]


def test_bf16_autocast_step_keeps_fp32_weights(tmp_path):
    with cuda_context(tmp_path, "train.precision=bf16") as ctx:
        assert ctx.precision == "bf16" and ctx.scaler is None
        model = ctx.wrap(small_vae())
        optimizer = adam(model.parameters(), lr=1e-3)
        before = [p.detach().clone() for p in model.parameters()]
        x = torch.rand(8, 3, 32, 32, device=ctx.device) * 2 - 1
        with ctx.autocast():
            out = model(x)
        assert out.x_mean.dtype == torch.bfloat16 and out.mu.dtype == torch.bfloat16
        loss = vae_loss(x, out.x_mean, out.mu, out.logvar, ctx.unwrap(model).log_sigma, 1.0)["total"]
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
        ctx.step(loss, optimizer)
        after = list(model.parameters())
        assert all(p.dtype == torch.float32 and p.device == ctx.device for p in after)  # fp32 master weights
        assert all(not torch.equal(a, b) for a, b in zip(after, before))  # every weight was updated
        assert all(torch.isfinite(p).all() for p in after)


@pytest.mark.parametrize("clip", [0.0, 1.0])
def test_fp16_grad_scaler_skips_an_overflow_step(tmp_path, clip):
    with cuda_context(tmp_path, "train.precision=fp16") as ctx:
        assert ctx.precision == "fp16" and isinstance(ctx.scaler, torch.amp.GradScaler) and ctx.scaler.is_enabled()
        model = ctx.wrap(toy_model(ctx.cfg).eval())  # eval: no dropout, the same output every call
        optimizer = adam(model.parameters(), lr=1e-2)  # fused Adam, what every trainer uses
        x = torch.randn(4, 3, 4, 4, device=ctx.device)

        def step(overflow: bool) -> None:
            with ctx.autocast():
                y = model(x)
            assert y.dtype == torch.float16
            loss = y.float().pow(2).mean()
            if overflow:
                loss = loss * float("inf")  # inf loss -> inf/NaN gradients, as an fp16 overflow gives
            ctx.step(loss, optimizer, clip=clip)

        start = [p.detach().clone() for p in model.parameters()]
        step(overflow=False)
        scale = ctx.scaler.get_scale()
        moved = [p.detach().clone() for p in model.parameters()]
        assert all(not torch.equal(a, b) for a, b in zip(moved, start))  # a finite step is applied
        step(overflow=True)
        assert all(torch.equal(p, b) for p, b in zip(model.parameters(), moved))  # skipped, not applied
        assert all(p.grad is None for p in model.parameters())
        assert ctx.scaler.get_scale() == scale * 0.5  # the scale backs off
        assert all(torch.isfinite(p).all() for p in model.parameters())
        step(overflow=False)
        assert all(not torch.equal(p, b) for p, b in zip(model.parameters(), moved))  # training goes on
        assert ctx.scaler.get_scale() == scale * 0.5


def test_fp16_scaler_state_is_saved_and_restored(tmp_path):
    with cuda_context(tmp_path, "train.precision=fp16") as ctx:
        model = ctx.wrap(toy_model(ctx.cfg))
        optimizer = adam(model.parameters(), lr=1e-2)
        with ctx.autocast():
            loss = model(torch.randn(4, 3, 4, 4, device=ctx.device)).float().sum() * float("inf")
        ctx.step(loss, optimizer)  # one skipped step: the scale is no longer the default
        scale = ctx.scaler.get_scale()
        assert scale == 65536.0 / 2
        path = ctx.save_checkpoint({"models": {"toy": model}, "optimizers": {"toy": optimizer}, "images_seen": 4})
    assert load_checkpoint_file(path)["scaler"]["scale"] == scale
    with cuda_context(tmp_path, "train.precision=fp16", resume=True) as resumed:
        assert resumed.load_checkpoint()["images_seen"] == 4
        assert resumed.scaler.get_scale() == scale


def test_channels_last_weights_and_the_same_outputs(tmp_path, no_tf32):
    with cuda_context(tmp_path, "train.channels_last=true") as ctx:
        vae = small_vae().eval()
        reference = copy.deepcopy(vae).to(ctx.device)  # contiguous (NCHW) copy
        model = ctx.wrap(vae)
        convs = [p for p in model.parameters() if p.dim() == 4]
        assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
        x = torch.rand(8, 3, 32, 32, device=ctx.device) * 2 - 1
        with torch.no_grad():
            mu, _ = model.encode(x.contiguous(memory_format=torch.channels_last))
            ref_mu, _ = reference.encode(x)
            image = model.decode(mu)
            ref_image = reference.decode(ref_mu)
        torch.testing.assert_close(mu, ref_mu, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(image, ref_image, rtol=1e-4, atol=1e-5)
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            assert torch.isfinite(model(x.contiguous(memory_format=torch.channels_last)).x_mean).all()


def test_checkpoint_saved_on_the_gpu_loads_on_the_cpu_and_back(tmp_path):
    with cuda_context(tmp_path, "train.precision=bf16") as ctx:
        model = ctx.wrap(small_vae())
        optimizer = adam(model.parameters(), lr=1e-3)
        x = torch.rand(8, 3, 32, 32, device=ctx.device) * 2 - 1
        with ctx.autocast():
            out = model(x)
        ctx.step(vae_loss(x, out.x_mean, out.mu, out.logvar, ctx.unwrap(model).log_sigma, 1.0)["total"], optimizer)
        path = ctx.save_checkpoint({"models": {"vae": model}, "optimizers": {"adam": optimizer}, "images_seen": 8})
        saved = {k: v.detach().clone() for k, v in ctx.unwrap(model).state_dict().items()}
    raw = torch.load(path, weights_only=True)  # as saved: the tensors come back on the GPU
    assert raw["models"]["vae"]["fc_mu.weight"].device.type == "cuda"
    ckpt = load_checkpoint_file(path, map_location="cpu")  # weights_only=True inside
    assert {t.device.type for t in ckpt["models"]["vae"].values()} == {"cpu"}
    assert len(ckpt["rng"]["cuda"]) == torch.cuda.device_count()  # the CUDA generators are in it

    on_cpu = small_vae(seed=1)
    on_cpu.load_state_dict(ckpt["models"]["vae"])
    for name, value in on_cpu.state_dict().items():
        assert torch.equal(value, saved[name].cpu()), name
    back = small_vae(seed=2).cuda()
    back.load_state_dict(ckpt["models"]["vae"])  # CPU tensors into a GPU module
    for name, value in back.state_dict().items():
        assert value.device.type == "cuda" and torch.equal(value, saved[name]), name
    optimizer = adam(back.parameters(), lr=1e-3)
    optimizer.load_state_dict(ckpt["optimizers"]["adam"])
    assert all(s["exp_avg"].device.type == "cuda" for s in optimizer.state.values())
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = back(x)
    vae_loss(x, out.x_mean, out.mu, out.logvar, back.log_sigma, 1.0)["total"].backward()
    optimizer.step()  # the restored fused Adam steps on the GPU
    assert all(torch.isfinite(p).all() for p in back.parameters())

    set_rng_state(ckpt["rng"])
    first = torch.randn(4, device="cuda")
    set_rng_state(ckpt["rng"])
    assert torch.equal(torch.randn(4, device="cuda"), first)


def test_the_same_step_gives_the_same_loss_on_cpu_and_cuda(no_tf32):
    def step(model: ConvVAE, x: torch.Tensor) -> tuple[float, float, list[torch.Tensor]]:
        """fp32 forward (posterior mean, no sampling noise), backward, one SGD step, the loss again."""
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)

        def loss_of() -> torch.Tensor:
            mu, logvar = model.encode(x)
            return vae_loss(x, model.decode(mu), mu, logvar, model.log_sigma, 1.0)["total"]

        loss = loss_of()
        loss.backward()
        grads = [p.grad.detach().cpu() for p in model.parameters()]
        optimizer.step()
        with torch.no_grad():
            return float(loss), float(loss_of()), grads

    cpu_model = small_vae()
    gpu_model = copy.deepcopy(cpu_model).cuda()
    x = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    cpu_loss, cpu_after, cpu_grads = step(cpu_model, x)
    gpu_loss, gpu_after, gpu_grads = step(gpu_model, x.cuda())
    assert gpu_loss == pytest.approx(cpu_loss, rel=1e-4)
    assert gpu_after == pytest.approx(cpu_after, rel=1e-4) and gpu_after != pytest.approx(gpu_loss, rel=1e-6)
    for a, b in zip(cpu_grads, gpu_grads):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-3 * float(a.abs().max()) + 1e-6)


def test_glow_round_trip_is_exact_on_cuda():
    from flow.glow import Glow, bins_to_image

    torch.manual_seed(0)
    cpu_glow = Glow(8, levels=2, steps=2, hidden_channels=8, coupling="affine", n_bits=5)
    x = torch.rand(16, 3, 8, 8) * 2 - 1
    cpu_glow.initialize(cpu_glow.preprocess(x, torch.rand(x.shape)))
    glow = copy.deepcopy(cpu_glow).cuda().eval()
    cpu_glow.eval()
    images = bins_to_image(torch.randint(0, 32, (16, 3, 8, 8), generator=torch.Generator().manual_seed(1)), 32)
    z = glow.encode(images.cuda())
    assert z.device.type == "cuda" and z.dtype == torch.float32
    assert torch.equal(glow.decode(z).cpu(), images)  # max pixel error exactly 0, as on the CPU
    with torch.autocast("cuda", dtype=torch.bfloat16):  # encode/decode turn an ambient autocast off
        assert torch.equal(glow.decode(glow.encode(images.cuda())).cpu(), images)
    torch.testing.assert_close(z.cpu(), cpu_glow.encode(images), rtol=1e-4, atol=1e-4)


def test_vae_validation_leaves_the_training_random_stream_alone(tiny_cache):
    """vae.training.evaluate() promises not to change training's random stream; on CUDA the noise is drawn there."""
    import contextlib

    from vae import training as train_vae

    vae = small_vae().cuda()
    torch.manual_seed(123)
    before = torch.cuda.get_rng_state(), torch.get_rng_state()
    result = train_vae.evaluate(vae, CelebACache(tiny_cache, "valid"), 8, 8, 1.0, torch.device("cuda"),
                                contextlib.nullcontext)
    assert result["images"] == 8 and np.isfinite(result["total"])
    assert torch.equal(torch.get_rng_state(), before[1])
    assert torch.equal(torch.cuda.get_rng_state(), before[0])  # the reparameterisation noise comes from here


DETERMINISM_SCRIPT = textwrap.dedent("""
    # Two identical short trainings under torch.use_deterministic_algorithms(True) (an error on any op without a
    # deterministic CUDA kernel): the VAE as train_vae runs it (channels_last, bf16 autocast, fused Adam).
    import torch
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    from common.run import adam
    from vae.model import ConvVAE, vae_loss

    def train():
        torch.manual_seed(0)
        model = ConvVAE(32, 16, (16, 32, 64)).cuda().to(memory_format=torch.channels_last)
        opt = adam(model.parameters(), lr=1e-3)
        data = torch.Generator().manual_seed(1)
        for _ in range(5):
            x = (torch.rand(16, 3, 32, 32, generator=data) * 2 - 1).cuda()
            x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = model(x)
            loss = vae_loss(x, out.x_mean, out.mu, out.logvar, model.log_sigma, 1.0)["total"]
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return [t.detach().cpu() for t in model.state_dict().values()]

    a, b = train(), train()
    print("EQUAL" if all(torch.equal(x, y) for x, y in zip(a, b)) else "DIFFERENT")
""")


def test_deterministic_mode_repeats_a_training_bit_for_bit(tmp_path):
    """Exact resume (README: --resume continues exactly) needs repeatable steps: on CUDA, deterministic mode."""
    script = tmp_path / "determinism.py"
    script.write_text(DETERMINISM_SCRIPT)
    env = {**os.environ, "CUBLAS_WORKSPACE_CONFIG": ":4096:8",  # set before CUDA starts: deterministic cuBLAS
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}
    result = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "EQUAL"
