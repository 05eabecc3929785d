"""The prepared cache: CelebA decoded once into a memory-mapped uint8 array, and the Dataset that reads it.

``prepare_cache`` crops every aligned 178x218 image to the 128x128 square centred at (x=89, y=121) (PGGAN's
``dataset_tool`` CelebA crop, chin to forehead), resizes it with Lanczos to R x R and writes what follows. A
resized copy (89x109, or any size in CelebA's 178:218 frame) and CelebA's PNG copy are read alike: the crop box
scales with the image, and the landmarks stay in the official 178x218 frame, as the label file gives them.

    images.u8        uint8 [N, R, R, 3], raw C-order bytes, opened with np.memmap (shape in the manifest)
    attributes.npy   int8 [N, 40] in {0, 1}        landmarks.npy  float32 [N, 10]
    yaw.npy          float32 [N]                   split.npy      int8 [N] (0 train, 1 valid, 2 test)
    factors.npy      float32 [N, F] (synthetic)    identity.npy   int32 [N] (when the source has it)
    filenames.txt    one source filename a line    manifest.json  what was built from what, ``complete: true``
    attributes_known.npy  bool [N, 40] (own photos only: which attributes the labels file gives)

``prepare_aligned_folder`` builds the same cache from a folder of any face photos: each one's largest face is
detected and aligned to the 178x218 frame first (common/align.py), labels come from an optional CSV.

The folder is built under a temporary name beside the target and renamed into place when finished, so an
interrupted run never leaves a folder that passes as complete. A complete cache whose label checksums and
resolution match is reused. ``CelebACache`` is a plain map-style Dataset (so DistributedSampler works) whose
``__getitems__`` and ``batches`` read whole batches with one memmap slice: training never decodes a JPEG.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from common.attributes import CELEBA_ATTRIBUTES
from common.celeba import CelebAFormatError, find_layout, read_celeba, yaw_from_landmarks
from common.checkpoint import atomic_path
from common.cli import UserError

FORMAT_VERSION = 1
CELEBA_SIZE = (178, 218)  # aligned image (width, height)
CROP_CENTER = (89, 121)  # (x, y)
CROP_SIZE = 128
CROP_BOX = (CROP_CENTER[0] - CROP_SIZE // 2, CROP_CENTER[1] - CROP_SIZE // 2,
            CROP_CENTER[0] + CROP_SIZE // 2, CROP_CENTER[1] + CROP_SIZE // 2)  # (25, 57, 153, 185)
SPLITS = {"train": 0, "valid": 1, "test": 2}
CHUNK = 256  # images per worker task: big enough to amortise IPC, small enough for a smooth progress bar


class CacheError(UserError):
    """A prepared cache that is missing, incomplete or of another format."""


def default_cache_dir(root: str | os.PathLike, resolution: int) -> Path:
    """The default cache folder of ``root`` at ``resolution``: ``data/synthetic``, 32 -> ``data/cache/synthetic_32``."""
    root = Path(root)
    return root.parent / "cache" / f"{root.name}_{resolution}"


MIRROR_ODD_FACTORS = ("yaw", "lighting")  # synthetic factors a horizontal flip negates


def open_training_cache(data_cfg, split: str = "train", hflip: bool | None = None) -> tuple[Path, CelebACache]:
    """The prepared cache a config's ``data`` section names (``data.cache`` or the default folder), opened on
    ``split`` and checked against ``data.resolution``; returns ``(cache_dir, dataset)``."""
    cache_dir = Path(data_cfg.cache) if data_cfg.cache else default_cache_dir(data_cfg.root, data_cfg.resolution)
    dataset = CelebACache(cache_dir, split, hflip=data_cfg.hflip if hflip is None else hflip)
    if dataset.resolution != data_cfg.resolution:
        raise CacheError(f"{cache_dir}: cache resolution is {dataset.resolution} but data.resolution is "
                         f"{data_cfg.resolution}; prepare the cache at that resolution or set data.cache")
    return cache_dir, dataset


def prepare_command(root: str = "<CelebA folder>", resolution: int | str = "<R>") -> str:
    return f"python scripts/prepare_data.py --root {root} --resolution {resolution}"


# ----------------------------------------------------------------------------------------------- images


FRAME_TOLERANCE = 0.02  # how far (relative) a copy's width:height may be from 178:218 and still be CelebA's frame


def check_celeba_frame(size: tuple[int, int]) -> str | None:
    """Why an image of ``size`` (width, height) is not CelebA's aligned frame at some scale (None when it is)."""
    width, height = size
    ratio = (width / height) / (CELEBA_SIZE[0] / CELEBA_SIZE[1]) if height else 0.0
    if abs(ratio - 1) > FRAME_TOLERANCE:
        return (f"expected an aligned image in CelebA's 178:218 frame (178x218, or resized alike, e.g. 89x109), "
                f"got {width}x{height}")
    return None


def crop_box_for(size: tuple[int, int]) -> tuple[float, float, float, float]:
    """``CROP_BOX`` scaled to an aligned image of ``size`` (a resized copy of CelebA), in its pixels."""
    sx, sy = size[0] / CELEBA_SIZE[0], size[1] / CELEBA_SIZE[1]
    return (CROP_BOX[0] * sx, CROP_BOX[1] * sy, CROP_BOX[2] * sx, CROP_BOX[3] * sy)


def crop_side(size: tuple[int, int]) -> float:
    """How many source pixels the face crop spans in an aligned image of ``size`` (128 at full size)."""
    return CROP_SIZE * min(size[0] / CELEBA_SIZE[0], size[1] / CELEBA_SIZE[1])


def crop_and_resize(image: Image.Image, resolution: int) -> np.ndarray:
    """An aligned CelebA image -> uint8 [R, R, 3]: the 128x128 face crop, Lanczos-resized to R.

    At 178x218 the crop is cut out and resized; a resized copy (any size in CelebA's frame) has the same box
    scaled to its pixels, resampled straight from the image (the box may fall between pixels), so both give the
    same face.
    """
    reason = check_celeba_frame(image.size)
    if reason:
        raise ValueError(reason)
    image = image.convert("RGB")
    if image.size != CELEBA_SIZE:
        face = image.resize((resolution, resolution), Image.LANCZOS, box=crop_box_for(image.size))
        return np.array(face, dtype=np.uint8)  # [R, R, 3]
    face = image.crop(CROP_BOX)
    if resolution != CROP_SIZE:
        face = face.resize((resolution, resolution), Image.LANCZOS)
    return np.array(face, dtype=np.uint8)  # [R, R, 3], a writable copy


def to_celeba_frame(image: Image.Image) -> Image.Image:
    """Any photo -> 178x218: centre-crop to CelebA's 178:218 aspect ratio, then Lanczos resize."""
    width, height = image.size
    if width * CELEBA_SIZE[1] > height * CELEBA_SIZE[0]:  # too wide: trim the sides
        new_width = max(1, round(height * CELEBA_SIZE[0] / CELEBA_SIZE[1]))
        left = (width - new_width) // 2
        image = image.crop((left, 0, left + new_width, height))
    else:  # too tall: trim top and bottom
        new_height = max(1, round(width * CELEBA_SIZE[1] / CELEBA_SIZE[0]))
        top = (height - new_height) // 2
        image = image.crop((0, top, width, top + new_height))
    return image.resize(CELEBA_SIZE, Image.LANCZOS)


def uint8_to_model(images: np.ndarray, flip: np.ndarray | None = None) -> torch.Tensor:
    """uint8 [n, H, W, 3] (or [H, W, 3]) -> float32 [n, 3, H, W] in [-1, 1] (the range every model uses).

    ``flip`` (bool [n]) mirrors those images left-right during the channels-first copy, which costs nothing
    extra, unlike flipping the float tensor afterwards.
    """
    moved = np.moveaxis(images, -1, -3)  # view [..., 3, H, W]
    if flip is None or not flip.any():
        channels_first = np.ascontiguousarray(moved)
    else:
        channels_first = np.empty(moved.shape, dtype=np.uint8)
        for i, mirrored in enumerate(flip):
            channels_first[i] = moved[i, :, :, ::-1] if mirrored else moved[i]
    # One casting multiply then one subtract (2 passes, not torch's 3); within 1 ulp of x / 127.5 - 1 and
    # exactly -1 and 1 at 0 and 255.
    images_float = np.multiply(channels_first, np.float32(1 / 127.5), dtype=np.float32)
    images_float -= np.float32(1.0)
    return torch.from_numpy(images_float)


def uint8_images_to_model(images: torch.Tensor, channels_last: bool = False,
                          flip: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 [n, H, W, 3] on any device -> float32 [n, 3, H, W] in [-1, 1], bit-identical to ``uint8_to_model``.

    The device half of the fast loader path (``CelebACache.uint8_batch``): run after the uint8 batch has moved
    to the training device (a quarter of the bytes to copy; on a GPU the conversion is free). ``flip`` (bool [n])
    mirrors those images left-right in uint8. ``channels_last`` gives the NHWC-strided result (no transpose at
    all); otherwise contiguous NCHW.
    """
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = images.permute(0, 3, 1, 2)  # [n, 3, H, W] view, NHWC strides
    if flip is not None:
        if x.device.type == "cpu":  # touch only the mirrored images (the host sync is free on the CPU)
            x = x.clone(memory_format=fmt)  # our own copy (NCHW: transposed in uint8, a quarter of the bytes)
            rows = flip.nonzero().squeeze(1)  # [m]
            x.index_copy_(0, rows, x.index_select(0, rows).flip(3))  # [m, 3, H, W] mirrored
        else:  # no host sync on an accelerator: mirror all, keep the flipped ones
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
    # float32 in the wanted layout, then the same two fp32 passes as uint8_to_model: * float32(1/127.5), - 1
    return x.to(torch.float32, memory_format=fmt).mul_(np.float32(1 / 127.5).item()).sub_(1.0)


def load_user_image(path: str | os.PathLike, resolution: int) -> torch.Tensor:
    """A user's photo -> float32 [3, R, R] in [-1, 1], framed like the cache (see ``to_celeba_frame``)."""
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)  # phone photos store their rotation in EXIF
            image = image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise UserError(f"{path}: cannot read the image ({exc}); expected a JPEG or PNG photo") from None
    return uint8_to_model(crop_and_resize(to_celeba_frame(image), resolution))  # [3, R, R]


class _SizeMismatch(ValueError):
    """An image whose size differs from the folder's first one (mixed sizes are never skipped)."""


def _decode_one(path: Path, resolution: int, source_size: tuple[int, int] | None = None) -> np.ndarray:
    with Image.open(path) as image:
        if source_size is not None and image.size != tuple(source_size):
            raise _SizeMismatch(f"image is {image.size[0]}x{image.size[1]} but the folder's first image is "
                                f"{source_size[0]}x{source_size[1]}; expected one size for the whole folder")
        image.load()  # forces the full decode, so a truncated JPEG fails here rather than silently
        return crop_and_resize(image, resolution)


def _decode_chunk(task: tuple) -> tuple[int, list[tuple[int, str]], list[tuple[int, str]]]:
    """Worker: decode images ``start..start+len(names)`` straight into the memmap.

    Returns (count, failures, size mismatches), each failure ``(row, message)``.
    """
    image_dir, names, start, images_path, shape, resolution, source_size = task
    images = np.memmap(images_path, dtype=np.uint8, mode="r+", shape=shape)
    failures, mismatches = [], []
    for offset, name in enumerate(names):
        try:
            images[start + offset] = _decode_one(Path(image_dir) / name, resolution, source_size)
        except _SizeMismatch as exc:
            mismatches.append((start + offset, f"{exc}"))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            failures.append((start + offset, f"{exc}"))
    images.flush()
    del images
    return len(names), failures, mismatches


def probe_source(image_dir: Path, name: str, resolution: int, upscale: bool) -> tuple[tuple[int, int], str]:
    """The size (width, height) and format of a folder's images, read from its first one, checked against
    CelebA's frame and against ``resolution`` (which may not exceed the crop's source pixels unless ``upscale``)."""
    path = Path(image_dir) / name
    try:
        with Image.open(path) as image:
            size, fmt = image.size, (image.format or path.suffix.lstrip(".")).lower()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise CelebAFormatError(f"{path}:0: cannot read the image ({exc}); expected a CelebA JPEG or PNG") from None
    reason = check_celeba_frame(size)
    if reason:
        raise CelebAFormatError(f"{path}:0: {reason}")
    side = crop_side(size)
    if resolution > round(side) and not upscale:
        raise UserError(f"{path}: the images are {size[0]}x{size[1]}, whose face crop is {side:g}x{side:g} pixels, "
                        f"so --resolution {resolution} would enlarge them; expected --resolution {int(side)} or "
                        "less, or --upscale to enlarge on purpose")
    return size, {"jpeg": "jpg"}.get(fmt, fmt)


# ----------------------------------------------------------------------------------------------- preparing


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(cache_dir: str | os.PathLike) -> dict | None:
    path = Path(cache_dir) / "manifest.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _reuse_reason(out: Path, resolution: int, checksums: dict[str, str], skip_bad: bool, only_present: bool = False,
                  upscale: bool = False) -> str | None:
    """Why the cache at ``out`` cannot be reused (None when it can)."""
    manifest = read_manifest(out)
    if manifest is None:
        return "no manifest.json" if out.exists() else None
    if not manifest.get("complete"):
        return "it is incomplete"
    if manifest.get("format_version") != FORMAT_VERSION:
        return f"format version {manifest.get('format_version')} != {FORMAT_VERSION}"
    if manifest.get("resolution") != resolution:
        return f"resolution {manifest.get('resolution')} != {resolution}"
    if manifest.get("label_sha256") != checksums:
        return "the label files changed"
    if manifest.get("skipped") and not skip_bad:
        return "it skipped bad images and --skip-bad is not set"
    if manifest.get("missing", {}).get("count") and not only_present:
        return "it left out images missing from the folder and --only-present is not set"
    if manifest.get("upscaled") and not upscale:
        return "it enlarged the source images and --upscale is not set"
    return None


def _remove_stale_partials(out: Path) -> None:
    """Delete temp folders of earlier runs of this target whose process is gone (an interrupted build)."""
    for partial in out.parent.glob(f".{out.name}.partial-*"):
        match = re.search(r"partial-(\d+)-", partial.name)
        if match and int(match.group(1)) != os.getpid():
            try:
                os.kill(int(match.group(1)), 0)
                continue  # its builder still runs
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
        shutil.rmtree(partial, ignore_errors=True)


CACHE_FILES = {"images.u8", "attributes.npy", "landmarks.npy", "yaw.npy", "split.npy", "factors.npy", "identity.npy",
               "attributes_known.npy", "filenames.txt", "manifest.json"}


def _refuse_foreign_folder(out: Path) -> None:
    """Rebuilding replaces ``out`` wholesale, so it must be a cache (or empty), never a user's other folder."""
    if not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder; expected a cache folder (choose another --out)")
    foreign = sorted(p.name for p in out.iterdir() if p.name not in CACHE_FILES)
    if foreign:
        raise UserError(f"{out}: exists and holds files that are not a prepared cache ({', '.join(foreign[:5])}); "
                        "choose another --out or remove the folder")


def _pool_context():
    # fork starts workers instantly; spawn elsewhere (macOS/Windows) re-imports this module, which is fine.
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods and sys.platform.startswith("linux") else "spawn")


def _decode_all(index, images_path: Path, shape: tuple, resolution: int, workers: int, skip_bad: bool,
                progress: bool, source_size: tuple[int, int] | None = None) -> list[tuple[int, str]]:
    from tqdm import tqdm

    names = index.image_files
    tasks = [(str(index.image_dir), names[s:s + CHUNK], s, str(images_path), shape, resolution, source_size)
             for s in range(0, len(names), CHUNK)]
    failures: list[tuple[int, str]] = []
    bar = tqdm(total=len(names), unit="img", desc=f"decoding {resolution}x{resolution}", disable=not progress,
               dynamic_ncols=True)

    def take(done: int, failed: list, mismatched: list) -> None:
        bar.update(done)
        if mismatched:
            i, message = min(mismatched)
            raise CelebAFormatError(f"{index.image_dir / names[i]}:0: {message}")
        failures.extend(failed)
        if failed and not skip_bad:
            i, message = min(failed)
            raise CelebAFormatError(f"{index.image_dir / names[i]}:0: cannot decode the image ({message}); expected "
                                    "a readable aligned CelebA JPEG or PNG (use --skip-bad to leave such files out)")

    try:
        if workers <= 1 or len(tasks) <= 1:
            for task in tasks:
                take(*_decode_chunk(task))
        else:
            with _pool_context().Pool(min(workers, len(tasks))) as pool:
                for result in pool.imap_unordered(_decode_chunk, tasks):
                    take(*result)  # an exception here leaves the with-block, which terminates the pool
    finally:
        bar.close()
    return sorted(failures)


def _save_npy(folder: Path, name: str, array: np.ndarray) -> None:
    np.save(folder / f"{name}.npy", np.ascontiguousarray(array), allow_pickle=False)


def _reusable(out: Path, reason: str | None, say: Callable[[str], None], matches: str) -> bool:
    """True when the cache at ``out`` can be reused as it is (``reason`` None); else, when something is there, check
    that it is a cache before it is rebuilt (``matches`` says what a reusable one agrees with)."""
    if out.exists() and reason is None:
        say(f"cache {out} is complete and matches {matches}: reusing it")
        return True
    if out.exists():
        _refuse_foreign_folder(out)
        say(f"cache {out} is stale ({reason}): rebuilding it")
    return False


def prepare_cache(root: str | os.PathLike, resolution: int, out: str | os.PathLike | None = None, workers: int = 2,
                  skip_bad: bool = False, progress: bool = True,
                  log: Callable[[str], None] | None = print, only_present: bool = False,
                  upscale: bool = False) -> Path:
    """Decode CelebA under ``root`` once into a cache folder (``out`` or ``default_cache_dir``); returns it.

    Any copy in CelebA's aligned frame is read (178x218, a resized copy such as 89x109, JPEG or PNG); its face
    crop scales with it. ``resolution`` may not exceed the crop's source pixels unless ``upscale``; images the
    label files list but the folder lacks are an error unless ``only_present``.
    """
    if resolution < 4 or resolution > 1024:
        raise UserError(f"--resolution {resolution}: expected an image size between 4 and 1024 (e.g. 32, 64, 128)")
    say = log or (lambda message: None)
    root = Path(root)
    out = Path(out) if out else default_cache_dir(root, resolution)
    layout = find_layout(root)
    say(f"found {layout.describe()}")
    checksums = {path.name: _sha256(path) for path in layout.label_files}
    if _reusable(out, _reuse_reason(out, resolution, checksums, skip_bad, only_present, upscale), say,
                 f"the labels and resolution {resolution}"):
        return out

    start_time = time.time()
    index = read_celeba(root, check_images=True, only_present=only_present)
    if index.missing:
        say(f"--only-present: {len(index.missing)} of {index.listed} listed images are not in {index.image_dir} "
            f"(first: {', '.join(index.missing[:3])}); preparing the {len(index)} that are")
    source_size, source_format = probe_source(index.image_dir, index.image_files[0], resolution, upscale)
    def fill(partial: Path) -> tuple[dict, list[str], dict]:
        shape = (len(index), resolution, resolution, 3)
        images_path = partial / "images.u8"
        np.memmap(images_path, dtype=np.uint8, mode="w+", shape=shape).flush()  # sized file the workers fill
        failures = _decode_all(index, images_path, shape, resolution, workers, skip_bad, progress, source_size)
        keep = np.ones(len(index), dtype=bool)
        keep[[i for i, _ in failures]] = False
        if not keep.any():
            raise CelebAFormatError(f"{index.image_dir}:0: none of the {len(index)} images could be decoded "
                                    f"(first: {index.filenames[0]}: {failures[0][1]}); expected 178x218 JPEGs")
        _compact_rows(images_path, shape, keep)
        arrays = {"attributes": index.attributes[keep], "landmarks": index.landmarks[keep],
                  "yaw": yaw_from_landmarks(index.landmarks[keep]).astype(np.float32), "split": index.partition[keep]}
        if index.factors is not None:
            arrays["factors"] = index.factors[keep]
        if index.identity is not None:
            arrays["identity"] = index.identity[keep]
        filenames = [name for name, k in zip(index.filenames, keep) if k]
        manifest = {
            "source_root": str(root.resolve()),
            "layout": layout.name,
            "layout_description": layout.describe(),
            "resolution": resolution,
            "source_size": list(source_size),
            "source_format": source_format,
            "crop_box": [round(v, 4) for v in crop_box_for(source_size)],  # in the source's pixels
            "upscaled": resolution > round(crop_side(source_size)),
            "factor_names": list(index.factor_names),
            "has_identity": index.identity is not None,
            "label_sha256": checksums,
            "skipped": [{"file": index.filenames[i], "error": message} for i, message in failures],
            "missing": {"count": len(index.missing), "of": index.listed, "first": index.missing[:20]},
        }
        return arrays, filenames, manifest

    _write_cache(out, fill, start_time, say, index.image_dir, "images")
    return out


def _compact_rows(images_path: Path, shape: tuple, keep: np.ndarray) -> tuple:
    """Drop the rows of the images memmap where ``keep`` [N] is False (in place, through a fresh file);
    returns the new shape."""
    if keep.all():
        return shape
    compact_shape = (int(keep.sum()), *shape[1:])
    source = np.memmap(images_path, dtype=np.uint8, mode="r", shape=shape)
    with atomic_path(images_path) as target_path:
        target = np.memmap(target_path, dtype=np.uint8, mode="w+", shape=compact_shape)
        good = np.flatnonzero(keep)
        for s in range(0, len(good), 4096):
            target[s:s + 4096] = source[good[s:s + 4096]]
        target.flush()
        del source, target  # both maps closed before the rename
    return compact_shape


def _write_cache(out: Path, fill: Callable[[Path], tuple[dict, list[str], dict]], start_time: float,
                 say: Callable[[str], None], source_dir: Path, noun: str) -> dict:
    """Build a cache in a temporary folder beside ``out`` and rename it into place, then report the skipped
    files (in ``source_dir``) and what was written (``noun``: "images", "faces"); returns the manifest.

    ``fill(partial)`` writes ``images.u8`` into the folder and returns (arrays saved as ``<name>.npy`` (with
    ``split`` [N] among them), the N file names, the source's own manifest entries). The common entries are added
    here and the manifest is written last: a folder without it is never taken for a complete cache.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(out)
    partial = out.parent / f".{out.name}.partial-{os.getpid()}-{int(start_time)}"
    partial.mkdir()
    try:
        arrays, filenames, source_entries = fill(partial)
        for name, array in arrays.items():
            _save_npy(partial, name, array)
        (partial / "filenames.txt").write_text("".join(f"{name}\n" for name in filenames))
        split = arrays["split"]
        shape = (len(filenames), source_entries["resolution"], source_entries["resolution"], 3)
        manifest = {"format_version": FORMAT_VERSION, "complete": True, **source_entries,
                    "resize": "lanczos", "image_file": "images.u8", "image_shape": list(shape),
                    "num_images": shape[0],
                    "counts": {name: int((split == code).sum()) for name, code in SPLITS.items()},
                    "attribute_names": list(CELEBA_ATTRIBUTES), "seconds": round(time.time() - start_time, 2)}
        (partial / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        # A folder cannot be os.replace()d onto a non-empty one, so this swap stays two renames (atomic_path is
        # for files): readers see the old cache, or for a moment none, then the new one, never a partial one.
        if out.exists():
            old = out.parent / f".{out.name}.partial-{os.getpid()}-old"
            os.replace(out, old)
            os.replace(partial, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    for entry in manifest["skipped"]:
        say(f"skipped {Path(source_dir) / entry['file']}: {entry['error']}")
    say(f"wrote {out}: {manifest['num_images']} {noun} at {shape[1]}x{shape[2]} ({manifest['counts']}) "
        f"in {manifest['seconds']:.1f}s")
    return manifest


# ----------------------------------------------------------------------------------------------- dataset

class CelebACache(torch.utils.data.Dataset):
    """One split of a prepared cache; items are dicts of float tensors (images in [-1, 1]), plus ``known``
    (bool [40]) in a cache with unknown labels (``known()`` gives the split's mask in every cache).

    ``hflip=True`` flips each image left-right with probability 1/2 and then negates its yaw (and the
    synthetic factors that a mirror negates: ``yaw`` and the left-right ``lighting`` gradient). The memmap is opened lazily in each process, so the dataset pickles cheaply
    into DataLoader workers and DDP ranks.
    """

    def __init__(self, cache_dir: str | os.PathLike, split: str = "train", hflip: bool = False):
        self.cache_dir = Path(cache_dir)
        manifest = read_manifest(self.cache_dir)
        if manifest is None or not manifest.get("complete"):
            guess = re.search(r"_(\d+)$", self.cache_dir.name)
            command = prepare_command(manifest.get("source_root", "<CelebA folder>") if manifest else
                                      "<CelebA folder>", guess.group(1) if guess else "<R>")
            state = "is incomplete" if manifest else ("has no manifest.json" if self.cache_dir.exists() else
                                                      "does not exist")
            raise CacheError(f"{self.cache_dir}: the prepared cache {state}; run `{command}` first")
        if manifest.get("format_version") != FORMAT_VERSION:
            command = prepare_command(manifest.get("source_root", "<CelebA folder>"), manifest.get("resolution", "<R>"))
            raise CacheError(f"{self.cache_dir}/manifest.json: cache format {manifest.get('format_version')}, expected "
                             f"{FORMAT_VERSION}; rebuild it with `{command}`")
        if split not in (*SPLITS, "all"):
            raise UserError(f"split {split!r}: expected one of train, valid, test, all")
        self.manifest = manifest
        self.split = split
        self.hflip = hflip
        self.resolution = int(manifest["resolution"])
        self.factor_names: list[str] = list(manifest.get("factor_names", []))
        self._shape = tuple(manifest["image_shape"])
        split_codes = np.load(self.cache_dir / "split.npy")
        self.indices = (np.arange(len(split_codes), dtype=np.int64) if split == "all"
                        else np.flatnonzero(split_codes == SPLITS[split]).astype(np.int64))  # [n] rows of the cache
        self._attributes = np.load(self.cache_dir / "attributes.npy")  # [N, 40] int8
        self._yaw = np.load(self.cache_dir / "yaw.npy")  # [N]
        known_path = self.cache_dir / "attributes_known.npy"  # own-photo caches: which labels are known
        self._known = np.load(known_path) if known_path.exists() else None  # [N, 40] bool, None = all known
        factors_path = self.cache_dir / "factors.npy"
        self._factors = (np.load(factors_path) if factors_path.exists()
                         else np.zeros((len(split_codes), 0), dtype=np.float32))  # [N, F]
        # factors that change sign under a left-right mirror (the synthetic set's yaw and its lighting gradient)
        self._mirror_odd = [i for i, name in enumerate(self.factor_names) if name in MIRROR_ODD_FACTORS]
        self._images = None
        self._images_pid = None
        self._float_labels: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    # -- raw access -----------------------------------------------------------------------------------

    @property
    def images(self) -> np.memmap:
        """The whole cache's uint8 [N, R, R, 3] memmap, opened once per process."""
        if self._images is None or self._images_pid != os.getpid():
            self._images = np.memmap(self.cache_dir / self.manifest["image_file"], dtype=np.uint8, mode="r",
                                     shape=self._shape)
            self._images_pid = os.getpid()
        return self._images

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_images"] = None  # never pickle the mapped array: each worker maps the file itself
        state["_float_labels"] = None  # rebuilt on first use
        return state

    @property
    def filenames(self) -> list[str]:
        names = (self.cache_dir / "filenames.txt").read_text().splitlines()
        return [names[i] for i in self.indices]

    def images_uint8(self, indices) -> np.ndarray:
        """uint8 [n, R, R, 3] for positions ``indices`` within this split (no flip)."""
        rows = self.indices[np.asarray(indices, dtype=np.int64)]
        order = np.argsort(rows, kind="stable")
        out = np.empty((len(rows), *self._shape[1:]), dtype=np.uint8)
        out[order] = self.images[rows[order]]  # sorted reads are sequential on disk
        return out

    def labels(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(attributes float32 [n, 40] in {0,1}, yaw float32 [n], factors float32 [n, F]) of the split, unflipped."""
        return (self._attributes[self.indices].astype(np.float32), self._yaw[self.indices].astype(np.float32),
                self._factors[self.indices].astype(np.float32))

    def known(self) -> np.ndarray:
        """bool [n, 40]: which of ``labels()``'s attributes are known (all of them, unless the cache was prepared
        from a folder of photos with a partial labels file); an unknown one reads 0 in ``labels()``."""
        if self._known is None:
            return np.ones((len(self.indices), len(CELEBA_ATTRIBUTES)), dtype=bool)
        return self._known[self.indices]

    # -- Dataset protocol ------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.indices)

    def _labels(self, rows: np.ndarray, mask: np.ndarray | None) -> dict[str, torch.Tensor]:
        """Label tensors of cache rows [n]; a True in ``mask`` (bool [n]) mirrors that item's pose factors."""
        if self._float_labels is None:  # float32 once, so a batch is three row gathers and no casts
            self._float_labels = (self._attributes.astype(np.float32), self._yaw.astype(np.float32),
                                  self._factors.astype(np.float32))
        attributes, yaw, factors = (array[rows] for array in self._float_labels)  # [n, 40], [n], [n, F] copies
        if mask is not None and mask.any():
            sign = np.where(mask, np.float32(-1), np.float32(1))  # [n]: a flip mirrors the pose
            yaw *= sign
            if self._mirror_odd:
                factors[:, self._mirror_odd] *= sign[:, None]
        return {
            "attributes": torch.from_numpy(attributes),  # [n, 40]
            "yaw": torch.from_numpy(yaw),
            "factors": torch.from_numpy(factors),
            "index": torch.from_numpy(rows),  # [n] rows of the cache (a fresh array from the fancy index)
            # bool [n, 40], only in caches with unknown labels (absent = all known)
            **({"known": torch.from_numpy(self._known[rows])} if self._known is not None else {}),
        }

    def _batch(self, positions: np.ndarray, flip: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Positions within the split -> a collated batch dict; ``flip`` is a bool [n] mask or None."""
        rows = self.indices[positions]  # [n]
        raw = self.images_uint8(positions)  # [n, R, R, 3] uint8
        mask = flip.numpy() if flip is not None else None
        return {"image": uint8_to_model(raw, mask), **self._labels(rows, mask)}  # image [n, 3, R, R]

    def uint8_batch(self, positions: np.ndarray, flip: np.ndarray | None = None) -> dict[str, torch.Tensor]:
        """The fast path: positions [n] -> ``image`` uint8 [n, R, R, 3] (NHWC, NOT yet mirrored), ``flip`` bool
        [n] (only when ``flip`` is given) and the labels (already mirrored where ``flip`` is True).

        One gather from the memmap (a quarter of the bytes of the float batch, no per-item work) and the label
        rows; the pixels are mirrored on the training device by ``uint8_images_to_model(image, flip=flip)``,
        which also makes the usual float [n, 3, R, R] in [-1, 1]. This method draws no random numbers: the
        caller owns the order and the flips.
        """
        positions = np.asarray(positions, dtype=np.int64)
        rows = self.indices[positions]  # [n]
        # page-cached rows: one fancy-index gather (a sorted read, as images_uint8 does, costs a second copy)
        images = np.asarray(self.images)[rows]  # [n, R, R, 3] (plain ndarray: skips np.memmap's __getitem__)
        batch = {"image": torch.from_numpy(images), **self._labels(rows, flip)}
        if flip is not None:
            batch["flip"] = torch.from_numpy(np.asarray(flip, dtype=bool))  # [n]
        return batch

    def _flip_mask(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor | None:
        return (torch.rand(n, generator=generator) < 0.5) if self.hflip else None

    def __getitem__(self, position):
        """One item (an int), or a whole collated batch (a list/array of positions, as a BatchSampler gives).

        ``DataLoader(dataset, sampler=BatchSampler(RandomSampler(dataset), 64, False), batch_size=None)`` thus
        gets ready batches with no per-item work and no collation.
        """
        if not isinstance(position, (int, np.integer)):
            positions = np.asarray(position, dtype=np.int64)
            if positions.ndim != 1 or (len(positions) and not (-len(self) <= positions.min() and
                                                               positions.max() < len(self))):
                raise IndexError(f"positions out of range for the {self.split} split of {len(self)} images")
            return self._batch(positions % max(len(self), 1), self._flip_mask(len(positions)))
        if not -len(self) <= position < len(self):
            raise IndexError(f"index {position} out of range for the {self.split} split of {len(self)} images")
        batch = self._batch(np.array([position % len(self)]), self._flip_mask(1))
        return {key: value[0] for key, value in batch.items()}

    def __getitems__(self, positions: list[int]) -> list[dict[str, torch.Tensor]]:
        """Batched read used by DataLoader's fetcher: one memmap slice instead of ``len(positions)`` reads."""
        batch = self._batch(np.asarray(positions, dtype=np.int64), self._flip_mask(len(positions)))
        # unbind: one call per key returning views, instead of len(positions) indexing calls per key
        keys, columns = list(batch), [value.unbind(0) for value in batch.values()]
        return [dict(zip(keys, values)) for values in zip(*columns)]

    def batches(self, batch_size: int, shuffle: bool = True, generator: torch.Generator | None = None,
                drop_last: bool = False) -> Iterator[dict[str, torch.Tensor]]:
        """One epoch of collated batches straight from the memmap (the fastest path, no DataLoader)."""
        order = (torch.randperm(len(self), generator=generator).numpy() if shuffle
                 else np.arange(len(self)))
        stop = len(order) - (len(order) % batch_size if drop_last else 0)
        for start in range(0, stop, batch_size):
            positions = order[start:start + batch_size]
            yield self._batch(positions, self._flip_mask(len(positions), generator))
