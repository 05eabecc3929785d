"""The interactive editor's state and logic, without any UI (scripts/app.py puts a Gradio page over it).

One ``Editor`` holds the trained runs it was started with and everything that makes a slider move feel live:

- a face to edit (``Face``) is an uploaded photo (checked, aligned like CelebA with ``common.align``), a random
  sample of the run's prior, or a test image of the run's prepared cache;
- its latent (and the unedited reconstruction, for pasting the change back into a photo) is computed once per
  (run, face) and kept in a small LRU memory: for the GAN that is the inversion, the one slow step;
- each attribute's direction is found once per (run, attribute, method): read from ``RUN/directions/`` when an
  edit script already saved it there, else found (with a tqdm bar, which the page shows as progress) and saved
  under ``OUT/directions/<run>/`` (the editor writes nowhere but its output folder), then kept in memory, as
  are the ``keep`` projections;
- sliders combine: the ``cflow`` pose transport (a non-linear walk) is applied first, then
  ``z' = z + sum_a s_a * scale_a * n_a`` with every n_a projected orthogonal to the kept attributes'
  directions (``common.directions.project_out``); PGGAN's latents are put back on their sphere.

Exports (the shown PNG, a GIF of one slider's walk) go to ``OUT/exports/``. A PGGAN direction that is not yet
saved is found from scored samples: the run's own ``RUN/directions/samples.npz`` when it exists, else new ones
saved under ``OUT/directions/``.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from common.attributes import POSE, resolve_attribute
from common.cli import UserError
from common.directions import Direction, load_direction, project_out
from common.editing import direction_path, encoder_direction, get_direction, resolve_device, run_cache_dir
from common.grids import atomic_save, edit_gif, to_uint8
from pipeline.registry import POSE_EDITS

# The sliders the page shows (CelebA names, or pose), where the run can find a direction for them.
SLIDER_ATTRIBUTES = ("Smiling", "pose", "Mouth_Slightly_Open", "Narrow_Eyes", "Eyeglasses", "Male", "Young")
MAX_UPLOAD_BYTES = 10 * 2**20  # larger uploads are refused with a message
MAX_UPLOAD_PIXELS = 50_000_000  # and so are images with more pixels (decompression bombs)
UPLOAD_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "MPO", "GIF")
LATENT_MEMORY = 64  # (run, face) latents kept in memory
DISPLAY_SIDE = 256  # the edited face is shown upscaled to this many pixels a side
GIF_STEPS = 9
METHODS = {"vae": ("mean", "boundary"), "glow": ("mean", "boundary"), "pggan": ("boundary", "mean")}
# pose: the straight walk first (live); cflow turns heads better but its first fit takes minutes on a CPU
POSE_METHODS = POSE_EDITS


class EditorError(UserError):
    """A request the editor refuses (bad upload, unknown run or attribute): the page shows the message."""


def check_upload(path, max_bytes: int = MAX_UPLOAD_BYTES) -> Path:
    """Refuse anything but a readable image of at most ``max_bytes`` bytes and MAX_UPLOAD_PIXELS pixels."""
    path = Path(path)
    name = path.name
    if not path.is_file():
        raise EditorError(f"{name}: the upload did not arrive; try again")
    size = path.stat().st_size
    if size > max_bytes:
        raise EditorError(f"{name}: {size / 2**20:.1f} MB is over the upload limit of {max_bytes / 2**20:.0f} MB")
    if size == 0:
        raise EditorError(f"{name}: the file is empty; expected a JPEG or PNG photo")
    try:
        with Image.open(path) as image:
            kind, (width, height) = image.format, image.size
            if width * height > MAX_UPLOAD_PIXELS:
                raise EditorError(f"{name}: {width}x{height} pixels is over the limit of "
                                  f"{MAX_UPLOAD_PIXELS / 1e6:.0f} megapixels")
            image.verify()
    except EditorError:
        raise
    except Exception:  # PIL raises many kinds (UnidentifiedImageError, SyntaxError, struct.error, ...)
        raise EditorError(f"{name}: not an image (expected a JPEG or PNG photo)") from None
    if kind not in UPLOAD_FORMATS:
        raise EditorError(f"{name}: {kind} files are not supported; expected {', '.join(UPLOAD_FORMATS)}")
    return path


@dataclass
class Face:
    """The face being edited: a photo (with its alignment), a prior sample or a cache image."""

    kind: str  # photo | sample | cache
    key: str  # what the latent memory is keyed on (with the run)
    label: str
    seed: int = 0  # sample
    position: int = 0  # cache: position in the test split
    photo: Image.Image | None = None  # photo: the upright RGB photo
    aligned: Image.Image | None = None  # photo: 178x218 in CelebA's frame
    transform: np.ndarray | None = None  # photo: [2, 3] photo -> aligned


@dataclass
class Rendered:
    face: Image.Image  # the edited face at the model's resolution
    pasted: Image.Image | None  # a photo's edit pasted back into it
    latent: torch.Tensor  # [1, D]
    seconds: float


@dataclass
class LoadedRun:
    name: str
    run_dir: Path
    model: object
    find_direction: object
    info: dict
    directions: dict = field(default_factory=dict)  # (attribute, method, keep) -> Direction

    @property
    def method(self) -> str:
        return self.info["method"]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "-", str(text)).strip("-") or "x"


def display_image(face: Image.Image, side: int = DISPLAY_SIDE) -> Image.Image:
    """The model's small face upscaled (bicubic) to ``side`` pixels for the page and the PNG export."""
    return face if face.width >= side else face.resize((side, side), Image.BICUBIC)


class Editor:
    """Runs, latents and directions of one editor session; every file it writes lies under ``out``."""

    def __init__(self, run_dirs, out, device: str = "auto", max_upload_bytes: int = MAX_UPLOAD_BYTES,
                 max_train_images: int = 20000):
        from pipeline.registry import load_method

        if not run_dirs:
            raise EditorError("no runs given: pass --runs RUN [RUN ...]")
        self.out = Path(out)
        self.device = resolve_device(device)
        self.max_upload_bytes, self.max_train_images = max_upload_bytes, max_train_images
        self.runs: dict[str, LoadedRun] = {}
        for run_dir in map(Path, run_dirs):
            saved = run_dir / "directions" / "samples.npz"  # PGGAN's scored samples: read there, written under OUT
            samples = saved if saved.is_file() else self.out / "directions" / f"{_slug(run_dir.name)}-samples.npz"
            model, finder, info = load_method(run_dir, self.device, samples_path=samples)
            name = f"{info['method']}: {run_dir}"
            if info["method"] != "pggan":  # VAE, Glow: the same fit as the edit scripts, with a progress bar
                finder = self._encoder_finder(model, run_dir)
            self.runs[name] = LoadedRun(name, run_dir, model, finder, info)
        self._latents: OrderedDict = OrderedDict()  # (run, face key) -> (latent [1, D], reconstruction)
        self._photos: dict[str, Face] = {}  # sha1 of the file -> aligned photo face
        self.stats = {"encodes": 0, "fits": 0}

    # -------------------------------------------------------------------------------------------- runs, faces

    def run(self, name: str) -> LoadedRun:
        if name not in self.runs:
            raise EditorError(f"unknown run {name!r}; choose one of: {', '.join(self.runs)}")
        return self.runs[name]

    def methods(self, name: str, attribute: str = "") -> tuple[str, ...]:
        table = POSE_METHODS if attribute == POSE else METHODS
        return table[self.run(name).method]

    def photo_face(self, path) -> Face:
        """An uploaded photo: checked, its largest face found and aligned (once per file content)."""
        from common.align import align_face, detect_faces, largest_face, load_photo

        path = check_upload(path, self.max_upload_bytes)
        digest = hashlib.sha1(path.read_bytes()).hexdigest()
        if digest not in self._photos:
            photo = load_photo(path)
            faces = detect_faces(photo)
            if not faces:
                raise EditorError(f"{path.name}: no face found in the {photo.width}x{photo.height} photo")
            aligned, transform = align_face(photo, faces[largest_face(faces)].landmarks)
            self._photos[digest] = Face("photo", f"photo:{digest}", path.stem, photo=photo, aligned=aligned,
                                        transform=transform)
        return self._photos[digest]

    @staticmethod
    def sample_face(seed: int) -> Face:
        return Face("sample", f"sample:{int(seed)}", f"sample-{int(seed)}", seed=int(seed))

    @staticmethod
    def cache_face(position: int) -> Face:
        return Face("cache", f"cache:{int(position)}", f"test-{int(position)}", position=int(position))

    def cache_size(self, name: str) -> int:
        """Test images in the run's prepared cache (0 when the cache is missing)."""
        run = self.run(name)
        cache_dir = Path(run.info["cache"])
        if not (cache_dir / "manifest.json").exists():
            return 0
        from common.cache import CelebACache

        return len(CelebACache(cache_dir, "test"))

    def _inputs(self, run: LoadedRun, face: Face) -> torch.Tensor:
        """The model's input [1, 3, R, R] in [-1, 1] of a photo or cache face."""
        if face.kind == "photo":
            from common.align import model_crop

            crop = torch.from_numpy(model_crop(face.aligned, run.model.resolution)).permute(2, 0, 1)
            return crop.float()[None] / 127.5 - 1.0
        from common.cache import CelebACache

        cache = CelebACache(Path(run.info["cache"]), "test")
        if not 0 <= face.position < len(cache):
            raise EditorError(f"test image {face.position}: the run's cache has {len(cache)} test images")
        return cache[face.position]["image"][None].float()

    def has_latent(self, name: str, face: Face) -> bool:
        return (name, face.key) in self._latents

    def latent(self, name: str, face: Face) -> tuple[torch.Tensor, torch.Tensor]:
        """(latent [1, D], unedited reconstruction [1, 3, R, R]) of a face for a run, computed once."""
        run = self.run(name)
        key = (name, face.key)
        if key in self._latents:
            self._latents.move_to_end(key)
            return self._latents[key]
        with torch.no_grad():
            if face.kind == "sample":
                z = run.model.sample_latents(1, torch.Generator().manual_seed(face.seed))
            else:
                z = run.model.encode(self._inputs(run, face))
                self.stats["encodes"] += 1
            z = z.detach().float().cpu().reshape(1, -1)
            reconstruction = run.model.decode(z).detach().float().cpu().clamp(-1, 1)
        self._latents[key] = (z, reconstruction)
        while len(self._latents) > LATENT_MEMORY:
            self._latents.popitem(last=False)
        return self._latents[key]

    # ----------------------------------------------------------------------------------------------- directions

    def _encoder_finder(self, model, run_dir: Path):
        from common.cache import CelebACache
        from pipeline.registry import _RememberingEncoder

        encoder = _RememberingEncoder(model)  # the training split is encoded once for all attributes

        def find_direction(attribute: str, method: str) -> Direction:
            cache_dir = run_cache_dir(run_dir)
            if not (cache_dir / "manifest.json").exists():
                raise EditorError(f"{cache_dir}: the run's training cache is missing (needed to find the "
                                  f"{attribute} direction); prepare it with scripts/prepare_data.py")
            return encoder_direction(encoder, CelebACache(cache_dir, "train"), attribute, method,
                                     max_images=self.max_train_images, progress=True)

        return find_direction

    def direction_home(self, name: str) -> Path:
        """Where new directions of a run are saved: OUT/directions/<run>/directions/<attribute>-<method>."""
        run = self.run(name)
        digest = hashlib.sha1(str(run.run_dir.resolve()).encode()).hexdigest()[:8]
        return self.out / "directions" / f"{_slug(run.run_dir.name)}-{run.method}-{digest}"

    def direction(self, name: str, attribute: str, method: str, keep=()) -> Direction:
        """The attribute's direction (found once), projected orthogonal to the ``keep`` attributes'."""
        run = self.run(name)
        attribute = resolve_attribute(attribute)
        if method not in self.methods(name, attribute):
            raise EditorError(f"{attribute}: method {method!r} is not one of {', '.join(self.methods(name, attribute))}"
                              f" for the {run.method}")
        keep = tuple(k for k in keep if k != attribute)
        key = (attribute, method, keep)
        if key in run.directions:
            return run.directions[key]
        if keep:
            linear = self.methods(name)[0] if method == "cflow" else method
            base = self.direction(name, attribute, linear)
            conditions = [self.direction(name, k, self._linear(name, k, method)) for k in keep]
            direction = project_out(base, conditions, keep_names=list(keep))
        else:
            saved = direction_path(run.run_dir, attribute, method)  # an edit script's, reused as it is
            if saved.with_suffix(".npz").exists() and saved.with_suffix(".json").exists():
                direction = load_direction(saved)
            else:
                home = self.direction_home(name)
                if not direction_path(home, attribute, method).with_suffix(".npz").exists():
                    self.stats["fits"] += 1
                direction = get_direction(home, attribute, method, run.find_direction)
            if direction.dim != run.model.latent_dim:
                raise EditorError(f"{saved}.npz: a {direction.dim}-d direction for a {run.model.latent_dim}-d "
                                  "model; delete it to find the direction again")
        run.directions[key] = direction
        return direction

    def _linear(self, name: str, attribute: str, method: str) -> str:
        """A method with a vector for ``attribute`` (cflow is pose's transport; its conditions are linear)."""
        choices = self.methods(name, attribute)
        return method if method in choices and method != "cflow" else self.methods(name)[0]

    # ------------------------------------------------------------------------------------------------- editing

    def compose(self, name: str, base: torch.Tensor, strengths: dict, method: str = "", pose_method: str = "",
                keep=()) -> torch.Tensor:
        """Combine the sliders: latent [1, D] -> edited latent [1, D] (pose transport first, then linear)."""
        run = self.run(name)
        method = method or self.methods(name)[0]
        pose_method = pose_method or self.methods(name, POSE)[0]
        keep = tuple(resolve_attribute(k) for k in keep)
        z = base.double().numpy().reshape(1, -1)  # [1, D]
        active = {resolve_attribute(a): float(s) for a, s in strengths.items() if s and abs(float(s)) > 1e-9}
        if POSE in active and pose_method == "cflow":
            transport = self.direction(name, POSE, "cflow")
            z = np.asarray(transport.transport.walk(z, np.array([active.pop(POSE)])))[:, 0]  # [1, D]
        for attribute, strength in active.items():
            direction = self.direction(name, attribute, pose_method if attribute == POSE else method, keep)
            z = z + strength * direction.scale * np.asarray(direction.vector)[None]
        if run.model.latent_on_sphere:  # PGGAN's z: back onto the sqrt(D) sphere
            z = z * (np.linalg.norm(base.double().numpy()) / max(np.linalg.norm(z), 1e-12))
        return torch.from_numpy(z).float()

    def render(self, name: str, face: Face, strengths: dict, method: str = "", pose_method: str = "",
               keep=()) -> Rendered:
        """The edited face (and, for a photo, the edit's change pasted back into the photo)."""
        start = time.perf_counter()
        run = self.run(name)
        base, reconstruction = self.latent(name, face)
        z = self.compose(name, base, strengths, method, pose_method, keep)
        with torch.no_grad():
            decoded = run.model.decode(z).detach().float().cpu().clamp(-1, 1)  # [1, 3, R, R]
        pixels = to_uint8(decoded)[0]
        edited = Image.fromarray(pixels, "RGB")
        pasted = None
        if face.kind == "photo":
            from common.align import paste_back

            pasted = paste_back(face.photo, pixels, face.transform, reference=to_uint8(reconstruction)[0])
        return Rendered(edited, pasted, z, time.perf_counter() - start)

    # ------------------------------------------------------------------------------------------------- exports

    def _export_path(self, name: str, face: Face, suffix: str) -> Path:
        stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{time.perf_counter_ns() % 1000000:06d}"
        run = self.run(name)
        return self.out / "exports" / f"{run.method}-{_slug(face.label)}-{stamp}{suffix}"

    def export_png(self, name: str, face: Face, rendered: Rendered) -> Path:
        """The shown image as a PNG (the photo with the edit pasted in, else the face) in OUT/exports/."""
        image = rendered.pasted if rendered.pasted is not None else display_image(rendered.face)
        return atomic_save(image, self._export_path(name, face, ".png"), "PNG")

    def export_gif(self, name: str, face: Face, strengths: dict, attribute: str, method: str = "",
                   pose_method: str = "", keep=(), span: tuple[float, float] = (-3.0, 3.0),
                   steps: int = GIF_STEPS) -> Path:
        """A GIF of ``attribute``'s walk from span[0] to span[1], the other sliders held where they are."""
        attribute = resolve_attribute(attribute)
        run = self.run(name)
        base, _ = self.latent(name, face)
        values = np.linspace(span[0], span[1], steps)
        latents = [self.compose(name, base, {**strengths, attribute: float(v)}, method, pose_method, keep)
                   for v in values]
        with torch.no_grad():
            decoded = run.model.decode(torch.cat(latents)).detach().float().cpu().clamp(-1, 1)  # [S, 3, R, R]
        return edit_gif(decoded[None], self._export_path(name, face, f"-{attribute}.gif"), strengths=values)

