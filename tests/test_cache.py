"""Tests of the prepared cache: crop, files and manifest, reuse/rebuild, atomicity, bad JPEGs, the Dataset."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, RandomSampler

import common.cache as cache_module
from common.cache import (
    CROP_BOX,
    CacheError,
    CelebACache,
    crop_and_resize,
    default_cache_dir,
    load_user_image,
    prepare_cache,
    read_manifest,
)
from common.celeba import CelebAFormatError, read_celeba, yaw_from_landmarks
from common.cli import UserError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def small_root(tmp_path_factory, celeba_writer) -> Path:
    return celeba_writer(tmp_path_factory.mktemp("small") / "celeba", num=40, seed=1)


@pytest.fixture(scope="module")
def small_cache(small_root, tmp_path_factory) -> Path:
    return prepare_cache(small_root, 16, out=tmp_path_factory.mktemp("c") / "celeba_16", workers=1,
                         progress=False, log=None)


def _gradient_image() -> Image.Image:
    x, y = np.meshgrid(np.arange(178), np.arange(218))  # [218, 178]
    return Image.fromarray(np.stack([x, y, (x + y) % 256], -1).astype(np.uint8))


# ----------------------------------------------------------------------------------------------- crop


def test_crop_is_the_128_square_centred_at_89_121():
    image = _gradient_image()
    assert CROP_BOX == (25, 57, 153, 185)
    face = crop_and_resize(image, 128)
    assert face.shape == (128, 128, 3) and face.dtype == np.uint8
    assert face[0, 0, 0] == 25 and face[0, 0, 1] == 57 and face[-1, -1, 0] == 152 and face[-1, -1, 1] == 184
    small = crop_and_resize(image, 32)
    assert small.shape == (32, 32, 3)
    # Lanczos on a linear ramp: pixel j of 32 covers source x 25 + 4j .. 29 + 4j, centre 27 + 4j
    np.testing.assert_allclose(small[5, :, 0].astype(float), 25 + 4 * np.arange(32) + 1.5, atol=1.5)
    with pytest.raises(ValueError, match=r"expected an aligned image in CelebA.s 178:218 frame .* got 200x200"):
        crop_and_resize(Image.new("RGB", (200, 200)), 32)


def test_default_cache_dir():
    assert default_cache_dir("data/synthetic", 32) == Path("data/cache/synthetic_32")
    assert default_cache_dir("/x/celeba/", 64) == Path("/x/cache/celeba_64")


def test_load_user_image_frames_like_celeba(tmp_path):
    celeba_like = tmp_path / "face.png"
    _gradient_image().save(celeba_like)
    tensor = load_user_image(celeba_like, 32)
    assert tensor.shape == (3, 32, 32) and tensor.dtype == torch.float32
    expected = torch.from_numpy(crop_and_resize(_gradient_image(), 32)).permute(2, 0, 1).float() / 127.5 - 1
    torch.testing.assert_close(tensor, expected)
    wide = tmp_path / "wide.jpg"
    Image.new("RGB", (640, 360), (255, 0, 0)).save(wide)
    red = load_user_image(wide, 16)
    assert red.shape == (3, 16, 16) and red.min() >= -1 and red.max() <= 1 and red[0].mean() > 0.95
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    with pytest.raises(UserError, match=rf"{broken}: cannot read the image"):
        load_user_image(broken, 16)
    with pytest.raises(UserError, match="missing.jpg: cannot read the image"):
        load_user_image(tmp_path / "missing.jpg", 16)


# ----------------------------------------------------------------------------------------------- prepare


def test_cache_files_and_manifest(small_root, small_cache):
    index = read_celeba(small_root)
    manifest = read_manifest(small_cache)
    assert manifest["complete"] is True and manifest["format_version"] == cache_module.FORMAT_VERSION
    assert manifest["resolution"] == 16 and manifest["crop_box"] == [25, 57, 153, 185]
    assert manifest["layout"] == "official" and manifest["source_root"] == str(small_root.resolve())
    assert manifest["counts"] == {"train": 32, "valid": 4, "test": 4} and manifest["num_images"] == 40
    assert manifest["skipped"] == [] and manifest["factor_names"] == ["smile", "mouth_open", "yaw"]
    for name, digest in manifest["label_sha256"].items():
        assert hashlib.sha256((small_root / name).read_bytes()).hexdigest() == digest
    assert len(manifest["label_sha256"]) == 6
    images = np.memmap(small_cache / "images.u8", dtype=np.uint8, mode="r", shape=(40, 16, 16, 3))
    with Image.open(small_root / "img_align_celeba" / "000007.jpg") as source:
        np.testing.assert_array_equal(images[6], crop_and_resize(source, 16))
    np.testing.assert_array_equal(np.load(small_cache / "attributes.npy"), index.attributes)
    np.testing.assert_allclose(np.load(small_cache / "yaw.npy"), yaw_from_landmarks(index.landmarks))
    np.testing.assert_array_equal(np.load(small_cache / "split.npy"), index.partition)
    np.testing.assert_allclose(np.load(small_cache / "factors.npy"), index.factors)
    assert (small_cache / "filenames.txt").read_text().split() == index.filenames
    assert not list(small_cache.parent.glob(".*partial*"))


def test_reuse_and_rebuild(tmp_path, celeba_writer, capsys):
    root = celeba_writer(tmp_path / "celeba", num=8)
    out = prepare_cache(root, 8, workers=1, progress=False)
    assert out == tmp_path / "cache" / "celeba_8"
    stamp = (out / "images.u8").stat().st_mtime_ns
    capsys.readouterr()
    assert prepare_cache(root, 8, workers=1, progress=False) == out
    assert "reusing" in capsys.readouterr().out and (out / "images.u8").stat().st_mtime_ns == stamp
    attr = root / "list_attr_celeba.txt"
    attr.write_text(attr.read_text().replace("000008.jpg -1", "000008.jpg  1", 1), newline="")
    prepare_cache(root, 8, workers=1, progress=False)
    assert "stale (the label files changed)" in capsys.readouterr().out
    assert read_manifest(out)["label_sha256"]["list_attr_celeba.txt"] == hashlib.sha256(attr.read_bytes()).hexdigest()
    assert sorted(p.name for p in out.parent.iterdir()) == ["celeba_8"]  # old folder and temp folder gone


def test_workers_give_identical_bytes(small_root, small_cache, tmp_path, monkeypatch):
    monkeypatch.setattr(cache_module, "CHUNK", 7)  # several chunks across 2 processes
    out = prepare_cache(small_root, 16, out=tmp_path / "two", workers=2, progress=False, log=None)
    assert (out / "images.u8").read_bytes() == (small_cache / "images.u8").read_bytes()


def test_interrupted_build_leaves_nothing_that_passes_as_complete(tmp_path, celeba_writer, monkeypatch):
    root = celeba_writer(tmp_path / "celeba", num=6)
    out = tmp_path / "cache" / "celeba_8"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cache_module, "_decode_all", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare_cache(root, 8, out=out, progress=False, log=None)
    assert not out.exists() and list(out.parent.iterdir()) == []
    # A killed run (no cleanup) leaves a temp folder; the next run removes it when its process is gone.
    dead = out.parent / f".{out.name}.partial-999999999-1"
    dead.mkdir()
    (dead / "manifest.json").write_text(json.dumps({"complete": True}))
    monkeypatch.undo()
    prepare_cache(root, 8, out=out, progress=False, log=None)
    assert sorted(p.name for p in out.parent.iterdir()) == ["celeba_8"]


def test_incomplete_or_missing_cache_tells_how_to_prepare(tmp_path, celeba_writer):
    with pytest.raises(CacheError, match=r"celeba_64: the prepared cache does not exist; run `python "
                                         r"scripts/prepare_data.py --root .* --resolution 64` first"):
        CelebACache(tmp_path / "celeba_64")
    root = celeba_writer(tmp_path / "celeba", num=4)
    out = prepare_cache(root, 8, progress=False, log=None)
    manifest = read_manifest(out)
    (out / "manifest.json").write_text(json.dumps({**manifest, "complete": False}))
    with pytest.raises(CacheError, match=rf"is incomplete; run `python scripts/prepare_data.py --root "
                                         rf"{root.resolve()} --resolution 8` first"):
        CelebACache(out)
    prepare_cache(root, 8, progress=False, log=None)  # rebuilt, not reused
    assert len(CelebACache(out, "all")) == 4


def test_rebuild_never_replaces_a_folder_that_is_not_a_cache(tmp_path, celeba_writer):
    root = celeba_writer(tmp_path / "celeba", num=3)
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("keep me")
    with pytest.raises(UserError, match=r"precious: exists and holds files that are not a prepared cache "
                                        r"\(thesis.tex\)"):
        prepare_cache(root, 8, out=precious, progress=False, log=None)
    assert (precious / "thesis.tex").read_text() == "keep me"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert len(CelebACache(prepare_cache(root, 8, out=empty, progress=False, log=None), "all")) == 3


def test_corrupt_jpeg_stops_or_is_skipped(tmp_path, celeba_writer, monkeypatch):
    root = celeba_writer(tmp_path / "celeba", num=6)
    bad = root / "img_align_celeba" / "000003.jpg"
    bad.write_bytes(bad.read_bytes()[:300])  # truncated
    with pytest.raises(CelebAFormatError, match=rf"{bad}:0: cannot decode the image .*--skip-bad"):
        prepare_cache(root, 8, out=tmp_path / "c", workers=1, progress=False, log=None)
    assert not (tmp_path / "c").exists()
    monkeypatch.setattr(cache_module, "CHUNK", 2)  # the same error from a worker process, with others running
    with pytest.raises(CelebAFormatError, match=rf"{bad}:0: cannot decode the image"):
        prepare_cache(root, 8, out=tmp_path / "c", workers=2, progress=False, log=None)
    assert not (tmp_path / "c").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["celeba"]
    out = prepare_cache(root, 8, out=tmp_path / "c", workers=2, skip_bad=True, progress=False, log=None)
    manifest = read_manifest(out)
    assert [s["file"] for s in manifest["skipped"]] == ["000003.jpg"] and manifest["num_images"] == 5
    assert "000003.jpg" not in (out / "filenames.txt").read_text()
    dataset = CelebACache(out, "all")
    assert len(dataset) == 5 and dataset.images.shape == (5, 8, 8, 3)
    with Image.open(root / "img_align_celeba" / "000004.jpg") as source:
        np.testing.assert_array_equal(dataset.images_uint8([2])[0], crop_and_resize(source, 8))


def test_wrong_image_size_is_reported(tmp_path, celeba_writer):
    root = celeba_writer(tmp_path / "celeba", num=3)
    Image.new("RGB", (500, 400)).save(root / "img_align_celeba" / "000002.jpg")
    with pytest.raises(CelebAFormatError, match=r"000002.jpg:0: image is 500x400 but the folder.s first image is 178x218"):
        prepare_cache(root, 8, out=tmp_path / "c", workers=1, progress=False, log=None)


# ----------------------------------------------------------------------------------------------- dataset


def test_items_follow_the_contract(small_cache):
    dataset = CelebACache(small_cache, "train")
    assert len(dataset) == 32 and dataset.resolution == 16 and dataset.factor_names == ["smile", "mouth_open", "yaw"]
    item = dataset[3]
    assert item["image"].shape == (3, 16, 16) and item["image"].dtype == torch.float32
    assert -1 <= item["image"].min() and item["image"].max() <= 1
    assert item["attributes"].shape == (40,) and set(item["attributes"].unique().tolist()) <= {0.0, 1.0}
    assert item["yaw"].shape == () and item["factors"].shape == (3,) and item["index"].dtype == torch.int64
    raw = dataset.images_uint8([3])[0]  # [R, R, 3]
    torch.testing.assert_close(item["image"], torch.from_numpy(raw).permute(2, 0, 1).float() / 127.5 - 1)
    assert [len(CelebACache(small_cache, s)) for s in ("valid", "test", "all")] == [4, 4, 40]
    assert int(CelebACache(small_cache, "test")[0]["index"]) == 36
    attributes, yaw, factors = dataset.labels()
    assert attributes.shape == (32, 40) and yaw.shape == (32,) and factors.shape == (32, 3)
    assert yaw[3] == pytest.approx(float(item["yaw"])) and np.array_equal(attributes[3], item["attributes"].numpy())
    assert dataset.filenames[:2] == ["000001.jpg", "000002.jpg"]
    with pytest.raises(IndexError):
        dataset[32]
    with pytest.raises(UserError, match="split 'training': expected one of train, valid, test, all"):
        CelebACache(small_cache, "training")


def test_hflip_flips_the_image_and_negates_yaw(small_cache):
    plain = CelebACache(small_cache, "all")
    flipping = CelebACache(small_cache, "all", hflip=True)
    torch.manual_seed(0)
    flips = 0
    for i in range(len(plain)):
        a, b = plain[i], flipping[i]
        if torch.equal(b["image"], a["image"].flip(-1)) and not torch.equal(a["image"], b["image"]):
            flips += 1
            assert b["yaw"] == -a["yaw"] and b["factors"][2] == -a["factors"][2]  # yaw factor too
            assert b["factors"][0] == a["factors"][0]
        else:
            assert torch.equal(b["image"], a["image"]) and b["yaw"] == a["yaw"]
        assert torch.equal(a["attributes"], b["attributes"])
    assert 8 < flips < 32  # about half of 40


def test_batched_reads_match_single_items_and_cover_each_image_once(small_cache):
    dataset = CelebACache(small_cache, "train")
    many = dataset.__getitems__([5, 0, 31, 5])
    for position, item in zip([5, 0, 31, 5], many):
        single = dataset[position]
        assert all(torch.equal(item[k], single[k]) for k in single)
    loader = DataLoader(dataset, batch_size=10, shuffle=True, generator=torch.Generator().manual_seed(0))
    seen = torch.cat([batch["index"] for batch in loader])
    assert sorted(seen.tolist()) == dataset.indices.tolist()
    batches = list(dataset.batches(10, shuffle=True, generator=torch.Generator().manual_seed(1)))
    assert [len(b["index"]) for b in batches] == [10, 10, 10, 2]
    assert sorted(torch.cat([b["index"] for b in batches]).tolist()) == dataset.indices.tolist()
    assert len(list(dataset.batches(10, drop_last=True))) == 3
    sampler = BatchSampler(RandomSampler(dataset, generator=torch.Generator().manual_seed(2)), 10, drop_last=False)
    whole = list(DataLoader(dataset, sampler=sampler, batch_size=None))
    assert [b["image"].shape for b in whole] == [(10, 3, 16, 16)] * 3 + [(2, 3, 16, 16)]
    assert sorted(torch.cat([b["index"] for b in whole]).tolist()) == dataset.indices.tolist()
    assert torch.equal(dataset[[4, 1]]["image"][1], dataset[1]["image"])
    with pytest.raises(IndexError):
        dataset[[0, 32]]
    first = batches[0]
    lookup = {int(r): p for p, r in enumerate(dataset.indices)}
    for row, image in zip(first["index"], first["image"]):
        assert torch.equal(image, dataset[lookup[int(row)]]["image"])


def test_distributed_sampler_and_worker_pickling(small_cache):
    dataset = CelebACache(small_cache, "train")
    _ = dataset.images  # mapped in this process; must not travel in the pickle
    assert len(pickle.dumps(dataset)) < 10 * 32 * 16 * 16 * 3
    ranks = []
    for rank in range(2):
        sampler = DistributedSampler(dataset, num_replicas=2, rank=rank, shuffle=True, seed=0)
        loader = DataLoader(dataset, batch_size=4, sampler=sampler, num_workers=1 if rank else 0)
        ranks.append(torch.cat([b["index"] for b in loader]).tolist())
    assert len(ranks[0]) == len(ranks[1]) == 16 and not set(ranks[0]) & set(ranks[1])
    assert sorted(ranks[0] + ranks[1]) == dataset.indices.tolist()


def test_tiny_cache_fixture(tiny_cache):
    manifest = read_manifest(tiny_cache)
    assert manifest["resolution"] == 32 and manifest["num_images"] == 160
    assert sum(manifest["counts"].values()) == 160
    dataset = CelebACache(tiny_cache, "all")
    assert dataset.images.shape == (160, 32, 32, 3) and dataset.images.std() > 5  # not blank images
    _, yaw, factors = dataset.labels()
    if "yaw" in dataset.factor_names:  # the generator's true yaw and the landmark score share one sign convention
        assert np.corrcoef(yaw, factors[:, dataset.factor_names.index("yaw")])[0, 1] > 0.9


# ----------------------------------------------------------------------------------------------- the script


def test_prepare_data_script_on_the_kaggle_layout(tmp_path):
    from common.synthetic import write_synthetic_celeba

    root = write_synthetic_celeba(tmp_path / "kaggle", 12, 2, layout="kaggle")
    command = [sys.executable, "scripts/prepare_data.py", "--root", str(root), "--resolution", "16",
               "--no-progress"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env={**os.environ, "CI": "1"})
    assert result.returncode == 0, result.stderr
    assert "found CelebA kaggle layout" in result.stdout and "no identity_CelebA" in result.stdout
    out = tmp_path / "cache" / "kaggle_16"
    assert read_manifest(out)["layout"] == "kaggle" and len(CelebACache(out, "all")) == 12


def test_prepare_data_script_reports_a_missing_root_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["prepare_data.py", "--root", str(tmp_path / "nothing"), "--resolution", "16"])
    with pytest.raises(SystemExit) as info:
        runpy.run_path(str(REPO / "scripts" / "prepare_data.py"), run_name="__main__")
    stderr = capsys.readouterr().err
    assert info.value.code == 2 and stderr.startswith("error: ") and stderr.count("\n") == 1
    assert "nothing:0: CelebA folder does not exist" in stderr and "list_attr_celeba.txt" in stderr


def test_hflip_negates_the_mirror_odd_synthetic_factors(tiny_cache):
    plain = CelebACache(tiny_cache, "all")
    flipping = CelebACache(tiny_cache, "all", hflip=True)
    names = plain.factor_names
    odd = [names.index("yaw"), names.index("lighting")]
    even = [i for i in range(len(names)) if i not in odd]
    torch.manual_seed(0)
    flips = 0
    for i in range(len(plain)):
        a, b = plain[i], flipping[i]
        if not torch.equal(a["image"], b["image"]):
            flips += 1
            assert torch.equal(b["factors"][odd], -a["factors"][odd])  # a mirror turns the head and the light
            assert torch.equal(b["factors"][even], a["factors"][even])  # and leaves the smile alone
    assert flips > len(plain) // 4


# ----------------------------------------------------------------------------------------------- copies people have


def _copy_tree(root: Path, out: Path, convert) -> Path:
    """A copy of a CelebA folder whose images pass through ``convert(image, name) -> (image, new name)``."""
    import shutil

    shutil.copytree(root, out, ignore=shutil.ignore_patterns("img_align_celeba"))
    images_out = out / "img_align_celeba"
    images_out.mkdir()
    for path in sorted((root / "img_align_celeba").iterdir()):
        with Image.open(path) as image:
            image.load()
            converted, name = convert(image, path.name)
        converted.save(images_out / name)
    return out


@pytest.fixture(scope="module")
def face_root(tmp_path_factory) -> Path:
    from common.synthetic import write_synthetic_celeba

    return Path(write_synthetic_celeba(tmp_path_factory.mktemp("faces") / "synthetic", 24, 3))


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0 ** 2 / max(mse, 1e-12)))


def test_a_half_size_copy_gives_the_same_faces(face_root, tmp_path):
    half = _copy_tree(face_root, tmp_path / "half",
                      lambda image, name: (image.resize((89, 109), Image.LANCZOS), name.replace(".jpg", ".png")))
    full_cache = prepare_cache(face_root, 32, out=tmp_path / "full_32", workers=1, progress=False, log=None)
    half_cache = prepare_cache(half, 32, out=tmp_path / "half_32", workers=1, progress=False, log=None)
    full, halved = CelebACache(full_cache, "all"), CelebACache(half_cache, "all")
    assert len(full) == len(halved) == 24
    psnrs = [_psnr(full.images_uint8([i])[0], halved.images_uint8([i])[0]) for i in range(24)]
    assert min(psnrs) > 35, psnrs  # the same crop, scaled: not a shifted or differently framed face
    np.testing.assert_array_equal(np.load(full_cache / "landmarks.npy"), np.load(half_cache / "landmarks.npy"))
    manifest = read_manifest(half_cache)
    assert manifest["source_size"] == [89, 109] and manifest["source_format"] == "png"
    assert manifest["crop_box"] == [12.5, 28.5, 76.5, 92.5] and manifest["upscaled"] is False
    assert read_manifest(full_cache)["source_size"] == [178, 218]


def test_the_png_distribution_is_read_with_labels_naming_jpgs(face_root, tmp_path):
    png = _copy_tree(face_root, tmp_path / "png", lambda image, name: (image.convert("RGB"), name[:-4] + ".png"))
    (png / "img_align_celeba").rename(png / "img_align_celeba_png")  # the folder name of CelebA's PNG copy
    jpg_cache = prepare_cache(face_root, 16, out=tmp_path / "jpg_16", workers=1, progress=False, log=None)
    png_cache = prepare_cache(png, 16, out=tmp_path / "png_16", workers=1, progress=False, log=None)
    # the PNGs hold the JPEGs' decoded pixels, so the caches agree byte for byte, and keep the labels' names
    np.testing.assert_array_equal(CelebACache(jpg_cache, "all").images, CelebACache(png_cache, "all").images)
    assert (png_cache / "filenames.txt").read_text().splitlines()[0] == "000001.jpg"
    assert read_manifest(png_cache)["source_format"] == "png"


def test_resolution_above_the_source_crop_needs_upscale(face_root, tmp_path):
    half = _copy_tree(face_root, tmp_path / "half", lambda image, name: (image.resize((89, 109), Image.LANCZOS), name))
    with pytest.raises(UserError, match=r"000001.jpg: the images are 89x109, whose face crop is 64x64 pixels, so "
                                        r"--resolution 128 would enlarge them; expected --resolution 64 or less"):
        prepare_cache(half, 128, out=tmp_path / "c", workers=1, progress=False, log=None)
    assert not (tmp_path / "c").exists()
    out = prepare_cache(half, 128, out=tmp_path / "c", workers=1, progress=False, log=None, upscale=True)
    assert read_manifest(out)["upscaled"] is True and CelebACache(out, "all").images.shape == (24, 128, 128, 3)


def test_mixed_sizes_and_foreign_frames_name_the_file(tmp_path, celeba_writer):
    root = celeba_writer(tmp_path / "mixed", num=4)
    with Image.open(root / "img_align_celeba" / "000003.jpg") as image:
        image.resize((89, 109)).save(root / "img_align_celeba" / "000003.jpg")
    with pytest.raises(CelebAFormatError, match=r"000003.jpg:0: image is 89x109 but the folder's first image is "
                                                r"178x218; expected one size"):
        prepare_cache(root, 8, out=tmp_path / "c", workers=1, progress=False, log=None, skip_bad=True)
    wide = celeba_writer(tmp_path / "wide", num=3)
    for path in (wide / "img_align_celeba").iterdir():
        Image.new("RGB", (218, 178)).save(path)
    with pytest.raises(CelebAFormatError, match=r"000001.jpg:0: expected an aligned image in CelebA's 178:218 frame "
                                                r".*got 218x178"):
        prepare_cache(wide, 8, out=tmp_path / "c2", workers=1, progress=False, log=None)
    assert not (tmp_path / "c").exists() and not (tmp_path / "c2").exists()


def test_a_partial_download_is_named_and_only_present_goes_on(tmp_path, celeba_writer):
    root = celeba_writer(tmp_path / "partial", num=20)
    for name in ("000005.jpg", "000011.jpg", "000012.jpg"):
        (root / "img_align_celeba" / name).unlink()
    with pytest.raises(CelebAFormatError, match=r"list_attr_celeba.txt:7: image '000005.jpg' is listed but not in "
                                                r".*\(3 of 20 listed images are missing: 000005.jpg, 000011.jpg, "
                                                r"000012.jpg\); a partial download\? --only-present goes on with the 17"):
        prepare_cache(root, 8, out=tmp_path / "c", workers=1, progress=False, log=None)
    out = prepare_cache(root, 8, out=tmp_path / "c", workers=1, progress=False, log=None, only_present=True)
    manifest = read_manifest(out)
    assert manifest["num_images"] == 17 and manifest["missing"] == {
        "count": 3, "of": 20, "first": ["000005.jpg", "000011.jpg", "000012.jpg"]}
    names = (out / "filenames.txt").read_text().splitlines()
    assert "000005.jpg" not in names and len(names) == 17
    index = read_celeba(root, only_present=True)
    np.testing.assert_array_equal(np.load(out / "attributes.npy"), index.attributes)
    # the labels of the images that are there stay with them
    full = read_celeba(root, check_images=False)
    keep = [full.filenames.index(name) for name in names]
    np.testing.assert_array_equal(np.load(out / "landmarks.npy"), full.landmarks[keep])
    # a reuse without --only-present does not pass the partial cache off as the whole set
    with pytest.raises(CelebAFormatError, match="3 of 20 listed images are missing"):
        prepare_cache(root, 8, out=tmp_path / "c", workers=1, progress=False, log=None)


def test_prepare_data_script_reports_a_partial_download_in_one_line(tmp_path, celeba_writer):
    root = celeba_writer(tmp_path / "partial", num=6)
    (root / "img_align_celeba" / "000002.jpg").unlink()
    command = [sys.executable, str(REPO / "scripts" / "prepare_data.py"), "--root", str(root), "--resolution", "8",
               "--out", str(tmp_path / "c"), "--no-progress"]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0 and "1 of 6 listed images are missing" in result.stderr
    result = subprocess.run([*command, "--only-present"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert read_manifest(tmp_path / "c")["num_images"] == 5
