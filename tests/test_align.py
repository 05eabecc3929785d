"""Face alignment (common/align.py, scripts/align_faces.py) on real CelebA photos made unaligned.

The photos come from ../shared/celeba-real/ (never copied into the repository); those tests skip when it is
absent, and the detector tests skip without facenet-pytorch. An aligned photo moved by a known similarity
(rotated 15 degrees, scaled 0.7, shifted onto a larger canvas) must come back: landmarks near the official
ones moved the same way, and the re-aligned crop near the original's.
"""

from __future__ import annotations

import importlib.util
import json
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_evaluate import run_script

from common.align import (
    ALIGNED_SIZE,
    CELEBA_TEMPLATE,
    align_face,
    apply_transform,
    compose,
    detect_faces,
    expand_image_paths,
    fit_alignment,
    frame_photo,
    frame_residual,
    frame_transform,
    interocular_error,
    invert_transform,
    load_photo,
    model_crop,
    paste_back,
    paste_mask,
    similarity_transform,
    warp,
)
from common.cache import CROP_BOX
from common.celeba import parse_landmarks_file
from common.cli import UserError
from common.metrics import psnr

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "celeba-real"
HALF, IDENTITIES = SHARED / "half10k", SHARED / "identities" / "img_align_celeba"
needs_photos = pytest.mark.skipif(not SHARED.is_dir(), reason=f"{SHARED} (real CelebA photos) not found")
needs_detector = pytest.mark.skipif(importlib.util.find_spec("facenet_pytorch") is None,
                                    reason="facenet-pytorch not installed (make setup installs it)")
BOX_POINTS = np.array([[CROP_BOX[0], CROP_BOX[1]], [CROP_BOX[2], CROP_BOX[1]], [CROP_BOX[0], CROP_BOX[3]],
                       [CROP_BOX[2], CROP_BOX[3]]], dtype=np.float64)


def similarity(angle_deg: float, scale: float, shift) -> np.ndarray:
    a = math.radians(angle_deg)
    return np.array([[scale * math.cos(a), -scale * math.sin(a), shift[0]],
                     [scale * math.sin(a), scale * math.cos(a), shift[1]]])


def unalign(image: Image.Image, angle=15.0, scale=0.7, canvas=(420, 380), at=(150, 120)):
    """The aligned photo rotated, scaled and placed on a larger grey canvas -> (photo, matrix aligned -> photo)."""
    matrix = similarity(angle, scale, at)
    return warp(image, matrix, canvas, fill=(128, 128, 128)), matrix


def box_shift(a, b) -> float:
    """Mean distance (aligned pixels) between where two photo -> aligned maps put the crop box's corners."""
    photo_points = apply_transform(invert_transform(b), BOX_POINTS)
    return float(np.linalg.norm(apply_transform(a, photo_points) - BOX_POINTS, axis=1).mean())


def signed(crop: np.ndarray) -> np.ndarray:
    return crop.transpose(2, 0, 1)[None] / 127.5 - 1


def run_align_faces(*args: str) -> tuple[int, str]:
    """scripts/align_faces.py's main() in this process (the detector loads once) -> (exit code, stderr)."""
    return run_script("align_faces.py", *args)


def png16(path: Path, pixels: np.ndarray) -> Path:
    """A 16-bit PNG (gray [H, W, 1] or RGB [H, W, 3] uint16), written by hand: Pillow cannot write 16-bit RGB."""
    height, width, channels = pixels.shape
    raw = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 16, {1: 0, 3: 2}[channels], 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))
    return path


# ------------------------------------------------------------------------------------------------ geometry


def test_similarity_transform_recovers_a_known_transform():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 200, (5, 2))
    known = similarity(-23.0, 1.7, (31.0, -12.5))
    np.testing.assert_allclose(similarity_transform(src, apply_transform(known, src)), known, atol=1e-9)
    noisy = apply_transform(known, src) + rng.normal(0, 0.5, (5, 2))
    fitted = similarity_transform(src, noisy)

    def residual(m):
        return ((apply_transform(m, src) - noisy) ** 2).sum()

    assert residual(fitted) <= residual(known)  # least squares: no worse than the truth on its own points
    np.testing.assert_allclose(fitted[:, :2], known[:, :2], atol=0.02)
    mirrored = src * [-1, 1]  # a reflection is not a similarity: the fit stays a rotation (det > 0)
    assert np.linalg.det(similarity_transform(src, mirrored)[:, :2]) > 0
    np.testing.assert_allclose(compose(invert_transform(known), known), [[1, 0, 0], [0, 1, 0]], atol=1e-12)
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        similarity_transform(src, src[:4])


def test_aligning_the_template_is_the_identity():
    np.testing.assert_allclose(fit_alignment(CELEBA_TEMPLATE), [[1, 0, 0], [0, 1, 0]], atol=1e-9)
    moved = similarity(10, 2.0, (40, 7))
    np.testing.assert_allclose(fit_alignment(apply_transform(moved, CELEBA_TEMPLATE)), invert_transform(moved),
                               atol=1e-9)


def test_frame_photo_for_already_aligned_crops():
    rng = np.random.default_rng(1)
    aligned = Image.fromarray(rng.integers(0, 256, (218, 178, 3), dtype=np.uint8), "RGB")
    same, transform = frame_photo(aligned)
    assert np.array_equal(np.asarray(same), np.asarray(aligned))
    np.testing.assert_allclose(transform, np.eye(2, 3), atol=1e-12)
    # twice the size with 40 extra columns: aligned pixel (0, 0) is the centre of photo pixels 20-21 x 0-1
    double = Image.new("RGB", (356 + 40, 436))
    double.paste(aligned.resize((356, 436), Image.BOX), (20, 0))
    np.testing.assert_allclose(apply_transform(frame_transform(double.size), [[20.5, 0.5]]), [[0, 0]], atol=1e-9)
    framed, _ = frame_photo(double)
    assert psnr(signed(np.asarray(framed)), signed(np.asarray(aligned)))[0] > 30


@needs_photos
def test_template_is_the_mean_of_the_official_landmarks():
    table = parse_landmarks_file(HALF / "list_landmarks_align_celeba.txt")
    assert len(table.values) == 10000
    mean = table.values.astype(np.float64).mean(0).reshape(5, 2)
    np.testing.assert_allclose(CELEBA_TEMPLATE, mean, atol=5e-5)
    # CelebA's own images are aligned by the eyes and the mouth's centre: refitting them barely moves them
    official = table.values[:1000].reshape(-1, 5, 2)
    assert frame_residual(official).mean() < 1.0 < 2.5 < frame_residual(official, lambda p: p).mean()


# ------------------------------------------------------------------------------------------------ photos


def test_load_photo_converts_gray_rgba_16_bit_and_reports_bad_files(tmp_path):
    Image.new("L", (20, 10), 77).save(tmp_path / "gray.png")
    assert np.asarray(load_photo(tmp_path / "gray.png")).tolist()[0][0] == [77, 77, 77]
    Image.new("RGBA", (20, 10), (200, 10, 10, 0)).save(tmp_path / "clear.png")  # transparent -> white
    assert np.asarray(load_photo(tmp_path / "clear.png"))[0, 0].tolist() == [255, 255, 255]
    Image.new("RGBA", (20, 10), (200, 10, 10, 255)).save(tmp_path / "opaque.png")
    assert np.asarray(load_photo(tmp_path / "opaque.png"))[0, 0].tolist() == [200, 10, 10]
    deep = np.full((10, 20, 3), [51400, 2570, 65535], dtype=np.uint16)
    assert np.asarray(load_photo(png16(tmp_path / "rgb16.png", deep)))[0, 0].tolist() == [200, 10, 255]
    gray = np.full((10, 20, 1), 1285, dtype=np.uint16)  # 1285 / 257 = 5: scaled, not clipped at 255
    photo = load_photo(png16(tmp_path / "gray16.png", gray))
    assert photo.mode == "RGB" and np.asarray(photo)[0, 0].tolist() == [5, 5, 5]
    (tmp_path / "notes.jpg").write_text("not a photo")
    with pytest.raises(UserError, match=r"notes\.jpg: cannot read the image"):
        load_photo(tmp_path / "notes.jpg")
    with pytest.raises(UserError, match=r"missing\.jpg: image file not found"):
        load_photo(tmp_path / "missing.jpg")
    assert expand_image_paths([tmp_path]) == sorted(p for p in tmp_path.iterdir() if p.suffix in (".png", ".jpg"))


# ------------------------------------------------------------------------------------------------ real photos


@needs_photos
@needs_detector
def test_unaligned_real_photos_come_back():
    table = parse_landmarks_file(HALF / "list_landmarks_align_celeba.txt")
    errors = []
    for i in range(8):  # half-size photos, scaled 1.4 (0.7 of full size): landmarks against the official rows
        image = load_photo(HALF / "img_align_celeba" / table.filenames[i])
        photo, matrix = unalign(image, angle=15.0 * (-1) ** i, scale=1.4)
        faces = detect_faces(photo)
        assert len(faces) == 1
        official_half = (table.values[i].reshape(5, 2) + 0.5) / 2 - 0.5
        errors.append(interocular_error(faces[0].landmarks[None], apply_transform(matrix, official_half)[None])[0])
    # measured on ids 1-500: 6% of the inter-ocular distance on average; ids 3 and 4 (turned faces) are worst
    assert np.median(errors) < 0.07 and max(errors) < 0.25, errors
    for name in ("000002.jpg", "000086.jpg"):  # full-size photos: the re-aligned crop against the original
        original = load_photo(IDENTITIES / name)
        photo, matrix = unalign(original)
        (face,) = detect_faces(photo)
        aligned, transform = align_face(photo, face.landmarks)
        assert aligned.size == ALIGNED_SIZE
        # the round trip aligned -> photo -> aligned moves CelebA's crop box (128 pixels) by a few pixels, as
        # much as aligning the original photo itself does (measured on 50 photos: docs/own-photos.md)
        direct = fit_alignment(detect_faces(original)[0].landmarks)
        assert box_shift(compose(transform, matrix), direct) < 5.0
        assert box_shift(compose(transform, matrix), np.eye(2, 3)) < 6.0
        crop, reference = signed(model_crop(aligned, 64)), signed(model_crop(original, 64))
        shifted = signed(model_crop(original.transform(ALIGNED_SIZE, Image.AFFINE, (1, 0, 4, 0, 1, 4)), 64))
        assert psnr(crop, reference)[0] > max(17.0, psnr(shifted, reference)[0] + 1.0)


@needs_photos
@needs_detector
def test_align_faces_script_no_face_several_faces_and_odd_files(tmp_path):
    left, right = load_photo(IDENTITIES / "000002.jpg"), load_photo(IDENTITIES / "000132.jpg")
    group = Image.new("RGB", (560, 300), (90, 90, 90))
    group.paste(left, (20, 40))
    group.paste(right.resize((240, 294), Image.LANCZOS), (300, 3))  # the larger face, on the right
    inputs = tmp_path / "in"
    inputs.mkdir()
    group.save(inputs / "group.jpg", quality=95)
    Image.new("RGB", (300, 200), (40, 120, 200)).save(inputs / "sky.png")  # no face
    source = load_photo(IDENTITIES / "000086.jpg")
    photo, matrix = unalign(source)
    truth = apply_transform(matrix, detect_faces(source)[0].landmarks)
    photo.convert("L").save(inputs / "gray.png")
    # EXIF orientation 6: the pixels are stored turned 90 degrees; a viewer (and load_photo) turns them back
    exif = Image.Exif()
    exif[0x0112] = 6
    photo.transpose(Image.Transpose.ROTATE_90).save(inputs / "phone.jpg", quality=95, exif=exif.tobytes())

    code, err = run_align_faces(str(inputs), "--out", str(tmp_path / "all"), "--face", "all")
    assert code == 2
    assert [line for line in err.splitlines() if "error:" in line] == [
        f"error: {inputs / 'sky.png'}: no face found (300x200 photo)"]
    out = tmp_path / "all"
    assert sorted(p.name for p in out.iterdir()) == ["gray.json", "gray.png", "group-0.png", "group-1.png",
                                                     "group.json", "phone.json", "phone.png"]
    record = json.loads((out / "group.json").read_text())
    assert [f["aligned"] for f in record["faces"]] == ["group-0.png", "group-1.png"]
    assert np.mean(record["faces"][0]["landmarks"], 0)[0] < 280 < np.mean(record["faces"][1]["landmarks"], 0)[0]
    # each aligned face is the photo it came from, re-aligned
    for name, source in (("group-0.png", left), ("group-1.png", right)):
        aligned = Image.open(out / name)
        assert aligned.size == ALIGNED_SIZE
        assert psnr(signed(model_crop(aligned, 64)), signed(model_crop(source, 64)))[0] > 17.0
    for name in ("gray", "phone"):
        record = json.loads((out / f"{name}.json").read_text())
        assert record["photo_size"] == [420, 380] and np.shape(record["landmarks"]) == (5, 2)
        assert record["score"] > 0.9 and np.shape(record["transform"]) == (2, 3)
        # in the upright photo's pixels, not the stored ones
        assert interocular_error(np.array(record["landmarks"])[None], truth[None])[0] < 0.1
        reprojected = apply_transform(record["transform"], record["landmarks"])
        assert np.abs(reprojected - CELEBA_TEMPLATE).max() < 12  # the transform is the one the landmarks give

    code, err = run_align_faces(str(inputs / "group.jpg"), "--out", str(tmp_path / "largest"))
    assert code == 0 and sorted(p.name for p in (tmp_path / "largest").iterdir()) == ["group.json", "group.png"]
    assert json.loads((tmp_path / "largest" / "group.json").read_text())["face"] == 1
    assert np.array_equal(np.asarray(Image.open(tmp_path / "largest" / "group.png")),
                          np.asarray(Image.open(out / "group-1.png")))
    code, err = run_align_faces(str(inputs / "group.jpg"), "--out", str(tmp_path / "n"), "--face", "2")
    assert code == 2 and "group.jpg" in err and "only 2 face(s) found" in err


@needs_photos
@needs_detector
@pytest.mark.parametrize("size", ["large", "small"])
def test_very_large_and_very_small_photos(size):
    original = load_photo(IDENTITIES / "000058.jpg")
    scale = 9.0 if size == "large" else 0.3  # a 3200-pixel photo, or a face 30 pixels across
    photo, matrix = unalign(original, angle=-10, scale=scale,
                            canvas=(math.ceil(300 * scale), math.ceil(300 * scale)), at=(40 * scale, 60 * scale))
    (face,) = detect_faces(photo)
    truth = apply_transform(matrix, detect_faces(original)[0].landmarks)
    assert interocular_error(face.landmarks[None], truth[None])[0] < (0.06 if size == "large" else 0.2)


# ------------------------------------------------------------------------------------------------ paste back


@needs_photos
def test_paste_back_changes_only_the_masked_face():
    original = load_photo(IDENTITIES / "000161.jpg")
    photo, matrix = unalign(original, angle=20, scale=1.3, canvas=(500, 460), at=(170, 90))
    transform = invert_transform(matrix)  # the exact photo -> aligned map
    aligned = warp(photo, transform, ALIGNED_SIZE)
    mask = paste_mask(photo.size, transform)
    edited = 255 - model_crop(aligned, 64)  # a negative: every masked pixel changes
    pasted = np.asarray(paste_back(photo, edited, transform))
    pixels = np.asarray(photo)
    assert pasted.shape == pixels.shape
    outside = mask == 0
    assert np.array_equal(pasted[outside], pixels[outside])  # bit-identical away from the face
    assert 0.05 < (~outside).mean() < 0.5
    centre = np.rint(apply_transform(matrix, [[89, 121]])[0]).astype(int)
    assert mask[centre[1], centre[0]] == 1.0
    assert np.abs(pasted[mask == 1].astype(int) - pixels[mask == 1]).mean() > 60
    # the mask lies inside the crop box the model sees
    ys, xs = np.nonzero(~outside)
    inside = apply_transform(transform, np.stack([xs, ys], 1))
    assert (inside.min(0) >= [CROP_BOX[0] - 1, CROP_BOX[1] - 1]).all()
    assert (inside.max(0) <= [CROP_BOX[2], CROP_BOX[3]]).all()
    # the unedited crop, pasted back at any model resolution, lands where it came from
    for resolution, tolerance in ((128, 4.0), (32, 9.0)):
        same = np.asarray(paste_back(photo, model_crop(aligned, resolution), transform)).astype(int)
        assert np.abs(same - pixels)[mask > 0.5].mean() < tolerance
    # with the unedited reconstruction as reference only the change is added: none, or a brightening
    unedited = model_crop(aligned, 64)
    assert np.array_equal(np.asarray(paste_back(photo, unedited, transform, reference=unedited)), pixels)
    brighter = np.asarray(paste_back(photo, np.clip(unedited.astype(int) + 30, 0, 255).astype(np.uint8), transform,
                                     reference=unedited)).astype(int)
    assert np.array_equal(brighter[outside], pixels[outside])
    lifted = (brighter - pixels)[(mask == 1) & (pixels.max(-1) < 200)]
    assert np.abs(lifted - 30).mean() < 2
    shifted_transform = compose(np.array([[1, 0, 3], [0, 1, 3]]), transform)
    wrong = np.asarray(paste_back(photo, model_crop(aligned, 128), shifted_transform)).astype(int)
    assert np.abs(wrong - pixels)[mask > 0.5].mean() > np.abs(same - pixels)[mask > 0.5].mean() + 2
