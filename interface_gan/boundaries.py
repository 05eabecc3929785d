"""InterFaceGAN on a trained PGGAN: sample z, generate, score with the attribute predictor, fit directions.

``sample_and_score`` draws N latents on the sqrt(D) sphere, decodes them with the EMA generator and scores every
image with ``common.predictor.score_images`` (probabilities of the 40 attributes, yaw, factors), in batches
with a progress bar; the result is saved in RUN/directions/samples.npz and reused when it already holds at least
N samples scored by the same predictor. ``GANDirections`` turns those samples into the
``find_direction(attribute, method)`` that ``common.editing.run_edit`` asks for:

- ``boundary``: ``common.directions.linear_boundary`` on the attribute's probability (``pose``: the predicted
  yaw), keeping the top and bottom ``fraction`` of the ranking; the validation accuracy is saved in the
  direction's JSON next to it.
- ``mean``: mean difference of samples the predictor calls positive vs negative (pose: top vs bottom third).
- ``pca:K`` / ``sefa:K``: component K (0 = strongest) of GANSpace / SeFa (interface_gan/pca.py), oriented so
  that a positive strength raises the attribute; its name ("PC2 ~ pose, r=0.81") and explained variance vs the
  isotropic null are in the metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from common.attributes import POSE, attribute_index, resolve_attribute
from common.checkpoint import atomic_path
from common.cli import UserError
from common.directions import Direction, linear_boundary, mean_difference
from interface_gan.pca import Components, ganspace, orient, score_table, sefa_components

POSE_THIRD = 1 / 3


@dataclass
class ScoredSamples:
    latents: np.ndarray  # [N, D] float32 on the sqrt(D) sphere
    probs: np.ndarray  # [N, 40] in (0, 1)
    yaw: np.ndarray  # [N]
    factors: np.ndarray  # [N, F]
    predictor: str  # the predictor run that scored them

    def __len__(self) -> int:
        return self.latents.shape[0]

    def scores(self, attribute: str) -> np.ndarray:
        """The score a boundary is fitted to: the attribute's probability, or the yaw for pose.  # [N]"""
        attribute = resolve_attribute(attribute)
        return self.yaw if attribute == POSE else self.probs[:, attribute_index(attribute)]


def _atomic_savez(path: Path, **arrays) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:  # a handle: numpy adds no .npz to any name
        np.savez(handle, **arrays)


def load_samples(path: Path) -> ScoredSamples | None:
    if not path.exists():
        return None
    with np.load(path) as data:
        return ScoredSamples(data["latents"], data["probs"], data["yaw"], data["factors"], str(data["predictor"]))


@torch.no_grad()
def sample_and_score(model, predictor, n: int, path: Path | None = None, predictor_name: str = "",
                     seed: int = 0, batch_size: int = 500, progress: bool = True) -> ScoredSamples:
    """N latents, their generated images' scores; cached in ``path`` (reused if it has >= n samples)."""
    from common.predictor import score_images

    cached = load_samples(path) if path is not None else None
    if cached is not None and len(cached) >= n and cached.predictor == predictor_name:
        return ScoredSamples(cached.latents[:n], cached.probs[:n], cached.yaw[:n], cached.factors[:n],
                             cached.predictor)
    latents = model.sample_latents(n, torch.Generator().manual_seed(seed))  # [N, D]
    parts: dict[str, list[torch.Tensor]] = {"probs": [], "yaw": [], "factors": []}
    for start in tqdm(range(0, n, batch_size), desc="sample+score", unit="batch", disable=not progress):
        images = model.decode(latents[start:start + batch_size])  # [b, 3, R, R]
        scored = score_images(predictor, images, batch_size=batch_size)
        for key in parts:
            parts[key].append(scored[key])
    samples = ScoredSamples(latents.numpy().astype(np.float32), torch.cat(parts["probs"]).numpy(),
                            torch.cat(parts["yaw"]).numpy(), torch.cat(parts["factors"]).numpy(), predictor_name)
    if path is not None:
        _atomic_savez(path, latents=samples.latents, probs=samples.probs, yaw=samples.yaw,
                      factors=samples.factors, predictor=np.array(predictor_name))
    return samples


def fit_boundary(samples: ScoredSamples, attribute: str, fraction: float = 0.25, seed: int = 0) -> Direction:
    """InterFaceGAN's boundary for an attribute (or pose) on scored samples; metrics hold val_accuracy."""
    direction = linear_boundary(samples.latents, samples.scores(attribute), ratio=fraction, seed=seed)
    direction.attribute = resolve_attribute(attribute)
    return direction


def fit_mean(samples: ScoredSamples, attribute: str) -> Direction:
    """Mean difference of predicted positives and negatives (pose: top vs bottom third of yaw)."""
    attribute = resolve_attribute(attribute)
    scores = samples.scores(attribute)
    if attribute == POSE:
        lo, hi = np.quantile(scores, [POSE_THIRD, 1 - POSE_THIRD])
        keep = (scores <= lo) | (scores >= hi)
        direction = mean_difference(samples.latents[keep], scores[keep] >= hi)
    else:
        labels = scores > 0.5
        if labels.all() or not labels.any():
            raise UserError(f"{attribute}: the predictor calls all {len(scores)} samples "
                            f"{'positive' if labels.all() else 'negative'}; use --method boundary")
        direction = mean_difference(samples.latents, labels)
    direction.attribute = attribute
    return direction


def component_direction(components: Components, k: int, attribute: str, latents: np.ndarray,
                        method: str) -> Direction:
    """Component k as a Direction oriented to raise ``attribute``; its name and null comparison in metrics."""
    if not 0 <= k < components.vectors.shape[0]:
        raise UserError(f"--method {method}: component {k} does not exist (0..{components.vectors.shape[0] - 1})")
    attribute = resolve_attribute(attribute)
    corr = components.correlations[k] if components.correlations else {}
    r = corr.get(attribute, 0.0)
    vector = orient(components.vectors[k], r)
    top = dict(list(corr.items())[:5])
    return Direction(
        vector=vector.astype(np.float64), scale=float(np.std(latents @ vector)), offset=0.0, attribute=attribute,
        method=method,
        metrics={"component": k, "name": components.names[k] if components.names else f"{method}",
                 "correlation_with_attribute": r, "top_correlations": top,
                 "explained_variance_ratio": float(components.explained_variance_ratio[k]),
                 "isotropic_null_ratio": float(components.null_ratio[k]), "is_noise": bool(components.noise[k])},
    )


class GANDirections:
    """The PGGAN's ``find_direction(attribute, method)`` for run_edit, over samples scored once (lazily).

    ``samples_fn()`` gives the ScoredSamples (``sample_and_score``); ``samples()`` calls it once and keeps the
    result; ``components("pca" | "sefa")`` are GANSpace / SeFa over the first ``ganspace_samples`` of them.
    """

    def __init__(self, model, samples_fn, fraction: float = 0.25, ganspace_depth: int = 0,
                 ganspace_samples: int = 5000, max_components: int = 20, seed: int = 0):
        self.model, self.samples_fn, self.fraction, self.seed = model, samples_fn, fraction, seed
        self.ganspace_depth, self.ganspace_samples = ganspace_depth, ganspace_samples
        self.max_components = max_components
        self._samples: ScoredSamples | None = None
        self._components: dict[str, Components] = {}

    def samples(self) -> ScoredSamples:
        if self._samples is None:
            self._samples = self.samples_fn()
        return self._samples

    def components(self, kind: str) -> Components:
        if kind not in self._components:
            samples = self.samples()
            m = min(self.ganspace_samples, len(samples))
            latents = torch.from_numpy(samples.latents[:m])
            scores = score_table(samples.probs[:m], samples.yaw[:m])
            if kind == "pca":
                found = ganspace(self.model.generator, latents, self.max_components, self.ganspace_depth, scores)
            else:
                found = sefa_components(self.model.generator, self.max_components, latents, scores)
            self._components[kind] = found
        return self._components[kind]

    def __call__(self, attribute: str, method: str) -> Direction:
        name, _, parameter = method.partition(":")
        if name == "boundary":
            return fit_boundary(self.samples(), attribute, self.fraction, self.seed)
        if name == "mean":
            return fit_mean(self.samples(), attribute)
        if name in ("pca", "sefa"):
            if parameter and not parameter.isdigit():
                raise UserError(f"--method {method}: expected a component number, e.g. {name}:2")
            k = int(parameter or 0)
            return component_direction(self.components(name), k, attribute, self.samples().latents, method)
        raise UserError(f"--method {method}: expected boundary, mean, pca:K or sefa:K")
