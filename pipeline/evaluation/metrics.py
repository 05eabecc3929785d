"""The evaluation's measurements around a model and a judge: batched encode/decode, judge scoring, one walk's
numbers, and the real-image features the Frechet distances compare against.

The arithmetic itself (success, monotonicity, leakage, PSNR, Frechet distance) is in ``common/metrics.py``; this
module feeds it decoded walks and judge scores. Images are float in [-1, 1], ``[N, 3, R, R]``; latents ``[N, D]``.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from common import metrics as M
from common.attributes import CELEBA_ATTRIBUTES, POSE, attribute_index
from common.cli import UserError
from common.directions import Direction, walk
from common.editing import EditableModel
from common.predictor import AttributePredictor, score_images

JUDGED = list(CELEBA_ATTRIBUTES) + [POSE]  # judge outputs: 40 probabilities, then the predicted yaw
MOUTH_BOX = (0.3, 0.62, 0.7, 0.9)  # where the mouth sits in the cache's face crop (fractions x0, y0, x1, y1)
MOUTH_ATTRIBUTES = ("Smiling", "Mouth_Slightly_Open")

# (images, scores [M, 41], features [M, Df], factors [M, F]): what judge_images returns for M images
Judged = tuple[torch.Tensor, np.ndarray, np.ndarray, np.ndarray]


@torch.no_grad()
def grid_file(out: Path, name: str, what: str) -> Path:
    """out/images/NAME-WHAT.png, with a method named by its run folder ("/tmp/runs/a") made one safe file name."""
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip("_.") or "run"
    return Path(out) / "images" / f"{stem}-{what}.png"


def decode_all(model: EditableModel, latents: torch.Tensor, batch_size: int) -> torch.Tensor:
    """latents [N, D] -> images [N, 3, R, R] in [-1, 1], float32 CPU."""
    return torch.cat([model.decode(c).detach().float().cpu().clamp(-1, 1) for c in latents.split(batch_size)])


@torch.no_grad()
def encode_all(model: EditableModel, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """images [N, 3, R, R] -> latents [N, D], float32 CPU."""
    out = [model.encode(c).detach().float().cpu() for c in images.split(batch_size)]
    return torch.cat(out).reshape(len(images), -1)


def judge_columns(scored: dict) -> np.ndarray:
    """score_images output -> [N, 41]: the 40 probabilities, then the predicted yaw (JUDGED's order)."""
    return torch.cat([scored["probs"], scored["yaw"][:, None]], dim=1).numpy().astype(np.float64)


def judge_images(judge: AttributePredictor, images: torch.Tensor, batch_size: int) -> Judged:
    """images [M, 3, R, R] -> (images, scores [M, 41], features [M, Df], factors [M, F])."""
    scored = score_images(judge, images, batch_size=max(batch_size, 256))
    return images, judge_columns(scored), scored["features"].numpy(), scored["factors"].numpy()


def cache_test_images(cache_dir: str | Path, n: int, offset: int = 0) -> torch.Tensor:
    """The first n images of the cache's test split (after ``offset``) -> [n, 3, R, R] in [-1, 1]."""
    from common.cache import CelebACache, uint8_to_model

    if not (Path(cache_dir) / "manifest.json").exists():
        raise UserError(f"{cache_dir}: prepared cache not found (needed for test images); prepare it with "
                        "python scripts/prepare_data.py")
    cache = CelebACache(cache_dir, "test")
    count = max(0, min(n, len(cache) - offset))
    if count == 0:
        raise UserError(f"{cache_dir}: the test split has no images past {offset}; expected at least one")
    return uint8_to_model(cache.images_uint8(np.arange(offset, offset + count)))


def inception_features(images: torch.Tensor, weights: str, batch_size: int = 32) -> np.ndarray:
    """Pool features [N, 2048] of torchvision's inception_v3 loaded from a local state dict (nothing downloads)."""
    import torch.nn.functional as F
    from torchvision.models import inception_v3

    if not Path(weights).is_file():
        raise UserError(f"--inception {weights}: file not found; expected a torchvision inception_v3 .pth")
    net = inception_v3(weights=None, aux_logits=True, init_weights=False, transform_input=True)
    try:
        net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    except (RuntimeError, KeyError, TypeError, ValueError, EOFError, pickle.UnpicklingError) as exc:
        raise UserError(f"--inception {weights}: not a torchvision inception_v3 state dict "
                        f"({str(exc).splitlines()[0]})") from None
    net.fc = torch.nn.Identity()
    net.eval()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    out = []
    with torch.no_grad():
        for chunk in images.split(batch_size):
            x = F.interpolate((chunk + 1) / 2, size=(299, 299), mode="bilinear", align_corners=False)
            out.append(net((x - mean) / std).float())
    return torch.cat(out).numpy()


# ----------------------------------------------------------------------------------------------------------
# One walk


def walk_metrics(scores: np.ndarray, images: torch.Tensor, feats: np.ndarray, strengths: np.ndarray, attribute: str,
                 factor_names: list[str], factors: np.ndarray) -> dict:
    """Every per-walk number: scores [N, S, 41], images [N, S, 3, R, R], feats [N, S, Df], factors [N, S, F]."""
    k = len(CELEBA_ATTRIBUTES) if attribute == POSE else attribute_index(attribute)
    own = scores[:, :, k]  # [N, S] the judge's score of the edited attribute
    threshold = 0.0 if attribute == POSE else 0.5
    zero, hi, lo = M.zero_column(strengths), M.end_column(strengths, True), M.end_column(strengths, False)
    inner = np.abs(strengths) <= np.abs(strengths).max() / 2 + 1e-9  # the walk's central half
    ends = [hi, lo]
    x0 = images[:, [zero, zero]].flatten(0, 1)  # [2N, 3, R, R] unedited, twice (once per end)
    xe = images[:, ends].flatten(0, 1)  # [2N, 3, R, R]
    content = M.content_preservation(x0, xe, feats0=feats[:, [zero, zero]].reshape(-1, feats.shape[-1]),
                                     feats_edit=feats[:, ends].reshape(-1, feats.shape[-1]))
    if attribute in MOUTH_ATTRIBUTES:
        outside = M.box_mask(images.shape[-2], images.shape[-1], MOUTH_BOX, inside=False)
        content["outside_mouth_l1"] = M.content_preservation(x0, xe, mask=outside)["l1"]
    return {
        "score_per_strength": {"mean": own.mean(0), "std": own.std(0)},
        "success_positive": M.edit_success(own, strengths, True, threshold),
        "success_negative": M.edit_success(own, strengths, False, threshold),
        "monotonicity": M.monotonicity(own),
        "monotonicity_inner_half": M.monotonicity(own[:, inner]) if inner.sum() >= 2 else None,
        "slope": M.slope(own, strengths),
        "leakage": dict(zip(JUDGED, M.leakage_matrix(scores[:, zero], scores[:, hi]), strict=True)),
        "content": content,
        "factor_slopes": {name: M.slope(factors[:, :, j], strengths)["mean"] for j, name in enumerate(factor_names)},
    }


def run_walk(model: EditableModel, base: torch.Tensor, direction: Direction, strengths: np.ndarray, walk_mode: str,
             judge: AttributePredictor, batch_size: int, unedited: Judged):
    """Walk, decode and judge: (images [N, S, 3, R, R], scores [N, S, 41], feats [N, S, Df], factors [N, S, F]).

    ``unedited`` is ``judge_images`` of the decoded base latents: relative and sphere walks return z itself at
    a = 0, so that column is shared by every walk and decoded and judged once per method.
    """
    zero = M.zero_column(strengths)
    moved = np.flatnonzero(np.arange(len(strengths)) != zero)
    walked = walk(base, direction, strengths[moved], walk_mode).float()  # [N, S-1, D]
    n, s = walked.shape[:2]
    parts = judge_images(judge, decode_all(model, walked.reshape(n * s, -1), batch_size), batch_size)
    out = []
    for part, column in zip(parts, unedited, strict=True):
        part = torch.as_tensor(part).reshape(n, s, *part.shape[1:])  # [N*(S-1), ...] -> [N, S-1, ...]
        out.append(torch.cat([part[:, :zero], torch.as_tensor(column)[:, None], part[:, zero:]], dim=1))
    images, scores, feats, factors = out
    return images, scores.numpy(), feats.numpy(), factors.numpy()


# ----------------------------------------------------------------------------------------------------------
# Real images for the Frechet distances


class RealFeatures:
    """The first n test images of each cache and their judge features, computed once and shared by every method
    evaluated on that cache (one instance per evaluation, so a different judge never gets stale features)."""

    def __init__(self, judge: AttributePredictor, n: int):
        self.judge, self.n, self._test = judge, n, {}

    def test(self, cache_dir: str | Path) -> tuple[torch.Tensor, np.ndarray]:
        """(test images [n, 3, R, R], judge features [n, Df]) of a cache."""
        key = str(Path(cache_dir).resolve())
        if key not in self._test:
            real = cache_test_images(cache_dir, self.n)
            self._test[key] = (real, score_images(self.judge, real)["features"].numpy())
        return self._test[key]

    def reference_frechet(self, cache_dir: str | Path) -> float:
        """Frechet distance between n real TRAIN and n real TEST images: the floor a perfect generator reaches."""
        from common.cache import CelebACache, uint8_to_model

        train = CelebACache(cache_dir, "train")
        real_train = uint8_to_model(train.images_uint8(np.arange(min(self.n, len(train)))))
        return M.frechet_distance(score_images(self.judge, real_train)["features"].numpy(),
                                  self.test(cache_dir)[1])
