"""Synthetic CelebA-format faces: procedural images with known factors, written in CelebA's own file formats.

What every test, CI run and the demo train on, so the faces are drawn to be learnable and visibly editable at
32x32 and 64x64 after the standard crop (the 128x128 square centred at x=89, y=121). ``write_synthetic_celeba``
writes the official layout (``img_align_celeba/000001.jpg`` ... at 178x218 and the five label files, byte formats
and CRLF line ends as distributed) or the Kaggle one (``img_align_celeba/img_align_celeba/*.jpg``,
``list_*.csv``, no identity file), plus ``synthetic_factors.txt``/``.csv`` (the true factors, 4 decimals).
Images come first, then the label files, each atomically, ``list_attr_celeba`` last: a half-written set has no
attribute file. Splits are contiguous by index in CelebA's proportions (162770/19867/19962).

Factors (``FACTOR_NAMES``, the columns of ``synthetic_factors.txt``):
    smile       -1 frown .. 0 neutral .. +1 wide smile: mouth curvature, corners up, smile folds, cheeks
    mouth_open  0 closed .. 1 wide open: dark opening between the lips (teeth when also smiling)
    eye_open    0 shut/narrow .. 1 wide: height of the eye opening
    yaw         -1..1 (+-40 degrees): head turn, same sign as ``common.celeba.yaw_from_landmarks`` (positive =
                nose towards the image's right); features, chin, hairline and ears rotate on a 3-D head
    glasses     0/1 dark-framed glasses;  bangs  0/1 fringe over the forehead;  bald  0/1 (male only)
    male        0/1: squarer wider jaw, thicker brows, short hair (unless ``hair_long``), possible beard
    hair_long   0/1 hair falling beside the face to the shoulders
    hair_dark   0 light blond .. 1 black (hair and brow colour);  hair_gray  0/1 gray instead (mostly old)
    skin        0 pale .. 1 dark skin tone
    age         0 young .. 1 old: forehead lines and eye bags grow with age above 0.5
    beard       0 none, 0.25-0.55 stubble shadow, 0.6-1 beard (moustache from 0.8); male only
    lipstick    0/1 red lips;  makeup  0/1 eye shadow;  blush  0/1 rosy cheeks;  brow_thick  0..1
    face_width  0..1 narrow .. wide face (nuisance)
    background  0..1 hue of the background;  lighting  -1..1 left-right brightness gradient

Labels use CelebA's 40 names. Modelled (thresholds of the factors): Smiling (smile > 0.2), Mouth_Slightly_Open
(mouth_open > 0.3), Narrow_Eyes (eye_open < 0.35), Eyeglasses, Male, Bangs, Bald, Gray_Hair, Black_Hair /
Brown_Hair / Blond_Hair (hair_dark bands; the dark-brown band between brown and black is unlabelled, as many
CelebA faces are), Pale_Skin (skin < 0.08), Young (age < 0.52), No_Beard (beard < 0.28), 5_o_Clock_Shadow
(stubble), Goatee (beard >= 0.6), Mustache (beard >= 0.8), Wearing_Lipstick, Heavy_Makeup, Rosy_Cheeks,
Bushy_Eyebrows (brow_thick > 0.86), and High_Cheekbones (a draw tied to Smiling and sex, its signal being the
smile's). Each is flipped by ~3% label noise (3% of positives; negatives at the rate that keeps the share).
Not modelled (labels carry no image signal; independent draws at CelebA's shares): Arched_Eyebrows,
Attractive, Bags_Under_Eyes, Big_Lips, Big_Nose, Blurry, Chubby, Double_Chin, Oval_Face, Pointy_Nose,
Receding_Hairline, Sideburns, Straight_Hair, Wavy_Hair, Wearing_Earrings, Wearing_Hat, Wearing_Necklace,
Wearing_Necktie. Identities are random groups of ~20 images (no image signal); ``list_bbox_celeba`` holds the
face's approximate box in the aligned image (CelebA's refers to in-the-wild images, which do not exist here).

Correlations follow CelebA (facts/celeba_attribute_stats.md) by conditional sampling: smiling less often for
men, mouth open mostly when smiling (0.76 vs 0.22), narrow eyes a little more when smiling, bangs, blond hair
and lipstick mostly female, fewer young faces with glasses, gray hair when old. Glasses are deliberately more
frequent than in CelebA (P(Eyeglasses | Male) ~0.17 vs ~0.04, share ~0.09 instead of 0.065) so that small sets
have enough examples; CelebA's ~5x male/female ratio is kept. On 50,000 draws the labels land within ~0.01 of
CelebA's shares and conditional shares.

Determinism: image i's factors, labels and pixels come from generators seeded by (seed, i, stream): the same
seed and num give the same bytes whatever the worker count, and the first n images, factors and labels of a
larger set equal those of a set of n (the split and identity columns depend on num).
"""

from __future__ import annotations

import colorsys
import functools
import io
import math
import multiprocessing
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from common.attributes import ATTRIBUTE_INDEX, CELEBA_ATTRIBUTES, suggest
from common.checkpoint import atomic_path
from common.cli import UserError

WIDTH, HEIGHT = 178, 218  # CelebA's aligned images
SUPERSAMPLE = 2  # drawn at 2x and box-reduced: anti-aliased edges for little cost
MAX_YAW_DEGREES = 40.0
CELEBA_SPLITS = (162770, 19867, 19962)  # train, valid, test of 202599
LANDMARK_NAMES = ("lefteye_x", "lefteye_y", "righteye_x", "righteye_y", "nose_x", "nose_y",
                  "leftmouth_x", "leftmouth_y", "rightmouth_x", "rightmouth_y")
BBOX_NAMES = ("x_1", "y_1", "width", "height")
LAYOUTS = ("official", "kaggle")

FACTOR_NAMES: tuple[str, ...] = (
    "smile", "mouth_open", "eye_open", "yaw", "glasses", "male", "bangs", "hair_long", "hair_dark", "hair_gray",
    "bald", "skin", "age", "beard", "lipstick", "makeup", "blush", "brow_thick", "face_width", "background",
    "lighting",
)
# A neutral frontal young woman with brown hair: the base for sweeps with render_face.
DEFAULT_FACTORS: dict[str, float] = {
    "smile": 0.0, "mouth_open": 0.0, "eye_open": 0.7, "yaw": 0.0, "glasses": 0.0, "male": 0.0, "bangs": 0.0,
    "hair_long": 1.0, "hair_dark": 0.55, "hair_gray": 0.0, "bald": 0.0, "skin": 0.3, "age": 0.2, "beard": 0.0,
    "lipstick": 0.0, "makeup": 0.0, "blush": 0.0, "brow_thick": 0.4, "face_width": 0.5, "background": 0.6,
    "lighting": 0.0,
}

# CelebA's shares (first 20,000 rows; facts/celeba_attribute_stats.md): unmodelled labels are drawn at these,
# and the label noise of a modelled one keeps its share. Eyeglasses uses this generator's raised share.
CELEBA_SHARES: dict[str, float] = dict(zip(CELEBA_ATTRIBUTES, (
    0.112, 0.264, 0.513, 0.205, 0.023, 0.151, 0.239, 0.237, 0.243, 0.149, 0.052, 0.203, 0.144, 0.057, 0.046,
    0.065, 0.062, 0.042, 0.385, 0.450, 0.422, 0.479, 0.039, 0.116, 0.832, 0.279, 0.043, 0.276, 0.078, 0.063,
    0.058, 0.479, 0.212, 0.316, 0.186, 0.050, 0.471, 0.122, 0.074, 0.780), strict=True))
GLASSES_SHARE = 0.10
MODELLED = (
    "Smiling", "Mouth_Slightly_Open", "High_Cheekbones", "Narrow_Eyes", "Eyeglasses", "Male", "Bangs",
    "Black_Hair", "Brown_Hair", "Blond_Hair", "Gray_Hair", "Bald", "Pale_Skin", "Young", "No_Beard",
    "5_o_Clock_Shadow", "Goatee", "Mustache", "Wearing_Lipstick", "Heavy_Makeup", "Rosy_Cheeks", "Bushy_Eyebrows",
)
NOT_MODELLED = tuple(name for name in CELEBA_ATTRIBUTES if name not in MODELLED)
LABEL_NOISE = 0.03
_FACTOR_STREAM, _RENDER_STREAM, _LABEL_STREAM = 0, 1, 2
JPEG_QUALITY = 92  # the written images (and render_turn's frames, which must look like them)


# ----------------------------------------------------------------------------------------------- sampling


def _uniforms(num: int, seed: int, start: int, stream: int, k: int) -> np.ndarray:
    """[num, k] uniforms, row i from its own generator seeded (seed, start + i, stream): prefix-stable."""
    return np.stack([np.random.default_rng([seed, start + i, stream]).random(k) for i in range(num)]) \
        if num else np.zeros((0, k))


def sample_factors(num: int, seed: int, start: int = 0) -> dict[str, np.ndarray]:
    """Correlated factors of images ``start .. start+num-1``: ``{name: float32 [num]}`` for ``FACTOR_NAMES``.

    Conditional sampling mirrors CelebA's dependencies (see the module docstring); probabilities below are set
    so that the labels *after* 3% label noise land on CelebA's shares.
    """
    if num < 0:
        raise UserError(f"num: expected a count >= 0, got {num}")
    u = _uniforms(num, seed, start, _FACTOR_STREAM, 32)  # [N, 32], one column per decision
    male = u[:, 0] < 0.422
    smiling = u[:, 1] < np.where(male, 0.40, 0.54)
    smile = np.where(smiling, 0.25 + 0.75 * u[:, 2] ** 0.7, 0.15 - u[:, 2] ** 1.5)  # gap 0.15..0.25 at t=0.2
    opened = u[:, 3] < np.where(smiling, 0.80, 0.185)
    mouth_open = np.where(opened, 0.36 + 0.64 * u[:, 4], 0.22 * u[:, 4])
    narrow = u[:, 5] < np.where(smiling, 0.145, 0.093)
    eye_open = np.where(narrow, 0.3 * u[:, 6], 0.42 + 0.58 * u[:, 6])
    # Truncated normal yaw (Box-Muller): most faces near frontal, as in CelebA, but every angle is seen.
    yaw = np.clip(0.45 * np.sqrt(-2 * np.log(1 - u[:, 7])) * np.cos(2 * np.pi * u[:, 8]), -1.0, 1.0)
    glasses = u[:, 9] < np.where(male, 0.18, 0.03)
    young = u[:, 10] < np.where(male, 0.70, 0.88) * np.where(glasses, 0.55, 1.0)
    age = np.where(young, 0.5 * u[:, 11], 0.55 + 0.45 * u[:, 11])
    bald = male & (u[:, 12] < np.where(young, 0.02, 0.14))
    bangs = ~bald & (u[:, 13] < np.where(male, 0.085, 0.205))
    hair_long = ~bald & (u[:, 14] < np.where(male, 0.05, 0.92))
    # Hair: gray mostly when old; otherwise black/blond/brown/other (dark brown, unlabelled) by sex.
    gray = u[:, 15] < np.where(young, 0.006, 0.19)
    cum_male, cum_female = np.cumsum([0.33, 0.04, 0.19]), np.cumsum([0.20, 0.24, 0.23])
    cum = np.where(male[:, None], cum_male, cum_female)  # [N, 3] black, blond, brown cut points
    category = (u[:, 16:17] >= cum).sum(1)  # 0 black, 1 blond, 2 brown, 3 other
    lo, hi = np.array([0.88, 0.05, 0.42, 0.72])[category], np.array([1.00, 0.30, 0.68, 0.85])[category]
    hair_dark = np.where(gray, 0.2 + 0.5 * u[:, 17], lo + (hi - lo) * u[:, 17])
    pale = u[:, 18] < 0.045
    skin = np.where(pale, 0.07 * u[:, 19], 0.1 + 0.9 * u[:, 19] ** 1.6)
    beard_kind = np.where(male, (u[:, 20] >= 0.583).astype(int) + (u[:, 20] >= 0.85), 0)  # none/stubble/beard
    beard = np.select([beard_kind == 1, beard_kind == 2], [0.25 + 0.3 * u[:, 21], 0.6 + 0.4 * u[:, 21]], 0.0)
    lipstick = u[:, 22] < np.where(male, 0.01, 0.80)
    makeup = u[:, 23] < np.where(lipstick, 0.80, 0.02)
    blush = u[:, 24] < np.where(male, 0.02, 0.095)
    brow_thick = np.where(male, u[:, 25] ** 0.6, u[:, 25] ** 1.6)
    factors = {
        "smile": smile, "mouth_open": mouth_open, "eye_open": eye_open, "yaw": yaw, "glasses": glasses,
        "male": male, "bangs": bangs, "hair_long": hair_long, "hair_dark": hair_dark, "hair_gray": gray & ~bald,
        "bald": bald, "skin": skin, "age": age, "beard": beard, "lipstick": lipstick, "makeup": makeup,
        "blush": blush, "brow_thick": brow_thick, "face_width": u[:, 26], "background": u[:, 27],
        "lighting": 2 * u[:, 28] - 1,
    }
    return {name: np.round(np.asarray(factors[name], dtype=np.float64), 4).astype(np.float32)
            for name in FACTOR_NAMES}


def celeba_labels(factors: dict[str, np.ndarray], seed: int, start: int = 0) -> np.ndarray:
    """CelebA's 40 labels from factors (``sample_factors``'s dict): int8 [N, 40] in {-1, +1}, CelebA's order.

    Modelled labels are thresholds of the factors (High_Cheekbones a draw tied to smiling and sex), then
    flipped by label noise; unmodelled ones are independent draws at CelebA's shares.
    """
    f = {name: np.asarray(values, dtype=np.float64) for name, values in factors.items()}
    num = len(f["smile"])
    u = _uniforms(num, seed, start, _LABEL_STREAM, 2 * len(CELEBA_ATTRIBUTES) + 1)  # [N, 81]
    male, smiling = f["male"] > 0.5, f["smile"] > 0.2
    hair_ok = (f["hair_gray"] < 0.5) & (f["bald"] < 0.5)
    p_cheek = np.where(male, np.where(smiling, 0.77, 0.06), np.where(smiling, 0.89, 0.125))
    modelled = {
        "Smiling": smiling, "Mouth_Slightly_Open": f["mouth_open"] > 0.3, "High_Cheekbones": u[:, 80] < p_cheek,
        "Narrow_Eyes": f["eye_open"] < 0.35, "Eyeglasses": f["glasses"] > 0.5, "Male": male,
        "Bangs": f["bangs"] > 0.5, "Black_Hair": hair_ok & (f["hair_dark"] >= 0.87),
        "Brown_Hair": hair_ok & (f["hair_dark"] >= 0.4) & (f["hair_dark"] <= 0.7),
        "Blond_Hair": hair_ok & (f["hair_dark"] <= 0.32), "Gray_Hair": f["hair_gray"] > 0.5,
        "Bald": f["bald"] > 0.5, "Pale_Skin": f["skin"] < 0.08, "Young": f["age"] < 0.52,
        "No_Beard": f["beard"] < 0.28, "5_o_Clock_Shadow": (f["beard"] >= 0.15) & (f["beard"] < 0.6),
        "Goatee": f["beard"] >= 0.6, "Mustache": f["beard"] >= 0.8, "Wearing_Lipstick": f["lipstick"] > 0.5,
        "Heavy_Makeup": f["makeup"] > 0.5, "Rosy_Cheeks": f["blush"] > 0.5, "Bushy_Eyebrows": f["brow_thick"] > 0.86,
    }
    labels = np.zeros((num, len(CELEBA_ATTRIBUTES)), dtype=bool)
    for name in CELEBA_ATTRIBUTES:
        j = ATTRIBUTE_INDEX[name]
        share = GLASSES_SHARE if name == "Eyeglasses" else CELEBA_SHARES[name]
        if name in modelled:
            # 3% of positives flip; negatives flip at the rate that keeps the share: p*e = (1-p)*e'.
            flip_neg = LABEL_NOISE * share / (1 - share)
            labels[:, j] = np.where(modelled[name], u[:, j] >= LABEL_NOISE, u[:, j] < flip_neg)
        else:
            labels[:, j] = u[:, 40 + j] < share
    return np.where(labels, 1, -1).astype(np.int8)


def split_sizes(num: int) -> tuple[int, int, int]:
    """(train, valid, test) counts in CelebA's proportions; valid and test get at least one image from 3 up."""
    valid = round(num * CELEBA_SPLITS[1] / sum(CELEBA_SPLITS))
    test = round(num * CELEBA_SPLITS[2] / sum(CELEBA_SPLITS))
    if num >= 3:
        valid, test = max(valid, 1), max(test, 1)
    return num - valid - test, valid, test


def _partition(num: int) -> np.ndarray:
    train, valid, test = split_sizes(num)
    return np.repeat(np.array([0, 1, 2], dtype=np.int8), [train, valid, test])  # [N], contiguous like CelebA


# ----------------------------------------------------------------------------------------------- drawing


def _lerp_colour(stops: list[tuple[float, tuple[int, int, int]]], t: float) -> np.ndarray:
    """Piecewise-linear colour ramp: ``stops`` [(position, rgb), ...] sorted by position -> rgb [3]."""
    positions, colours = [p for p, _ in stops], np.array([c for _, c in stops], dtype=float)  # [S], [S, 3]
    return np.array([np.interp(t, positions, colours[:, k]) for k in range(3)])


SKIN_STOPS = [(0.0, (250, 228, 218)), (0.1, (238, 203, 178)), (0.45, (214, 165, 128)), (0.75, (160, 110, 75)),
              (1.0, (95, 62, 42))]
HAIR_STOPS = [(0.0, (236, 212, 150)), (0.3, (205, 162, 95)), (0.55, (128, 82, 45)), (0.8, (66, 42, 28)),
              (1.0, (22, 18, 18))]


def _rgba(colour, alpha: float = 255) -> tuple[int, int, int, int]:
    r, g, b = (min(max(int(c), 0), 255) for c in colour)
    return r, g, b, min(max(int(alpha), 0), 255)


def _clip(x, lo, hi):
    # np.clip's Python-level overhead dominates on these small arrays; the ufuncs are ~5x cheaper.
    return np.minimum(np.maximum(x, lo), hi)


class _Head:
    """A 3-D head (circular cross-sections, a forward-set jaw) turned by ``theta`` and projected orthographically.

    Coordinates are CelebA's aligned pixels: x to the right of the head's axis, y down, z towards the camera.
    The head is shifted against the turn by half of the eyes' movement, as CelebA's eye-based alignment does.
    """

    def __init__(self, f: dict[str, float], rng: np.random.Generator):
        self.theta = math.radians(MAX_YAW_DEGREES) * float(np.clip(f["yaw"], -1, 1))
        self.sin, self.cos = math.sin(self.theta), math.cos(self.theta)
        jitter = np.clip(rng.normal(0, 0.8, size=2), -2, 2)
        self.y_eye = 111.0 + jitter[1]
        self.y_top, self.y_chin = self.y_eye - 58.0, self.y_eye + 70.0
        self.y_mid = self.y_eye + 5.0  # widest level; skull above, jaw below
        self.width = 43.5 + 5.0 * f["face_width"] + 1.5 * f["male"]
        self.jaw_power = 2.0 + 0.9 * f["male"]  # squarer male jaw
        self.eye_dx = 19.5
        z_eye = math.sqrt(self.half_width(self.y_eye) ** 2 - self.eye_dx ** 2)
        self.cx = 88.5 + jitter[0] - 0.5 * z_eye * self.sin

    def half_width(self, y):
        y = np.asarray(y, dtype=float)
        above = self.width * np.sqrt(_clip(1 - ((y - self.y_mid) / (self.y_mid - self.y_top)) ** 2, 0, 1))
        t = _clip((y - self.y_mid) / (self.y_chin - self.y_mid), 0, 1)
        below = self.width * _clip(1 - t ** self.jaw_power, 0, 1) ** (1 / self.jaw_power)
        return np.where(y <= self.y_mid, above, below)

    def jaw_forward(self, y):
        t = _clip((np.asarray(y, dtype=float) - self.y_mid) / (self.y_chin - self.y_mid), 0, 1)
        return 9.0 * t ** 1.5

    def surface_z(self, x, y):
        x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
        return self.jaw_forward(y) + np.sqrt(np.maximum(self.half_width(y) ** 2 - x ** 2, 0))

    def project(self, x, y, dz=0.0, z=None):
        """Surface point (x, y) raised by ``dz`` (or at absolute depth ``z``) -> image (X [..], Y [..])."""
        x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
        depth = self.surface_z(x, y) + dz if z is None else np.asarray(z, dtype=float) + 0 * x
        return self.cx + x * self.cos + depth * self.sin, y + 0 * x

    def silhouette(self, y):
        """(left X, right X) of the head's outline at heights ``y`` (circles stay circles when turned)."""
        centre = self.cx + self.jaw_forward(y) * self.sin
        w = self.half_width(y)
        return centre - w, centre + w


class _Canvas:
    """An RGB image drawn at SUPERSAMPLE x with alpha blending; points are given in 1x CelebA pixels."""

    def __init__(self, background: np.ndarray):
        # A one-pixel-wide column stretched sideways: 10x cheaper than building the full array.
        self.image = Image.fromarray(background).resize((WIDTH * SUPERSAMPLE, HEIGHT * SUPERSAMPLE),
                                                        Image.NEAREST)
        self.draw = ImageDraw.Draw(self.image, "RGBA")

    @staticmethod
    def pts(xs, ys) -> list[tuple[float, float]]:
        return list(zip((np.asarray(xs) * SUPERSAMPLE).tolist(), (np.asarray(ys) * SUPERSAMPLE).tolist(), strict=True))

    def polygon(self, xs, ys, fill):
        self.draw.polygon(self.pts(xs, ys), fill=fill)

    def line(self, xs, ys, fill, width: float):
        self.draw.line(self.pts(xs, ys), fill=fill, width=max(1, int(round(width * SUPERSAMPLE))), joint="curve")

    def ellipse(self, cx, cy, rx, ry, fill=None, outline=None, width: float = 1):
        s = SUPERSAMPLE
        self.draw.ellipse([(cx - rx) * s, (cy - ry) * s, (cx + rx) * s, (cy + ry) * s], fill=fill, outline=outline,
                          width=max(1, int(round(width * s))))

    def band(self, head: _Head, xs, top, bottom, fill, dz=0.0) -> np.ndarray:
        """Fill the surface region between curves ``top`` and ``bottom`` over the same ``xs``; returns its X's."""
        xs = np.asarray(xs, dtype=float)
        top, bottom = np.broadcast_to(top, xs.shape), np.broadcast_to(bottom, xs.shape)
        px, py = head.project(np.concatenate([xs, xs[::-1]]), np.concatenate([top, bottom[::-1]]), dz)
        self.polygon(px, py, fill)
        return px

    def finish(self) -> Image.Image:
        return self.image.reduce(SUPERSAMPLE)


def _background(f: dict[str, float]) -> np.ndarray:
    """uint8 [2H, 1, 3]: a vertical gradient of the background hue, darker at the bottom."""
    top = np.array(colorsys.hsv_to_rgb(f["background"] % 1.0, 0.35, 0.85)) * 255
    bottom = top * 0.7
    t = np.linspace(0, 1, HEIGHT * SUPERSAMPLE)[:, None, None]  # [2H, 1, 1]
    return (top * (1 - t) + bottom * t).astype(np.uint8)


def render_face(factors: dict, rng: np.random.Generator) -> tuple[Image.Image, np.ndarray]:
    """Draw one face: (RGB PIL image 178x218, landmarks float32 [10] in CelebA's column order).

    ``factors`` maps names from ``FACTOR_NAMES`` to values (missing ones take ``DEFAULT_FACTORS``); ``rng``
    supplies only the nuisances (jitter, colours of iris/clothes/frames, fringe edge). Landmarks are the drawn
    eye centres, nose tip and mouth corners.
    """
    for name in factors:
        if name not in DEFAULT_FACTORS:
            close = suggest(name, FACTOR_NAMES)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UserError(f"render_face: unknown factor {name!r}{hint}; expected one of {', '.join(FACTOR_NAMES)}")
    f = {**DEFAULT_FACTORS, **{k: float(v) for k, v in factors.items()}}
    head = _Head(f, rng)
    canvas = _Canvas(_background(f))
    skin = _lerp_colour(SKIN_STOPS, f["skin"])
    if f["hair_gray"] > 0.5:
        hair = np.array([205.0, 205, 205]) * (1 - 0.5 * f["hair_dark"])
    else:
        hair = _lerp_colour(HAIR_STOPS, f["hair_dark"]) + rng.uniform(-6, 6, size=3)
    bald, ye = f["bald"] > 0.5, head.y_eye

    # Clothes, long hair behind the head, neck, ears: everything the face polygon covers partly.
    clothes = np.array(colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.2, 0.7), rng.uniform(0.25, 0.8))) * 255
    canvas.ellipse(head.cx + 0.3 * head.sin * 20, ye + 140, 92, 58, fill=_rgba(clothes))
    if f["hair_long"] > 0.5 and not bald:
        angle = np.linspace(math.pi, 2 * math.pi, 25)
        hx = head.cx + 0.4 * head.sin * 30
        top_x, top_y = hx + (head.width + 10) * np.cos(angle), ye - 3 + 66 * np.sin(angle)
        bottom = ye + 95
        xs = np.concatenate([top_x, [hx + head.width + 22, hx - head.width - 22]])
        ys = np.concatenate([top_y, [bottom, bottom]])
        canvas.polygon(xs, ys, _rgba(hair * 0.85))
    neck_x = head.cx + 6 * head.sin
    canvas.polygon([neck_x - 21, neck_x + 21, neck_x + 24, neck_x - 24],
                   [ye + 45, ye + 45, ye + 100, ye + 100], _rgba(skin * 0.82))
    for side in (-1, 1):
        y_ear = ye + 14
        x_ear = side * (head.half_width(y_ear) + 1.5)
        ear_x, ear_y = head.project(x_ear, y_ear, z=-9.0)
        canvas.ellipse(float(ear_x), float(ear_y), 6.5, 12.5, fill=_rgba(skin * 0.9))
        canvas.ellipse(float(ear_x), float(ear_y) + 1, 3.0, 7.5, outline=_rgba(skin * 0.65), width=1.2)

    # Face outline from the silhouette of the turned head.
    ys = np.linspace(head.y_top, head.y_chin, 48)
    left, right = head.silhouette(ys)
    face_x, face_y = np.concatenate([left, right[::-1]]), np.concatenate([ys, ys[::-1]])
    canvas.polygon(face_x, face_y, _rgba(skin))
    # A soft shadow under the jaw line and down the far cheek makes the outline read at 32x32.
    jaw_y = np.linspace(ye + 40, head.y_chin, 16)
    jl, jr = head.silhouette(jaw_y)
    canvas.line(np.concatenate([jl, jr[::-1]]), np.concatenate([jaw_y, jaw_y[::-1]]), _rgba(skin * 0.7, 150), 1.6)

    age = max(0.0, f["age"] - 0.5) * 2  # 0..1 for the old half
    if age > 0:
        for k in range(3):
            wx = np.linspace(-15, 15, 9)
            wy = ye - 30 + 5 * k + 1.5 * np.cos(wx / 15 * math.pi / 2)
            canvas.line(*head.project(wx, wy, 0.5), _rgba(skin * 0.72, 200 * age), 0.8)

    # Beard: shading of the lower face, denser with ``beard``; a full beard adds a chin patch and moustache.
    beard = f["beard"]
    if beard > 0.05:
        # Region: the jaw below the sideburns, its upper edge dipping under the cheekbones to below the nose.
        by = np.linspace(ye + 18, head.y_chin, 20)
        bl, br = head.silhouette(by)
        top_x = np.linspace(0.97, -0.97, 17)
        tx, ty = head.project(top_x * head.half_width(ye + 18), ye + 18 + 14 * (1 - top_x ** 2) ** 0.6)
        if beard < 0.6:  # stubble: a faint grey-blue shadow rather than a coloured patch
            alpha, colour = 35 + 55 * (beard - 0.15) / 0.45, skin * 0.35 + np.array([20.0, 22, 30])
        else:
            alpha, colour = 140 + 60 * (beard - 0.6) / 0.4, hair * 0.55 + 12
        canvas.polygon(np.concatenate([bl, br[::-1], tx]), np.concatenate([by, by[::-1], ty]), _rgba(colour, alpha))

    # Nose: a shaded ridge whose tip sits 12 px in front of the face, so it swings with yaw.
    nose_tip = head.project(0.0, ye + 25, 12.0)
    ridge_x = [-3.0, 3.0, 7.5, 3.5, 0.0, -3.5, -7.5]
    ridge_y = [ye + 2, ye + 2, ye + 26, ye + 29, ye + 29.5, ye + 29, ye + 26]
    ridge_dz = [1.5, 1.5, 2.5, 8.0, 9.0, 8.0, 2.5]
    nx, ny = head.project(ridge_x, ridge_y, ridge_dz)
    canvas.polygon(nx, ny, _rgba(skin * 0.9))
    shade_side = -1 if head.sin >= 0 else 1  # the side turned away is in shadow
    sx, sy = head.project([shade_side * 3.0, shade_side * 6.5, shade_side * 7.5, shade_side * 3.5],
                          [ye + 4, ye + 20, ye + 26, ye + 29], [1.5, 6.0, 2.5, 8.0])
    canvas.line(sx, sy, _rgba(skin * 0.62, 220), 1.5)
    for side in (-1, 1):
        ox, oy = head.project(side * 3.6, ye + 28.5, 8.0)
        canvas.ellipse(float(ox), float(oy), 2.0, 1.3, fill=_rgba(skin * 0.35))

    # Cheeks: a lifted highlight when smiling, blush when wearing it.
    smile = float(np.clip(f["smile"], -1, 1))
    for side in (-1, 1):
        cx_, cy_ = head.project(side * 25.0, ye + 22 - 4 * max(smile, 0), 0.0)
        if smile > 0:
            canvas.ellipse(float(cx_), float(cy_), 8, 5.5, fill=_rgba(np.minimum(skin * 1.12 + 8, 255), 140 * smile))
        if f["blush"] > 0.5:
            canvas.ellipse(float(cx_), float(cy_) + 2, 8, 6, fill=_rgba((235, 90, 110), 90))

    landmarks = np.zeros(10, dtype=np.float32)
    _draw_eyes(canvas, head, f, skin, hair, rng, landmarks)
    _draw_mouth(canvas, head, f, skin, hair, landmarks)
    landmarks[4], landmarks[5] = float(nose_tip[0]), float(nose_tip[1])
    _draw_hair(canvas, head, f, hair, rng)
    if f["glasses"] > 0.5:
        _draw_glasses(canvas, head, rng)

    return _light(canvas.finish(), f["lighting"]), landmarks


def _light(image: Image.Image, lighting: float) -> Image.Image:
    """Left-right lighting: the lit side blends towards white, the other towards black (masks are cheap)."""
    side = lighting * (np.arange(WIDTH) - 88.5) / 88.5  # [W] in -1..1, positive = lit
    for colour, strength, sign in (((255, 255, 255), 0.2, 1), ((0, 0, 0), 0.32, -1)):
        alpha = (255 * strength * np.maximum(sign * side, 0)).astype(np.uint8)[None, :]  # [1, W]
        if alpha.any():
            mask = Image.fromarray(alpha).resize((WIDTH, HEIGHT), Image.NEAREST)
            image = Image.composite(Image.new("RGB", image.size, colour), image, mask)
    return image


def _draw_eyes(canvas: _Canvas, head: _Head, f: dict, skin, hair, rng, landmarks: np.ndarray) -> None:
    """Almond eyes (opening from ``eye_open``, squeezed a little by a smile), irises, lids, brows, shadow."""
    ye, ex = head.y_eye, head.eye_dx
    opening = 1.0 + 10.5 * float(np.clip(f["eye_open"], 0, 1))  # full height in px
    squeeze = 1 - 0.25 * max(f["smile"], 0)
    iris = np.array(colorsys.hsv_to_rgb(rng.choice([0.07, 0.08, 0.55, 0.3]), 0.6, rng.uniform(0.2, 0.45))) * 255
    t = np.linspace(-1, 1, 13)
    arch = np.sqrt(1 - t ** 2)
    for k, side in enumerate((-1, 1)):
        xs = side * ex + 9.0 * t
        upper = ye - 0.62 * opening * arch
        lower = ye + 0.38 * opening * squeeze * arch
        if f["makeup"] > 0.5:  # eye shadow over the upper lid
            canvas.band(head, xs, upper - 3.5 * arch, ye, _rgba((120, 60, 110), 120), 0.5)
        if f["age"] > 0.5:
            bx, by = head.project(xs[2:-2], lower[2:-2] + 3.0, 0.3)
            canvas.line(bx, by, _rgba(skin * 0.75, 255 * (f["age"] - 0.5)), 0.9)
        px = canvas.band(head, xs, upper, lower, _rgba((245, 245, 240)), 0.5)
        cx, cy = head.project(side * ex, ye, 1.0)
        landmarks[2 * k], landmarks[2 * k + 1] = float(cx), float(cy)
        foreshorten = float(np.ptp(px)) / 18.0
        r = 4.8
        # Iris clipped to the opening: draw it, then repaint the lids over whatever spills out.
        canvas.ellipse(float(cx), float(cy), r * foreshorten, r, fill=_rgba(iris))
        canvas.ellipse(float(cx), float(cy), 1.9 * foreshorten, 1.9, fill=_rgba((10, 10, 10)))
        canvas.band(head, xs, ye - 7, upper, _rgba(skin), 0.5)
        canvas.band(head, xs, lower, ye + 7, _rgba(skin), 0.5)
        canvas.line(*head.project(xs, upper, 0.6), _rgba((25, 18, 15)), 2.3)
        canvas.line(*head.project(xs[3:-3], lower[3:-3], 0.6), _rgba(skin * 0.55, 200), 0.8)
        # Brow: arched band, thicker and darker for men and for ``brow_thick``.
        thick = 2.0 + 2.8 * f["brow_thick"] + 0.8 * (f["male"] > 0.5)
        bt = np.linspace(-1, 1, 11)
        bx = side * ex + 10.5 * bt + side * 1.5
        by = ye - 14.5 - 2.5 * (1 - bt ** 2) - 1.5 * (f["eye_open"] - 0.5)
        brow = hair * 0.75 if f["hair_dark"] > 0.3 or f["hair_gray"] > 0.5 else hair * 0.6
        canvas.band(head, bx, by - thick / 2, by + thick / 2 * (1 - 0.5 * bt ** 2), _rgba(brow), 1.0)


def _draw_mouth(canvas: _Canvas, head: _Head, f: dict, skin, hair, landmarks: np.ndarray) -> None:
    """Lips on the curve through the corners: a smile lifts the corners and drops the centre; opening is dark."""
    ye = head.y_eye
    smile = float(np.clip(f["smile"], -1, 1))
    y_mouth = ye + 41.0
    half = 16.5 * (1 + 0.14 * max(smile, 0))
    y_corner, y_centre = y_mouth - 7.0 * smile, y_mouth + 4.0 * smile
    t = np.linspace(-1, 1, 21)
    bulge = 1 - t ** 2  # 0 at the corners, 1 in the middle
    xs = half * t
    line = y_corner + (y_centre - y_corner) * bulge  # the lips' meeting line
    gap = 15.0 * max(0.0, float(f["mouth_open"]) - 0.08)
    inner_up = line - 0.3 * gap * bulge ** 0.7
    inner_lo = line + 0.7 * gap * bulge ** 0.7
    outer_up = inner_up - (3.0 + 1.5 * np.abs(np.sin(t * math.pi))) * np.sqrt(bulge)  # cupid's bow
    outer_lo = inner_lo + 5.5 * np.sqrt(bulge)
    lips = np.array([178.0, 40, 60]) if f["lipstick"] > 0.5 else skin * np.array([0.86, 0.62, 0.62])
    dz = 1.0
    canvas.band(head, xs, outer_up, inner_up, _rgba(lips), dz)
    canvas.band(head, xs, inner_lo, outer_lo, _rgba(lips * 1.08), dz)
    if gap > 0.5:
        canvas.band(head, xs, inner_up, inner_lo, _rgba((55, 18, 22)), dz)
        if smile > 0.2:  # upper teeth show in an open smile
            teeth = inner_up + np.minimum(0.45 * gap, 4.5) * bulge ** 0.7
            canvas.band(head, xs[3:-3], inner_up[3:-3], teeth[3:-3], _rgba((240, 236, 226)), dz)
    canvas.line(*head.project(xs, inner_up if gap > 0.5 else line, dz), _rgba((70, 25, 28), 235), 2.2)
    # Smile folds from the nose wings to beyond the corners; a frown gets short downturned lines instead.
    for side in (-1, 1):
        if smile > 0.1:
            ft = np.linspace(0, 1, 8)
            fx = side * (9.5 + (half + 3.0 - 9.5) * ft + 3.5 * np.sin(ft * math.pi))
            fy = ye + 25 + (y_corner + 3 - ye - 25) * ft
            canvas.line(*head.project(fx, fy, 0.5), _rgba(skin * 0.6, 230 * min(smile, 1)), 1.3)
        elif smile < -0.2:
            fx = np.array([side * (half + 1.0), side * (half + 2.5)])
            fy = np.array([y_corner + 1.0, y_corner + 6.0])
            canvas.line(*head.project(fx, fy, 0.5), _rgba(skin * 0.6, 200 * -smile), 1.2)
    if f["beard"] >= 0.8:  # moustache over the upper lip
        mx = np.linspace(-half - 1, half + 1, 11)
        canvas.band(head, mx, ye + 31.5, np.interp(mx, xs, outer_up) - 0.5, _rgba(np.asarray(hair) * 0.45, 220), 1.2)
    cl = head.project(-half, y_corner, dz)
    cr = head.project(half, y_corner, dz)
    landmarks[6:10] = [float(cl[0]), float(cl[1]), float(cr[0]), float(cr[1])]


def _draw_hair(canvas: _Canvas, head: _Head, f: dict, hair, rng) -> None:
    """Hair cap from the hairline over the skull, side strands for long hair, the fringe for ``bangs``."""
    ye = head.y_eye
    if f["bald"] > 0.5:
        for side in (-1, 1):  # a rim of hair above the ears
            sy = np.linspace(ye - 16, ye + 6, 6)
            edge = head.silhouette(sy)[(side + 1) // 2]
            canvas.polygon(np.concatenate([edge - side * 2.5, edge[::-1] + side * 4]),
                           np.concatenate([sy, sy[::-1]]), _rgba(hair))
        return
    volume = 8.0 if f["hair_long"] > 0.5 else 5.0
    side_bottom = ye + 58 if f["hair_long"] > 0.5 else ye + (8 if f["beard"] < 0.15 else 16)
    # Outer boundary: the skull's ellipse grown by ``volume``, continued down the sides for long hair.
    a = np.linspace(math.pi, 2 * math.pi, 25)
    top_x = head.cx + (head.width + volume) * np.cos(a)
    top_y = head.y_mid + (head.y_mid - head.y_top + volume) * np.sin(a)
    sy = np.linspace(head.y_mid, max(side_bottom, head.y_mid), 10)
    left, right = head.silhouette(sy)
    outer_x = np.concatenate([(left - volume)[::-1], top_x, right + volume])
    outer_y = np.concatenate([sy[::-1], top_y, sy])
    # Inner boundary: down the right side just inside the outline, the hairline over the forehead, up the left.
    hairline_y = ye - 34.0
    iy = np.linspace(side_bottom, ye - 8, 8)
    il, ir = head.silhouette(iy)
    inset = 2.0
    ht = np.linspace(0.9, -0.9, 15)
    hw = head.half_width(ye - 20)
    hx, hy = head.project(ht * hw, hairline_y + 16 * ht ** 4, 0.5)
    inner_x = np.concatenate([ir - inset, hx, (il + inset)[::-1]])
    inner_y = np.concatenate([iy, hy, iy[::-1]])
    canvas.polygon(np.concatenate([outer_x, inner_x]), np.concatenate([outer_y, inner_y]), _rgba(hair))
    # Parting / strands: a darker line gives texture that survives downscaling.
    part_x, part_y = head.project([6.0, 10.0], [head.y_top + 6, hairline_y + 1], 1.0)
    canvas.line(part_x, part_y, _rgba(hair * 0.7), 1.2)
    if f["bangs"] > 0.5:
        n = 11
        bt = np.linspace(-0.92, 0.92, n)
        jag = np.where(np.arange(n) % 2 == 0, 0.0, 3.5) + rng.uniform(-1, 1, n)
        bx, by = head.project(bt * hw, ye - 17.5 - 8 * bt ** 4 - jag, 1.5)
        tx, ty = head.project(bt[::-1] * hw * 1.02, hairline_y - 2 + 16 * bt[::-1] ** 4, 1.5)
        canvas.polygon(np.concatenate([bx, tx]), np.concatenate([by, ty]), _rgba(hair * 0.95))
        canvas.line(bx, by, _rgba(hair * 0.7), 1.0)


def _draw_glasses(canvas: _Canvas, head: _Head, rng) -> None:
    """Two lens frames 6 px in front of the eyes, a bridge and the temple arms to the ears."""
    ye, ex = head.y_eye, head.eye_dx
    frame = _rgba(rng.choice([(20, 20, 20), (70, 40, 25), (40, 40, 60)], axis=0))
    t = np.linspace(0, 2 * math.pi, 28)
    inner = []
    for side in (-1, 1):
        z = float(head.surface_z(side * ex, ye)) + 6.0
        gx, gy = head.project(side * ex + 12.5 * np.cos(t), ye + 1 + 9.5 * np.sin(t), z=z)
        canvas.polygon(gx, gy, (200, 220, 235, 45))
        canvas.line(np.append(gx, gx[0]), np.append(gy, gy[0]), frame, 2.2)
        inner.append(head.project(side * (ex - 12.5), ye - 1, z=z))
        arm = head.project([side * (ex + 12.5), side * (float(head.half_width(ye)) + 0.5)], [ye - 1, ye],
                           z=np.array([z, -4.0]))
        if side * head.sin <= 0.05:  # only the arm on the side turned towards the camera is visible
            canvas.line(*arm, frame, 1.8)
    canvas.line([inner[0][0], inner[1][0]], [inner[0][1] - 1, inner[1][1] - 1], frame, 2.0)


# ----------------------------------------------------------------------------------------------- writing


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:  # named .<name>.tmp*: the leftovers write_synthetic_celeba removes
        tmp.write_bytes(data)


def _render_chunk(job: tuple[int, int, int, dict[str, np.ndarray], str]) -> tuple[int, np.ndarray, np.ndarray]:
    """Worker: render and save images ``start .. stop-1``; returns (start, landmarks [n, 10], bbox [n, 4])."""
    start, stop, seed, factors, image_dir = job
    marks, boxes = [], []
    for i in range(start, stop):
        row = {name: float(values[i - start]) for name, values in factors.items()}
        image, landmarks = render_face(row, np.random.default_rng([seed, i, _RENDER_STREAM]))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
        _atomic_write_bytes(Path(image_dir) / f"{i + 1:06d}.jpg", buffer.getvalue())
        marks.append(landmarks)
        boxes.append(_face_box(row, landmarks))
    return start, np.stack(marks), np.stack(boxes)


def render_turn(factors: dict, yaws, seed: int, resolution: int) -> np.ndarray:
    """One face turning its head: rendered at each yaw in ``yaws`` with every other factor and every nuisance held
    fixed, JPEG-encoded like the data set, then cropped and resized like the prepared cache.

    Returns uint8 [len(yaws), R, R, 3]: the ground truth a pose edit can be compared with (the evaluation checks
    whether a model's latent line between the two ends of a turn passes through the frames in between).
    """
    from common.cache import crop_and_resize  # common.cache does not import this module: no cycle

    frames = []
    for yaw in yaws:
        row = {**factors, "yaw": float(yaw)}
        image, _ = render_face(row, np.random.default_rng([int(seed), _RENDER_STREAM]))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
        buffer.seek(0)
        frames.append(crop_and_resize(Image.open(buffer), resolution))
    return np.stack(frames)


def _face_box(f: dict[str, float], landmarks: np.ndarray) -> np.ndarray:
    """x_1, y_1, width, height of the face (forehead to chin, ear to ear) in the aligned image, approximately."""
    half = 45.5 + 5.0 * f["face_width"] + 1.5 * f["male"]
    centre, eye_y = (landmarks[0] + landmarks[2]) / 2, (landmarks[1] + landmarks[3]) / 2
    return np.array([round(centre - half), round(eye_y - 58), round(2 * half), 128], dtype=np.int64)


def _text(lines: list[str]) -> bytes:
    return "".join(line + "\r\n" for line in lines).encode("ascii")  # CRLF like the distributed files


def _label_files(names: list[str], attrs: np.ndarray, partition: np.ndarray, landmarks: np.ndarray,
                 bbox: np.ndarray, identity: np.ndarray, factors: np.ndarray, layout: str) -> dict[str, bytes]:
    """File name -> bytes for every label file, in writing order (attributes last)."""
    num = len(names)
    factor_text = [" ".join(f"{v:.4f}" for v in row) for row in factors + 0.0]  # + 0.0: no "-0.0000"
    if layout == "kaggle":
        def csv(header: list[str], rows: list[str]) -> bytes:
            return _text([",".join(["image_id", *header])] + [f"{n},{r}" for n, r in zip(names, rows, strict=True)])

        return {
            "list_bbox_celeba.csv": csv(list(BBOX_NAMES), [",".join(map(str, r)) for r in bbox]),
            "list_landmarks_align_celeba.csv": csv(list(LANDMARK_NAMES), [",".join(map(str, r)) for r in landmarks]),
            "list_eval_partition.csv": csv(["partition"], [str(p) for p in partition]),
            "synthetic_factors.csv": csv(list(FACTOR_NAMES), [r.replace(" ", ",") for r in factor_text]),
            "list_attr_celeba.csv": csv(list(CELEBA_ATTRIBUTES), [",".join(map(str, r)) for r in attrs]),
        }
    return {
        "identity_CelebA.txt": _text([f"{n} {v}" for n, v in zip(names, identity, strict=True)]),
        # Widths as in the distributed files: "000001.jpg    95  71 226 313", "000001.jpg 69  109  106 ...".
        "list_bbox_celeba.txt": _text([str(num), "image_id x_1 y_1 width height"]
                                      + [f"{n}{r[0]:6d}{r[1]:4d}{r[2]:4d}{r[3]:4d}" for n, r in zip(names, bbox, strict=True)]),
        "list_landmarks_align_celeba.txt": _text(
            [str(num), " ".join(LANDMARK_NAMES)]
            + [f"{n} {r[0]:2d}" + "".join(f"{v:5d}" for v in r[1:]) for n, r in zip(names, landmarks, strict=True)]),
        "list_eval_partition.txt": _text([f"{n} {p}" for n, p in zip(names, partition, strict=True)]),
        "synthetic_factors.txt": _text([str(num), " ".join(FACTOR_NAMES)]
                                       + [f"{n} {r}" for n, r in zip(names, factor_text, strict=True)]),
        # As the widely shared copy: a trailing space after the header, the first value after one space and
        # the others right-aligned in 3 columns ("000007.jpg 1 -1  1").
        "list_attr_celeba.txt": _text([str(num), " ".join(CELEBA_ATTRIBUTES) + " "]
                                      + [f"{n} {r[0]}" + "".join(f"{v:3d}" for v in r[1:])
                                         for n, r in zip(names, attrs, strict=True)]),
    }


def write_synthetic_celeba(out, num: int, seed: int, layout: str = "official", workers: int = 2,
                           progress: bool = False) -> Path:
    """Write ``num`` synthetic faces in CelebA's ``layout`` ("official" or "kaggle") under ``out``; returns ``out``.

    Images are rendered by ``workers`` processes (the bytes do not depend on the count); the label files follow
    and ``list_attr_celeba`` comes last. Stale label files of the layout are removed first, so an interrupted
    run never leaves a complete-looking set.
    """
    if layout not in LAYOUTS:
        raise UserError(f"--layout: expected one of {', '.join(LAYOUTS)}, got {layout!r}")
    if int(num) < 1:
        raise UserError(f"--num: expected at least 1 image, got {num}")
    if int(num) > 999999:
        raise UserError(f"--num: expected at most 999999 images (6-digit CelebA file names), got {num}")
    if int(workers) < 1:
        raise UserError(f"--workers: expected at least 1, got {workers}")
    num, seed, workers = int(num), int(seed), int(workers)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: expected a folder to write the synthetic set into, found a file")
    image_dir = out / "img_align_celeba" / ("img_align_celeba" if layout == "kaggle" else "")
    image_dir.mkdir(parents=True, exist_ok=True)
    ext = ".csv" if layout == "kaggle" else ".txt"
    for stale in ("list_attr_celeba", "list_eval_partition", "list_landmarks_align_celeba", "list_bbox_celeba",
                  "identity_CelebA", "synthetic_factors"):
        (out / (stale + ext)).unlink(missing_ok=True)
    for leftover in image_dir.glob(".*.tmp*"):  # from a run killed mid-write
        leftover.unlink(missing_ok=True)

    factors = sample_factors(num, seed)
    chunk = 32
    jobs = [(s, min(s + chunk, num), seed, {k: v[s:s + chunk] for k, v in factors.items()}, str(image_dir))
            for s in range(0, num, chunk)]
    landmarks, bbox = np.zeros((num, 10), dtype=np.float32), np.zeros((num, 4), dtype=np.int64)
    pool = None
    if workers > 1 and len(jobs) > 1:
        # fork starts fast and needs no importable __main__; the workers use only numpy and PIL.
        fork = "fork" in multiprocessing.get_all_start_methods()
        pool = multiprocessing.get_context("fork" if fork else None).Pool(min(workers, len(jobs)))
    results = map(_render_chunk, jobs) if pool is None else pool.imap_unordered(_render_chunk, jobs)
    try:
        with tqdm(total=num, unit="img", desc="synthetic faces", disable=not progress) as bar:
            for start, marks, boxes in results:
                landmarks[start:start + len(marks)], bbox[start:start + len(boxes)] = marks, boxes
                bar.update(len(marks))
    finally:
        if pool is not None:  # all results are in (or one failed): nothing left worth waiting for
            pool.terminate()
            pool.join()

    names = [f"{i + 1:06d}.jpg" for i in range(num)]
    attrs = celeba_labels(factors, seed)
    identity = np.random.default_rng([seed, 0, 3]).integers(1, max(1, num // 20) + 1, size=num)
    factor_matrix = np.stack([factors[name] for name in FACTOR_NAMES], 1).astype(np.float64)  # [N, F]
    files = _label_files(names, attrs, _partition(num), np.rint(landmarks).astype(np.int64), bbox, identity,
                         factor_matrix, layout)
    for name, data in files.items():
        _atomic_write_bytes(out / name, data)
    return out


# ----------------------------------------------------------------------------------------------- the turn check's faces

TURN_YAW = 0.8  # synthetic yaw units (x40 degrees): the rendered turns go from -32 to +32 degrees
TURN_FRAMES = 7
TURN_SEED = 20261124  # the turning faces' factors and nuisances: not images of the training set


@functools.lru_cache(maxsize=4)
def true_turns(n: int, resolution: int):
    """The turn check's rendered faces [n, TURN_FRAMES, 3, R, R] in [-1, 1]: the same for every method (read only)."""
    import torch

    from common.cache import uint8_to_model

    yaws = np.linspace(-TURN_YAW, TURN_YAW, TURN_FRAMES)
    factors = sample_factors(n, seed=TURN_SEED)
    return torch.stack([uint8_to_model(render_turn({k: float(v[i]) for k, v in factors.items()}, yaws,
                                                   TURN_SEED + i, resolution)) for i in range(n)])
