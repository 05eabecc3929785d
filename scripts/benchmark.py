"""Measured throughput of the project's pieces: prints a table and writes the numbers to JSON.

    python scripts/benchmark.py [--only loader ...] [--root data/synthetic] [--json runs/benchmark.json]

Each benchmark is a function in ``BENCHMARKS`` (name -> function(args) -> dict of results with a ``rows`` list
for the table); add one by writing a function and registering it. The JSON file keeps the results of earlier
runs of the other benchmarks, so running one benchmark updates only its own entry.

``loader``: images per second delivered as [B, 3, 64, 64] float batches in [-1, 1] by (a) decoding the JPEG
folder with PIL + torchvision transforms through a DataLoader with 2 workers (the usual CelebA pipeline) and
(b) the prepared cache (``CelebACache``) through a DataLoader and through ``CelebACache.batches``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from common.cli import UserError, run_main  # noqa: E402


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
    """JPEG folder + transforms vs the prepared cache, 64x64, batch 64."""
    from torch.utils.data import BatchSampler, DataLoader, RandomSampler

    from common.cache import CelebACache, prepare_cache
    from common.celeba import read_celeba

    resolution, batch_size = 64, 64
    with tempfile.TemporaryDirectory(prefix="benchmark-") as scratch:
        root = _loader_root(args, Path(scratch))
        index = read_celeba(root)
        cache_dir = prepare_cache(root, resolution, out=Path(scratch) / f"cache_{resolution}", workers=2,
                                  progress=False, log=None)
        names = index.filenames[:args.num]
        torch.set_num_threads(1)  # like a training process whose other cores are busy: no hidden parallelism
        generator = torch.Generator().manual_seed(0)
        results = []

        jpeg = _JpegFolder(index.image_dir, names, resolution)

        def jpeg_loader():
            return DataLoader(jpeg, batch_size=batch_size, shuffle=True, num_workers=2, generator=generator,
                              persistent_workers=False)

        images, seconds = _timed(jpeg_loader(), min(len(names), args.jpeg_images), 0.0, jpeg_loader)
        results.append(("jpeg folder, PIL + transforms, DataLoader 2 workers", images, seconds))

        dataset = CelebACache(cache_dir, "all", hflip=True)
        dataset.indices = dataset.indices[:len(names)]

        def cache_loader(workers: int):
            return lambda: DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                                      generator=generator)

        for workers in (0, 2):
            images, seconds = _timed(cache_loader(workers)(), 0, args.seconds, cache_loader(workers))
            results.append((f"CelebACache, DataLoader {workers} workers (batched __getitems__)", images, seconds))

        def cache_batch_sampler():
            sampler = BatchSampler(RandomSampler(dataset, generator=generator), batch_size, drop_last=False)
            return DataLoader(dataset, sampler=sampler, batch_size=None)

        images, seconds = _timed(cache_batch_sampler(), 0, args.seconds, cache_batch_sampler)
        results.append(("CelebACache, DataLoader + BatchSampler (whole batches, 0 workers)", images, seconds))

        def cache_batches():
            return dataset.batches(batch_size, shuffle=True, generator=generator)

        images, seconds = _timed(cache_batches(), 0, args.seconds, cache_batches)
        results.append(("CelebACache.batches (memmap slices, no DataLoader)", images, seconds))

    base = results[0][1] / results[0][2]
    rows = [{"pipeline": name, "images": n, "seconds": round(s, 3), "images_per_second": round(n / s, 1),
             "speedup_vs_jpeg": round(n / s / base, 1)} for name, n, s in results]
    return {"resolution": resolution, "batch_size": batch_size, "distinct_images": len(names),
            "source": str(root), "hflip": True, "rows": rows}


BENCHMARKS: dict[str, Callable[[argparse.Namespace], dict]] = {
    "loader": bench_loader,
}


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
    parser.add_argument("--only", nargs="+", metavar="NAME", help=f"run only these ({', '.join(BENCHMARKS)})")
    parser.add_argument("--json", default="runs/benchmark.json", help="results file (merged with earlier runs)")
    parser.add_argument("--root", default="data/synthetic",
                        help="loader: CelebA folder (synthetic images are generated when it holds none)")
    parser.add_argument("--num", type=int, default=2000, help="loader: distinct images to read (default 2000)")
    parser.add_argument("--jpeg-images", type=int, default=1280, help="loader: images timed for the JPEG pipeline")
    parser.add_argument("--seconds", type=float, default=3.0, help="loader: seconds timed per cache pipeline")
    args = parser.parse_args()
    names = args.only or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise UserError(f"--only {' '.join(unknown)}: unknown benchmark; choose from {', '.join(BENCHMARKS)}")
    command = "python scripts/benchmark.py " + " ".join(sys.argv[1:])
    results = {}
    for name in names:
        result = BENCHMARKS[name](args)
        result.update(command=command.strip(), cpu_count=os.cpu_count(), torch=torch.__version__,
                      machine=platform.machine(), time=time.strftime("%Y-%m-%d %H:%M:%S"))
        results[name] = result
        _print_table(name, result["rows"])
    _write_json(Path(args.json), results)
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    run_main(main)
