"""The edit command shared by scripts/edit_vae.py, edit_glow.py and edit_interface_gan.py.

Every method exposes an ``EditableModel`` (encode, decode, sample_latents); everything after that is written
once, here:

1. ``add_edit_arguments`` gives the three scripts the same flags (see ``docs/contracts.md``).
2. ``run_edit`` resolves the attribute names, gathers the faces to edit (user photos, images of the run's
   prepared cache, or samples from the prior), encodes them, gets the attribute's direction (cached in
   ``RUN/directions/``, else found by the method's ``find_direction(attribute, method)`` and saved), makes it
   orthogonal to the ``--keep`` attributes' directions, walks, decodes, and writes
   ``<out>/<attribute>[-keep-A-B]-<method>.png``, ``.gif`` and ``.json``.
3. ``encoder_direction`` is the ``find_direction`` of models with an encoder (VAE, Glow): encode the cache's
   training split and take the mean difference or a linear boundary of the latents against the labels.
4. ``--target P [P ...]`` gives the strength in attribute units: each face walks until the attribute predictor
   reads P (a probability, or a yaw for pose), found per face by ``common.pair_turns.walk_to_target``; the
   columns are then the targets and the JSON records each face's strength, whether it got there and the score.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from common.attributes import POSE, attribute_index, resolve_attribute
from common.checkpoint import atomic_write_text
from common.cli import UserError
from common.directions import (
    Direction,
    DirectionError,
    linear_boundary,
    load_direction,
    mean_difference,
    project_out,
    regression_direction,
    require_vector,
    save_direction,
    walk,
)
from common.grids import atomic_save, edit_gif, edit_grid, gif_frame_order, to_uint8

DEFAULT_CACHE_IMAGES = 8  # faces edited when neither --images nor --num is given
DEFAULT_MAX_TRAIN_IMAGES = 20000  # encoded training images for a direction: plenty for a mean or a boundary
POSE_BOUNDARY_RATIO = 0.3  # pose boundary: keep the top and bottom 30% of yaw
MIN_LABELS_PER_CLASS = 5  # fewer known positives or negatives: a --predictor's scores label the images instead
CONV_FLOW_HIDDEN, CONV_FLOW_EPOCHS = 128, 20  # the convolutional latent flow: channels, epochs (~30 s each here)
ENCODER_METHODS = ("mean", "boundary", "cflow")  # cflow: pose only, a conditional flow on the latents
WALKS = ("relative", "absolute", "sphere")
PASTE_MODES = ("change", "face")
PHOTO_GIF_SIDE = 640  # the photo's GIF is scaled down to at most this many pixels a side (the JPEGs keep its size)
DEFAULT_RANGE, DEFAULT_STEPS = (-3.0, 3.0), 7
TARGET_SEARCH_STEPS = 25  # --target: strengths of --range decoded and scored per face (0.25 apart on -3..3)
TARGET_REFINE_STEPS = 4  # --target: further decodes per face and target narrowing the crossing (false position)

FindDirection = Callable[[str, str], Direction]


@runtime_checkable
class EditableModel(Protocol):
    """What the editing pipeline needs from a method (images [B, 3, H, W] in [-1, 1], latents [B, D])."""

    latent_dim: int
    resolution: int
    latent_on_sphere: bool  # z lives on the sqrt(D) sphere (PGGAN): walks follow great circles by default

    def encode(self, images: torch.Tensor) -> torch.Tensor: ...  # [B, 3, H, W] -> [B, D]

    def decode(self, latents: torch.Tensor) -> torch.Tensor: ...  # [B, D] -> [B, 3, H, W] in [-1, 1]

    def sample_latents(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor: ...  # [n, D]

    def latent_flow_layout(self) -> tuple[Any, tuple[int, int, int]] | None:
        """The part of the latents a pose ``cflow`` edits as maps: (flat indices [C*H*W], (C, H, W)), or None
        for a dense flow on all of them."""
        ...

    def encode_report(self) -> dict:
        """What ``encode`` measured since the last call (the call starts afresh), merged into the edit's JSON
        record: PGGAN's inversion PSNR; {} for exact encoders."""
        ...


# ----------------------------------------------------------------------------------------------------------
# Command line


def parse_method(value: str, methods: Sequence[str]) -> str:
    """Validate a --method value: a listed name, optionally with a parameter after ':' (``pca:3``)."""
    name, colon, parameter = value.partition(":")
    if name not in methods:
        raise UserError(f"--method {value!r}: expected one of {', '.join(methods)}"
                        + (" (optionally NAME:PARAMETER, e.g. pca:3)" if any(m == "pca" for m in methods) else ""))
    if colon and not re.fullmatch(r"[A-Za-z0-9_.+-]+", parameter):
        raise UserError(f"--method {value!r}: expected letters or digits after ':', e.g. {name}:3")
    if name == "pca" and colon and not parameter.isdigit():
        raise UserError(f"--method {value!r}: expected a component number after 'pca:', e.g. pca:3")
    return value


def parse_keep(keep) -> list[str]:
    """--keep "A,B" (or a list of names) -> canonical attribute names, duplicates dropped."""
    if not keep:
        return []
    parts = keep.split(",") if isinstance(keep, str) else [p for item in keep for p in str(item).split(",")]
    names: list[str] = []
    for part in parts:
        if part.strip():
            name = resolve_attribute(part.strip())
            if name not in names:
                names.append(name)
    return names


def add_edit_arguments(parser: argparse.ArgumentParser, methods: Sequence[str] = ("mean", "boundary")) -> None:
    """Add the shared edit flags; the first of ``methods`` is the default --method."""
    methods = tuple(methods)

    def method_type(value: str) -> str:
        try:
            return parse_method(value, methods)
        except UserError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parser.add_argument("--run", required=True, help="the trained run folder (runs/<method>/<name>)")
    parser.add_argument("--attribute", required=True, help="CelebA attribute to edit (e.g. Smiling) or 'pose'")
    parser.add_argument("--keep", default="", help="comma-separated attributes to hold fixed (e.g. Male,Young)")
    parser.add_argument("--method", type=method_type, default=methods[0],
                        help=f"how the direction is found: {', '.join(methods)} (default {methods[0]})")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--images", nargs="+", metavar="PHOTO",
                        help="photos (or folders of photos) to edit: the largest face of each is found and "
                             "aligned like CelebA, and the edit is pasted back into the photo")
    source.add_argument("--num", type=int, help="edit N samples from the model's prior instead of images")
    parser.add_argument("--no-align", action="store_true",
                        help="the --images already are CelebA-aligned crops (img_align_celeba framing): no face "
                             "detection, only a centre crop to 178:218")
    parser.add_argument("--paste", choices=PASTE_MODES, default=PASTE_MODES[0],
                        help="how an edit goes back into a photo: change (default) adds the edit's change (edited "
                             "minus the unedited reconstruction) to the photo, keeping its detail; face pastes "
                             "the model's edited face itself")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of --num samples (default 0), or of a random pick of cache images "
                             "(default: the first ones)")
    parser.add_argument("--cache-images", type=int, default=None,
                        help=f"without --images/--num: edit this many images of --split (default "
                             f"{DEFAULT_CACHE_IMAGES}; for the GAN, giving it edits inverted cache images instead "
                             "of random samples)")
    parser.add_argument("--split", default="test", choices=["train", "valid", "test", "all"],
                        help="cache split the images come from (default test)")
    parser.add_argument("--cache", default=None, help="prepared cache folder (default: the run's own)")
    parser.add_argument("--range", nargs=2, type=float, default=DEFAULT_RANGE, metavar=("LO", "HI"),
                        help="edit strengths from LO to HI (default -3 3); with --target, the strengths searched")
    parser.add_argument("--steps", type=int, default=None,
                        help=f"number of strengths (columns), default {DEFAULT_STEPS}")
    parser.add_argument("--target", nargs="+", type=float, default=None, metavar="P",
                        help="strength in attribute units: walk each face until the --predictor reads P (a "
                             "probability in (0, 1), e.g. 0.9 Smiling; for pose a yaw, e.g. 0.3); one column per "
                             "target, instead of --steps")
    parser.add_argument("--predictor", default=None,
                        help="attribute predictor run (scripts/train_predictor.py) that reads the faces for "
                             "--target (required with it for the VAE and Glow; the GAN also scores its samples "
                             "with it, default: its config's edit.predictor); for the VAE and Glow it also labels "
                             "a cache of own photos that lacks the attribute's labels")
    parser.add_argument("--walk", choices=WALKS, default=None,
                        help="relative: z + a*n; absolute: set the distance to the boundary; sphere: great "
                             "circle (default: sphere for models with latents on a sphere, else relative)")
    parser.add_argument("--out", default=None, help="output folder (default RUN/edits)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps (default auto)")
    parser.add_argument("--batch-size", type=int, default=64, help="latents decoded per batch (default 64)")
    parser.add_argument("--max-train-images", type=int, default=DEFAULT_MAX_TRAIN_IMAGES,
                        help="training images encoded to find a direction (default 20000)")


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> cuda, then mps, then cpu; anything else is passed to torch.device."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r}: expected auto, cpu, cuda, cuda:N or mps") from None


def parse_targets(values, attribute: str) -> np.ndarray | None:
    """--target values for ``attribute`` -> [T] float64 (None without --target); one-line errors."""
    if values is None:
        return None
    targets = np.asarray([float(v) for v in values], dtype=np.float64)
    if not len(targets):
        raise UserError("--target: expected at least one value")
    if not np.all(np.isfinite(targets)):
        raise UserError(f"--target {' '.join(f'{v:g}' for v in targets)}: expected finite numbers")
    if attribute != POSE:
        outside = [f"{v:g}" for v in targets if not 0.0 < v < 1.0]
        if outside:
            raise UserError(f"--target {' '.join(outside)}: {attribute} is a probability, expected values strictly "
                            "between 0 and 1 (e.g. 0.1 0.5 0.9)")
    names = target_names(attribute, targets)
    if len(set(names)) != len(names):
        raise UserError(f"--target {' '.join(f'{v:g}' for v in targets)}: the same target twice")
    return targets


def _target_decimals(values, minimum: int) -> int:
    """The fewest decimals (at least ``minimum``, at most 6) that write every value exactly."""
    for decimals in range(minimum, 7):
        if all(abs(round(v, decimals) - v) < 1e-9 for v in values):
            return decimals
    return 6


def target_names(attribute: str, targets) -> list[str]:
    """File-name labels of --target values: "p0.9" for a probability, "yaw+0.30" for pose."""
    values = [float(v) for v in targets]
    if attribute == POSE:
        d = _target_decimals(values, 2)
        return ["yaw" + (f"{0:.{d}f}" if abs(v) < 0.5 * 10 ** -d else f"{v:+.{d}f}") for v in values]
    d = _target_decimals(values, 1)
    return [f"p{v:.{d}f}" for v in values]


def target_headers(attribute: str, targets) -> list[str]:
    """Column headers of --target values: "p=0.9", "yaw=+0.30"."""
    return [name.replace("p", "p=", 1) if attribute != POSE else name.replace("yaw", "yaw=", 1)
            for name in target_names(attribute, targets)]


def load_target_predictor(args, device, default=None):
    """The attribute predictor that steers --target: --predictor RUN (else ``default``), loaded on ``device``;
    None without --target. One-line errors for a missing flag or folder."""
    if getattr(args, "target", None) is None:
        return None
    run = getattr(args, "predictor", None) or default
    if not run:
        raise UserError("--target needs --predictor RUN: an attribute predictor (scripts/train_predictor.py) reads "
                        "the faces to find each one's strength")
    if not Path(run).is_dir():
        raise UserError(f"{run}: predictor run not found (needed by --target); train one with "
                        "scripts/train_predictor.py")
    from common.predictor import load_predictor

    return load_predictor(run, device)


def _attribute_scorer(predictor, attribute: str, batch_size: int) -> Callable[[torch.Tensor], np.ndarray]:
    """images [n, 3, H, W] -> the predictor's reading of ``attribute`` [n]: its probability, or yaw for pose."""
    from common.predictor import score_images

    def score(images: torch.Tensor) -> np.ndarray:
        scored = score_images(predictor, images, batch_size=max(1, batch_size))
        values = scored["yaw"] if attribute == POSE else scored["probs"][:, attribute_index(attribute)]
        return values.double().numpy()

    return score


# ----------------------------------------------------------------------------------------------------------
# Directions


def method_slug(method: str) -> str:
    """A method name usable in file names ('pca:3' -> 'pca3')."""
    return re.sub(r"[^A-Za-z0-9_.+-]", "", method)


def direction_path(run_dir, attribute: str, method: str) -> Path:
    """RUN/directions/<attribute>-<method> (the stem of the .npz/.json pair)."""
    return Path(run_dir) / "directions" / f"{attribute}-{method_slug(method)}"


def get_direction(run_dir, attribute: str, method: str, find_direction: FindDirection,
                  refresh: bool = False) -> Direction:
    """The saved direction of ``attribute`` for ``method``, else ``find_direction(attribute, method)``, saved."""
    stem = direction_path(run_dir, attribute, method)
    if not refresh and stem.with_suffix(".npz").exists() and stem.with_suffix(".json").exists():
        return load_direction(stem)
    direction = find_direction(attribute, method)
    if not isinstance(direction, Direction):
        raise TypeError(f"find_direction({attribute!r}, {method!r}) returned {type(direction).__name__}, "
                        "expected a common.directions.Direction")
    direction.attribute = direction.attribute or attribute
    direction.method = method
    save_direction(direction, stem)
    return direction


def _encode_positions(model: EditableModel, cache, positions: np.ndarray, batch_size: int,
                      progress: bool, mirror: bool = False) -> torch.Tensor:
    """Encode the images at ``positions`` of a cache split (flipped left to right when ``mirror``) -> latents
    [n, D] float32 on the CPU."""
    from tqdm import tqdm

    subset = torch.utils.data.Subset(cache, positions.tolist())
    loader = torch.utils.data.DataLoader(subset, batch_size=batch_size, shuffle=False, num_workers=0)
    latents = []
    with torch.no_grad():
        for batch in tqdm(loader, desc="encoding", unit="batch", disable=not progress, leave=False):
            images = batch["image"].flip(-1) if mirror else batch["image"]
            latents.append(model.encode(images).detach().float().cpu().reshape(len(batch["image"]), -1))
    return torch.cat(latents)


def _subset(rows: np.ndarray, max_images: int, seed: int) -> np.ndarray:
    """At most ``max_images`` of ``rows``: a seeded random subset, representative and the same on every call."""
    if len(rows) <= max_images:
        return rows
    return rows[np.sort(np.random.default_rng(seed).choice(len(rows), size=max_images, replace=False))]


def _binary_labels(cache, attribute: str, max_images: int, seed: int, predictor, predictor_device,
                   batch_size: int) -> tuple[np.ndarray, np.ndarray, str]:
    """The training images a binary attribute's direction is fitted on -> (positions [n], labels bool [n], where
    the labels came from): the cache's known labels, or, where it has too few of either class and a
    ``predictor`` (a run folder or a loaded AttributePredictor) is given, its scores (probability > 0.5) on the
    images, as InterFaceGAN labels GAN samples. One-line DirectionErrors otherwise."""
    attributes = np.asarray(cache.labels()[0])
    column = attribute_index(attribute)
    known_of = getattr(cache, "known", None)  # CelebACache.known(); a cache-like without it has every label
    known = np.asarray(known_of()[:, column], bool) if known_of is not None else np.ones(len(attributes), bool)
    values = attributes[:, column] > 0.5  # [N]
    positives, negatives = int((values & known).sum()), int((~values & known).sum())
    if min(positives, negatives) >= MIN_LABELS_PER_CLASS or (predictor is None and positives and negatives):
        rows = _subset(np.flatnonzero(known), max_images, seed)
        return rows, values[rows], "labels"
    hint = "; pass --predictor RUN to label the images with an attribute predictor (scripts/train_predictor.py)"
    if predictor is None:
        if not known.any():
            raise DirectionError(f"{attribute}: the cache has no {attribute} labels for its {len(known)} training "
                                 f"images{hint}")
        raise DirectionError(f"{attribute}: all {int(known.sum())} training images have the label "
                             f"{int(positives > 0)}; a direction needs examples of both"
                             + (hint if not known.all() else ""))
    from common.predictor import load_predictor, score_images

    source = "predictor" if isinstance(predictor, torch.nn.Module) else f"predictor {predictor}"
    if not isinstance(predictor, torch.nn.Module):
        if not Path(predictor).is_dir():
            raise UserError(f"{predictor}: predictor run not found (needed to label the {attribute} images); train "
                            "one with scripts/train_predictor.py")
        predictor = load_predictor(predictor, predictor_device)
    rows = _subset(np.arange(len(attributes)), max_images, seed)
    probs = [score_images(predictor, cache.images_uint8(rows[s:s + batch_size]), batch_size)["probs"][:, column]
             for s in range(0, len(rows), batch_size)]
    labels = torch.cat(probs).numpy() > 0.5  # [n]
    if labels.all() or not labels.any():
        raise DirectionError(f"{attribute}: the {source} reads all {len(labels)} training images as "
                             f"{'positive' if labels.all() else 'negative'}; a direction needs examples of both")
    return rows, labels, source


def encoder_direction(model: EditableModel, cache, attribute: str, method: str, batch_size: int = 256,
                      progress: bool = True, max_images: int = DEFAULT_MAX_TRAIN_IMAGES,
                      seed: int = 0, predictor=None, predictor_device="cpu") -> Direction:
    """A direction for models with an encoder: encode (up to ``max_images`` of) the cache's split and fit.

    ``cache`` is a CelebACache-like dataset (items are dicts with "image"; ``labels()`` returns
    (attributes [n, 40], yaw [n], factors), ``known()`` which labels are known). Binary attributes: ``mean`` is
    the mean difference of the positives' and negatives' latents, ``boundary`` a linear boundary fitted on every
    sample with its own label; only images with a known label count, and where the cache has fewer than
    MIN_LABELS_PER_CLASS of either class (own photos without labels) the ``predictor`` (run folder or model, on
    ``predictor_device``) labels them instead (``metrics["label_source"]`` says which). ``pose`` uses the yaw
    score from the landmarks: the least-squares latent change per standard deviation of yaw (strength 1 = one
    std of the training yaw, so +-2 spans the data), or a boundary on the top and bottom 30% of yaw.
    """
    attribute = resolve_attribute(attribute)
    name = method.partition(":")[0]
    if name not in ENCODER_METHODS:
        raise DirectionError(f"--method {method!r}: models with an encoder find directions with "
                             f"{', '.join(ENCODER_METHODS)}")
    if name == "cflow" and attribute != POSE:
        raise DirectionError(f"--method cflow edits the continuous pose score; for {attribute} use mean or "
                             "boundary")
    _, yaw, _ = cache.labels()
    count = len(yaw)
    if count == 0:
        raise DirectionError(f"the cache split has no images to find the {attribute} direction from")
    if attribute == POSE:
        positions = _subset(np.arange(count), max_images, seed)
        latents = _encode_positions(model, cache, positions, batch_size, progress).double().numpy()  # [n, D]
        score = np.asarray(yaw, dtype=np.float64)[positions]  # [n]
        if name == "cflow":
            return pose_latent_flow(model, cache, positions, latents, score, batch_size, progress, seed, method)
        if name == "mean":  # the continuous mean difference: latent change per standard deviation of yaw
            direction = regression_direction(latents, score)
        else:
            direction = linear_boundary(latents, score, ratio=POSE_BOUNDARY_RATIO, seed=seed)
        direction.metrics["label_source"] = "yaw from the landmarks"
    else:
        positions, labels, source = _binary_labels(cache, attribute, max_images, seed, predictor, predictor_device,
                                                   batch_size)
        latents = _encode_positions(model, cache, positions, batch_size, progress).double().numpy()  # [n, D]
        positives = int(labels.sum())
        if name == "mean":
            direction = mean_difference(latents, labels)
        else:
            direction = linear_boundary(latents, labels.astype(np.float64), ratio=0.5, seed=seed)
        direction.metrics.update(positive_fraction=round(positives / len(labels), 6), label_source=source)
    direction.attribute, direction.method = attribute, method
    direction.metrics["n_images"] = int(len(positions))
    return direction


# ----------------------------------------------------------------------------------------------------------
# Faces to edit


def pose_latent_flow(model: EditableModel, cache, positions: np.ndarray, latents: np.ndarray, yaw: np.ndarray,
                     batch_size: int, progress: bool, seed: int, method: str = "cflow") -> Direction:
    """The ``cflow`` pose edit: a conditional flow p(z | yaw) fitted on the latents (common.latent_flow).

    The mirror images are encoded too, with the yaw negated (a mirrored face turns the other way), which
    doubles the data and makes the flow symmetric in yaw. A model with ``latent_flow_layout()`` (Glow: its top
    level, 4x4 maps) gets a convolutional flow on that part of its latents; the rest of them is kept. The
    returned Direction's vector is the linear regression direction (what a --keep pose condition projects out);
    its ``transport`` does the edit.
    """
    from common.latent_flow import fit_latent_flow

    mirrored = _encode_positions(model, cache, positions, batch_size, progress, mirror=True).double().numpy()
    both, scores = np.concatenate([latents, mirrored]), np.concatenate([yaw, -yaw])
    layout = model.latent_flow_layout()  # a part of the latents, as maps (Glow's top level), or None
    if layout is None:
        flow, fit = fit_latent_flow(both, scores, seed=seed, progress=progress)
    else:
        index, shape = layout
        flow, fit = fit_latent_flow(both, scores, hidden=CONV_FLOW_HIDDEN, epochs=CONV_FLOW_EPOCHS, seed=seed,
                                    progress=progress, shape=shape, index=np.asarray(index))
    direction = regression_direction(both, scores)
    direction.transport = flow
    direction.attribute, direction.method = POSE, method
    direction.metrics.update(n_images=int(len(positions)), latent_flow=fit, mirrored=True,
                             strength_unit="one training standard deviation of yaw")
    return direction


def run_cache_dir(run_dir, override: str | None = None) -> Path:
    """The prepared cache a run was trained on: ``override`` (--cache), else RUN/config.yaml's data section.

    A relative path is read from here when it exists here, else from the training's working directory (the
    config's ``workdir``), else from the nearest folder above the run that holds it (runs made before workdir
    was recorded); failing all, it is returned as it is, for the caller's error to name.
    """
    if override:
        return Path(override)
    config_path = Path(run_dir) / "config.yaml"
    if not config_path.exists():
        raise UserError(f"{config_path}: not found; pass --cache DIR or a run folder written by a training script")
    import yaml

    config = yaml.safe_load(config_path.read_text()) or {}
    data = config.get("data") or {}
    if data.get("cache"):
        path = Path(data["cache"])
    else:
        root = Path(data.get("root", "data/synthetic"))  # same rule as common.cache.default_cache_dir
        path = root.parent / "cache" / f"{root.name}_{data.get('resolution', 32)}"
    if path.is_absolute() or path.exists():
        return path
    bases = ([Path(config["workdir"])] if config.get("workdir") else []) + list(Path(run_dir).resolve().parents)
    return next((base / path for base in bases if (base / path).exists()), path)


def _open_cache(cache_dir: Path, split: str):
    from common.cache import CelebACache  # another module's heavy imports, only when a cache is used

    return CelebACache(cache_dir, split)


def _load_photos(images, resolution: int, align: bool) -> list[dict]:
    """--images (files or folders) -> one dict per photo: {"path", "photo" (RGB PIL), "transform" [2, 3] photo
    -> aligned frame, "input" [3, R, R] in [-1, 1], "face": landmarks and score or None}; one-line errors."""
    from common.align import (
        align_face,
        detect_faces,
        expand_image_paths,
        frame_photo,
        largest_face,
        load_photo,
        model_crop,
    )

    photos, stems = [], {}
    for path in expand_image_paths(images):
        if path.stem in stems:  # their pasted edits would overwrite each other's
            raise UserError(f"{path} and {stems[path.stem]}: two photos named {path.stem}; rename one")
        stems[path.stem] = path
        photo = load_photo(path)
        face = None
        if align:
            faces = detect_faces(photo)
            if not faces:
                raise UserError(f"{path}: no face found ({photo.width}x{photo.height} photo); pass --no-align "
                                "if it already is a CelebA-aligned crop")
            found = faces[largest_face(faces)]
            aligned, transform = align_face(photo, found.landmarks)
            face = {"landmarks": found.landmarks.round(3).tolist(), "score": round(found.score, 6)}
        else:
            aligned, transform = frame_photo(photo)
        crop = torch.from_numpy(model_crop(aligned, resolution)).permute(2, 0, 1)  # [3, R, R] uint8
        photos.append({"path": path, "photo": photo, "transform": transform, "face": face,
                       "input": crop.float() / 127.5 - 1.0})
    return photos


def _gather_sources(model: EditableModel, run_dir: Path, args, cache) -> dict:
    """The faces to edit: {"inputs": [R, 3, H, W] or None, "latents": [R, D], "labels": [R], "source": {...}}."""
    images = getattr(args, "images", None)
    num = getattr(args, "num", None)
    seed = getattr(args, "seed", None)
    if images:
        align = not getattr(args, "no_align", False)
        photos = _load_photos(images, model.resolution, align)
        inputs = torch.stack([p["input"] for p in photos])  # [R, 3, H, W]
        return {"inputs": inputs, "labels": [p["path"].name for p in photos], "photos": photos,
                "source": {"kind": "images", "paths": [str(p["path"]) for p in photos], "aligned": align,
                           "faces": [dict(p["face"] or {}, transform=np.round(p["transform"], 8).tolist())
                                     for p in photos]}}
    if num is not None:
        if num < 1:
            raise UserError(f"--num {num}: expected at least 1 sample")
        seed = 0 if seed is None else seed
        latents = model.sample_latents(num, torch.Generator().manual_seed(seed))
        return {"inputs": None, "latents": latents.detach().float().cpu(),
                "labels": [f"sample {i} (seed {seed})" for i in range(num)],
                "source": {"kind": "sample", "num": num, "seed": seed}}
    split = getattr(args, "split", "test")
    if cache is None:
        cache = _open_cache(run_cache_dir(run_dir, getattr(args, "cache", None)), split)
    count = getattr(args, "cache_images", DEFAULT_CACHE_IMAGES) or DEFAULT_CACHE_IMAGES
    if len(cache) == 0:
        raise UserError(f"the {split} split of the cache has no images; use --split or --images")
    count = min(count, len(cache))
    positions = (np.arange(count) if seed is None
                 else np.sort(np.random.default_rng(seed).choice(len(cache), size=count, replace=False)))
    items = [cache[int(p)] for p in positions]
    inputs = torch.stack([item["image"] for item in items]).float()  # [R, 3, H, W]
    indices = [int(item["index"]) if "index" in item else int(p) for item, p in zip(items, positions, strict=True)]
    return {"inputs": inputs, "labels": [f"#{i}" for i in indices],
            "source": {"kind": "cache", "split": split, "positions": positions.tolist(), "indices": indices,
                       "cache": str(getattr(cache, "cache_dir", ""))}}


def _decode_walk(model: EditableModel, walked: torch.Tensor, batch_size: int, progress: bool) -> torch.Tensor:
    """latents [R, S, D] -> images [R, S, 3, H, W] in [-1, 1], decoded in batches without gradients."""
    from tqdm import tqdm

    rows, steps = walked.shape[:2]
    flat = walked.reshape(rows * steps, -1)  # [R*S, D]
    chunks = list(flat.split(max(1, batch_size)))
    out = []
    with torch.no_grad():
        for chunk in tqdm(chunks, desc="decoding", unit="batch", disable=not progress or len(chunks) < 2,
                          leave=False):
            out.append(model.decode(chunk).detach().float().cpu().clamp(-1, 1))
    images = torch.cat(out)  # [R*S, 3, H, W]
    return images.reshape(rows, steps, *images.shape[1:])


def strength_names(strengths) -> list[str]:
    """File-name labels of the strengths ("-3.0", "0.0", "+1.5"), with more decimals when one would repeat."""
    for decimals in range(1, 7):  # 1 decimal: the grid's column headers (common.grids.strength_label)
        names = [f"{0:.{decimals}f}" if abs(a) < 0.5 * 10 ** -decimals else f"{a:+.{decimals}f}" for a in strengths]
        if len(set(names)) == len(names):
            return names
    return [f"{a:+.6g}" for a in strengths]


def paste_edits(photos: list[dict], decoded: torch.Tensor, strengths, out_dir: Path, attribute: str,
                unedited: torch.Tensor | None = None, names: Sequence[str] | None = None) -> list[dict]:
    """Each photo's edited faces (decoded [R, S, 3, H, W]) pasted back into it: ``<stem>-<attribute>-<strength>
    .jpg`` at the photo's size per strength, and ``<stem>-<attribute>.gif`` sweeping them (scaled down). With
    ``unedited`` (the reconstructions [R, 3, H, W]) only the change from them is added to the photo; ``names``
    [S] replace the strengths in the file names (the --target labels)."""
    from PIL import Image

    from common.align import paste_back

    faces = to_uint8(decoded)  # [R, S, H, W, 3]
    references = to_uint8(unedited) if unedited is not None else [None] * len(photos)  # [R, H, W, 3]
    names = list(names) if names is not None else strength_names([float(a) for a in strengths])
    written = []
    for photo, row, reference in zip(photos, faces, references, strict=True):
        stem = f"{photo['path'].stem}-{attribute}"
        frames, jpgs = [], []
        factor = min(1.0, PHOTO_GIF_SIDE / max(photo["photo"].size))
        gif_size = (max(1, round(photo["photo"].width * factor)), max(1, round(photo["photo"].height * factor)))
        for face, name in zip(row, names, strict=True):
            pasted = paste_back(photo["photo"], face, photo["transform"], reference=reference)
            jpgs.append(atomic_save(pasted, out_dir / f"{stem}-{name}.jpg", "JPEG", quality=95))
            frames.append(pasted.resize(gif_size, Image.LANCZOS) if factor < 1 else pasted)
        frames = [frames[j] for j in gif_frame_order(len(frames))]
        gif = atomic_save(frames[0], out_dir / f"{stem}.gif", "GIF", save_all=True, append_images=frames[1:],
                          duration=120, loop=0)
        written.append({"photo": str(photo["path"]), "jpg": [str(p) for p in jpgs], "gif": str(gif)})
    return written


def output_stem(attribute: str, keep: Sequence[str], method: str) -> str:
    """<attribute>[-keep-A-B]-<method>, the name shared by the PNG, GIF and JSON of an edit."""
    return attribute + (f"-keep-{'-'.join(keep)}" if keep else "") + f"-{method_slug(method)}"


def _json_ready(value):
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def _walk_to_targets(model: EditableModel, base: torch.Tensor, direction: Direction, walk_mode: str,
                     targets: np.ndarray, strengths: np.ndarray, predictor, attribute: str, batch_size: int,
                     progress: bool) -> dict:
    """Each face [R, D] walked until the predictor reads each target [T] (``walk_to_target`` on the search grid
    ``strengths``, then TARGET_REFINE_STEPS narrowing decodes) -> its dict, entries [R, T]."""
    from common.pair_turns import walk_to_target

    def decode(latents: torch.Tensor) -> torch.Tensor:  # [n, D] -> [n, 3, H, W], batched, no gradients
        return _decode_walk(model, latents[:, None], batch_size, progress)[:, 0]

    return walk_to_target(base, direction, walk_mode, np.tile(targets, (len(base), 1)), decode,
                          _attribute_scorer(predictor, attribute, batch_size), strengths,
                          refine=TARGET_REFINE_STEPS)


def _target_record(attribute: str, targets: np.ndarray, searched: np.ndarray, found: dict, labels: list[str],
                   unedited_score: np.ndarray, predictor_run) -> dict:
    """The JSON's "target" section: per face (rows, as the grid's) and target (columns) the strength reached,
    whether the walk got there within the searched strengths, and the predictor's score of the edited face."""
    reached = np.asarray(found["reached"], dtype=bool)  # [R, T]
    return {
        "attribute": attribute, "unit": "yaw" if attribute == POSE else "probability",
        "values": [float(v) for v in targets], "labels": target_headers(attribute, targets),
        "strength": np.round(found["strength"], 6).tolist(), "reached": reached.tolist(),
        "score": np.round(found["score"], 6).tolist(),
        "unedited_score": np.round(unedited_score, 6).tolist(),
        "never_reached": [label for label, row in zip(labels, reached, strict=True) if not row.all()],
        "search": {"range": [float(searched[0]), float(searched[-1])], "steps": int(len(searched)),
                   "refine_steps": TARGET_REFINE_STEPS},
        "predictor": None if predictor_run is None else str(predictor_run),
    }


# ----------------------------------------------------------------------------------------------------------
# The edit


def run_edit(model: EditableModel, run_dir, args, find_direction: FindDirection, cache=None,
             progress: bool = True, predictor=None, record_extra: Callable[[dict], dict] | None = None) -> dict:
    """Edit faces along an attribute direction and write the PNG grid, the GIF and the JSON record.

    ``args`` is the namespace of ``add_edit_arguments``; ``find_direction(attribute, method) -> Direction``
    is called only for directions not yet saved in RUN/directions/; ``cache`` (optional) is the dataset the
    faces come from when neither --images nor --num is given (default: the --split of the run's cache).
    Returns {"images": [R, S, 3, H, W], "latents": [R, S, D], "base_latents": [R, D], "inputs": [R, 3, H, W]
    or None, "strengths": [S], "direction": Direction, "paths": {"png", "gif", "json"}, "record": dict}; the
    photos' pasted JPEGs and GIFs are listed in ``record["outputs"]["photos"]``.

    With ``args.target`` ([T] values) ``predictor`` (an AttributePredictor, e.g. ``load_target_predictor``)
    reads the faces: the S columns are the T targets, "strengths" is [R, T] (each face's own) and the record
    holds a "target" section (``_target_record``). The record also holds ``model.encode_report()`` when faces
    were encoded, and ``record_extra(result)`` (the returned dict, before the JSON is written) when given.
    """
    run_dir = Path(run_dir)
    attribute = resolve_attribute(args.attribute)
    keep = parse_keep(getattr(args, "keep", ""))
    if attribute in keep:
        raise UserError(f"--keep {attribute}: cannot hold fixed the attribute being edited")
    method = str(getattr(args, "method", "mean"))  # validated by add_edit_arguments' parser
    lo, hi = (float(v) for v in getattr(args, "range", None) or DEFAULT_RANGE)
    targets = parse_targets(getattr(args, "target", None), attribute)  # [T] or None
    given_steps = getattr(args, "steps", None)
    if targets is not None:
        if given_steps is not None:
            raise UserError(f"--steps with --target: the columns are the {len(targets)} targets; --range LO HI "
                            "sets the strengths searched")
        if lo == hi:
            raise UserError(f"--range {lo:g} {hi:g} with --target: expected a span of strengths to search")
        if predictor is None:
            raise UserError("--target needs --predictor RUN: an attribute predictor (scripts/train_predictor.py) "
                            "reads the faces to find each one's strength")
        strengths = np.linspace(min(lo, hi), max(lo, hi), TARGET_SEARCH_STEPS)  # [S'], searched
        steps = len(targets)
    else:
        steps = int(DEFAULT_STEPS if given_steps is None else given_steps)
        if steps < 1:
            raise UserError(f"--steps {steps}: expected at least 1 strength")
        strengths = np.linspace(lo, hi, steps)  # [S]
    walk_mode = getattr(args, "walk", None) or ("sphere" if model.latent_on_sphere else "relative")
    if walk_mode not in WALKS:
        raise UserError(f"--walk {walk_mode!r}: expected one of {', '.join(WALKS)}")
    batch_size = int(getattr(args, "batch_size", 64) or 64)

    source = _gather_sources(model, run_dir, args, cache)
    inputs = source["inputs"]
    if inputs is not None:
        if inputs.shape[-1] != model.resolution or inputs.shape[-2] != model.resolution:
            raise UserError(f"images are {inputs.shape[-1]}x{inputs.shape[-2]} but the model works at "
                            f"{model.resolution}x{model.resolution}; use the run's own cache (--cache)")
        model.encode_report()  # starts the report afresh: it covers the encodes since the last call
        with torch.no_grad():
            base = torch.cat([model.encode(chunk).detach().float().cpu() for chunk in inputs.split(batch_size)])
        encoded = model.encode_report()
    else:
        base, encoded = source["latents"], {}
    base = base.reshape(base.shape[0], -1)  # [R, D]
    if base.shape[1] != model.latent_dim:
        raise UserError(f"the model encoded {base.shape[1]} latent values, expected latent_dim "
                        f"{model.latent_dim}")

    unconditioned = get_direction(run_dir, attribute, method, find_direction)
    if unconditioned.dim != model.latent_dim:
        stale = direction_path(run_dir, attribute, method)
        raise UserError(f"{stale}.npz: a {unconditioned.dim}-d direction for a {model.latent_dim}-d model; "
                        "delete it to find the direction again")
    direction = unconditioned
    if keep:
        require_vector(unconditioned)  # before the conditions: they may not exist for this method
        conditions = [get_direction(run_dir, name, method, find_direction) for name in keep]
        direction = project_out(unconditioned, conditions, keep_names=keep)

    unedited = None  # the reconstructions [R, 3, H, W], decoded once if needed
    paste = getattr(args, "paste", PASTE_MODES[0])
    if targets is None:
        walked = walk(base, direction, strengths, walk_mode).float()  # [R, S, D]
        decoded = _decode_walk(model, walked, batch_size, progress)  # [R, S, 3, H, W]
        zero = np.flatnonzero(np.isclose(strengths, 0.0, atol=1e-9))
        marked = int(zero[0]) if walk_mode != "absolute" and len(zero) else None
        columns, names, target_section = strengths, None, None
    else:
        unedited = _decode_walk(model, base[:, None], batch_size, False)[:, 0]
        found = _walk_to_targets(model, base, direction, walk_mode, targets, strengths, predictor, attribute,
                                 batch_size, progress)
        walked, decoded, marked = found["latents"], found["images"], None  # [R, T, D], [R, T, 3, H, W]
        columns, names = targets, target_names(attribute, targets)
        target_section = _target_record(attribute, targets, strengths, found, source["labels"],
                                        _attribute_scorer(predictor, attribute, batch_size)(unedited),
                                        getattr(args, "predictor", None))
        strengths = found["strength"]  # [R, T], each face's own

    out_dir = Path(getattr(args, "out", None) or run_dir / "edits")
    stem = output_stem(attribute, keep, method)
    paths = {kind: out_dir / f"{stem}.{kind}" for kind in ("png", "gif", "json")}
    title = f"{attribute} ({method}, {walk_mode} walk" + (f", keep {', '.join(keep)}" if keep else "") + ")"
    labels = None
    if targets is not None:  # every face has its own strength: the columns are the targets
        labels = target_headers(attribute, targets)
        title = (f"{attribute} to the predictor's {'yaw' if attribute == POSE else 'probability'} per column "
                 f"({method}, {walk_mode} walk" + (f", keep {', '.join(keep)}" if keep else "") + ")")
    edit_grid(decoded, columns if targets is None else np.zeros(len(targets)), paths["png"], title=title,
              row_labels=source["labels"], marked_column=marked, input_images=inputs, column_labels=labels)
    edit_gif(decoded, paths["gif"], strengths=columns if targets is None else None, captions=labels)
    pasted = []
    if "photos" in source:
        if paste == "change" and unedited is None:
            unedited = _decode_walk(model, base[:, None], batch_size, False)[:, 0]
        pasted = paste_edits(source["photos"], decoded, columns, out_dir, attribute,
                             unedited if paste == "change" else None, names=names)
    record = {
        "attribute": attribute, "keep": keep, "method": method, "walk": walk_mode,
        "strengths": [round(float(a), 6) for a in strengths] if targets is None else None,
        "marked_column": marked,
        "source": source["source"], "seed": source["source"].get("seed", getattr(args, "seed", None)),
        "direction": {"file": str(direction_path(run_dir, attribute, method)) + ".npz",
                      "scale": direction.scale, "offset": direction.offset, "keep": list(direction.keep),
                      "metrics": direction.metrics,
                      "cosine_to_unconditioned": direction.metrics.get("cosine_to_unconditioned", 1.0)},
        "model": type(model).__name__, "latent_dim": int(model.latent_dim), "resolution": int(model.resolution),
        "run_dir": str(run_dir), "outputs": {kind: str(path) for kind, path in paths.items()},
    }
    if target_section is not None:
        record["target"] = target_section
    if pasted:
        record["outputs"]["photos"] = pasted
        record["paste"] = paste
    record.update(encoded)
    result = {"images": decoded, "latents": walked, "base_latents": base, "inputs": inputs,
              "strengths": strengths, "direction": direction, "paths": paths, "record": record}
    if record_extra is not None:
        record.update(record_extra(result))
    atomic_write_text(paths["json"], json.dumps(_json_ready(record), indent=2) + "\n")
    if progress:
        print(f"wrote {paths['png']}, {paths['gif']} and {paths['json']} ({len(base)} faces x {steps} "
              f"{'strengths' if targets is None else 'targets'})")
        if target_section is not None:
            for header, reached in zip(target_section["labels"], np.transpose(target_section["reached"]),
                                       strict=True):
                print(f"{attribute} {header}: reached by {int(np.sum(reached))} of {len(reached)} faces")
            if target_section["never_reached"]:
                print(f"never reached (within --range {lo:g} {hi:g}): {', '.join(target_section['never_reached'])}")
        for entry in pasted:
            print(f"pasted into {entry['photo']}: {len(entry['jpg'])} JPEGs and {entry['gif']}")
    return result
