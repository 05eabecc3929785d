"""The benchmarks that are not training steps: the data loader, edit latency and InterFaceGAN's boundary fit.

``loader``: images per second, 64x64, batch 64, hflip on, one thread, by (a) decoding the JPEG folder with PIL +
torchvision transforms through a DataLoader with 2 workers (the usual CelebA pipeline), (b) the prepared cache
(``CelebACache``) through a DataLoader and through ``CelebACache.batches`` and (c) what the trainers use,
``RunContext.batches`` (``common.batches.ResumableBatches``' fast path), handing out uint8 [B, 64, 64, 3] batches
(the float conversion then happens on the training device) and float [B, 3, 64, 64] in [-1, 1] (conversion on
this CPU included). The ``delivers`` column says which. A --root without CelebA gets a synthetic scratch set.

``edit``: seconds of a 7-strength grid of 8 images per method (encode, walk, decode) with untrained synthetic
models. ``boundary``: InterFaceGAN's boundary fit at its own scale (500k x 512 latents, top/bottom 2%), seconds and
validation accuracy; libsvm's linear SVC (InterFaceGAN's own train_boundary) is quoted for information only.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from common.cli import UserError
from common.distributed import resolve_device
from pipeline.benchmark.train import config, images

# InterFaceGAN's train_boundary (libsvm linear SVC) at 500k x 512: 2026-11-24, the earlier 2-core CPU. Information.
BOUNDARY_REFERENCE = {"seconds_svc": 452.0, "measured": "2026-11-24, the earlier 2-core CPU with native bf16"}
BOUNDARY_TARGET_SECONDS = 5.0  # the target for our fit at 500k x 512


def _timed(batches: Iterable, min_images: int, min_seconds: float, restart: Callable[[], Iterable]
           ) -> tuple[int, float]:
    """Consume batches (restarting the epoch as needed) until both minimums are met; returns (images, seconds).

    The first batch is a warm-up (worker start, page cache) and is not counted.
    """
    iterator = iter(batches)
    next(iterator)
    count, start = 0, time.perf_counter()
    while count < min_images or time.perf_counter() - start < min_seconds:
        try:
            batch = next(iterator)
        except StopIteration:
            iterator = iter(restart())
            continue
        count += len(batch["image"] if isinstance(batch, dict) else batch[0])
    return count, time.perf_counter() - start


class JpegFolder(torch.utils.data.Dataset):
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


def _loader_root(args, scratch: Path) -> Path:
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


def bench_loader(args, limits: dict | None = None) -> dict:
    """JPEG folder + transforms vs the prepared cache, 64x64, batch 64 (``args``: root, num, jpeg_images,
    seconds); each row says what it delivers."""
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
        try:
            jpeg = JpegFolder(index.image_dir, names, resolution)

            def jpeg_loader():
                return DataLoader(jpeg, batch_size=batch_size, shuffle=True, num_workers=2, generator=generator,
                                  persistent_workers=False)

            n, s = _timed(jpeg_loader(), min(len(names), args.jpeg_images), 0.0, jpeg_loader)
            results.append(("jpeg folder, PIL + transforms, DataLoader 2 workers", FLOAT, n, s))

            dataset = CelebACache(cache_dir, "all", hflip=True)
            dataset.indices = dataset.indices[:len(names)]

            def cache_loader(workers: int):
                return lambda: DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                                          generator=generator)

            for workers in (0, 2):
                n, s = _timed(cache_loader(workers)(), 0, args.seconds, cache_loader(workers))
                results.append((f"CelebACache, DataLoader {workers} workers (batched __getitems__)", FLOAT, n, s))

            def cache_batch_sampler():
                sampler = BatchSampler(RandomSampler(dataset, generator=generator), batch_size, drop_last=False)
                return DataLoader(dataset, sampler=sampler, batch_size=None)

            n, s = _timed(cache_batch_sampler(), 0, args.seconds, cache_batch_sampler)
            results.append(("CelebACache, DataLoader + BatchSampler (whole batches, 0 workers)", FLOAT, n, s))

            def cache_batches():
                return dataset.batches(batch_size, shuffle=True, generator=generator)

            n, s = _timed(cache_batches(), 0, args.seconds, cache_batches)
            results.append(("CelebACache.batches (memmap slices, no DataLoader)", FLOAT, n, s))

            # What the trainers get: RunContext.batches -> ResumableBatches' fast path (shuffled epoch order,
            # hflip, labels, resumable). uint8=True stops before the float conversion, done on the device.
            for uint8, channels_last, delivers in ((True, False, UINT8), (False, False, FLOAT),
                                                   (False, True, FLOAT.replace("[-1, 1]", "[-1, 1] channels_last"))):
                def fast(uint8=uint8, channels_last=channels_last):
                    return ResumableBatches(dataset, batch_size, seed=0, device="cpu", uint8=uint8,
                                            channels_last=channels_last)
                n, s = _timed(fast(), 0, args.seconds, fast)
                what = "uint8" if uint8 else ("float, channels_last" if channels_last else "float")
                results.append((f"ctx.batches (ResumableBatches fast path, {what})", delivers, n, s))
        finally:
            torch.set_num_threads(threads)  # the other benchmarks use every core

    base = results[0][2] / results[0][3]
    rows = [{"pipeline": name, "delivers": delivers, "images": n, "seconds": round(s, 3),
             "images_per_second": round(n / s, 1), "speedup_vs_jpeg": round(n / s / base, 1)}
            for name, delivers, n, s in results]
    return {"resolution": resolution, "batch_size": batch_size, "distinct_images": len(names),
            "source": str(root), "hflip": True, "rows": rows}


def _editable(method: str, device: torch.device):
    """(untrained editable model, walk mode, how it encodes) for one method at its synthetic config."""
    if method == "vae":
        from vae.config import VAEConfig
        from vae.model import EditableVAE, build_model

        cfg = config(VAEConfig, "configs/vae/synthetic.yaml")
        return EditableVAE(build_model(cfg.model, cfg.data.resolution), device), "relative", "posterior mean"
    if method == "glow":
        from flow.config import GlowConfig
        from flow.glow import build_model

        cfg = config(GlowConfig, "configs/flow/synthetic.yaml")
        glow = build_model(cfg.model, cfg.data.resolution).to(device)
        glow.initialize(glow.preprocess(images(32, cfg.data.resolution, device)))
        return glow.eval(), "relative", "exact inverse"
    from interface_gan.config import PGGANConfig
    from interface_gan.inversion import PGGANEditable
    from interface_gan.pggan import build_networks

    cfg = config(PGGANConfig, "configs/interface_gan/synthetic.yaml")
    generator, _ = build_networks(cfg.model, cfg.data.resolution)
    e = cfg.edit
    return (PGGANEditable(generator, device, steps=e.inversion_steps, lr=e.inversion_lr, starts=e.inversion_starts,
                          feature_weight=0.0), "sphere",
            f"GAN inversion ({e.inversion_steps} steps x {e.inversion_starts} starts, no feature loss)")


def bench_edit(args, limits: dict | None = None) -> dict:
    """Latency of a 7-step edit grid of 8 images (encode, walk, decode) per method in ``args.edit_methods``."""
    import numpy as np

    from common.directions import Direction, walk

    device = resolve_device(getattr(args, "device", "auto"))
    strengths = np.linspace(-3, 3, 7)
    rows = []
    for method in args.edit_methods:
        model, mode, how = _editable(method, device)
        x = images(8, model.resolution, device)
        vector = np.random.default_rng(0).standard_normal(model.latent_dim)
        direction = Direction(vector=vector / np.linalg.norm(vector), scale=1.0, attribute="Smiling", method="mean")
        with torch.no_grad() if method != "pggan" else contextlib.nullcontext():
            t0 = time.perf_counter()
            z = model.encode(x)  # [8, D]
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
    return {"device": str(device), "images": 8, "strengths": 7, "rows": rows}


def bench_boundary(args, limits: dict | None = None) -> dict:
    """InterFaceGAN's boundary fit at ``args.boundary_n`` x 512, top/bottom 2%: seconds and validation accuracy."""
    from common.directions import benchmark_linear_boundary

    result = benchmark_linear_boundary(n=args.boundary_n, d=512, ratio=0.02, seed=0)
    full = result["n"] >= 500000
    row = {"n": result["n"], "d": result["d"], "ratio": result["ratio"], "classifier": result["classifier"],
           "seconds": result["seconds"], "val_accuracy": round(result["val_accuracy"], 4),
           "cosine_to_planted": round(result["cosine_to_planted"], 4),
           "target_seconds": BOUNDARY_TARGET_SECONDS,
           "passed": ("pass" if result["seconds"] <= BOUNDARY_TARGET_SECONDS else "FAIL") if full else
           "- (smaller n)"}
    return {"reference": BOUNDARY_REFERENCE, "rows": [row]}
