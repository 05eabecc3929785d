"""Find a face in a photo, map it onto CelebA's aligned 178x218 frame, and paste an edited face back.

CelebA's ``img_align_celeba`` images are photos moved by a similarity transform so that 5 landmarks land near
fixed places; doing the same to a user's photo gives the models faces framed like their training data:

1. ``load_photo``: any photo -> RGB uint8 PIL image (EXIF rotation applied; grayscale, RGBA, 16-bit converted).
2. ``detect_faces``: facenet-pytorch's MTCNN (weights inside its wheel, nothing downloaded) -> boxes, the
   5 landmarks in CelebA's order (left eye, right eye, nose, left mouth corner, right mouth corner; "left" is
   the image's left) and scores.
3. ``similarity_transform`` (least-squares, Umeyama) maps the landmarks onto ``CELEBA_TEMPLATE``, fitted on
   the eyes and the mouth's centre as CelebA's own images are (``alignment_points``); ``align_face`` warps the
   photo with it.
4. ``paste_back`` warps an edited face (the model's R x R output, which covers the cache's ``CROP_BOX`` of the
   aligned frame) back through the inverse transform and blends it in with a feathered ellipse; pixels where the
   mask is 0 keep their exact values.

Coordinates are pixels with integer values at pixel centres (x = 0 is the centre of the first column), in both
the photo and the aligned frame. A transform is a [2, 3] matrix M: ``aligned = M[:, :2] @ photo + M[:, 2]``.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from common.cache import CROP_BOX, crop_and_resize
from common.cli import UserError

# The mean of CelebA's official aligned landmarks (list_landmarks_align_celeba.txt, 178x218 frame) over the
# 10,000 rows of ids 000001-010000 in ../shared/celeba-real/half10k/, i.e.
#   parse_landmarks_file(".../half10k/list_landmarks_align_celeba.txt").values.astype(float64).mean(0)
# rounded to 4 decimals; tests/test_align.py recomputes it from that file.
CELEBA_TEMPLATE = np.array([
    [69.3500, 111.2002],   # left eye
    [107.6455, 111.1648],  # right eye
    [87.9335, 135.1109],   # nose
    [71.2446, 152.0837],   # left mouth corner
    [105.5907, 152.2120],  # right mouth corner
])  # [5, 2] (x, y)
ALIGNED_SIZE = (178, 218)  # (width, height) of img_align_celeba
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
MAX_DETECT_SIDE = 1280  # larger photos are detected on a downscaled copy (MTCNN's cost grows with pixels)
MIN_DETECT_SIDE = 200  # smaller photos are upscaled first: MTCNN's landmarks are coarse on tiny faces
MIN_SCORE = 0.9  # MTCNN's final face probability below which a detection is dropped
REFINE_WIDTH = 160  # faces with narrower boxes are detected again, upscaled to this width
# The paste-back mask: an ellipse in the aligned frame (centre x, centre y, radius x, radius y) covering the face
# and inside CROP_BOX (25..153 x 57..185), feathered over the outer FEATHER fraction of its radius.
FACE_ELLIPSE = (89.0, 123.0, 54.0, 62.0)
FEATHER = 0.3


@dataclass
class Face:
    box: np.ndarray  # [4] x0, y0, x1, y1 in photo pixels
    landmarks: np.ndarray  # [5, 2] in CelebA's order, photo pixels
    score: float


# ---------------------------------------------------------------------------------------------------- geometry


def similarity_transform(src, dst) -> np.ndarray:
    """The rotation + uniform scale + translation that best maps src [N, 2] onto dst [N, 2] (least squares,
    Umeyama 1991, no reflection) -> M [2, 3] with dst ~ src @ M[:, :2].T + M[:, 2]."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(f"similarity_transform: expected two [N, 2] arrays, N >= 2, got {src.shape}, {dst.shape}")
    mu_src, mu_dst = src.mean(0), dst.mean(0)
    s, d = src - mu_src, dst - mu_dst  # [N, 2]
    covariance = d.T @ s / len(src)  # [2, 2]
    u, sigma, vt = np.linalg.svd(covariance)
    sign = np.diag([1.0, 1.0 if np.linalg.det(u) * np.linalg.det(vt) >= 0 else -1.0])
    rotation = u @ sign @ vt
    variance = (s ** 2).sum() / len(src)
    scale = float(np.trace(np.diag(sigma) @ sign) / variance) if variance > 0 else 1.0
    translation = mu_dst - scale * rotation @ mu_src
    return np.concatenate([scale * rotation, translation[:, None]], axis=1)


def apply_transform(matrix, points) -> np.ndarray:
    """points [N, 2] -> M applied, [N, 2]."""
    matrix, points = np.asarray(matrix, np.float64), np.asarray(points, np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]


def invert_transform(matrix) -> np.ndarray:
    """The inverse of an affine [2, 3] matrix."""
    matrix = np.asarray(matrix, np.float64)
    inverse = np.linalg.inv(matrix[:, :2])
    return np.concatenate([inverse, -(inverse @ matrix[:, 2])[:, None]], axis=1)


def compose(outer, inner) -> np.ndarray:
    """outer after inner: x -> outer(inner(x)), both [2, 3]."""
    outer, inner = np.asarray(outer, np.float64), np.asarray(inner, np.float64)
    return np.concatenate([outer[:, :2] @ inner[:, :2], (outer[:, :2] @ inner[:, 2] + outer[:, 2])[:, None]], 1)


def transform_scale(matrix) -> float:
    """The linear size factor of an affine map (sqrt of |det|)."""
    return float(math.sqrt(abs(np.linalg.det(np.asarray(matrix, np.float64)[:, :2]))))


def warp(image: Image.Image, matrix, size: tuple[int, int], fill=(0, 0, 0)) -> Image.Image:
    """The image moved by ``matrix`` (source pixels -> output pixels) into an output of ``size`` (w, h), bicubic.

    A shrink by more than 2x first box-averages the source by an integer factor, so the result is not aliased."""
    matrix = np.asarray(matrix, np.float64)
    factor = int(1.0 / transform_scale(matrix))
    if factor >= 2:  # reduce(): small pixel j averages source pixels j*f .. j*f+f-1 (centre j*f + (f-1)/2)
        image = image.reduce(factor)
        matrix = compose(matrix, np.array([[factor, 0, (factor - 1) / 2], [0, factor, (factor - 1) / 2]]))
    inverse = invert_transform(matrix)  # output -> source
    # Pillow samples continuous coordinates (pixel centres at +0.5); convert from centres-at-integers
    offset = inverse[:, 2] - inverse[:, :2] @ np.array([0.5, 0.5]) + 0.5
    data = (inverse[0, 0], inverse[0, 1], offset[0], inverse[1, 0], inverse[1, 1], offset[1])
    return image.transform(size, Image.AFFINE, data, resample=Image.BICUBIC, fillcolor=fill)


# ---------------------------------------------------------------------------------------------------- photos


def expand_image_paths(paths) -> list[Path]:
    """Files as given, folders as their image files (sorted); one-line error for a path that does not exist."""
    out: list[Path] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise UserError(f"{path}: folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
            out.extend(found)
        elif path.is_file():
            out.append(path)
        else:
            raise UserError(f"{path}: image file not found")
    return out


def load_photo(path) -> Image.Image:
    """A photo file -> RGB uint8 PIL image, upright (EXIF orientation applied); 16-bit values are scaled to
    8 bits, transparency is composited on white. One-line UserError naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: image file not found")
    try:
        with Image.open(path) as opened:
            opened.load()  # decode now, so a truncated file fails here
            image = ImageOps.exif_transpose(opened)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise UserError(f"{path}: cannot read the image ({exc}); expected a JPEG or PNG photo") from None
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):  # 16-bit (or float) grayscale
        values = np.asarray(image, dtype=np.float64)
        sixteen = image.mode.startswith("I;16") or (image.mode == "I" and values.max() > 255)
        peak = 65535.0 if sixteen else 255.0
        image = Image.fromarray(np.clip(np.rint(values * 255.0 / peak), 0, 255).astype(np.uint8), "L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(canvas, rgba)
    return image.convert("RGB")


@functools.lru_cache(maxsize=1)
def _mtcnn():
    try:
        from facenet_pytorch import MTCNN
    except ImportError as exc:
        raise UserError(f"face alignment needs facenet-pytorch ({exc}); install it with `pip install --no-deps "
                        "facenet-pytorch==2.6.0 requests` (see docs/own-photos.md), or pass --no-align for "
                        "photos already aligned like CelebA") from None
    return MTCNN(keep_all=True, device="cpu")


def _detect(photo: Image.Image, factor: float = 1.0) -> list[Face]:
    """MTCNN on the photo resized by ``factor``, mapped back to the photo's pixels; faces below MIN_SCORE dropped."""
    import torch

    resized = photo
    if factor != 1.0:
        size = (max(1, round(photo.width * factor)), max(1, round(photo.height * factor)))
        resized = photo.resize(size, Image.LANCZOS if factor < 1 else Image.BICUBIC)
    sx, sy = resized.width / photo.width, resized.height / photo.height
    with torch.no_grad():
        boxes, scores, points = _mtcnn().detect(resized, landmarks=True)
    if boxes is None:
        return []
    faces = []
    for box, score, landmarks in zip(boxes, scores, points, strict=True):
        if score is not None and float(score) >= MIN_SCORE:  # pixel centres at integers on both sides
            faces.append(Face(box=np.asarray(box, np.float64) / [sx, sy, sx, sy], score=float(score),
                              landmarks=(np.asarray(landmarks, np.float64) + 0.5) / [sx, sy] - 0.5))
    return faces


def _refine(photo: Image.Image, face: Face) -> Face:
    """A small face detected again on an upscaled square around it: MTCNN's landmarks are coarse on small faces
    (docs/own-photos.md has the numbers)."""
    width, height = face.box[2] - face.box[0], face.box[3] - face.box[1]
    side = int(math.ceil(2 * max(width, height)))
    x0 = int(math.floor((face.box[0] + face.box[2]) / 2 - side / 2))
    y0 = int(math.floor((face.box[1] + face.box[3]) / 2 - side / 2))
    found = _detect(photo.crop((x0, y0, x0 + side, y0 + side)), REFINE_WIDTH / max(width, 1.0))
    if not found:
        return face
    best = min(found, key=lambda f: np.abs((f.box[:2] + f.box[2:]) / 2 - side / 2).sum())
    shift = np.array([x0, y0], np.float64)
    return Face(box=best.box + np.tile(shift, 2), landmarks=best.landmarks + shift, score=best.score)


def detect_faces(photo: Image.Image) -> list[Face]:
    """Faces in an RGB photo, left to right: boxes, CelebA-ordered landmarks (MTCNN's own order: left eye,
    right eye, nose, left and right mouth corner in the image) and scores, in the photo's pixels. Large photos
    are searched at MAX_DETECT_SIDE, small ones upscaled, and faces narrower than REFINE_WIDTH re-detected
    upscaled."""
    longest, shortest = max(photo.size), min(photo.size)
    factor = 1.0
    if longest > MAX_DETECT_SIDE:
        factor = MAX_DETECT_SIDE / longest
    elif shortest < MIN_DETECT_SIDE:
        factor = MIN_DETECT_SIDE / shortest
    faces = [face if face.box[2] - face.box[0] >= REFINE_WIDTH else _refine(photo, face)
             for face in _detect(photo, factor)]
    return sorted(faces, key=lambda face: face.box[0] + face.box[2])


def largest_face(faces: list[Face]) -> int:
    """The index of the face with the largest box."""
    return int(np.argmax([(f.box[2] - f.box[0]) * (f.box[3] - f.box[1]) for f in faces]))


def pick_faces(faces: list[Face], which: str) -> list[tuple[int, Face]]:
    """--face largest|all|N -> [(index in the left-to-right list, face)]."""
    if which == "all":
        return list(enumerate(faces))
    if which == "largest":
        best = largest_face(faces)
        return [(best, faces[best])]
    if not which.isdigit():
        raise UserError(f"--face {which!r}: expected largest, all or a face number (0 = leftmost)")
    if int(which) >= len(faces):
        raise UserError(f"--face {which}: only {len(faces)} face(s) found (numbered 0.. left to right)")
    return [(int(which), faces[int(which)])]


def alignment_points(landmarks) -> np.ndarray:
    """[..., 5, 2] -> [..., 3, 2]: the eyes and the mouth's centre, the points the similarity is fitted on.

    CelebA's own images fit them: the similarity from an image's official points to the template's moves its
    crop by 0.8 px on average with these 3 points, 3.1 px with all 5 (the nose shifts with yaw); see
    ``frame_residual`` and docs/own-photos.md."""
    landmarks = np.asarray(landmarks, np.float64)
    mouth = landmarks[..., 3:5, :].mean(-2, keepdims=True)
    return np.concatenate([landmarks[..., 0:2, :], mouth], axis=-2)


def fit_alignment(landmarks, points=alignment_points) -> np.ndarray:
    """The similarity [2, 3] photo -> aligned frame that puts ``landmarks`` [5, 2] on CELEBA_TEMPLATE."""
    return similarity_transform(points(landmarks), points(CELEBA_TEMPLATE))


def align_face(photo: Image.Image, landmarks) -> tuple[Image.Image, np.ndarray]:
    """The photo warped so that ``landmarks`` [5, 2] (CelebA's order) land on CELEBA_TEMPLATE (by the eyes and
    the mouth's centre) -> (aligned 178x218 RGB image, transform [2, 3] photo -> aligned)."""
    matrix = fit_alignment(landmarks)
    return warp(photo, matrix, ALIGNED_SIZE), matrix


def frame_transform(size: tuple[int, int]) -> np.ndarray:
    """For an already aligned photo (--no-align): centre-crop to 178:218 and scale to 178x218, as a transform."""
    width, height = size
    scale = min(width / ALIGNED_SIZE[0], height / ALIGNED_SIZE[1])  # photo pixels per aligned pixel
    crop_w, crop_h = ALIGNED_SIZE[0] * scale, ALIGNED_SIZE[1] * scale
    left, top = (width - crop_w) / 2, (height - crop_h) / 2
    # continuous: a = (p + 0.5 - corner) / scale - 0.5 in centres-at-integers coordinates
    return np.array([[1 / scale, 0, (0.5 - left) / scale - 0.5], [0, 1 / scale, (0.5 - top) / scale - 0.5]])


def frame_photo(photo: Image.Image) -> tuple[Image.Image, np.ndarray]:
    """An already aligned photo -> (178x218 image, transform photo -> aligned); 178x218 photos are copied."""
    matrix = frame_transform(photo.size)
    if photo.size == ALIGNED_SIZE:
        return photo.copy(), matrix
    return warp(photo, matrix, ALIGNED_SIZE), matrix


def model_crop(aligned: Image.Image, resolution: int) -> np.ndarray:
    """The model's input of an aligned 178x218 image: uint8 [R, R, 3] (common.cache's CROP_BOX, resized)."""
    return crop_and_resize(aligned, resolution)


# ---------------------------------------------------------------------------------------------------- paste back


def _crop_to_aligned(resolution: int) -> np.ndarray:
    """The R x R model output's pixels -> the aligned frame's (the output covers CROP_BOX)."""
    k = (CROP_BOX[2] - CROP_BOX[0]) / resolution
    return np.array([[k, 0, CROP_BOX[0] + 0.5 * k - 0.5], [0, k, CROP_BOX[1] + 0.5 * k - 0.5]])


def paste_mask(photo_size: tuple[int, int], transform, feather: float = FEATHER) -> np.ndarray:
    """Blend weights float32 [H, W] in [0, 1] of the paste-back: FACE_ELLIPSE of the aligned frame mapped into
    the photo, 1 inside, smoothly 0 over its outer ``feather`` fraction, exactly 0 outside."""
    width, height = photo_size
    to_aligned = np.asarray(transform, np.float64)  # photo -> aligned
    cx, cy, rx, ry = FACE_ELLIPSE
    corners = apply_transform(invert_transform(to_aligned), [[cx - rx, cy - ry], [cx + rx, cy - ry],
                                                             [cx - rx, cy + ry], [cx + rx, cy + ry]])
    x0, y0 = np.floor(corners.min(0)).astype(int) - 1
    x1, y1 = np.ceil(corners.max(0)).astype(int) + 2
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    mask = np.zeros((height, width), np.float32)
    if x1 <= x0 or y1 <= y0:
        return mask
    ys, xs = np.mgrid[y0:y1, x0:x1]
    aligned = apply_transform(to_aligned, np.stack([xs.ravel(), ys.ravel()], 1))  # [n, 2]
    radius = np.hypot((aligned[:, 0] - cx) / rx, (aligned[:, 1] - cy) / ry).reshape(xs.shape)
    t = np.clip((1.0 - radius) / max(feather, 1e-6), 0.0, 1.0)
    mask[y0:y1, x0:x1] = t * t * (3 - 2 * t)  # smoothstep
    return mask


def _square_face(image) -> Image.Image:
    face = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, np.uint8), "RGB")
    if face.width != face.height:
        raise ValueError(f"paste_back: expected a square face image, got {face.width}x{face.height}")
    return face.convert("RGB")


def paste_back(photo: Image.Image, edited, transform, feather: float = FEATHER, reference=None) -> Image.Image:
    """The edited face (PIL image or uint8 [R, R, 3], covering CROP_BOX of the aligned frame) warped back into
    the photo through the inverse of ``transform`` (photo -> aligned) and blended with ``paste_mask``; the
    result has the photo's size, and its pixels where the mask is 0 are the photo's own.

    With ``reference`` (the model's unedited reconstruction, same size) only the change ``edited - reference``
    is added to the photo, which keeps the photo's own detail where the model's output is blurrier."""
    photo = photo.convert("RGB")
    face = _square_face(edited)
    mask = paste_mask(photo.size, transform, feather)
    pixels = np.array(photo)  # [H, W, 3]
    rows, cols = np.nonzero(mask)
    if len(rows) == 0:
        return photo.copy()
    y0, y1, x0, x1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    # crop pixels -> photo pixels, then shifted so the region's corner is (0, 0)
    crop_to_photo = compose(invert_transform(transform), _crop_to_aligned(face.width))
    crop_to_region = crop_to_photo - np.array([[0, 0, x0], [0, 0, y0]])
    size = (int(x1 - x0), int(y1 - y0))
    region = np.asarray(warp(face, crop_to_region, size), np.float32)
    alpha = mask[y0:y1, x0:x1, None]
    original = pixels[y0:y1, x0:x1].astype(np.float32)
    if reference is not None:  # the photo plus the edit's change
        region = original + region - np.asarray(warp(_square_face(reference), crop_to_region, size), np.float32)
    blended = np.clip(np.rint(original + alpha * (region - original)), 0, 255).astype(np.uint8)
    pixels[y0:y1, x0:x1] = np.where(alpha > 0, blended, pixels[y0:y1, x0:x1])
    return Image.fromarray(pixels, "RGB")


# ---------------------------------------------------------------------------------------------------- accuracy


def interocular_error(predicted, truth) -> np.ndarray:
    """Mean landmark distance over the 5 points / the true inter-ocular distance: [N, 5, 2] x2 -> [N]."""
    predicted, truth = np.asarray(predicted, np.float64), np.asarray(truth, np.float64)
    distance = np.linalg.norm(predicted - truth, axis=-1).mean(-1)  # [N]
    return distance / np.linalg.norm(truth[:, 1] - truth[:, 0], axis=-1)


def random_unalign(image: Image.Image, rng: np.random.Generator, max_angle: float = 30.0,
                   scales: tuple[float, float] = (0.6, 1.6)) -> tuple[Image.Image, np.ndarray]:
    """An aligned photo rotated, scaled and shifted onto a grey canvas 1.6x its size, the whole photo kept
    inside -> (photo, matrix aligned -> photo)."""
    angle, scale = math.radians(rng.uniform(-max_angle, max_angle)), rng.uniform(*scales)
    canvas = math.ceil(1.6 * scale * math.hypot(*ALIGNED_SIZE))
    linear = scale * np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    centre = np.array(ALIGNED_SIZE) / 2 - 0.5
    target = canvas / 2 - 0.5 + rng.uniform(-0.15, 0.15, 2) * canvas  # the photo's corners stay inside
    matrix = np.concatenate([linear, (target - linear @ centre)[:, None]], 1)
    return warp(image, matrix, (canvas, canvas), fill=(128, 128, 128)), matrix


def frame_residual(official, points=alignment_points) -> np.ndarray:
    """How far re-fitting CelebA's aligned images would move them: official landmarks [N, 5, 2] (178x218
    frame) -> [N] mean displacement in pixels of CROP_BOX's corners and centre under ``fit_alignment``."""
    box = np.array([[CROP_BOX[0], CROP_BOX[1]], [CROP_BOX[2], CROP_BOX[1]], [CROP_BOX[0], CROP_BOX[3]],
                    [CROP_BOX[2], CROP_BOX[3]], [(CROP_BOX[0] + CROP_BOX[2]) / 2, (CROP_BOX[1] + CROP_BOX[3]) / 2]])
    return np.array([np.linalg.norm(apply_transform(fit_alignment(row, points), box) - box, axis=1).mean()
                     for row in np.asarray(official, np.float64)])


def _signed(crop: np.ndarray) -> np.ndarray:
    return crop.transpose(2, 0, 1)[None] / 127.5 - 1  # uint8 [R, R, 3] -> [1, 3, R, R] in [-1, 1]


def measure(shared: Path, landmark_ids: int, realign_photos: int, seed: int = 0) -> dict:
    """(1) MTCNN's landmarks on half10k ids 1..landmark_ids vs the official rows (scaled to half size);
    (2) ``realign_photos`` identities photos randomly unaligned and re-aligned: PSNR of the 64x64 model crop
    against CelebA's own crop and against the original photo aligned the same way (MTCNN + template), and
    the landmark error against the truth (MTCNN's landmarks on the original, moved by the known transform)."""
    from common.celeba import parse_landmarks_file
    from common.metrics import psnr

    half = shared / "half10k"
    table = parse_landmarks_file(half / "list_landmarks_align_celeba.txt")
    truths, found, missed = [], [], 0
    for name, row in zip(table.filenames[:landmark_ids], table.values[:landmark_ids], strict=True):
        faces = detect_faces(load_photo(half / "img_align_celeba" / name))
        if not faces:
            missed += 1
            continue
        truths.append((row.reshape(5, 2).astype(np.float64) + 0.5) / 2 - 0.5)  # 178x218 -> 89x109 pixels
        found.append(max(faces, key=lambda f: f.score).landmarks)
    errors = interocular_error(found, truths)
    official = table.values.reshape(-1, 5, 2)  # [N, 5, 2], the 178x218 frame
    residual = {"eyes_mouth_centre": frame_residual(official), "all_5": frame_residual(official, lambda p: p)}
    rng = np.random.default_rng(seed)
    names = sorted((shared / "identities" / "img_align_celeba").glob("*.jpg"))
    picks = [names[i] for i in np.sort(rng.choice(len(names), size=realign_photos, replace=False))]
    to_celeba, to_ours, realign_errors, lost = [], [], [], 0
    for path in picks:
        original = load_photo(path)
        faces = detect_faces(original)
        photo, matrix = random_unalign(original, rng)
        moved = detect_faces(photo)
        if not faces or not moved:
            lost += 1
            continue
        face = faces[largest_face(faces)]
        truth = apply_transform(matrix, face.landmarks)
        landmarks = min(moved, key=lambda f: np.abs(f.landmarks - truth).sum()).landmarks
        realign_errors.append(interocular_error(landmarks[None], truth[None])[0])
        crop = model_crop(align_face(photo, landmarks)[0], 64)
        for reference, out in ((original, to_celeba), (align_face(original, face.landmarks)[0], to_ours)):
            out.append(psnr(_signed(crop), _signed(model_crop(reference, 64)))[0])
    return {"celeba_frame_residual_px": {k: round(float(v.mean()), 2) for k, v in residual.items()},
            "landmarks": {"images": landmark_ids, "missed": missed,
                          "mean_error_iod_percent": round(100 * float(np.mean(errors)), 2),
                          "median_error_iod_percent": round(100 * float(np.median(errors)), 2)},
            "realign": {"photos": realign_photos, "lost": lost,
                        "mean_psnr_64_vs_celeba_crop": round(float(np.mean(to_celeba)), 2),
                        "mean_psnr_64_vs_original_realigned": round(float(np.mean(to_ours)), 2),
                        "mean_landmark_error_iod_percent": round(100 * float(np.mean(realign_errors)), 2)}}


if __name__ == "__main__":  # python -m common.align --measure [--shared DIR]
    parser = argparse.ArgumentParser(description="measure the alignment's accuracy on ../shared/celeba-real")
    parser.add_argument("--measure", action="store_true", required=True)
    parser.add_argument("--shared", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "celeba-real"))
    parser.add_argument("--landmark-ids", type=int, default=500)
    parser.add_argument("--realign-photos", type=int, default=50)
    options = parser.parse_args()
    json.dump(measure(Path(options.shared), options.landmark_ids, options.realign_photos), sys.stdout, indent=2)
    print()
