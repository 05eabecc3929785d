"""Measured throughput of the project's pieces: prints a table and writes the numbers to JSON.

    python scripts/benchmark.py [--only vae glow pggan predictor boundary loader edit] [--device auto]
        [--steps 10 --warmup 3] [--modes fp32 channels_last bf16 channels_last+bf16] [--compile] [--scaling]
        [--json runs/benchmark.json]

Each benchmark is a function in ``BENCHMARKS`` (name -> function(args) -> dict of results with a ``rows`` list
for the table); add one by writing a function and registering it. The JSON file keeps the results of earlier
runs of the other benchmarks, so running one benchmark updates only its own entry.

``vae``, ``glow``, ``pggan``, ``predictor``: training images/second of one full optimiser step as the train script
does it (forward, loss, backward, Adam step, zero_grad; for the GAN one WGAN-GP iteration: critic on real + fake
+ gradient penalty + drift, critic step, generator step, EMA), median of ``--steps`` timed steps after
``--warmup``, on random inputs, at the published reference architecture and batch (``REFERENCES``: their fp32 /
bf16 numbers and our target, with pass/fail) and at our synthetic config; per mode (fp32, channels_last fp32, bf16 autocast,
channels_last + bf16, torch.compile + bf16 with ``--compile``). Peak memory is CUDA's max_memory_allocated, or on
the CPU the growth of the resident set (VmHWM after resetting it through /proc/self/clear_refs, heap trimmed first).
``boundary``: InterFaceGAN's boundary fit at its own scale (500k x 512, top/bottom 2%). ``edit``: latency of a
7-strength grid of 8 images per method (encode, walk, decode; untrained models). ``--scaling``: step time and
memory vs resolution and batch for each method, plotted to docs/scaling.png.

``loader``: images per second, 64x64, batch 64, hflip on, one thread, by (a) decoding the JPEG folder with PIL +
torchvision transforms through a DataLoader with 2 workers (the usual CelebA pipeline), (b) the prepared cache
(``CelebACache``) through a DataLoader and through ``CelebACache.batches`` and (c) what the trainers use,
``RunContext.batches`` (``common.batches.ResumableBatches``' fast path), handing out uint8 [B, 64, 64, 3] batches
(the float conversion then happens on the training device) and float [B, 3, 64, 64] in [-1, 1] (conversion on
this CPU included). The ``delivers`` column says which.

Every trainer's optimiser comes from ``common.run.adam`` and the process calls ``common.run.keep_freed_memory``,
as ``RunContext`` does, so the training rows measure the trainers' own settings; mode ``default`` is exactly the
``train:`` flags (precision, channels_last, compile) of the config file behind each size.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

from common.cli import UserError, run_main
from common.distributed import resolve_precision
from common.run import adam, keep_freed_memory  # what every trainer uses

REPO = Path(__file__).resolve().parents[1]


def _timed(batches: Iterable[dict | torch.Tensor], min_images: int, min_seconds: float,
           restart: Callable[[], Iterable]) -> tuple[int, float]:
    """Consume batches (restarting the epoch as needed) until both minimums are met; returns (images, seconds).

    The first batch is a warm-up (worker start, page cache) and is not counted.
    """
    iterator = iter(batches)
    next(iterator)
    images, start = 0, time.perf_counter()
    while images < min_images or time.perf_counter() - start < min_seconds:
        try:
            batch = next(iterator)
        except StopIteration:
            iterator = iter(restart())
            continue
        images += len(batch["image"] if isinstance(batch, dict) else batch[0])
    return images, time.perf_counter() - start


class _JpegFolder(torch.utils.data.Dataset):
    """The usual CelebA pipeline: decode each JPEG with PIL, then torchvision transforms."""

    def __init__(self, image_dir: Path, names: list[str], resolution: int):
        from torchvision import transforms

        self.paths = [image_dir / name for name in names]
        self.transform = transforms.Compose([
            transforms.CenterCrop(148), transforms.Resize(resolution), transforms.ToTensor(),
            transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # [0, 1] -> [-1, 1]
        ])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        from PIL import Image

        with Image.open(self.paths[i]) as image:
            return {"image": self.transform(image.convert("RGB"))}  # [3, R, R]


def _loader_root(args: argparse.Namespace, scratch: Path) -> Path:
    root = Path(args.root)
    if (root / "list_attr_celeba.txt").exists() or (root / "list_attr_celeba.csv").exists() or \
            (root / "celeba").is_dir():
        return root
    try:
        from common.synthetic import write_synthetic_celeba
    except ImportError:
        raise UserError(f"--root {root}: no CelebA there and common.synthetic is unavailable; expected a CelebA "
                        "folder (python scripts/prepare_data.py explains the layouts)") from None
    print(f"[loader] {root} has no CelebA: writing {args.num} synthetic images to a scratch folder", flush=True)
    return Path(write_synthetic_celeba(scratch / "synthetic", args.num, 0, layout="official"))


def bench_loader(args: argparse.Namespace) -> dict:
    """JPEG folder + transforms vs the prepared cache, 64x64, batch 64; each row says what it delivers."""
    FLOAT = "float32 [64, 3, 64, 64] in [-1, 1], host"  # noqa: N806
    UINT8 = "uint8 [64, 64, 64, 3], host (float on the device)"  # noqa: N806
    from torch.utils.data import BatchSampler, DataLoader, RandomSampler

    from common.batches import ResumableBatches
    from common.cache import CelebACache, prepare_cache
    from common.celeba import read_celeba

    resolution, batch_size = 64, 64
    with tempfile.TemporaryDirectory(prefix="benchmark-") as scratch:
        root = _loader_root(args, Path(scratch))
        index = read_celeba(root)
        cache_dir = prepare_cache(root, resolution, out=Path(scratch) / f"cache_{resolution}", workers=2,
                                  progress=False, log=None)
        names = index.filenames[:args.num]
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # like a training process whose other cores are busy: no hidden parallelism
        generator = torch.Generator().manual_seed(0)
        results = []

        jpeg = _JpegFolder(index.image_dir, names, resolution)

        def jpeg_loader():
            return DataLoader(jpeg, batch_size=batch_size, shuffle=True, num_workers=2, generator=generator,
                              persistent_workers=False)

        images, seconds = _timed(jpeg_loader(), min(len(names), args.jpeg_images), 0.0, jpeg_loader)
        results.append(("jpeg folder, PIL + transforms, DataLoader 2 workers", FLOAT, images, seconds))

        dataset = CelebACache(cache_dir, "all", hflip=True)
        dataset.indices = dataset.indices[:len(names)]

        def cache_loader(workers: int):
            return lambda: DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                                      generator=generator)

        for workers in (0, 2):
            images, seconds = _timed(cache_loader(workers)(), 0, args.seconds, cache_loader(workers))
            results.append((f"CelebACache, DataLoader {workers} workers (batched __getitems__)", FLOAT, images,
                            seconds))

        def cache_batch_sampler():
            sampler = BatchSampler(RandomSampler(dataset, generator=generator), batch_size, drop_last=False)
            return DataLoader(dataset, sampler=sampler, batch_size=None)

        images, seconds = _timed(cache_batch_sampler(), 0, args.seconds, cache_batch_sampler)
        results.append(("CelebACache, DataLoader + BatchSampler (whole batches, 0 workers)", FLOAT, images,
                        seconds))

        def cache_batches():
            return dataset.batches(batch_size, shuffle=True, generator=generator)

        images, seconds = _timed(cache_batches(), 0, args.seconds, cache_batches)
        results.append(("CelebACache.batches (memmap slices, no DataLoader)", FLOAT, images, seconds))

        # What the trainers get: RunContext.batches -> ResumableBatches' fast path (shuffled epoch order, hflip,
        # labels, resumable). uint8=True stops before the float conversion, which the step does on its device.
        for uint8, channels_last, delivers in ((True, False, UINT8), (False, False, FLOAT),
                                               (False, True, FLOAT.replace("[-1, 1]", "[-1, 1] channels_last"))):
            def fast(uint8=uint8, channels_last=channels_last):
                return ResumableBatches(dataset, batch_size, seed=0, device="cpu", uint8=uint8,
                                        channels_last=channels_last)
            images, seconds = _timed(fast(), 0, args.seconds, fast)
            what = "uint8" if uint8 else ("float, channels_last" if channels_last else "float")
            results.append((f"ctx.batches (ResumableBatches fast path, {what})", delivers, images, seconds))
        torch.set_num_threads(threads)  # the other benchmarks use every core

    base = results[0][2] / results[0][3]
    rows = [{"pipeline": name, "delivers": delivers, "images": n, "seconds": round(s, 3),
             "images_per_second": round(n / s, 1), "speedup_vs_jpeg": round(n / s / base, 1)}
            for name, delivers, n, s in results]
    return {"resolution": resolution, "batch_size": batch_size, "distinct_images": len(names),
            "source": str(root), "hflip": True, "rows": rows}


# ---------------------------------------------------------------------------------------------------------------
# Training throughput: one full optimiser step per timed call, as each train script does it.

# Published reference numbers measured on a 2-core bf16-capable CPU (torch 2.14.1, median step after warm-up) and
# the target throughput for our implementation at the SAME architecture and batch.
REFERENCES = {
    "vae": {"reference": "PyTorch-VAE VanillaVAE", "fp32": 229.0, "bf16": 452.0, "target": 680.0},
    "glow": {"reference": "rosinality glow-pytorch", "fp32": 37.8, "bf16": 57.4, "target": 86.0},
    "pggan": {"reference": "pytorch_GAN_zoo PGAN (WGAN-GP iteration)", "fp32": 1.45, "bf16": 3.16, "target": 4.7},
}

class Flags(NamedTuple):
    """How one benchmark row runs the model (the train scripts take the same three from ``train:``)."""

    bf16: bool  # bf16 autocast (train.precision: bf16)
    channels_last: bool  # train.channels_last
    compile: bool  # train.compile


MODES = {  # name -> Flags; "default" is what the method's config file sets (see _flags)
    "fp32": Flags(False, False, False),
    "channels_last": Flags(False, True, False),
    "bf16": Flags(True, False, False),
    "channels_last+bf16": Flags(True, True, False),
    "compile+bf16": Flags(True, False, True),
    "default": None,
}


def _flags(mode: str, train_cfg, device: torch.device) -> Flags:
    """A mode's flags; "default" reads them from the config the train script would use at that size, with
    ``train.precision`` resolved on ``device`` as the run context resolves it (auto: bf16 only if native)."""
    if mode != "default":
        return MODES[mode]
    precision, _ = resolve_precision(train_cfg.precision, device)
    return Flags(precision != "fp32", bool(train_cfg.channels_last), bool(train_cfg.compile))


def _flags_name(flags: Flags) -> str:
    parts = [name for name, on in (("compile", flags.compile), ("channels_last", flags.channels_last)) if on]
    return "+".join(parts + ["bf16" if flags.bf16 else "fp32"])


@dataclass
class TrainSetup:
    """A method at one size: ``make_step(mode)`` builds fresh model + optimiser + inputs, returns the step."""

    method: str
    size: str  # "reference" or "synthetic" (configs/<method>/synthetic.yaml)
    resolution: int
    batch: int
    params: int
    make_step: Callable[[str], Callable[[], None]]
    train_cfg: Any = None  # the TrainConfig of the size's config file: what mode "default" runs


def _device(args: argparse.Namespace) -> torch.device:
    from common.distributed import resolve_device

    return resolve_device(getattr(args, "device", "auto"))


def _amp(flags: Flags, device: torch.device):
    if flags.bf16:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _prepare(module: torch.nn.Module, flags: Flags, device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(module to call, bare module) on the device, channels_last and/or compiled as RunContext.wrap does it."""
    module = module.to(device)
    if flags.channels_last:
        module = module.to(memory_format=torch.channels_last)
    return (torch.compile(module) if flags.compile else module), module


def _images(batch: int, resolution: int, device: torch.device, flags: Flags = MODES["fp32"],
            seed: int = 0) -> torch.Tensor:
    x = torch.rand(batch, 3, resolution, resolution, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    x = x.to(device)  # [B, 3, R, R] in [-1, 1]
    return x.contiguous(memory_format=torch.channels_last) if flags.channels_last else x


def _check_finite(loss: torch.Tensor) -> None:
    """The trainers' per-step ``ctx.check_finite`` (one host sync), so the benchmark pays for it too."""
    if not bool(torch.isfinite(loss.detach()).all()):
        raise FloatingPointError("benchmark: non-finite loss")


def _config(cls, path: str):
    from common.config import load_config

    return load_config(cls, REPO / path, [])


def _count(*modules: torch.nn.Module) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def vae_setup(size: str, device: torch.device, resolution: int | None = None, batch: int | None = None):
    from vae.config import VAEConfig
    from vae.model import ConvVAE, vae_loss

    if size == "reference":  # VanillaVAE: 64x64, latent 128, widths 32..512, batch 64
        res, latent, widths, bs, norm = 64, 128, (32, 64, 128, 256, 512), 64, "batch"
        train_cfg = _config(VAEConfig, "configs/vae/celeba64.yaml").train
    else:
        cfg = _config(VAEConfig, "configs/vae/synthetic.yaml")
        train_cfg = cfg.train
        res, latent, widths, bs = cfg.data.resolution, cfg.model.latent_dim, tuple(cfg.model.widths), \
            cfg.train.batch_size
        norm = cfg.model.norm
    res, bs = resolution or res, batch or bs

    def build():
        return ConvVAE(res, latent, widths, norm=norm)

    def make_step(mode: str):
        flags = _flags(mode, train_cfg, device)
        net, vae = _prepare(build(), flags, device)
        opt = adam(vae.parameters(), lr=1e-4)
        x = _images(bs, res, device, flags)

        def step():
            with _amp(flags, device):
                out = net(x)
            loss = vae_loss(x, out.x_mean, out.mu, out.logvar, vae.log_sigma, 1.0)["total"]
            _check_finite(loss)  # ctx.check_finite
            loss.backward()  # ctx.step: backward, step, zero_grad(set_to_none=True)
            opt.step()
            opt.zero_grad(set_to_none=True)
        return step
    return TrainSetup("vae", size, res, bs, _count(build()), make_step, train_cfg)


def glow_setup(size: str, device: torch.device, resolution: int | None = None, batch: int | None = None):
    from flow.config import GlowConfig
    from flow.glow import Glow, apply_if_finite, bits_per_dim

    if size == "reference":  # rosinality: 32x32, K=8, L=3, width 512, affine, LU, learned prior, 5-bit, batch 16
        kw = dict(levels=3, steps=8, hidden_channels=512, coupling="affine", n_bits=5, learn_top=True)
        res, bs = 32, 16
        train_cfg = _config(GlowConfig, "configs/flow/celeba64.yaml").train
    else:
        cfg = _config(GlowConfig, "configs/flow/synthetic.yaml")
        train_cfg = cfg.train
        m = cfg.model
        kw = dict(levels=m.levels, steps=m.steps, hidden_channels=m.hidden_channels, coupling=m.coupling,
                  n_bits=m.n_bits, learn_top=m.learn_top)
        res, bs = cfg.data.resolution, cfg.train.batch_size
    res, bs = resolution or res, batch or bs

    def build():
        return Glow(resolution=res, **kw)

    def make_step(mode: str):
        flags = _flags(mode, train_cfg, device)
        net, glow = _prepare(build(), flags, device)
        opt = adam(glow.parameters(), lr=1e-4)
        x = _images(bs, res, device, flags)
        gen = torch.Generator().manual_seed(1)
        glow.initialize(glow.preprocess(x, torch.rand(x.shape, generator=gen).to(device)))  # actnorm init

        def step():
            y = glow.preprocess(x, torch.rand(x.shape, device=device))  # uniform dequantisation, fp32
            with _amp(flags, device):
                out = net(y)
            loss = bits_per_dim(out["log_p"], glow.num_dims, glow.n_bins).mean()
            apply_if_finite(loss, opt, 50.0)  # what train_glow does: skip non-finite, clip, step, zero_grad
        return step
    return TrainSetup("glow", size, res, bs, _count(build()), make_step, train_cfg)


def pggan_setup(size: str, device: torch.device, resolution: int | None = None, batch: int | None = None):
    import copy
    from types import SimpleNamespace

    from interface_gan.config import PGGANConfig
    from interface_gan.losses import drift_penalty, generator_loss, gradient_penalty, wasserstein_critic_loss
    from interface_gan.pggan import build_networks, sample_latents

    if size == "reference":  # GAN zoo PGAN fully grown at 32x32: widths 512, latent 512, batch 16
        model_cfg = SimpleNamespace(latent_dim=512, fmap_base=16384, fmap_max=512, fmap_min=1, mbstd_group=4)
        res, bs, betas, eps = 32, 16, (0.0, 0.99), 1e-8
        train_cfg = _config(PGGANConfig, "configs/interface_gan/celeba128.yaml").train
    else:
        cfg = _config(PGGANConfig, "configs/interface_gan/synthetic.yaml")
        train_cfg = cfg.train
        model_cfg, res = cfg.model, cfg.data.resolution
        bs = (list(cfg.pggan.batch_sizes) or [cfg.train.batch_size])[-1]
        betas, eps = (cfg.pggan.beta1, cfg.pggan.beta2), cfg.pggan.adam_eps
    res, bs = resolution or res, batch or bs

    def make_step(mode: str):
        generator, discriminator = build_networks(model_cfg, res)
        g_ema = copy.deepcopy(generator).to(device).requires_grad_(False)
        flags = _flags(mode, train_cfg, device)
        g_net, generator = _prepare(generator, flags, device)
        d_net, discriminator = _prepare(discriminator, flags, device)
        opt_g = adam(generator.parameters(), lr=1e-3, betas=betas, eps=eps)
        opt_d = adam(discriminator.parameters(), lr=1e-3, betas=betas, eps=eps)
        real = _images(bs, res, device, flags)
        gen = torch.Generator().manual_seed(2)

        def step():
            z_d = sample_latents(bs, model_cfg.latent_dim, gen).to(device)
            z_g = sample_latents(bs, model_cfg.latent_dim, gen).to(device)
            mix = torch.rand(bs, generator=gen).to(device)
            with _amp(flags, device):  # critic: E[D(fake)] - E[D(real)] + GP + drift
                with torch.no_grad():
                    fake = g_net(z_d)
                real_scores, fake_scores = d_net(real), d_net(fake)
                d_loss = (wasserstein_critic_loss(real_scores, fake_scores)
                          + gradient_penalty(d_net, real, fake, mix, 10.0) + drift_penalty(real_scores, 0.001))
            _check_finite(d_loss)
            d_loss.backward()
            opt_d.step()
            opt_d.zero_grad(set_to_none=True)
            discriminator.requires_grad_(False)
            with _amp(flags, device):  # generator: -E[D(G(z))]
                g_loss = generator_loss(d_net(g_net(z_g)))
            _check_finite(g_loss)
            g_loss.backward()
            opt_g.step()
            opt_g.zero_grad(set_to_none=True)
            discriminator.requires_grad_(True)
            with torch.no_grad():
                torch._foreach_lerp_(list(g_ema.parameters()), list(generator.parameters()), 0.001)
        return step
    g, d = build_networks(model_cfg, res)
    return TrainSetup("pggan", size, res, bs, _count(g, d), make_step, train_cfg)


def predictor_setup(size: str, device: torch.device, resolution: int | None = None, batch: int | None = None):
    from common.predictor import build_predictor, predictor_loss
    from common.predictor_config import PredictorConfig

    path = "configs/predictor/celeba64.yaml" if size == "reference" else "configs/predictor/synthetic.yaml"
    cfg = _config(PredictorConfig, path)
    train_cfg = cfg.train
    res, bs = resolution or cfg.data.resolution, batch or cfg.train.batch_size
    factor_names = [] if size == "reference" else ["smile", "mouth_open", "eye_open", "yaw"]

    def build():
        return build_predictor(cfg.model, res, factor_names)

    def make_step(mode: str):
        flags = _flags(mode, train_cfg, device)
        net, model = _prepare(build(), flags, device)
        opt = adam(model.parameters(), lr=1e-4, weight_decay=5e-4, decoupled=True)
        x = _images(bs, res, device, flags)
        gen = torch.Generator().manual_seed(3)
        attributes = (torch.rand(bs, 40, generator=gen) < 0.5).float().to(device)
        yaw = torch.randn(bs, generator=gen).to(device)
        factors = torch.randn(bs, len(factor_names), generator=gen).to(device)

        def step():
            with _amp(flags, device):
                out = net(x)
            loss = predictor_loss(out, attributes, yaw, factors, model)["total"]
            _check_finite(loss)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return step
    return TrainSetup("predictor", size, res, bs, _count(build()), make_step, train_cfg)


SETUPS = {"vae": vae_setup, "glow": glow_setup, "pggan": pggan_setup, "predictor": predictor_setup}


def _rss_kib(field_name: str) -> int:
    """VmRSS / VmHWM of this process in KiB from /proc (Linux), else ru_maxrss; 0 when unknown."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def _reset_peak(device: torch.device) -> int:
    """Reset the peak-memory counter; returns the baseline (bytes) the peak is measured against."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    try:  # hand freed heap pages back to the OS, so the baseline RSS is live memory, not the last row's peak
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:  # "5" resets the peak RSS (VmHWM) to the current RSS (Linux >= 4.0)
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    return _rss_kib("VmRSS") * 1024


def _peak_delta(device: torch.device, baseline: int) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) - baseline
    return max(0, _rss_kib("VmHWM") * 1024 - baseline)


def time_steps(step: Callable[[], None], steps: int, warmup: int, device: torch.device
               ) -> tuple[float, int, float]:
    """(median seconds per step after ``warmup`` untimed steps, peak memory delta in bytes over all steps,
    seconds of the first step: with torch.compile that is the compile time)."""
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    gc.collect()
    baseline = _reset_peak(device)
    start = time.perf_counter()
    step()
    sync()
    first = time.perf_counter() - start
    for _ in range(warmup - 1):
        step()
    sync()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times), _peak_delta(device, baseline), first


def _train_row(setup: TrainSetup, mode: str, args: argparse.Namespace, device: torch.device) -> dict:
    step = setup.make_step(mode)
    seconds, peak, first = time_steps(step, args.steps, max(args.warmup, 1), device)
    if mode == "default":  # name what the config resolves to: this row is what training runs
        mode = f"default={_flags_name(_flags(mode, setup.train_cfg, device))}"
    row = {"method": setup.method, "size": setup.size, "res": setup.resolution, "batch": setup.batch,
           "params_M": round(setup.params / 1e6, 2), "mode": mode, "step_ms": round(seconds * 1e3, 1),
           "img_per_s": round(setup.batch / seconds, 2), "first_step_s": round(first, 1),
           "peak_MB": round(peak / 2**20, 1), "load1": round(os.getloadavg()[0], 2)}
    ref = REFERENCES.get(setup.method) if setup.size == "reference" else None
    if ref:
        row.update(ref_fp32=ref["fp32"], ref_bf16=ref["bf16"], target=ref["target"],
                   passed=("pass" if row["img_per_s"] >= ref["target"] else "FAIL") if mode != "fp32" else "-")
    else:
        row.update(ref_fp32="-", ref_bf16="-", target="-", passed="-")
    print(f"  {setup.method:9s} {setup.size:9s} {mode:34s} {row['img_per_s']:9.2f} img/s  "
          f"{row['peak_MB']:8.1f} MB  (first step {first:.1f} s, load {row['load1']})", flush=True)
    return row


def _train_benchmark(method: str):
    def bench(args: argparse.Namespace) -> dict:
        device = _device(args)
        modes = [m for m in args.modes if m == "default" or args.compile or not MODES[m].compile]
        rows = []
        for size in ("reference", "synthetic"):
            setup = SETUPS[method](size, device)
            for mode in modes:
                rows.append(_train_row(setup, mode, args, device))
        return {"device": str(device), "threads": torch.get_num_threads(), "steps": args.steps,
                "warmup": args.warmup, "loadavg_1min": round(os.getloadavg()[0], 2), "rows": rows}
    bench.__doc__ = f"{method}: training images/second and peak memory per precision mode."
    return bench


# ---------------------------------------------------------------------------------------------------------------
# Edit latency, the InterFaceGAN boundary fit, and scaling.


def bench_edit(args: argparse.Namespace) -> dict:
    """Latency of a 7-step edit grid of 8 images (encode, walk, decode) per method, untrained synthetic models."""
    import numpy as np

    from common.directions import Direction, walk

    device = _device(args)
    strengths = np.linspace(-3, 3, 7)
    rows = []

    def editable(method: str):
        if method == "vae":
            from vae.config import VAEConfig
            from vae.model import EditableVAE, build_model

            cfg = _config(VAEConfig, "configs/vae/synthetic.yaml")
            return EditableVAE(build_model(cfg.model, cfg.data.resolution), device), "relative", "posterior mean"
        if method == "glow":
            from flow.config import GlowConfig
            from flow.glow import build_model

            cfg = _config(GlowConfig, "configs/flow/synthetic.yaml")
            glow = build_model(cfg.model, cfg.data.resolution).to(device)
            glow.initialize(glow.preprocess(_images(32, cfg.data.resolution, device)))
            return glow.eval(), "relative", "exact inverse"
        from interface_gan.config import PGGANConfig
        from interface_gan.inversion import PGGANEditable
        from interface_gan.pggan import build_networks

        cfg = _config(PGGANConfig, "configs/interface_gan/synthetic.yaml")
        generator, _ = build_networks(cfg.model, cfg.data.resolution)
        e = cfg.edit
        return (PGGANEditable(generator, device, steps=e.inversion_steps, lr=e.inversion_lr, starts=e.inversion_starts,
                              feature_weight=0.0), "sphere",
                f"GAN inversion ({e.inversion_steps} steps x {e.inversion_starts} starts, no feature loss)")

    for method in args.edit_methods:
        model, mode, how = editable(method)
        images = _images(8, model.resolution, device)
        vector = np.random.default_rng(0).standard_normal(model.latent_dim)
        direction = Direction(vector=vector / np.linalg.norm(vector), scale=1.0, attribute="Smiling", method="mean")
        with torch.no_grad() if method != "pggan" else contextlib.nullcontext():
            t0 = time.perf_counter()
            z = model.encode(images)  # [8, D]
            t1 = time.perf_counter()
            walked = torch.as_tensor(walk(z.cpu().double().numpy(), direction, strengths, mode),
                                     dtype=torch.float32)  # [8, 7, D]
            t2 = time.perf_counter()
            grid = model.decode(walked.reshape(-1, model.latent_dim).to(device))  # [56, 3, R, R]
            t3 = time.perf_counter()
        assert grid.shape == (56, 3, model.resolution, model.resolution)
        rows.append({"method": method, "res": model.resolution, "encode": how, "encode_s": round(t1 - t0, 3),
                     "walk_s": round(t2 - t1, 4), "decode_s": round(t3 - t2, 3), "total_s": round(t3 - t0, 3)})
        print(f"  {method:6s} edit grid 8x7: {t3 - t0:.3f} s", flush=True)
    return {"device": str(device), "images": 8, "strengths": 7, "loadavg_1min": round(os.getloadavg()[0], 2),
            "rows": rows}


def bench_boundary(args: argparse.Namespace) -> dict:
    """InterFaceGAN's train_boundary at its own scale (500k x 512, top/bottom 2%): seconds and validation accuracy."""
    from common.directions import benchmark_linear_boundary

    result = benchmark_linear_boundary(n=args.boundary_n, d=512, ratio=0.02, seed=0)
    reference_seconds, target_seconds = 452.0, 5.0
    row = {"n": result["n"], "d": result["d"], "ratio": result["ratio"], "classifier": result["classifier"],
           "seconds": result["seconds"], "val_accuracy": round(result["val_accuracy"], 4),
           "cosine_to_planted": round(result["cosine_to_planted"], 4), "ref_seconds_svc": reference_seconds,
           "target_seconds": target_seconds,
           "passed": "pass" if result["seconds"] <= target_seconds and result["n"] >= 500000 else
           ("FAIL" if result["n"] >= 500000 else "- (smaller n)")}
    return {"loadavg_1min": round(os.getloadavg()[0], 2), "rows": [row]}


def bench_scaling(args: argparse.Namespace) -> dict:
    """Step time and peak memory vs resolution (batch fixed) and vs batch (32x32), synthetic architectures, in each
    config's default mode (what training runs)."""
    device = _device(args)
    rows = []
    for method in args.scaling_methods:
        sweeps = [("resolution", r, args.scaling_batch) for r in args.resolutions] + \
                 [("batch", 32, b) for b in args.batches]
        for sweep, res, batch in sweeps:
            setup = SETUPS[method]("synthetic", device, resolution=res, batch=batch)
            seconds, peak, _ = time_steps(setup.make_step("default"), args.scaling_steps, 1, device)
            rows.append({"method": method, "sweep": sweep, "res": res, "batch": batch,
                         "step_ms": round(seconds * 1e3, 1), "img_per_s": round(batch / seconds, 2),
                         "peak_MB": round(peak / 2**20, 1), "load1": round(os.getloadavg()[0], 2)})
            print(f"  {method:9s} {sweep:10s} {res:4d}px batch {batch:4d}: {seconds * 1e3:9.1f} ms "
                  f"{peak / 2**20:8.1f} MB", flush=True)
    _plot_scaling(rows, Path(args.plot))
    return {"device": str(device), "mode": "default", "loadavg_1min": round(os.getloadavg()[0], 2),
            "plot": str(args.plot), "rows": rows}


def _plot_scaling(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    for method in dict.fromkeys(r["method"] for r in rows):
        res_rows = [r for r in rows if r["method"] == method and r["sweep"] == "resolution"]
        batch_rows = [r for r in rows if r["method"] == method and r["sweep"] == "batch"]
        for ax, sweep_rows, x, y in ((axes[0, 0], res_rows, "res", "step_ms"), (axes[0, 1], res_rows, "res", "peak_MB"),
                                     (axes[1, 0], batch_rows, "batch", "img_per_s"),
                                     (axes[1, 1], batch_rows, "batch", "peak_MB")):
            if sweep_rows:
                ax.plot([r[x] for r in sweep_rows], [r[y] for r in sweep_rows], marker="o", label=method)
    titles = (("step time vs resolution", "resolution (px)", "ms per training step"),
              ("peak memory vs resolution", "resolution (px)", "peak memory delta (MB)"),
              ("throughput vs batch (32x32)", "batch size", "images / s"),
              ("peak memory vs batch (32x32)", "batch size", "peak memory delta (MB)"))
    for ax, (title, xlabel, ylabel) in zip(axes.flat, titles):
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle("Training step scaling: synthetic architectures, each config's default mode\n(bf16 autocast; "
                 f"channels_last for vae, glow, pggan), {torch.get_num_threads()} threads, "
                 "scripts/benchmark.py --scaling")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


BENCHMARKS: dict[str, Callable[[argparse.Namespace], dict]] = {
    "vae": _train_benchmark("vae"),
    "glow": _train_benchmark("glow"),
    "pggan": _train_benchmark("pggan"),
    "predictor": _train_benchmark("predictor"),
    "boundary": bench_boundary,
    "loader": bench_loader,
    "edit": bench_edit,
}
EXTRA = {"scaling": bench_scaling}  # slow: only with --scaling (or --only scaling)


def _print_table(name: str, rows: list[dict]) -> None:
    columns = list(rows[0])
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in columns]
    print(f"\n== {name} ==")
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for row in rows:
        print("  ".join(str(row[c]).ljust(w) for c, w in zip(columns, widths)))


def _write_json(path: Path, results: dict) -> None:
    """Merge into the existing file (other benchmarks' entries are kept), atomically."""
    try:
        merged = json.loads(path.read_text())
    except (OSError, ValueError):
        merged = {}
    merged.update(results)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(merged, indent=2) + "\n")
    os.replace(tmp, path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", metavar="NAME",
                        help=f"run only these ({', '.join([*BENCHMARKS, *EXTRA])})")
    parser.add_argument("--json", default="runs/benchmark.json", help="results file (merged with earlier runs)")
    parser.add_argument("--root", default="data/synthetic",
                        help="loader: CelebA folder (synthetic images are generated when it holds none)")
    parser.add_argument("--num", type=int, default=2000, help="loader: distinct images to read (default 2000)")
    parser.add_argument("--jpeg-images", type=int, default=1280, help="loader: images timed for the JPEG pipeline")
    parser.add_argument("--seconds", type=float, default=3.0, help="loader: seconds timed per cache pipeline")
    parser.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, cuda:N")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per row (median reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed training steps before timing")
    parser.add_argument("--modes", nargs="+", default=[m for m in MODES if m == "default" or not MODES[m].compile],
                        choices=list(MODES), help="precision / layout modes of the training benchmarks; default = "
                        "what the method's config file sets (train.precision, channels_last, compile)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (slow to compile on CPU)")
    parser.add_argument("--edit-methods", nargs="+", default=["vae", "glow", "pggan"], choices=["vae", "glow", "pggan"])
    parser.add_argument("--boundary-n", type=int, default=500000, help="boundary: latents (InterFaceGAN: 500k)")
    parser.add_argument("--scaling", action="store_true", help="also measure scaling and plot it (--plot)")
    parser.add_argument("--scaling-methods", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    parser.add_argument("--resolutions", nargs="+", type=int, default=[32, 64, 128])
    parser.add_argument("--scaling-batch", type=int, default=16, help="scaling: batch of the resolution sweep")
    parser.add_argument("--batches", nargs="+", type=int, default=[8, 16, 32, 64], help="scaling: batch sweep")
    parser.add_argument("--scaling-steps", type=int, default=3, help="scaling: timed steps per point")
    parser.add_argument("--plot", default="docs/scaling.png", help="scaling: where the figure goes")
    args = parser.parse_args()
    if args.compile and "compile+bf16" not in args.modes:
        args.modes.append("compile+bf16")
    if min(args.steps, args.scaling_steps) < 1 or args.warmup < 0:
        raise UserError("--steps and --scaling-steps must be >= 1 and --warmup >= 0")
    available = {**BENCHMARKS, **EXTRA}
    names = args.only or list(BENCHMARKS)
    if args.scaling and "scaling" not in names:
        names.append("scaling")
    unknown = [n for n in names if n not in available]
    if unknown:
        raise UserError(f"--only {' '.join(unknown)}: unknown benchmark; choose from {', '.join(available)}")
    keep_freed_memory()  # as RunContext does for every trainer (no page faults on each step's activations)
    command = "python scripts/benchmark.py " + " ".join(sys.argv[1:])
    results = {}
    for name in names:
        print(f"[{name}]", flush=True)
        result = available[name](args)
        result.update(command=command.strip(), cpu_count=os.cpu_count(), torch=torch.__version__,
                      machine=platform.machine(), time=time.strftime("%Y-%m-%d %H:%M:%S"))
        results[name] = result
        _print_table(name, result["rows"])
    _write_json(Path(args.json), results)
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    run_main(main)
