"""A folder of a person's own face photos (no CelebA label files) prepared into the same cache as CelebA.

``prepare_aligned_folder`` detects and aligns each photo (common/align.py), crops it like CelebA, takes the
landmarks (hence yaw) from the detector, reads attributes from an optional CSV (blank = unknown, recorded in
``attributes_known.npy``) and splits by a hash of the file name. ``prepare_data.py --root FOLDER --align``.
"""

from __future__ import annotations

import csv
import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from common.attributes import CELEBA_ATTRIBUTES
from common.cache import (
    CELEBA_SIZE,
    CROP_BOX,
    CROP_SIZE,
    _compact_rows,
    _pool_context,
    _reusable,
    _reuse_reason,
    _sha256,
    _write_cache,
    crop_and_resize,
    default_cache_dir,
)
from common.celeba import yaw_from_landmarks
from common.cli import UserError

ALIGNED_LAYOUT = "aligned-folder"
DETECTOR = "facenet-pytorch MTCNN, largest face, similarity onto CelebA's template (common/align.py)"
SPLIT_SHARES = (80, 90)  # a file name's hash mod 100 below 80: train, below 90: valid, else test
PARTITION_COLUMNS = ("partition", "official_partition")
PARTITION_VALUES = {"0": 0, "1": 1, "2": 2, "train": 0, "valid": 1, "test": 2}


def split_for_name(name: str) -> int:
    """The split code (0 train, 1 valid, 2 test) of a photo's file name: a hash, about 80/10/10, so that adding
    photos never moves the others."""
    bucket = int(hashlib.sha256(name.encode("utf-8")).hexdigest()[:8], 16) % 100
    return 0 if bucket < SPLIT_SHARES[0] else 1 if bucket < SPLIT_SHARES[1] else 2


def read_label_csv(path: Path, filenames: list[str]) -> dict:
    """A labels CSV (``image_id``, then any of CelebA's 40 names, optionally ``identity`` and ``partition``) ->
    {"attributes" int8 [N, 40] (unknown 0), "known" bool [N, 40], "identity" int32 [N] (-1 unknown) or None,
    "partition" int8 [N] (-1 unknown), "columns"} in the order of ``filenames``. One-line errors name the line."""

    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            return _parse_label_csv(path, csv.reader(handle), filenames)
    except OSError as exc:
        raise UserError(f"{path}: cannot read the labels file ({exc.strerror})") from None
    except (csv.Error, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not a readable CSV file ({exc}); expected UTF-8 text, comma-separated") from None


def _parse_label_csv(path: Path, reader, filenames: list[str]) -> dict:
    """``read_label_csv`` on an open ``csv.reader``."""
    from common.attributes import suggest

    row_of = {name: i for i, name in enumerate(filenames)}
    n = len(filenames)
    attributes, known = np.zeros((n, 40), np.int8), np.zeros((n, 40), bool)
    identity, partition = np.full(n, -1, np.int32), np.full(n, -1, np.int8)
    header = [cell.strip() for cell in next(reader, [])]
    if "image_id" not in header:
        raise UserError(f"{path}:1: expected a header with an image_id column, then CelebA attribute names")
    columns = {}
    for j, name in enumerate(header):
        if name == "image_id" or name == "identity" or name in PARTITION_COLUMNS:
            continue
        if name not in CELEBA_ATTRIBUTES:
            close = suggest(name, [*CELEBA_ATTRIBUTES, "identity", "partition"])
            hint = f" (did you mean {' or '.join(close)}?)" if close else ""
            raise UserError(f"{path}:1: unknown column {name!r}{hint}; expected image_id, identity, partition "
                            "and CelebA's 40 attribute names")
        columns[j] = CELEBA_ATTRIBUTES.index(name)
    id_col, key = header.index("image_id"), {name: j for j, name in enumerate(header)}
    part_col = next((key[c] for c in PARTITION_COLUMNS if c in key), None)
    seen: set[str] = set()
    for line, cells in enumerate(reader, start=2):
        if not any(cell.strip() for cell in cells):
            continue
        cells = [cell.strip() for cell in cells] + [""] * (len(header) - len(cells))
        name = cells[id_col]
        if name not in row_of:
            raise UserError(f"{path}:{line}: {name!r} is not a photo in the folder (image_id must be a file "
                            f"name there, e.g. {filenames[0]})")
        if name in seen:
            raise UserError(f"{path}:{line}: {name} is listed twice")
        seen.add(name)
        i = row_of[name]
        for j, a in columns.items():
            value = cells[j]
            if value in ("1", "+1"):
                attributes[i, a], known[i, a] = 1, True
            elif value in ("-1", "0"):
                known[i, a] = True
            elif value:
                raise UserError(f"{path}:{line}: {header[j]} is {value!r}; expected +1/-1, 0/1 or blank")
        if part_col is not None and cells[part_col]:
            if cells[part_col] not in PARTITION_VALUES:
                raise UserError(f"{path}:{line}: {header[part_col]} is {cells[part_col]!r}; expected 0/1/2 "
                                "(or train/valid/test) or blank")
            partition[i] = PARTITION_VALUES[cells[part_col]]
        if "identity" in key and cells[key["identity"]]:
            if not cells[key["identity"]].lstrip("-").isdigit():
                raise UserError(f"{path}:{line}: identity is {cells[key['identity']]!r}; expected an integer")
            identity[i] = int(cells[key["identity"]])
    return {"attributes": attributes, "known": known, "identity": identity if "identity" in key else None,
            "partition": partition, "columns": [CELEBA_ATTRIBUTES[a] for a in columns.values()]}


def _align_chunk(task: tuple) -> list[tuple[int, np.ndarray | None, tuple[int, int] | None, str]]:
    """Worker: detect, align and crop photos ``start..`` into the memmap -> per photo (row, landmarks [10] in
    the 178x218 aligned frame or None, photo size, why it was left out)."""
    from common.align import apply_transform, compose, detect_faces, fit_alignment, largest_face, load_photo, warp

    paths, start, images_path, shape, threads = task
    if threads:
        torch.set_num_threads(threads)
    resolution = shape[1]
    scale = max(1.0, resolution / CROP_SIZE)  # above 128 px the face is warped straight into a larger frame
    frame = (round(CELEBA_SIZE[0] * scale), round(CELEBA_SIZE[1] * scale))
    upsize = np.array([[scale, 0, (scale - 1) / 2], [0, scale, (scale - 1) / 2]])  # 178x218 -> frame pixels
    images = np.memmap(images_path, dtype=np.uint8, mode="r+", shape=shape)
    results = []
    for offset, path in enumerate(paths):
        row = start + offset
        try:
            photo = load_photo(path)
        except UserError as exc:
            results.append((row, None, None, str(exc).removeprefix(f"{path}: ")))
            continue
        faces = detect_faces(photo)
        if not faces:
            results.append((row, None, photo.size, f"no face found ({photo.width}x{photo.height} photo)"))
            continue
        face = faces[largest_face(faces)]
        matrix = fit_alignment(face.landmarks)  # photo -> 178x218 aligned frame
        aligned = warp(photo, compose(upsize, matrix) if scale > 1 else matrix, frame)
        images[row] = crop_and_resize(aligned, resolution)
        landmarks = apply_transform(matrix, face.landmarks).reshape(10).astype(np.float32)
        results.append((row, landmarks, photo.size, ""))
    images.flush()
    del images
    return results


def _listing_sha256(paths: list[Path]) -> str:
    """A checksum of a folder's photo names and sizes (a photo added, removed or replaced changes it)."""
    listing = "".join(f"{p.name}\t{p.stat().st_size}\n" for p in paths)
    return hashlib.sha256(listing.encode("utf-8")).hexdigest()


def prepare_aligned_folder(root: str | os.PathLike, resolution: int, out: str | os.PathLike | None = None,
                           labels: str | os.PathLike | None = None, workers: int = 2, progress: bool = True,
                           log: Callable[[str], None] | None = print) -> Path:
    """A folder of any face photos (no CelebA label files) -> a prepared cache like ``prepare_cache``'s.

    Each photo's largest face is found, aligned to CelebA's 178x218 frame (common/align.py) and cropped with
    ``crop_and_resize``; its 5 landmarks in that frame give the yaw. Photos with no face are left out (the
    manifest's ``skipped``). Attributes come from ``labels`` (a CSV, ``read_label_csv``) where given, with
    ``attributes_known.npy`` saying which are; the split is the CSV's partition, else a hash of the file name.
    """
    from tqdm import tqdm

    from common.align import expand_image_paths

    if resolution < 4 or resolution > 1024:
        raise UserError(f"--resolution {resolution}: expected an image size between 4 and 1024 (e.g. 32, 64, 128)")
    say = log or (lambda message: None)
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: folder not found; expected a folder of face photos (JPEG or PNG)")
    out = Path(out) if out else default_cache_dir(root, resolution)
    paths = expand_image_paths([root])
    filenames = [p.name for p in paths]
    checksums = {"photos": _listing_sha256(paths)}
    if labels:
        labels = Path(labels)
        if not labels.is_file():
            raise UserError(f"{labels}: labels file not found; expected a CSV with image_id and attribute columns")
        checksums[labels.name] = _sha256(labels)
    table = read_label_csv(labels, filenames) if labels else None  # checked before the cache is reused
    say(f"found {len(paths)} photos in {root}; " + (f"labels of {len(table['columns'])} attributes in {labels}"
                                                    if table else "no labels file"))
    if _reusable(out, _reuse_reason(out, resolution, checksums, skip_bad=True), say,
                 f"the photos, labels and resolution {resolution}"):
        return out
    start_time = time.time()

    def fill(partial: Path) -> tuple[dict, list[str], dict]:
        shape = (len(paths), resolution, resolution, 3)
        images_path = partial / "images.u8"
        np.memmap(images_path, dtype=np.uint8, mode="w+", shape=shape).flush()
        chunk = max(1, min(32, len(paths) // max(1, 4 * workers)))
        threads = 1 if workers > 1 else 0
        tasks = [(paths[s:s + chunk], s, str(images_path), shape, threads) for s in range(0, len(paths), chunk)]
        landmarks = np.zeros((len(paths), 10), np.float32)
        sizes, skipped = [], []
        with tqdm(total=len(paths), unit="photo", desc="aligning", disable=not progress, dynamic_ncols=True) as bar:
            pool = _pool_context().Pool(min(workers, len(tasks))) if workers > 1 and len(tasks) > 1 else None
            try:
                for results in (pool.imap_unordered(_align_chunk, tasks) if pool else map(_align_chunk, tasks)):
                    for row, points, size, why in results:
                        if points is None:
                            skipped.append((row, why))
                        else:
                            landmarks[row] = points
                            sizes.append(size)
                    bar.update(len(results))
            finally:
                if pool is not None:
                    pool.terminate()
        skipped.sort()
        keep = np.ones(len(paths), dtype=bool)
        keep[[row for row, _ in skipped]] = False
        if not keep.any():
            raise UserError(f"{root}: no face found in any of the {len(paths)} photos (first: {filenames[0]}: "
                            f"{skipped[0][1]}); expected photos with a face of at least ~40 pixels")
        _compact_rows(images_path, shape, keep)
        split = np.array([split_for_name(name) for name in filenames], np.int8)
        attributes, known = np.zeros((len(paths), 40), np.int8), np.zeros((len(paths), 40), bool)
        identity = None
        if table is not None:
            split = np.where(table["partition"] >= 0, table["partition"], split).astype(np.int8)
            attributes, known, identity = table["attributes"], table["known"], table["identity"]
        arrays = {"attributes": attributes[keep], "attributes_known": known[keep], "landmarks": landmarks[keep],
                  "yaw": yaw_from_landmarks(landmarks[keep]).astype(np.float32), "split": split[keep]}
        if identity is not None:
            arrays["identity"] = identity[keep]
        widths, heights = [s[0] for s in sizes], [s[1] for s in sizes]
        manifest = {
            "source_root": str(root.resolve()),
            "layout": ALIGNED_LAYOUT,
            "layout_description": f"a folder of {len(paths)} photos, detected and aligned to CelebA's frame",
            "resolution": resolution,
            "source_size": list(CELEBA_SIZE),  # the aligned frame the crop is cut from (scaled up above 128 px)
            "source_format": "photos",
            "photo_sizes": {"min": [min(widths), min(heights)], "max": [max(widths), max(heights)]},
            "crop_box": list(CROP_BOX),  # in the aligned 178x218 frame
            "upscaled": False,
            "detector": DETECTOR,
            "factor_names": [],
            "has_identity": identity is not None,
            "labels_file": str(labels.resolve()) if labels else None,
            "known_counts": {name: int(known[keep][:, j].sum()) for j, name in enumerate(CELEBA_ATTRIBUTES)},
            "split_rule": "labels file partition where given, else sha256(file name) % 100: <80 train, <90 valid",
            "label_sha256": checksums,
            "skipped": [{"file": filenames[row], "error": why} for row, why in skipped],
            "missing": {"count": 0, "of": len(paths), "first": []},
        }
        return arrays, [name for name, k in zip(filenames, keep) if k], manifest

    _write_cache(out, fill, start_time, say, root, "faces")
    return out


# ----------------------------------------------------------------------------------------------- dataset


