"""Unsupervised directions in a PGGAN's z space: GANSpace (PCA of early activations) and SeFa (closed form).

PCA straight on z finds nothing: z ~ N(0, I) is isotropic, so its explained-variance ratios match the isotropic
null (``common.directions.isotropic_null`` / ``is_noise`` say so). The structure is in what the generator does
with z:

- GANSpace (Harkonen et al. 2020): PCA on the activations of an early block (the 4x4 output by default, flattened)
  over many z, then each component is mapped back to z by least squares: regress z on the activations' PCA
  coordinates, and the regression coefficients of coordinate k are the z-direction that moves along PC k.
- SeFa (Shen & Zhou 2021): the first layer maps z linearly (W z), so the directions that change its output the
  most are the top eigenvectors of W^T W, no sampling needed.

Every component is named by its strongest Pearson correlation with the attribute predictor's scores and the
yaw (``"PC2 ~ pose, r=0.81"``), computed on scored samples (boundaries.py makes them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from common.attributes import CELEBA_ATTRIBUTES, POSE
from common.cli import UserError
from common.directions import is_noise, isotropic_null, pca_directions


@dataclass
class Components:
    """Directions in z with their statistics (rows of ``vectors`` are unit [D])."""

    vectors: np.ndarray  # [K, D]
    explained_variance_ratio: np.ndarray  # [K] of the space the PCA ran in (activations / W^T W spectrum)
    null_ratio: np.ndarray  # [K] the isotropic null of the same size (nan for SeFa)
    noise: np.ndarray  # [K] bool: indistinguishable from the null
    names: list[str] = field(default_factory=list)  # "PC2 ~ pose, r=0.81"
    correlations: list[dict] = field(default_factory=list)  # per component {score name: r}


def regress_directions(latents: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Least-squares map from PCA coordinates back to z: the unit row k is how z moves along coordinate k.

    latents [N, D], coords [N, K] -> [K, D]. Solves min_B |(Z - mean Z) - C B|^2.
    """
    z = latents.astype(np.float64) - latents.mean(axis=0)  # [N, D]
    c = coords.astype(np.float64) - coords.mean(axis=0)  # [N, K]
    b, *_ = np.linalg.lstsq(c, z, rcond=None)  # [K, D]
    norms = np.linalg.norm(b, axis=1, keepdims=True)
    return b / np.maximum(norms, 1e-12)


def pca_with_null(x: np.ndarray, k: int, tol: float = 0.1) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """PCA of x [N, F] -> (components [k, F], ratios [k], null ratios [k], is_noise [k])."""
    components, ratios, _ = pca_directions(x, k)
    null = isotropic_null(x.shape[0], x.shape[1], k)
    return components, ratios, null, is_noise(ratios, null, tol)


def correlations(values: np.ndarray, scores: dict[str, np.ndarray]) -> list[dict[str, float]]:
    """Pearson r of every column of values [N, K] with every score [N] -> K dicts {name: r}."""
    v = values - values.mean(axis=0)
    v = v / np.maximum(v.std(axis=0), 1e-12)  # [N, K]
    out = [{} for _ in range(values.shape[1])]
    for name, s in scores.items():
        s = np.asarray(s, dtype=np.float64).reshape(-1)
        sd = s.std()
        if sd < 1e-12:
            continue
        r = (v * ((s - s.mean()) / sd)[:, None]).mean(axis=0)  # [K]
        for k in range(values.shape[1]):
            out[k][name] = float(r[k])
    return out


def name_components(values: np.ndarray, scores: dict[str, np.ndarray], prefix: str = "PC") -> tuple[list[str],
                                                                                                       list[dict]]:
    """Names like "PC2 ~ pose, r=0.81" (strongest |r|) and each component's correlations sorted by |r|."""
    corr = correlations(values, scores)
    names, ranked = [], []
    for k, c in enumerate(corr):
        order = sorted(c.items(), key=lambda kv: -abs(kv[1]))
        ranked.append(dict(order))
        names.append(f"{prefix}{k} ~ {order[0][0]}, r={order[0][1]:.2f}" if order else f"{prefix}{k}")
    return names, ranked


def score_table(probs: np.ndarray, yaw: np.ndarray, attributes: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """{attribute: logit of its probability, ..., "pose": yaw} for naming components (logits: unsquashed)."""
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-6, 1 - 1e-6)
    names = attributes or CELEBA_ATTRIBUTES
    table = {name: np.log(p[:, CELEBA_ATTRIBUTES.index(name)] / (1 - p[:, CELEBA_ATTRIBUTES.index(name)]))
             for name in names}
    table[POSE] = np.asarray(yaw, dtype=np.float64)
    return table


@torch.no_grad()
def early_activations(generator, latents: torch.Tensor, depth: int = 0, batch_size: int = 512,
                      pooled: bool = False) -> np.ndarray:
    """The generator's block-``depth`` output for each z, flattened (or channel-averaged) -> [N, F] float32."""
    if not 0 <= depth < generator.levels:
        raise UserError(f"edit.ganspace_depth: expected 0..{generator.levels - 1}, got {depth}")
    device = next(generator.parameters()).device
    out = []
    for start in range(0, latents.shape[0], batch_size):
        h = generator.features(latents[start:start + batch_size].to(device).float(), depth)  # [B, C, r, r]
        out.append((h.mean(dim=(2, 3)) if pooled else h.flatten(1)).float().cpu())
    return torch.cat(out).numpy()


def ganspace(generator, latents: torch.Tensor, k: int, depth: int = 0, scores: dict | None = None,
             pooled: bool = False) -> Components:
    """GANSpace components in z from samples latents [N, D] (their scores name the components)."""
    acts = early_activations(generator, latents, depth, pooled=pooled)  # [N, F]
    k = min(k, acts.shape[1], acts.shape[0] - 1)
    components, ratios, null, noise = pca_with_null(acts, k)
    coords = (acts - acts.mean(axis=0)) @ components.T  # [N, k]
    vectors = regress_directions(latents.cpu().numpy(), coords)
    result = Components(vectors, ratios, null, noise)
    if scores:
        result.names, result.correlations = name_components(coords, scores, "PC")
    return result


def sefa(weight: torch.Tensor | np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k eigenvectors of W^T W for a first-layer weight [F, D] -> (vectors [k, D], eigenvalue shares [k])."""
    w = np.asarray(weight.detach().cpu() if torch.is_tensor(weight) else weight, dtype=np.float64)  # [F, D]
    values, vectors = np.linalg.eigh(w.T @ w)  # ascending
    order = np.argsort(values)[::-1][:k]
    comps = vectors[:, order].T  # [k, D]
    signs = np.sign(comps[np.arange(len(order)), np.argmax(np.abs(comps), axis=1)])
    return comps * signs[:, None], values[order] / values.sum()


def sefa_components(generator, k: int, latents: torch.Tensor | None = None, scores: dict | None = None) -> Components:
    """SeFa on the generator's first (dense) layer; named by correlating z's projections with the scores."""
    weight = generator.dense.effective_weight()  # [16*C0, D]
    vectors, shares = sefa(weight, min(k, weight.shape[1]))
    # The W^T W spectrum has no sampling null; a flat spectrum (all shares 1/D) would mean "no preferred axis".
    flat = np.full(len(shares), 1.0 / weight.shape[1])
    result = Components(vectors, shares, flat, is_noise(shares, flat))
    if scores and latents is not None:
        proj = latents.cpu().numpy().astype(np.float64) @ vectors.T  # [N, k]
        result.names, result.correlations = name_components(proj, scores, "SeFa")
    return result


def orient(vector: np.ndarray, correlation: float) -> np.ndarray:
    """Flip a component so that a positive strength increases the named score."""
    return vector if correlation >= 0 else -vector
