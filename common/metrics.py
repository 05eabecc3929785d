"""Evaluation metrics for attribute edits and generated samples: pure functions on arrays, returning dicts/arrays.

``scripts/evaluate.py`` runs every method's walks, has the judge predictor score them, and hands the score
tables to these functions; nothing here touches a model or a file, so every number in the report can be
unit-tested on a hand-made array with a known answer (tests/test_metrics.py).

Conventions: a walk table ``scores`` is ``[N, S]`` (N faces, S strengths in increasing order, the judge's score
of one attribute: a probability, or the predicted yaw for ``pose``); images are float in [-1, 1]; inputs may be
numpy arrays or torch tensors; outputs are numpy arrays or plain-float dicts (JSON-ready).
"""

from __future__ import annotations

import math

import numpy as np


class MetricInputError(ValueError):
    """An array handed to a metric has the wrong shape or contents (message names the argument)."""


def _array(x, name: str, ndim: int | None = None) -> np.ndarray:
    """numpy float64 copy of an array or tensor, with an optional dimensionality check."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        x = (x.float() if str(x.dtype) in ("torch.bfloat16", "torch.float16") else x).numpy()
    a = np.asarray(x, dtype=np.float64)
    if ndim is not None and a.ndim != ndim:
        raise MetricInputError(f"{name}: expected a {ndim}-d array, got shape {tuple(a.shape)}")
    return a


def _walks(scores, strengths=None) -> tuple[np.ndarray, np.ndarray | None]:
    s = _array(scores, "scores", 2)  # [N, S]
    if s.shape[1] < 2:
        raise MetricInputError(f"scores: a walk needs at least 2 strengths, got shape {tuple(s.shape)}")
    if strengths is None:
        return s, None
    a = _array(strengths, "strengths", 1)  # [S]
    if a.shape[0] != s.shape[1]:
        raise MetricInputError(f"strengths: expected {s.shape[1]} values (one per column of scores), "
                               f"got {a.shape[0]}")
    if np.any(np.diff(a) <= 0):
        raise MetricInputError("strengths: expected strictly increasing values")
    return s, a


# ----------------------------------------------------------------------------------------------------------
# Image fidelity


def psnr(a, b) -> np.ndarray:
    """Per-image PSNR in dB of images in [-1, 1], computed on [0, 1] (peak 1): [N, ...] x [N, ...] -> [N].

    Identical images give +inf (callers average the finite values and count the exact ones).
    """
    x, y = _array(a, "a"), _array(b, "b")
    if x.shape != y.shape:
        raise MetricInputError(f"psnr: image shapes differ, {tuple(x.shape)} vs {tuple(y.shape)}")
    if x.ndim < 2:
        raise MetricInputError(f"psnr: expected [N, ...] images, got shape {tuple(x.shape)}")
    diff = (x - y) / 2.0  # the [-1, 1] difference expressed on [0, 1]
    mse = (diff.reshape(len(diff), -1) ** 2).mean(axis=1)  # [N]
    with np.errstate(divide="ignore"):
        return np.where(mse > 0, -10.0 * np.log10(np.maximum(mse, 1e-300)), np.inf)


def summarize_psnr(values) -> dict:
    """Mean of the finite PSNRs [N] and how many were exact (inf), e.g. Glow's lossless round trips."""
    v = _array(values, "values", 1)
    finite = v[np.isfinite(v)]
    return {"mean_db": float(finite.mean()) if len(finite) else math.inf,
            "min_db": float(v.min()) if len(v) else math.nan,
            "exact_fraction": float(np.mean(np.isinf(v))) if len(v) else math.nan, "n": int(len(v))}


# ----------------------------------------------------------------------------------------------------------
# Walk metrics


def end_column(strengths, target_positive: bool) -> int:
    """Index of the walk's end in the target direction: the largest strength, or the smallest for negative."""
    a = _array(strengths, "strengths", 1)
    return int(np.argmax(a)) if target_positive else int(np.argmin(a))


def zero_column(strengths) -> int:
    """Index of the unedited column (the strength closest to 0)."""
    return int(np.argmin(np.abs(_array(strengths, "strengths", 1))))


def edit_success(scores, strengths, target_positive: bool, threshold: float = 0.5) -> dict:
    """Fraction of faces whose score at the walk's end is on the target side of ``threshold``.

    scores [N, S], strengths [S]. Target positive: score > threshold at the largest strength; negative:
    score < threshold at the smallest. ``start_fraction`` is the same fraction at a = 0 (how many were already
    there), ``crossed_fraction`` the fraction that started on the wrong side and ended on the target side.
    """
    s, a = _walks(scores, strengths)
    end, zero = end_column(a, target_positive), zero_column(a)

    def on_target(column: np.ndarray) -> np.ndarray:
        return column > threshold if target_positive else column < threshold

    at_end, at_start = on_target(s[:, end]), on_target(s[:, zero])
    wrong_side = ~at_start
    return {"success": float(at_end.mean()), "start_fraction": float(at_start.mean()),
            "crossed_fraction": float((at_end & wrong_side).sum() / max(1, wrong_side.sum())),
            "mean_end_score": float(s[:, end].mean()), "end_strength": float(a[end]), "n": int(len(s))}


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks along the last axis (ties share their mean rank), as Spearman's rho needs.  # [..., S]"""
    order = np.argsort(x, axis=-1, kind="stable")
    ranks = np.empty_like(x)
    np.put_along_axis(ranks, order, np.arange(x.shape[-1], dtype=np.float64)[None].repeat(len(x), 0), axis=-1)
    for i in range(len(x)):  # ties: rare for float scores, so a per-row fix-up is cheap
        values, inverse, counts = np.unique(x[i], return_inverse=True, return_counts=True)
        if len(values) < x.shape[-1]:
            sums = np.bincount(inverse, weights=ranks[i])
            ranks[i] = (sums / counts)[inverse]
    return ranks


def monotonicity(scores, atol: float = 0.01, rtol: float = 0.05) -> dict:
    """How monotone (non-decreasing along strength) the walks are.

    scores [N, S]. A walk counts as monotone when no step goes down by more than ``max(atol, rtol * range)``
    (range = the walk's own max - min), so a saturated probability jittering by 1e-3 is not a failure.
    Returns the monotone fraction, the rising monotone fraction (monotone walks whose last score exceeds the
    first by more than the tolerance: a flat walk is monotone but edits nothing), the mean Spearman rho between strength and score (constant walks, where rho
    is undefined, are left out), and the fraction of walks that decrease (rho < 0).
    """
    s, _ = _walks(scores)
    steps = np.diff(s, axis=1)  # [N, S-1]
    tolerance = np.maximum(atol, rtol * (s.max(axis=1) - s.min(axis=1)))  # [N]
    monotone = (steps >= -tolerance[:, None]).all(axis=1)  # [N]
    r = _ranks(s)  # [N, S]
    positions = np.arange(s.shape[1], dtype=np.float64) - (s.shape[1] - 1) / 2  # ranks of the strengths, centred
    centred = r - r.mean(axis=1, keepdims=True)
    norm = np.sqrt((centred ** 2).sum(axis=1) * (positions ** 2).sum())  # [N]
    valid = norm > 0
    rho = np.full(len(s), np.nan)
    rho[valid] = (centred[valid] @ positions) / norm[valid]
    rising = monotone & (s[:, -1] - s[:, 0] > tolerance)  # monotone AND actually moved up (not flat)
    return {"monotone_fraction": float(monotone.mean()), "rising_monotone_fraction": float(rising.mean()),
            "spearman_mean": float(np.nanmean(rho)) if valid.any() else math.nan,
            "decreasing_fraction": float(np.mean(rho[valid] < 0)) if valid.any() else math.nan,
            "n": int(len(s))}


def slope_per_walk(scores, strengths) -> np.ndarray:
    """Least-squares slope of each walk's score against strength: [N, S] x [S] -> [N]."""
    s, a = _walks(scores, strengths)
    centred = a - a.mean()  # [S]
    return (s - s.mean(axis=1, keepdims=True)) @ centred / (centred ** 2).sum()


def slope(scores, strengths) -> dict:
    """Score change per unit strength (least squares per walk): mean, std and median over the N walks."""
    per_walk = slope_per_walk(scores, strengths)  # [N]
    return {"mean": float(per_walk.mean()), "std": float(per_walk.std()), "median": float(np.median(per_walk)),
            "n": int(len(per_walk))}


def leakage_matrix(start_scores, end_scores) -> np.ndarray:
    """Mean absolute score change of every judged attribute between the unedited column and the walk's end.

    start_scores, end_scores: [E, N, K] (E edited attributes, N faces, K judged attributes) -> [E, K]; a single
    edit [N, K] -> [K]. Row e, column k: how much editing attribute e moved the judge's score of attribute k on
    average. Entry (e, k) for k == e is the intended change, the others are leakage.
    """
    start, end = _array(start_scores, "start_scores"), _array(end_scores, "end_scores")
    if start.shape != end.shape:
        raise MetricInputError(f"leakage_matrix: start and end shapes differ, {tuple(start.shape)} vs "
                               f"{tuple(end.shape)}")
    if start.ndim not in (2, 3):
        raise MetricInputError(f"leakage_matrix: expected [E, N, K] or [N, K] scores, got shape "
                               f"{tuple(start.shape)}")
    return np.abs(end - start).mean(axis=-2)  # [E, K] or [K]


def leakage_reduction(unconditioned: float, conditioned: float) -> float:
    """Percentage by which conditional editing cut a leakage value (100 = removed, negative = made it worse)."""
    if not math.isfinite(unconditioned) or unconditioned <= 0:
        return math.nan
    return 100.0 * (unconditioned - conditioned) / unconditioned


# ----------------------------------------------------------------------------------------------------------
# Content preservation


def content_preservation(x0, x_edit, mask=None, feats0=None, feats_edit=None) -> dict:
    """How much an edit changed a face besides the attribute: pixel and (optionally) feature distances.

    x0, x_edit [N, C, H, W] in [-1, 1] (the unedited reconstruction and the edit). ``mask`` (broadcastable to
    [N, 1, H, W], weights in [0, 1]) restricts the pixel distances to a region, e.g. everything but the mouth.
    Pixel ``l1`` is the mean absolute difference and ``rmse`` the root mean squared difference per image (in
    [-1, 1] units), averaged over images. ``feats0``/``feats_edit`` [N, F] (predictor features) add the mean
    L2 distance ``feature_distance`` and ``feature_distance_relative`` (divided by the unedited feature norm).
    """
    a, b = _array(x0, "x0", 4), _array(x_edit, "x_edit", 4)
    if a.shape != b.shape:
        raise MetricInputError(f"content_preservation: image shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
    diff = b - a  # [N, C, H, W]
    if mask is None:
        weights = np.ones((1, 1) + a.shape[2:])
    else:
        weights = _array(mask, "mask")
        while weights.ndim < 4:
            weights = weights[None]
        try:
            np.broadcast_shapes(weights.shape, (a.shape[0], 1) + a.shape[2:])
        except ValueError:
            raise MetricInputError(f"mask: expected a shape broadcastable to [N, 1, {a.shape[2]}, {a.shape[3]}], "
                                   f"got {tuple(_array(mask, 'mask').shape)}") from None
        if weights.min() < 0 or weights.max() > 1:
            raise MetricInputError("mask: expected weights in [0, 1]")
    weights = np.broadcast_to(weights, (a.shape[0], 1) + a.shape[2:])  # [N, 1, H, W]
    total = weights.sum(axis=(1, 2, 3)) * a.shape[1]  # [N] weighted pixel-channel count
    if np.any(total <= 0):
        raise MetricInputError("mask: selects no pixel")
    l1 = (np.abs(diff) * weights).sum(axis=(1, 2, 3)) / total  # [N]
    mse = (diff ** 2 * weights).sum(axis=(1, 2, 3)) / total  # [N]
    out = {"l1": float(l1.mean()), "rmse": float(np.sqrt(mse).mean()), "n": int(a.shape[0])}
    if feats0 is not None and feats_edit is not None:
        f0, f1 = _array(feats0, "feats0", 2), _array(feats_edit, "feats_edit", 2)
        if f0.shape != f1.shape:
            raise MetricInputError(f"content_preservation: feature shapes differ, {tuple(f0.shape)} vs "
                                   f"{tuple(f1.shape)}")
        distance = np.linalg.norm(f1 - f0, axis=1)  # [N]
        out["feature_distance"] = float(distance.mean())
        out["feature_distance_relative"] = float((distance / np.maximum(np.linalg.norm(f0, axis=1), 1e-12)).mean())
    return out


def box_mask(height: int, width: int, box: tuple[float, float, float, float], inside: bool = True) -> np.ndarray:
    """[H, W] mask of a box given as fractions (x0, y0, x1, y1) of the image; ``inside=False`` inverts it."""
    x0, y0, x1, y1 = box
    ys = (np.arange(height) + 0.5) / height  # pixel centres
    xs = (np.arange(width) + 0.5) / width
    m = ((ys[:, None] >= y0) & (ys[:, None] < y1) & (xs[None, :] >= x0) & (xs[None, :] < x1)).astype(np.float64)
    return m if inside else 1.0 - m


# ----------------------------------------------------------------------------------------------------------
# Sample quality


def sqrtm_psd(matrix) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix [F, F] via its eigendecomposition (no scipy);
    tiny negative eigenvalues from round-off are clipped to 0."""
    m = _array(matrix, "matrix", 2)
    m = (m + m.T) / 2
    values, vectors = np.linalg.eigh(m)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_from_stats(mu_a, cov_a, mu_b, cov_b) -> float:
    """Frechet distance between N(mu_a, cov_a) and N(mu_b, cov_b):
    |mu_a - mu_b|^2 + tr(cov_a + cov_b - 2 (cov_a^1/2 cov_b cov_a^1/2)^1/2).

    The symmetric form keeps the inner matrix symmetric PSD, so an eigendecomposition gives its square root
    exactly (the usual sqrtm(cov_a cov_b) of a non-symmetric product needs scipy and can go complex)."""
    ma, mb = _array(mu_a, "mu_a", 1), _array(mu_b, "mu_b", 1)
    ca, cb = _array(cov_a, "cov_a", 2), _array(cov_b, "cov_b", 2)
    root_a = sqrtm_psd(ca)  # [F, F]
    cross = sqrtm_psd(root_a @ cb @ root_a)  # [F, F]
    value = float(((ma - mb) ** 2).sum() + np.trace(ca) + np.trace(cb) - 2.0 * np.trace(cross))
    return max(value, 0.0)  # round-off can leave -1e-12 for identical statistics


def frechet_distance(feats_a, feats_b) -> float:
    """Frechet distance between Gaussians fitted to two feature sets [N, F] and [M, F] (FID's formula)."""
    a, b = _array(feats_a, "feats_a", 2), _array(feats_b, "feats_b", 2)
    if a.shape[1] != b.shape[1]:
        raise MetricInputError(f"frechet_distance: feature widths differ, {a.shape[1]} vs {b.shape[1]}")
    if len(a) < 2 or len(b) < 2:
        raise MetricInputError(f"frechet_distance: need at least 2 samples per set, got {len(a)} and {len(b)}")
    return frechet_from_stats(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
