"""Latent directions for attribute editing: finding them, conditioning them, walking along them, saving them.

Everything here is a pure function on arrays (numpy; torch tensors are accepted and converted), shared by the
VAE, PGGAN (InterFaceGAN) and Glow editors:

- ``mean_difference``: the classic "smile vector", class-mean of positives minus class-mean of negatives.
- ``linear_boundary``: InterFaceGAN's recipe (keep the extreme scores, fit a linear classifier, use its normal).
- ``project_out``: conditional editing, the direction projected onto the orthogonal complement of any number of
  condition directions through a Gram solve (InterFaceGAN's 1- and 2-condition formulas are special cases).
- ``pca_directions`` with ``isotropic_null`` / ``is_noise``: principal directions and a test of whether they
  are anything more than the sampling noise of an isotropic Gaussian (they are not, on PGGAN's z).
- walks: ``walk_relative`` (z + a*scale*n), ``walk_absolute`` (set the signed distance to the boundary) and
  ``walk_sphere`` (great-circle moves for latents normalised to a sphere, like PGGAN's).

Conventions. A ``Direction`` holds a unit ``vector`` n [D] and a ``scale``: the latent distance of strength 1
(for a mean difference the norm of the class-mean difference, so strength 1 moves an average negative to an
average positive; for a boundary the std of the latents' projections on n). For a boundary, ``offset`` b
defines the signed distance ``s(z) = z . n + b``: s > 0 on the high-score side, s = 0 on the decision
boundary, and |s| is the Euclidean distance to it (because |n| = 1).
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.checkpoint import atomic_path, atomic_write_text
from common.cli import UserError

# Below this fraction of its length left after projection a direction is considered to lie in the span of the
# conditions: the renormalised remainder would be dominated by noise.
SPAN_TOLERANCE = 1e-3
# Conditions whose normalised Gram matrix has an eigenvalue below this are (nearly) linearly dependent.
DEGENERACY_TOLERANCE = 1e-8


class DirectionError(UserError):
    """Bad input to the direction math (empty class, degenerate conditions, malformed direction file)."""


@dataclass
class Direction:
    """A unit latent direction with the meta-data the edit scripts record (see the module docstring)."""

    vector: np.ndarray  # [D] unit length, float64
    scale: float = 1.0  # latent distance of strength 1
    offset: float = 0.0  # boundary intercept: signed distance s(z) = z . vector + offset
    attribute: str = ""
    method: str = ""
    keep: list = field(default_factory=list)  # names of the attributes projected out
    metrics: dict = field(default_factory=dict)
    # A non-linear edit that replaces the straight walk (common.latent_flow.ConditionalLatentFlow, method cflow):
    # anything with walk(z [B, D], strengths [S]) -> [B, S, D]. ``vector`` then stays the linear direction, used
    # when this attribute is a --keep condition of another edit.
    transport: object | None = None

    @property
    def dim(self) -> int:
        return int(self.vector.shape[0])


# ----------------------------------------------------------------------------------------------------------
# Helpers


def as_array(x, name: str = "array", dtype=None) -> np.ndarray:
    """numpy view of a numpy array, torch tensor or nested list (float32 kept, other types -> float64)."""
    if hasattr(x, "detach"):  # a torch.Tensor (checked without importing torch)
        x = x.detach().cpu()
        if str(x.dtype) in ("torch.bfloat16", "torch.float16"):  # numpy has no bfloat16
            x = x.float()
        x = x.numpy()
    x = np.asarray(x)
    if dtype is not None:
        return x.astype(dtype, copy=False)
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float64)
    return x


def _latents_2d(latents, name: str = "latents") -> np.ndarray:
    z = as_array(latents, name)
    if z.ndim != 2:
        raise DirectionError(f"{name}: expected a 2-D array [N, D], got shape {tuple(z.shape)}")
    if z.shape[0] == 0:
        raise DirectionError(f"{name}: no latents (shape {tuple(z.shape)})")
    return z


def _unit(v: np.ndarray, what: str) -> np.ndarray:
    norm = float(np.linalg.norm(v))
    if not np.isfinite(norm) or norm == 0.0:
        raise DirectionError(f"{what}: cannot normalise a zero or non-finite vector")
    return v / norm


def _vector_of(direction) -> np.ndarray:
    """The float64 [D] vector of a Direction or array-like."""
    if isinstance(direction, Direction):
        return np.asarray(direction.vector, dtype=np.float64)
    v = as_array(direction, "direction", np.float64)
    if v.ndim != 1:
        raise DirectionError(f"direction: expected a 1-D vector [D], got shape {tuple(v.shape)}")
    return v


def _like(result: np.ndarray, reference):
    """Return ``result`` as the same kind (torch tensor on the same device/dtype, or numpy) as ``reference``."""
    if hasattr(reference, "detach"):
        import torch

        return torch.as_tensor(result, dtype=reference.dtype if reference.dtype.is_floating_point else None,
                               device=reference.device)
    return result.astype(reference.dtype if np.asarray(reference).dtype in (np.float32, np.float64)
                         else np.float64, copy=False)


def signed_distance(latents, direction: Direction) -> np.ndarray:
    """s(z) = z . n + offset for latents [N, D] (or [D]) -> [N] (or scalar); > 0 on the high-score side."""
    z = as_array(latents, "latents", np.float64)
    return z @ direction.vector + direction.offset  # [N]


# ----------------------------------------------------------------------------------------------------------
# Finding directions


def mean_difference(latents, labels) -> Direction:
    """Unit vector from the negatives' mean to the positives' mean; scale = the distance between the means.

    latents [N, D], labels [N] bool (or 0/1). Both classes must be non-empty.
    """
    z = _latents_2d(latents)
    y = as_array(labels, "labels").reshape(-1) > 0.5  # [N] bool
    if y.shape[0] != z.shape[0]:
        raise DirectionError(f"labels: expected {z.shape[0]} labels (one per latent), got {y.shape[0]}")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise DirectionError(f"labels: need both positive and negative examples, got {n_pos} positive and "
                             f"{n_neg} negative")
    diff = z[y].mean(axis=0, dtype=np.float64) - z[~y].mean(axis=0, dtype=np.float64)  # [D]
    scale = float(np.linalg.norm(diff))
    return Direction(vector=_unit(diff, "mean difference"), scale=scale, offset=0.0, method="mean",
                     metrics={"n_positive": n_pos, "n_negative": n_neg, "mean_distance": scale})


def regression_direction(latents, scores) -> Direction:
    """The mean latent change per standard deviation of a continuous score (the continuous mean difference).

    Least squares of every latent coordinate on the score: slope b = Cov(z, s) / Var(s) [D]; the direction is
    b * std(s), so strength 1 moves a latent by what one standard deviation of the score changes on average
    (for head yaw on CelebA-like data, about 18 degrees; +-2 spans the data). latents [N, D], scores [N].
    """
    z = _latents_2d(latents)
    s = as_array(scores, "scores").reshape(-1).astype(np.float64)  # [N]
    if s.shape[0] != z.shape[0]:
        raise DirectionError(f"scores: expected {z.shape[0]} scores (one per latent), got {s.shape[0]}")
    if s.shape[0] < 3 or not np.isfinite(s).all():
        raise DirectionError(f"scores: need at least 3 finite scores, got {s.shape[0]}")
    centred = s - s.mean()  # [N]
    std = float(np.sqrt(np.mean(centred ** 2)))
    if std == 0.0:
        raise DirectionError("scores: all scores are equal; a regression direction needs them to vary")
    slope = (centred @ (z - z.mean(axis=0, dtype=np.float64))) / (len(s) * std ** 2)  # [D] per unit of score
    diff = slope * std  # [D] per standard deviation of the score
    scale = float(np.linalg.norm(diff))
    return Direction(vector=_unit(diff, "regression"), scale=scale, offset=0.0, method="mean",
                     metrics={"n_images": int(len(s)), "score_std": round(std, 6), "distance_per_std": scale})


def select_extremes(scores, ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """InterFaceGAN's sample selection: indices of the bottom and top ``ratio`` fraction of scores, and labels.

    Returns (indices [2k], labels [2k] bool) with k = max(1, int(N * ratio)). A sample is labelled positive when
    its score is above the cut between the two groups. Samples tied at the cut (binary scores used with
    ratio=0.5) go to the side that keeps both classes non-empty, so 0/1 labels come back unchanged.
    """
    s = as_array(scores, "scores", np.float64).reshape(-1)  # [N]
    if not 0.0 < ratio <= 0.5:
        raise DirectionError(f"ratio: expected a fraction in (0, 0.5], got {ratio}")
    n = s.shape[0]
    k = max(1, int(n * ratio))
    order = np.argsort(s, kind="stable")  # [N] ascending
    if 2 * k >= n:
        keep = order
    else:
        keep = np.concatenate([order[:k], order[-k:]])  # [2k] bottom then top
    low_max, high_min = s[order[k - 1]], s[order[-k]]
    if high_min > low_max:
        labels = s[keep] > low_max
    elif np.any(s[keep] > high_min):  # tie at the cut: tied values join the lower class
        labels = s[keep] > high_min
    else:  # everything above the tie is the tie itself: tied values join the upper class
        labels = s[keep] >= high_min
    return keep, labels


def fit_boundary(latents, labels, val_fraction: float = 0.3, seed: int = 0, classifier: str = "logistic",
                 C: float = 1.0) -> Direction:
    """Fit a linear classifier to labelled latents [N, D] and return its unit normal as a Direction.

    The samples are shuffled with ``seed`` and ``val_fraction`` of them held out. ``classifier`` is
    ``"logistic"`` (L2 logistic regression, lbfgs) or ``"svm"`` (linear SVM solved in the primal, liblinear);
    both are seconds at InterFaceGAN's 20k x 512, where libsvm's kernel SVC takes minutes. The normal points to
    the positive class; offset is the intercept divided by |w|, so ``signed_distance`` is a true distance.
    scale is the std of the given latents' projections on the normal.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import LinearSVC

    z = _latents_2d(latents)
    y = as_array(labels, "labels").reshape(-1) > 0.5  # [N] bool
    if y.shape[0] != z.shape[0]:
        raise DirectionError(f"labels: expected {z.shape[0]} labels (one per latent), got {y.shape[0]}")
    if not 0.0 <= val_fraction < 1.0:
        raise DirectionError(f"val_fraction: expected a fraction in [0, 1), got {val_fraction}")
    perm = np.random.default_rng(seed).permutation(z.shape[0])  # [N]
    n_val = int(round(z.shape[0] * val_fraction))
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    x_train = z[train_idx].astype(np.float64)  # [Nt, D]
    y_train = y[train_idx]
    if y_train.all() or not y_train.any():
        raise DirectionError(f"labels: the training split needs both classes, got {int(y_train.sum())} positive "
                             f"of {y_train.shape[0]}")
    if classifier == "logistic":
        model = LogisticRegression(C=C, max_iter=1000)
    elif classifier == "svm":
        model = LinearSVC(C=C, dual=False, max_iter=2000)
    else:
        raise DirectionError(f"classifier: expected 'logistic' or 'svm', got {classifier!r}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model.fit(x_train, y_train)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    w = model.coef_.reshape(-1).astype(np.float64)  # [D]
    w_norm = float(np.linalg.norm(w))
    if w_norm == 0.0:
        raise DirectionError("labels: the classifier found no separating direction (zero weights)")
    normal = w / w_norm  # [D]
    offset = float(model.intercept_[0]) / w_norm

    def accuracy(x: np.ndarray, t: np.ndarray) -> float | None:
        if x.shape[0] == 0:
            return None
        return float(np.mean(((x @ normal + offset) > 0) == t))

    projections = z @ normal.astype(z.dtype)  # [N]
    return Direction(
        vector=normal, scale=float(np.std(projections, dtype=np.float64)), offset=offset, method="boundary",
        metrics={"val_accuracy": accuracy(z[val_idx].astype(np.float64), y[val_idx]),
                 "train_accuracy": accuracy(x_train, y_train), "n_train": int(train_idx.shape[0]),
                 "n_val": int(n_val), "classifier": classifier, "converged": converged},
    )


def linear_boundary(latents, scores, ratio: float = 0.02, val_fraction: float = 0.3, seed: int = 0,
                    classifier: str = "logistic", C: float = 1.0) -> Direction:
    """InterFaceGAN's boundary: keep the bottom and top ``ratio`` of scores, fit a linear classifier.

    latents [N, D], scores [N] (a predictor's score, or 0/1 labels with ratio=0.5 to use every sample with its
    own label). Returns the unit normal pointing towards high scores, ``offset`` so that the signed distance
    is ``z . n + offset``, ``scale`` = std of ALL latents' projections on n, and metrics val_accuracy,
    train_accuracy, n_train, n_val. Reproducible for a seed.
    """
    z = _latents_2d(latents)
    s = as_array(scores, "scores", np.float64).reshape(-1)  # [N]
    if s.shape[0] != z.shape[0]:
        raise DirectionError(f"scores: expected {z.shape[0]} scores (one per latent), got {s.shape[0]}")
    keep, labels = select_extremes(s, ratio)  # [2k], [2k]
    direction = fit_boundary(z[keep], labels, val_fraction=val_fraction, seed=seed, classifier=classifier, C=C)
    direction.scale = float(np.std(z @ direction.vector.astype(z.dtype), dtype=np.float64))
    direction.metrics.update({"ratio": ratio, "n_kept": int(keep.shape[0])})
    return direction


def benchmark_linear_boundary(n: int = 500000, d: int = 512, ratio: float = 0.02, seed: int = 0,
                              noise: float = 0.5, classifier: str = "logistic") -> dict:
    """Time ``linear_boundary`` at InterFaceGAN's scale on random latents with a planted linear score.

    latents ~ N(0, I) [n, d] float32, scores = latents . w + noise * N(0, 1). Generating the data is not timed.
    Returns seconds, the validation accuracy and the cosine between the found normal and the planted w.
    """
    rng = np.random.default_rng(seed)
    latents = rng.standard_normal((n, d), dtype=np.float32)  # [n, d]
    w = rng.standard_normal(d)
    w /= np.linalg.norm(w)
    scores = latents @ w.astype(np.float32) + noise * rng.standard_normal(n, dtype=np.float32)  # [n]
    start = time.perf_counter()
    direction = linear_boundary(latents, scores, ratio=ratio, seed=seed, classifier=classifier)
    seconds = time.perf_counter() - start
    return {"n": n, "d": d, "ratio": ratio, "classifier": classifier, "seconds": round(seconds, 3),
            "val_accuracy": direction.metrics["val_accuracy"],
            "train_accuracy": direction.metrics["train_accuracy"],
            "cosine_to_planted": float(direction.vector @ w), "scale": direction.scale}


# ----------------------------------------------------------------------------------------------------------
# Conditional editing


def require_vector(direction: Direction) -> None:
    """Raise DirectionError when ``direction`` edits with a latent flow: --keep needs a vector to project."""
    if direction.transport is not None:
        raise DirectionError(f"--keep: the {direction.method or 'non-linear'} edit of {direction.attribute or 'this'}"
                             " attribute is a latent flow, not a vector, so nothing can be projected out of it; "
                             "use --method mean or boundary with --keep")


def project_out(direction, conditions, keep_names=None):
    """Project ``direction`` onto the orthogonal complement of span(conditions) and renormalise.

    direction: [D] array/tensor or a Direction; conditions: [K, D] array, a list of [D] vectors or Directions.
    With C the [K, D] condition matrix: G = C C^T [K, K], coeffs = G^-1 C d [K], result = d - C^T coeffs.
    Raises DirectionError when the conditions are (nearly) linearly dependent or the direction lies (almost)
    in their span. For a Direction input, returns a Direction whose ``keep`` lists the conditions' names
    (``keep_names`` or their ``attribute`` fields) and whose metrics gain ``cosine_to_unconditioned``; the
    scale and offset are kept (same latent distance per unit of strength).
    """
    if isinstance(direction, Direction):
        require_vector(direction)
    d = _vector_of(direction)  # [D]
    if isinstance(conditions, Direction) or (not isinstance(conditions, (list, tuple))
                                             and as_array(conditions).ndim == 1):
        conditions = [conditions]
    if isinstance(conditions, (list, tuple)):
        if len(conditions) == 0:
            rows = np.zeros((0, d.shape[0]))
        else:
            rows = np.stack([_vector_of(c) for c in conditions])  # [K, D]
    else:
        rows = as_array(conditions, "conditions", np.float64)
    if rows.ndim != 2 or rows.shape[1] != d.shape[0]:
        raise DirectionError(f"conditions: expected [K, {d.shape[0]}] vectors, got shape {tuple(rows.shape)}")
    if rows.shape[0] == 0:
        result = d / np.linalg.norm(d)
    else:
        norms = np.linalg.norm(rows, axis=1, keepdims=True)  # [K, 1]
        if np.any(norms == 0):
            raise DirectionError("conditions: a condition direction is the zero vector")
        c = rows / norms  # [K, D]; the span is unchanged and the Gram matrix is well scaled
        gram = c @ c.T  # [K, K]
        smallest = float(np.linalg.eigvalsh(gram)[0])
        if smallest < DEGENERACY_TOLERANCE:
            raise DirectionError(f"conditions: the {rows.shape[0]} condition directions are (nearly) linearly "
                                 f"dependent (smallest Gram eigenvalue {smallest:.2e}); drop a redundant one")
        coeffs = np.linalg.solve(gram, c @ d)  # [K]
        residual = d - c.T @ coeffs  # [D]
        if np.linalg.norm(residual) < SPAN_TOLERANCE * np.linalg.norm(d):
            raise DirectionError("direction lies (almost) in the span of the kept directions; nothing is left "
                                 "to edit once they are held fixed")
        result = residual / np.linalg.norm(residual)
    if not isinstance(direction, Direction):
        return _like(result, direction) if hasattr(direction, "detach") else result
    if keep_names is None:
        keep_names = [c.attribute for c in conditions if isinstance(c, Direction)] \
            if isinstance(conditions, (list, tuple)) else []
    metrics = dict(direction.metrics)
    metrics["cosine_to_unconditioned"] = float(result @ (d / np.linalg.norm(d)))
    return Direction(vector=result, scale=direction.scale, offset=direction.offset, attribute=direction.attribute,
                     method=direction.method, keep=list(direction.keep) + list(keep_names), metrics=metrics)


# ----------------------------------------------------------------------------------------------------------
# PCA and its noise floor


def pca_directions(latents, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-k principal directions of latents [N, D].

    Returns (components [k, D] unit rows, explained_variance_ratio [k] of the total variance,
    explained_variance [k], the unbiased variances along them). Signs are fixed so each component's largest
    coordinate is positive (deterministic output).
    """
    z = _latents_2d(latents).astype(np.float64)
    n, d = z.shape
    if not 1 <= k <= d:
        raise DirectionError(f"k: expected 1..{d} components for {d}-dimensional latents, got {k}")
    if n < 2:
        raise DirectionError("latents: PCA needs at least 2 samples")
    centred = z - z.mean(axis=0)  # [N, D]
    cov = centred.T @ centred / (n - 1)  # [D, D]; cheaper than an SVD of [N, D] when N >> D
    values, vectors = np.linalg.eigh(cov)  # ascending
    order = np.argsort(values)[::-1][:k]
    variance = np.clip(values[order], 0.0, None)  # [k]
    components = vectors[:, order].T  # [k, D]
    signs = np.sign(components[np.arange(k), np.argmax(np.abs(components), axis=1)])
    components = components * signs[:, None]
    total = float(np.clip(values, 0.0, None).sum())
    return components, variance / total, variance


def _marchenko_pastur_top(n: int, d: int, k: int) -> np.ndarray:
    """Expected top-k eigenvalue ratios of the sample covariance of n x d N(0, I) draws (d <= n), from the
    Marchenko-Pastur law: the i-th largest eigenvalue is approximated by the (1 - (i - 0.5) / d) quantile."""
    gamma = d / n
    a, b = (1 - np.sqrt(gamma)) ** 2, (1 + np.sqrt(gamma)) ** 2
    x = np.linspace(a, b, 20001)
    density = np.sqrt(np.clip((b - x) * (x - a), 0, None)) / (2 * np.pi * gamma * np.maximum(x, 1e-12))
    cdf = np.concatenate([[0.0], np.cumsum((density[1:] + density[:-1]) / 2 * np.diff(x))])
    cdf /= cdf[-1]
    quantiles = 1 - (np.arange(1, k + 1) - 0.5) / d
    eigen = np.interp(quantiles, cdf, x)  # [k]
    return eigen / d  # the eigenvalues sum to ~d (the trace of the identity)


def isotropic_null(n: int, d: int, k: int, seed: int = 0, trials: int = 3,
                   max_elements: int = 20_000_000) -> np.ndarray:
    """Expected explained-variance ratios of the top k components for n samples of N(0, I_d) [k].

    Simulated (mean of ``trials`` draws) when n * d is at most ``max_elements``; beyond that (and when d <= n)
    the Marchenko-Pastur approximation is used, which is accurate at those sizes.
    """
    if not 1 <= k <= d:
        raise DirectionError(f"k: expected 1..{d} components, got {k}")
    if n * d > max_elements and d <= n:
        return _marchenko_pastur_top(n, d, k)
    rng = np.random.default_rng(seed)
    ratios = [pca_directions(rng.standard_normal((n, d)), k)[1] for _ in range(trials)]
    return np.mean(ratios, axis=0)


def is_noise(ratios, null, tol: float = 0.1) -> np.ndarray:
    """Per component [k] bool: True when its explained-variance ratio is within (1 + tol) of the isotropic
    null's, i.e. indistinguishable from sampling noise. ``is_noise(...).all()`` flags a whole PCA as noise."""
    r = as_array(ratios, "ratios", np.float64).reshape(-1)
    null = as_array(null, "null", np.float64).reshape(-1)
    if r.shape != null.shape:
        raise DirectionError(f"null: expected {r.shape[0]} ratios to compare with, got {null.shape[0]}")
    return r <= null * (1.0 + tol)


# ----------------------------------------------------------------------------------------------------------
# Walks: [B, D] latents and [S] strengths -> [B, S, D]; the output has the latents' type (numpy or torch)


def _walk_inputs(z, direction: Direction, strengths):
    zz = as_array(z, "latents", np.float64)
    if zz.ndim != 2 or zz.shape[1] != direction.dim:
        raise DirectionError(f"latents: expected [B, {direction.dim}] to walk along a {direction.dim}-d "
                             f"direction, got shape {tuple(zz.shape)}")
    a = as_array(strengths, "strengths", np.float64).reshape(-1)  # [S]
    return zz, a, np.asarray(direction.vector, dtype=np.float64)


def walk_relative(z, direction: Direction, strengths):
    """z + a * scale * n for each strength a: [B, D] -> [B, S, D]; a = 0 returns z."""
    zz, a, n = _walk_inputs(z, direction, strengths)
    out = zz[:, None, :] + (a * direction.scale)[None, :, None] * n[None, None, :]  # [B, S, D]
    return _like(out, z)


def walk_absolute(z, direction: Direction, strengths):
    """Move each z along n until its signed distance to the boundary is a * scale: [B, D] -> [B, S, D].

    s(z') = a * scale exactly, whatever s(z) was, so every row ends equally far into the attribute.
    """
    zz, a, n = _walk_inputs(z, direction, strengths)
    current = zz @ n + direction.offset  # [B]
    shift = (a * direction.scale)[None, :] - current[:, None]  # [B, S]
    out = zz[:, None, :] + shift[:, :, None] * n[None, None, :]  # [B, S, D]
    return _like(out, z)


def walk_sphere(z, direction: Direction, strengths):
    """Rotate each z along the great circle through z and n (towards n for a > 0), keeping |z|: [B, S, D].

    For latents normalised to a sphere (PGGAN's z lives on radius sqrt(D)). The arc length travelled is
    a * scale, so small steps match ``walk_relative`` to first order; the angle is a * scale / |z|.
    When z is (anti)parallel to n the great circle is undefined and z is returned unchanged.
    """
    zz, a, n = _walk_inputs(z, direction, strengths)
    radius = np.linalg.norm(zz, axis=1, keepdims=True)  # [B, 1]
    if np.any(radius == 0):
        raise DirectionError("latents: a zero latent has no sphere to walk on")
    u = zz / radius  # [B, D]
    tangent = n[None, :] - (u @ n)[:, None] * u  # [B, D], the part of n orthogonal to z
    t_norm = np.linalg.norm(tangent, axis=1, keepdims=True)  # [B, 1]
    degenerate = t_norm[:, 0] < 1e-9
    tangent = np.where(degenerate[:, None], 0.0, tangent / np.maximum(t_norm, 1e-12))
    angle = (a * direction.scale)[None, :] / radius  # [B, S]
    out = radius[:, :, None] * (np.cos(angle)[:, :, None] * u[:, None, :]
                                + np.sin(angle)[:, :, None] * tangent[:, None, :])  # [B, S, D]
    out[degenerate] = zz[degenerate][:, None, :]
    return _like(out, z)


WALKS = {"relative": walk_relative, "absolute": walk_absolute, "sphere": walk_sphere}


def walk(z, direction: Direction, strengths, mode: str = "relative"):
    """Dispatch to ``walk_<mode>``; mode is relative, absolute or sphere. A direction with a ``transport``
    (a non-linear edit) walks with it whatever the mode."""
    if mode not in WALKS:
        raise DirectionError(f"walk: expected one of {', '.join(WALKS)}, got {mode!r}")
    if direction.transport is not None:
        zz, a, _ = _walk_inputs(z, direction, strengths)
        return _like(direction.transport.walk(zz, a), z)
    return WALKS[mode](z, direction, strengths)


# ----------------------------------------------------------------------------------------------------------
# Files: <stem>.npz holds the vector, <stem>.json the rest (readable, diffable)


TRANSPORT_PREFIX = "transport."


def _paths(path) -> tuple[Path, Path]:
    p = Path(path)
    stem = p.with_suffix("") if p.suffix in (".npz", ".json") else p
    return stem.with_name(stem.name + ".npz"), stem.with_name(stem.name + ".json")


def _json_safe(value):
    """Metrics as JSON: numpy scalars to Python numbers, NaN/inf to None."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def save_direction(direction: Direction, path) -> tuple[Path, Path]:
    """Write ``<stem>.npz`` (the vector) and ``<stem>.json`` (everything else), each atomically.

    ``path`` may end in .npz, .json or neither. Returns the two paths.
    """
    npz_path, json_path = _paths(path)
    vector = np.asarray(direction.vector, dtype=np.float64)
    arrays = {"vector": vector}
    meta = {"attribute": direction.attribute, "method": direction.method, "keep": list(direction.keep),
            "scale": float(direction.scale), "offset": float(direction.offset), "dim": int(vector.shape[0]),
            "metrics": _json_safe(direction.metrics), "vector_file": npz_path.name}
    if direction.transport is not None:  # a latent flow: its weights beside the vector, its shape in the JSON
        arrays.update({TRANSPORT_PREFIX + k: v for k, v in direction.transport.arrays().items()})
        meta["transport"] = direction.transport.config()
    with atomic_path(npz_path) as tmp:
        np.savez(tmp, **arrays)  # tmp ends in .npz like npz_path: numpy adds no second suffix
    atomic_write_text(json_path, json.dumps(meta, indent=2) + "\n")
    return npz_path, json_path


def load_direction(path) -> Direction:
    """Read a direction written by ``save_direction`` (``path`` may name the .npz, the .json or the stem)."""
    npz_path, json_path = _paths(path)
    for p in (npz_path, json_path):
        if not p.exists():
            raise DirectionError(f"{p}: direction file not found (expected {npz_path.name} and {json_path.name})")
    try:
        with np.load(npz_path) as data:
            vector = np.asarray(data["vector"], dtype=np.float64)
            transport_arrays = {k[len(TRANSPORT_PREFIX):]: np.asarray(data[k]) for k in data.files
                                if k.startswith(TRANSPORT_PREFIX)}
    except (KeyError, ValueError, OSError) as exc:
        raise DirectionError(f"{npz_path}: expected an .npz with a 'vector' array ({exc})") from None
    try:
        meta = json.loads(json_path.read_text())
    except json.JSONDecodeError as exc:
        raise DirectionError(f"{json_path}:{exc.lineno}: invalid JSON ({exc.msg})") from None
    if vector.ndim != 1 or vector.shape[0] != meta.get("dim", vector.shape[0]):
        raise DirectionError(f"{npz_path}: expected a vector of {meta.get('dim')} values, got {vector.shape}")
    transport = None
    if "transport" in meta:
        from common.latent_flow import ConditionalLatentFlow  # torch, only for directions that need it

        if not transport_arrays:
            raise DirectionError(f"{npz_path}: {json_path.name} names a latent flow but the .npz has no "
                                 f"'{TRANSPORT_PREFIX}*' arrays; delete both files to find the direction again")
        transport = ConditionalLatentFlow.from_arrays(meta["transport"], transport_arrays, where=str(npz_path))
    return Direction(vector=vector, scale=float(meta.get("scale", 1.0)), offset=float(meta.get("offset", 0.0)),
                     attribute=meta.get("attribute", ""), method=meta.get("method", ""),
                     keep=list(meta.get("keep", [])), metrics=dict(meta.get("metrics", {})), transport=transport)
