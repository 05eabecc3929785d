"""Map a run folder to its method's editable model: ``load_method(run_dir, device) -> (model, find_direction, info)``.

Lives beside the scripts (DESIGN.md: whatever maps a run folder to its method's model lives above the methods),
so ``common/`` stays method-agnostic and the methods never import each other. The run's ``config.yaml`` (written
by every training script through ``common.run.RunContext``) names the method in its ``method`` key:

- ``vae``: ``vae.model.load_model_from_run``; directions from the encoded training split (mean | boundary);
  ``predictor_run`` labels a cache of own photos that lacks an attribute's labels.
- ``glow``: ``flow.glow.load_model_from_run``; same directions; ``sample_temperature`` set to ``glow_temperature``.
- ``pggan``: the EMA generator wrapped in ``PGGANEditable``; directions from generated samples scored by a
  predictor run (the one that FINDS directions, default the config's ``edit.predictor``).

``find_direction(attribute, method)`` is what ``common.editing.get_direction`` / ``run_edit`` call for a
direction not yet saved in ``RUN/directions/``. The edit scripts, the evaluation, the demo and the editor
all load their models here.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from common.cli import UserError

METHODS = ("vae", "glow", "pggan")
# method -> (training script, config folder, the method's default direction finder)
TRAINING = {"vae": ("scripts/train_vae.py", "configs/vae", "mean"),
            "glow": ("scripts/train_glow.py", "configs/flow", "mean"),
            "pggan": ("scripts/train_pggan.py", "configs/interface_gan", "boundary")}
# The pose edit the evaluation and the demo use, where it differs from the method's default: the VAE's and
# Glow's poses lie on curved paths, so their straight pose directions cross-fade and a conditional flow on the
# latents turns heads better (common/latent_flow.py; for Glow a convolutional one on the top level; the turn
# check in scripts/evaluate.py measures both).
POSE_METHODS = {"vae": "cflow", "glow": "cflow"}
# Every pose edit each method's find_direction can make (the editor's choices, evaluate.py --pose-method's)
POSE_EDITS = {"vae": ("mean", "boundary", "cflow"), "glow": ("mean", "boundary", "cflow"), "pggan": ("boundary", "mean")}
DEFAULT_PREDICTOR = "runs/predictor/synthetic"
# encoded training latents kept on disk for the next edit or evaluation of the same run (the demo's Glow: 120 MB
# with the mirrored images of the pose flow); larger sets (real faces at 64x64) are encoded again each time
MAX_REMEMBERED_BYTES = 256 * 2**20
DEFAULT_GLOW_TEMPERATURE = 0.7  # as scripts/edit_glow.py: T = 1 samples of a small Glow are mostly noise


def _train_hint(run_dir: Path) -> str:
    """'python scripts/train_vae.py --config configs/vae/<stem>.yaml', guessed from runs/<method>/<stem>."""
    method = run_dir.parent.name
    script, folder, _ = TRAINING.get(method, ("scripts/train_<method>.py", "configs/<method>", ""))
    return f"python {script} --config {folder}/{run_dir.name}.yaml --out {run_dir}"


def read_run_method(run_dir) -> str:
    """The ``method`` key of RUN/config.yaml, with one-line errors for a missing, unreadable or unknown run."""
    run_dir = Path(run_dir)
    config = run_dir / "config.yaml"
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: run folder not found; train it first with {_train_hint(run_dir)}")
    if not config.is_file():
        raise UserError(f"{run_dir}: no config.yaml; train it first with {_train_hint(run_dir)}")
    try:
        data = yaml.safe_load(config.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{config}: not valid YAML ({str(exc).splitlines()[0]})") from None
    method = data.get("method") if isinstance(data, dict) else None
    if method is None:
        raise UserError(f"{config}: no 'method' key; expected a run folder written by a training script")
    if method not in METHODS:
        extra = " (an attribute predictor judges edits, it is not an editable model)" if method == "predictor" else ""
        raise UserError(f"{config}: unknown method {method!r}{extra}; choose one of: {', '.join(METHODS)}")
    if not (run_dir / "checkpoints" / "last.pt").is_file():
        raise UserError(f"{run_dir}: no checkpoints/last.pt yet; finish training with {_train_hint(run_dir)} "
                        "--resume")
    return method


class _RememberingEncoder:
    """The model as an EditableModel whose encoding of the same batch twice costs nothing, in this process and
    (up to ``MAX_REMEMBERED_BYTES``) in the next one.

    ``encoder_direction`` encodes the whole training split again for every attribute (same seeded subset, same
    batches); evaluating four attributes of a Glow would encode 8k images four times (minutes on a CPU), and each
    edit command would encode them again. Batches are recognised by a hash of their bytes, so a different batch
    can never get a stale answer; the file ``store`` (RUN/directions/encoded.pt) is tied to the checkpoint it was
    encoded with (its size and modification time), so a retrained or resumed run starts afresh.
    """

    def __init__(self, model, store: Path | None = None, stamp: str = ""):
        self.model, self.memory, self.store, self.stamp, self.dirty = model, {}, store, stamp, False
        self.latent_dim, self.resolution = model.latent_dim, model.resolution
        self.latent_on_sphere = model.latent_on_sphere
        self.decode, self.sample_latents = model.decode, model.sample_latents
        self.latent_flow_layout, self.encode_report = model.latent_flow_layout, model.encode_report
        from common.checkpoint import load_stamped

        self.memory = load_stamped(store, stamp, "latents")  # an unreadable store: encode again, overwrite it later

    def encode(self, images):
        from common.checkpoint import content_key

        key = content_key(images)
        if key not in self.memory:
            self.memory[key] = self.model.encode(images).detach().cpu()
            self.dirty = True
        return self.memory[key]

    def save(self) -> None:
        """Write what was encoded to ``store`` (atomically) when it is new and not larger than the cap."""
        if self.store is None or not self.dirty:
            return
        size = sum(t.numel() * t.element_size() for t in self.memory.values())
        if size > MAX_REMEMBERED_BYTES:
            return
        from common.checkpoint import save_stamped

        save_stamped(self.store, self.stamp, "latents", self.memory)
        self.dirty = False


def _checkpoint_stamp(run_dir: Path) -> str:
    stat = (run_dir / "checkpoints" / "last.pt").stat()
    return f"{stat.st_size}-{stat.st_mtime_ns}"


def _cache_finder(model, run_dir: Path, cache: str | None, max_images: int, batch_size: int,
                  predictor_run=None, device="cpu"):
    """find_direction of encoder models: encode the run's training cache and fit (common.editing); where the
    cache lacks an attribute's labels (own photos), ``predictor_run`` labels its images."""
    from common.editing import encoder_direction, run_cache_dir

    encoder = _RememberingEncoder(model, run_dir / "directions" / "encoded.pt", _checkpoint_stamp(run_dir))

    def find_direction(attribute: str, method: str):
        cache_dir = run_cache_dir(run_dir, cache)
        if not (cache_dir / "manifest.json").exists():
            raise UserError(f"{cache_dir}: the run's training cache is missing (needed to find the {attribute} "
                            "direction); prepare it with scripts/prepare_data.py or pass --cache")
        from common.cache import CelebACache

        direction = encoder_direction(encoder, CelebACache(cache_dir, "train"), attribute, method,
                                      batch_size=batch_size, max_images=max_images, progress=False,
                                      predictor=predictor_run, predictor_device=device)
        encoder.save()
        return direction

    return find_direction


def load_method(run_dir, device="cpu", predictor_run=None, cache: str | None = None,
                glow_temperature: float = DEFAULT_GLOW_TEMPERATURE, samples: int | None = None,
                max_train_images: int = 20000, batch_size: int = 256, seed: int = 0,
                samples_path: str | Path | None = None, expect: str | None = None):
    """(model: EditableModel, find_direction(attribute, method) -> Direction, info dict) for a run folder.

    ``expect`` (a method name): a run of another method is a one-line error naming the right edit script.

    info: {"method", "run_dir", "direction_method" (the method's default finder), "walk" (sphere | relative),
    "cache" (the run's prepared cache), plus "predictor" (pggan), "temperature" and "n_bits" (glow)}.
    """
    import torch

    from common.editing import resolve_device, run_cache_dir

    run_dir = Path(run_dir)
    method = read_run_method(run_dir)
    if expect is not None and method != expect:
        script = {"vae": "edit_vae.py", "glow": "edit_glow.py", "pggan": "edit_interface_gan.py"}[method]
        raise UserError(f"{run_dir}: a {method} run, not a {expect} one; edit it with scripts/{script}")
    device = resolve_device(device) if isinstance(device, str) else torch.device(device)
    info = {"method": method, "run_dir": str(run_dir), "direction_method": TRAINING[method][2],
            "pose_method": POSE_METHODS.get(method, TRAINING[method][2])}

    if method == "vae":
        from vae.model import load_model_from_run

        model = load_model_from_run(run_dir, device)
        find_direction = _cache_finder(model, run_dir, cache, max_train_images, batch_size, predictor_run, device)
    elif method == "glow":
        from flow.glow import load_model_from_run

        model = load_model_from_run(run_dir, device)
        model.sample_temperature = glow_temperature  # what sample_latents(n, generator) samples at
        find_direction = _cache_finder(model, run_dir, cache, max_train_images, batch_size, predictor_run, device)
        info.update(temperature=glow_temperature, n_bits=int(model.n_bits))
    else:
        from common.predictor import load_predictor
        from interface_gan.boundaries import GANDirections, sample_and_score
        from interface_gan.inversion import PGGANEditable, load_generator

        generator, cfg = load_generator(run_dir, device)
        predictor_dir = Path(predictor_run or cfg.edit.predictor or DEFAULT_PREDICTOR)
        if not (predictor_dir / "checkpoints").is_dir():
            raise UserError(f"{predictor_dir}: predictor run not found (the PGGAN needs it to find directions); "
                            "train one with python scripts/train_predictor.py --config "
                            "configs/predictor/synthetic.yaml or pass the predictor run")
        predictor = load_predictor(predictor_dir, device)
        e = cfg.edit
        model = PGGANEditable(generator, device, predictor, steps=e.inversion_steps, lr=e.inversion_lr,
                              starts=e.inversion_starts, feature_weight=e.inversion_feature_weight, seed=seed)
        # photos inverted once are not inverted again (another attribute, the evaluation, the turn check)
        model.remember(run_dir / "directions" / "inverted.pt",
                       f"{_checkpoint_stamp(run_dir)}|{predictor_dir.resolve()}|{_checkpoint_stamp(predictor_dir)}")
        n_samples = samples or e.samples

        def scored_samples():
            return sample_and_score(model, predictor, n_samples,
                                    Path(samples_path or run_dir / "directions" / "samples.npz"),
                                    str(predictor_dir.resolve()), seed=cfg.train.seed)

        find_direction = GANDirections(model, scored_samples, e.boundary_fraction, e.ganspace_depth,
                                       e.ganspace_samples, seed=cfg.train.seed)
        info.update(predictor=str(predictor_dir), samples=n_samples)
    info["walk"] = "sphere" if model.latent_on_sphere else "relative"
    info["cache"] = str(run_cache_dir(run_dir, cache))
    return model, find_direction, info
