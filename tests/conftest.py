"""Shared test fixtures: a tiny CelebA-format set and its prepared 32x32 cache, built once per test session.

``tiny_celeba_root`` is the synthetic set from ``common.synthetic.write_synthetic_celeba`` (official layout, 160
images, seed 0). ``tiny_cache`` is its prepared cache at 32x32 (a Path). ``celeba_writer`` gives tests a small,
fast writer of CelebA-format folders with plain-colour images, for parser and cache tests that need control
over the files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.attributes import CELEBA_ATTRIBUTES
from common.celeba import LANDMARK_NAMES

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SHARED_REAL = Path(__file__).resolve().parents[2] / "shared" / "celeba-real"  # real CelebA photos, never committed
TINY_NUM, TINY_SEED, TINY_RESOLUTION = 160, 0, 32


def _lines_txt(rows: list[str], count: bool, header: str | None) -> str:
    # As distributed: CRLF line ends, a trailing space after the header's last name.
    head = ([f"{len(rows)}"] if count else []) + ([header + " "] if header is not None else [])
    return "".join(f"{line}\r\n" for line in head + rows)


def write_tiny_celeba(out: str | Path, num: int = 20, seed: int = 0, layout: str = "official",
                      factors: bool = True) -> Path:
    """A small CelebA-format folder (``official``, ``torchvision`` or ``kaggle`` layout) with plain images.

    Each image is a flat colour with a darker square where the face crop lands; labels are random but valid,
    landmarks scatter around CelebA's typical positions with a yaw spread, splits are ~80/10/10.
    """
    out = Path(out)
    rng = np.random.default_rng(seed)
    names = [f"{i + 1:06d}.jpg" for i in range(num)]
    attrs = rng.choice([-1, 1], size=(num, len(CELEBA_ATTRIBUTES)))
    split = np.where(np.arange(num) < 0.8 * num, 0, np.where(np.arange(num) < 0.9 * num, 1, 2))
    shift = rng.integers(-12, 13, size=num)  # nose x offset -> yaw
    typical = np.array([69, 111, 108, 111, 88, 136, 72, 152, 105, 152])
    landmarks = np.tile(typical, (num, 1))
    landmarks[:, 4] += shift
    bbox = np.stack([rng.integers(0, 100, num), rng.integers(0, 100, num), rng.integers(100, 300, num),
                     rng.integers(100, 300, num)], 1)
    identity = rng.integers(1, 10178, size=num)
    factor_values = np.stack([rng.uniform(-1, 1, num), rng.uniform(0, 1, num), shift / 24.0], 1)
    factor_names = ["smile", "mouth_open", "yaw"]

    base = out / "celeba" if layout == "torchvision" else out
    image_dir = base / "img_align_celeba" / ("img_align_celeba" if layout == "kaggle" else "")
    image_dir.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        colour = tuple(int(c) for c in rng.integers(40, 256, size=3))
        image = Image.new("RGB", (178, 218), colour)
        image.paste(tuple(c // 3 for c in colour), (25 + shift[i] % 7, 57, 90, 120))
        image.save(image_dir / name, quality=90)

    def fmt(values, width: int = 2) -> list[str]:
        return [" ".join(f"{v:>{width}d}" for v in row) for row in values]

    if layout == "kaggle":
        def csv(path: str, header: list[str], rows: list[str]) -> None:
            lines = [",".join(["image_id", *header])] + [f"{n},{r}" for n, r in zip(names, rows)]
            (base / path).write_text("".join(f"{line}\r\n" for line in lines), newline="")

        csv("list_attr_celeba.csv", list(CELEBA_ATTRIBUTES), [",".join(map(str, row)) for row in attrs])
        csv("list_eval_partition.csv", ["partition"], [str(s) for s in split])
        csv("list_landmarks_align_celeba.csv", list(LANDMARK_NAMES), [",".join(map(str, r)) for r in landmarks])
        csv("list_bbox_celeba.csv", ["x_1", "y_1", "width", "height"], [",".join(map(str, r)) for r in bbox])
        if factors:
            csv("synthetic_factors.csv", factor_names, [",".join(f"{v:.4f}" for v in r) for r in factor_values])
        return out

    def txt(path: str, rows: list[str], count: bool, header: str | None) -> None:
        (base / path).write_text(_lines_txt([f"{n} {r}" for n, r in zip(names, rows)], count, header), newline="")

    txt("list_attr_celeba.txt", fmt(attrs), True, " ".join(CELEBA_ATTRIBUTES))
    txt("list_eval_partition.txt", [str(s) for s in split], False, None)
    txt("list_landmarks_align_celeba.txt", fmt(landmarks, 4), True, " ".join(LANDMARK_NAMES))
    txt("list_bbox_celeba.txt", fmt(bbox, 4), True, "image_id x_1 y_1 width height")
    txt("identity_CelebA.txt", [str(v) for v in identity], False, None)
    if factors:
        txt("synthetic_factors.txt", [" ".join(f"{v:.4f}" for v in r) for r in factor_values], True,
            " ".join(factor_names))
    return out


def _write_synthetic(out: Path, num: int, seed: int, layout: str = "official") -> Path:
    from common.synthetic import write_synthetic_celeba

    return Path(write_synthetic_celeba(out, num, seed, layout=layout))


@pytest.fixture(scope="session")
def celeba_writer():
    """``write_tiny_celeba(out, num=20, seed=0, layout="official", factors=True) -> Path``."""
    return write_tiny_celeba


@pytest.fixture(scope="session")
def tiny_celeba_root(tmp_path_factory) -> Path:
    """The synthetic CelebA-format set: official layout, 160 images, seed 0 (built once per session)."""
    return _write_synthetic(tmp_path_factory.mktemp("tiny_celeba") / "synthetic", TINY_NUM, TINY_SEED)


@pytest.fixture(scope="session")
def tiny_cache(tiny_celeba_root, tmp_path_factory) -> Path:
    """The prepared 32x32 cache of ``tiny_celeba_root`` (a Path to a folder ``CelebACache`` opens)."""
    from common.cache import prepare_cache

    out = tmp_path_factory.mktemp("tiny_cache") / f"synthetic_{TINY_RESOLUTION}"
    return prepare_cache(tiny_celeba_root, TINY_RESOLUTION, out=out, workers=1, progress=False, log=None)


@pytest.fixture(scope="session")
def real_half10k() -> Path:
    """``../shared/celeba-real/half10k`` (10,000 real CelebA images at half size, official labels); skips if absent."""
    root = SHARED_REAL / "half10k"
    if not (root / "list_attr_celeba.txt").is_file():
        pytest.skip(f"real CelebA photos not found at {root} (they live outside the repository)")
    return root


@pytest.fixture(scope="session")
def real_identities() -> Path:
    """``../shared/celeba-real/identities`` (5,400 full-size photos of 200 people); skips if absent."""
    root = SHARED_REAL / "identities"
    if not (root / "identity_CelebA.txt").is_file():
        pytest.skip(f"real CelebA photos not found at {root} (they live outside the repository)")
    return root


@pytest.fixture(scope="session")
def real_cache64(real_half10k, tmp_path_factory) -> Path:
    """The half10k set prepared at 64x64 (about 3 s), once per session."""
    from common.cache import prepare_cache

    out = tmp_path_factory.mktemp("real") / "half10k_64"
    return prepare_cache(real_half10k, 64, out=out, workers=2, progress=False, log=None)
