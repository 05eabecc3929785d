"""The attribute predictor: a small ResNet that scores faces for CelebA's 40 attributes, yaw and synthetic factors.

It is the measuring instrument shared by every method: InterFaceGAN labels GAN samples with it, PCA components
are named by their correlation with its scores, GAN inversion uses its backbone features as a perceptual loss,
Frechet distances are computed in its feature space, and a second instance (another seed) judges edits in
``scripts/evaluate.py``.

Architecture: torchvision's ResNet-18 ``BasicBlock`` stacked as in ResNet-18 (2, 2, 2, 2 blocks, widths
w, 2w, 4w, 8w) but adapted to 32x32-64x64 faces the CIFAR way: a 3x3 stride-1 stem and no max-pool, so a 64x64
input keeps 8x8 spatial cells in the last stage instead of 2x2. Heads on the pooled features: 40 attribute
logits, one yaw regression and F regressions of the synthetic set's continuous factors (F = 0 for real CelebA).
Regression targets are standardised with mean/std buffers stored in the model, so the losses have unit scale
and ``forward`` returns values in the data's own units.

Public API (docs/contracts.md): ``AttributePredictor``, ``load_predictor(run_dir, device)``,
``score_images(predictor, images, batch_size)``; plus the pure loss/metric functions the training script uses.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock

from common.attributes import CELEBA_ATTRIBUTES, NUM_ATTRIBUTES
from common.checkpoint import averaged_weights
from common.cli import UserError

# Probabilities are clamped this far inside (0, 1): float32 sigmoid rounds logits above ~17 to exactly 1.0, and
# downstream code takes logits / log-odds of these scores.
PROB_EPS = 1e-6


class PredictorError(UserError):
    """Bad input to the predictor (wrong image shape, a run folder that holds no predictor); a ValueError that
    scripts report as a one-line ``error: ...``."""


# ------------------------------------------------------------------------------------------------ model


def _stage(c_in: int, c_out: int, blocks: int, stride: int) -> nn.Sequential:
    """``blocks`` BasicBlocks; the first changes width/stride through a 1x1 projection shortcut (ResNet's option B)."""
    layers = []
    for _ in range(blocks):
        downsample = None
        if stride != 1 or c_in != c_out:
            downsample = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )
        layers.append(BasicBlock(c_in, c_out, stride=stride, downsample=downsample))
        c_in, stride = c_out, 1
    return nn.Sequential(*layers)


class AttributePredictor(nn.Module):
    """ResNet-18-style CNN with attribute, yaw and factor heads. Images are ``[B, 3, H, W]`` in [-1, 1].

    ``resolution`` is the size it was trained at (``score_images`` resizes to it); the network itself is fully
    convolutional with global average pooling, so it runs at any size >= 8.
    """

    def __init__(self, resolution: int = 32, width: int = 32, blocks: Sequence[int] = (2, 2, 2, 2),
                 factor_names: Sequence[str] = (), dropout: float = 0.0):
        super().__init__()
        if resolution < 8:
            raise PredictorError(f"predictor resolution must be >= 8, got {resolution}")
        if width < 1 or not blocks or any(b < 1 for b in blocks):
            raise PredictorError(f"predictor needs width >= 1 and >= 1 block per stage, got width={width} "
                                 f"blocks={list(blocks)}")
        self.resolution = int(resolution)
        self.width = int(width)
        self.blocks = tuple(int(b) for b in blocks)
        self.factor_names = list(factor_names)
        # Stem: 3x3 stride 1 and no max-pool; at 32-64 px the ImageNet 7x7/2 stem + pool would throw away 3/4 of
        # the resolution before the first block (eyes and mouth corners are only a few pixels wide).
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU(inplace=True))
        stages, c_in = [], width
        for i, n in enumerate(self.blocks):
            c_out = width * 2 ** i
            stages.append(_stage(c_in, c_out, n, stride=1 if i == 0 else 2))
            c_in = c_out
        self.stages = nn.Sequential(*stages)
        self.feature_dim = c_in
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.attribute_head = nn.Linear(c_in, NUM_ATTRIBUTES)
        self.yaw_head = nn.Linear(c_in, 1)
        num_factors = len(self.factor_names)
        # No head at all for real CelebA (F = 0): a zero-size head would be an unused parameter, which DDP rejects.
        self.factor_head = nn.Linear(c_in, num_factors) if num_factors > 0 else None
        # Target standardisation, saved with the weights: heads predict (target - mean) / std.
        self.register_buffer("yaw_mean", torch.zeros(()))
        self.register_buffer("yaw_std", torch.ones(()))
        self.register_buffer("factor_mean", torch.zeros(num_factors))
        self.register_buffer("factor_std", torch.ones(num_factors))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        # Zero-init each residual branch's last BN so every block starts as the identity (trains faster from
        # scratch at small batch sizes; Goyal et al. 2017).
        for m in self.modules():
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)

    @property
    def num_factors(self) -> int:
        return len(self.factor_names)

    def set_target_stats(self, yaw_mean: float, yaw_std: float, factor_mean, factor_std) -> None:
        """Store the regression targets' mean/std (computed on the training split) used to standardise them."""
        fm = torch.as_tensor(np.asarray(factor_mean, dtype=np.float32)).reshape(self.num_factors)
        fs = torch.as_tensor(np.asarray(factor_std, dtype=np.float32)).reshape(self.num_factors)
        self.yaw_mean.fill_(float(yaw_mean))
        self.yaw_std.fill_(max(float(yaw_std), 1e-6))
        self.factor_mean.copy_(fm)
        self.factor_std.copy_(fs.clamp_min(1e-6))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features ``[B, Df]`` (Df = 8 * width for four stages)."""
        _check_images(images)
        h = self.stages(self.stem(images))  # [B, Df, H/8, W/8]
        return h.mean(dim=(2, 3))  # [B, Df]

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.features(images)  # [B, Df]
        h = self.dropout(feats)
        # Heads run in float32 even under autocast: the standardisation and the losses want full precision.
        with torch.autocast(images.device.type, enabled=False):
            h32 = h.float()
            logits = self.attribute_head(h32)  # [B, 40]
            yaw_z = self.yaw_head(h32)[:, 0]  # [B]
            if self.factor_head is not None:
                factor_z = self.factor_head(h32)  # [B, F]
            else:
                factor_z = h32.new_zeros(len(h32), 0)  # [B, 0]
        return {
            "logits": logits,
            "yaw": yaw_z * self.yaw_std + self.yaw_mean,  # [B], data units
            "factors": factor_z * self.factor_std + self.factor_mean,  # [B, F], data units
            "features": feats,
        }


def _check_images(images: torch.Tensor) -> None:
    if not torch.is_tensor(images) or images.dim() != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
        raise PredictorError(f"predictor expects images [B, 3, H, W] in [-1, 1], got {shape}")


def build_predictor(model_cfg, resolution: int, factor_names: Sequence[str] = ()) -> AttributePredictor:
    """The predictor described by a ``PredictorModelConfig`` (or a dict with the same keys)."""
    get = model_cfg.get if isinstance(model_cfg, dict) else (lambda k, d=None: getattr(model_cfg, k, d))
    arch = get("arch", "resnet18")
    if arch != "resnet18":
        raise PredictorError(f"unknown predictor arch {arch!r}; choose one of: resnet18")
    return AttributePredictor(resolution=resolution, width=int(get("width", 32)),
                              blocks=tuple(get("blocks", (2, 2, 2, 2))), factor_names=factor_names,
                              dropout=float(get("dropout", 0.0)))


# ------------------------------------------------------------------------------------------------ loss


def standardise(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(x - mean) / std, broadcasting over the batch."""
    return (x - mean) / std


def predictor_loss(outputs: dict[str, torch.Tensor], attributes: torch.Tensor, yaw: torch.Tensor,
                   factors: torch.Tensor, model: AttributePredictor, attribute_weight: float = 1.0,
                   yaw_weight: float = 1.0, factor_weight: float = 1.0,
                   known: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Training loss terms (float32 scalars) for one batch.

    attributes ``[B, 40]`` in {0, 1}, yaw ``[B]``, factors ``[B, F]`` in data units. ``attributes`` is the
    binary cross-entropy with logits averaged over the 40 attributes and the batch, or, given ``known`` (bool
    ``[B, 40]``, a cache of own photos with a partial labels file), over the known (image, attribute) entries only
    (0 when none is known); ``yaw`` and ``factors`` are mean squared errors of standardised targets (so 1.0 =
    predicting the mean); ``total`` is the weighted sum.
    """
    logits = outputs["logits"].float()  # [B, 40]
    if known is None:
        bce = F.binary_cross_entropy_with_logits(logits, attributes.float())
    else:
        mask = known.to(logits.device, torch.float32)  # [B, 40]
        per_entry = F.binary_cross_entropy_with_logits(logits, attributes.float(), reduction="none")  # [B, 40]
        bce = (per_entry * mask).sum() / mask.sum().clamp_min(1.0)
    yaw_pred = standardise(outputs["yaw"].float(), model.yaw_mean, model.yaw_std)  # [B]
    yaw_mse = F.mse_loss(yaw_pred, standardise(yaw.float(), model.yaw_mean, model.yaw_std))
    if model.num_factors > 0:
        f_pred = standardise(outputs["factors"].float(), model.factor_mean, model.factor_std)  # [B, F]
        factor_mse = F.mse_loss(f_pred, standardise(factors.float(), model.factor_mean, model.factor_std))
    else:
        factor_mse = logits.new_zeros(())
    total = attribute_weight * bce + yaw_weight * yaw_mse + factor_weight * factor_mse
    return {"total": total, "attributes": bce, "yaw": yaw_mse, "factors": factor_mse}


def learning_rate(base_lr: float, images_seen: int, total_images: int, warmup_images: int = 0,
                  schedule: str = "cosine", min_ratio: float = 0.0) -> float:
    """Learning rate after ``images_seen``: linear warm-up from 0, then constant or cosine decay to
    ``min_ratio * base_lr`` at ``total_images`` (counted in images so it does not depend on the batch size)."""
    if warmup_images > 0 and images_seen < warmup_images:
        return base_lr * (images_seen + 1) / warmup_images
    if schedule == "constant" or total_images <= warmup_images:
        return base_lr
    progress = min(1.0, (images_seen - warmup_images) / (total_images - warmup_images))
    # a Python float: a numpy scalar in the optimizer's param_groups would break weights_only checkpoint loading
    return float(base_lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))))


# ------------------------------------------------------------------------------------------------ metrics


def attribute_accuracy(logits: torch.Tensor, targets: torch.Tensor, known: torch.Tensor | None = None) -> torch.Tensor:
    """Per-attribute accuracy ``[40]`` of thresholding logits at 0 against {0, 1} targets ``[N, 40]``; with
    ``known`` (bool ``[N, 40]``) over the known entries only (nan for an attribute with none)."""
    right = ((logits > 0).float() == targets.float()).float()  # [N, 40]
    if known is None:
        return right.mean(dim=0)
    mask = known.float()
    return (right * mask).sum(dim=0) / mask.sum(dim=0)  # 0/0 = nan where nothing is known


def majority_baseline(targets: torch.Tensor, known: torch.Tensor | None = None) -> torch.Tensor:
    """Per-attribute accuracy ``[40]`` of always answering the split's majority class (what 'high' is against);
    with ``known`` over the known entries only (nan for an attribute with none)."""
    if known is None:
        share = targets.float().mean(dim=0)
    else:
        mask = known.float()
        share = (targets.float() * mask).sum(dim=0) / mask.sum(dim=0)
    return torch.maximum(share, 1 - share)


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation of two ``[N]`` vectors (nan when either is constant)."""
    a = a.double() - a.double().mean()
    b = b.double() - b.double().mean()
    denom = a.norm() * b.norm()
    return float((a @ b) / denom) if denom > 0 else float("nan")


def _mean_or_none(values: torch.Tensor) -> float | None:
    """The mean of the finite values (None when there are none): an attribute with no known labels is skipped."""
    finite = values[torch.isfinite(values)]
    return float(finite.mean()) if len(finite) else None


def prediction_metrics(outputs: dict[str, torch.Tensor], attributes: torch.Tensor, yaw: torch.Tensor,
                       factors: torch.Tensor, factor_names: Sequence[str],
                       modelled: Sequence[str] = (), known: torch.Tensor | None = None) -> dict:
    """Validation metrics from concatenated outputs and labels (all ``[N, ...]`` CPU tensors).

    Returns per-attribute accuracy and majority baseline, the means over all 40 and over ``modelled``
    (the attributes the synthetic generator actually draws; the others are label noise there), yaw MAE and
    Pearson correlation, and per-factor correlation and MAE. With ``known`` (bool ``[N, 40]``) the accuracies
    count the known labels only: an attribute with none is None (null in JSON) and left out of the means,
    ``known_labels`` counts them per attribute.
    """
    acc = attribute_accuracy(outputs["logits"], attributes, known)
    base = majority_baseline(attributes, known)
    idx = [CELEBA_ATTRIBUTES.index(a) for a in modelled]
    nan = float("nan")

    def value(x: torch.Tensor) -> float | None:
        return float(x) if torch.isfinite(x) else None

    if known is None:
        means = (float(acc.mean()), float(base.mean()), float(acc[idx].mean()) if idx else nan,
                 float(base[idx].mean()) if idx else nan)
    else:
        means = tuple(nan if m is None else m for m in (_mean_or_none(acc), _mean_or_none(base),
                                                          _mean_or_none(acc[idx]), _mean_or_none(base[idx])))
    metrics = {
        "num_images": int(attributes.shape[0]),
        "mean_accuracy": means[0],
        "mean_majority_baseline": means[1],
        "modelled_attributes": list(modelled),
        "mean_accuracy_modelled": means[2],
        "mean_majority_baseline_modelled": means[3],
        "yaw_mae": float((outputs["yaw"].float() - yaw.float()).abs().mean()),
        "yaw_corr": pearson(outputs["yaw"], yaw),
        "accuracy": {name: value(acc[i]) for i, name in enumerate(CELEBA_ATTRIBUTES)},
        "majority_baseline": {name: value(base[i]) for i, name in enumerate(CELEBA_ATTRIBUTES)},
        "factor_corr": {n: pearson(outputs["factors"][:, j], factors[:, j]) for j, n in enumerate(factor_names)},
        "factor_mae": {n: float((outputs["factors"][:, j] - factors[:, j]).abs().mean())
                       for j, n in enumerate(factor_names)},
    }
    if known is not None:
        metrics["known_labels"] = {name: int(known[:, i].sum()) for i, name in enumerate(CELEBA_ATTRIBUTES)}
    return metrics


def target_stats(yaw, factors, factor_names: Sequence[str], hflip: bool
                 ) -> tuple[float, float, np.ndarray, np.ndarray]:
    """Mean/std of the training split's yaw ``[N]`` and factors ``[N, F]`` for standardising the targets.

    With flips the yaw seen in training (and the synthetic ``yaw`` factor, which the cache flips too) is
    symmetric about 0, so its mean is 0 and its scale the root mean square.
    """
    yaw = np.asarray(yaw, dtype=np.float64).reshape(-1)  # [N]
    factors = np.asarray(factors, dtype=np.float64).reshape(len(yaw), len(factor_names))  # [N, F]
    if len(yaw) == 0:
        return 0.0, 1.0, np.zeros(len(factor_names)), np.ones(len(factor_names))
    yaw_mean = 0.0 if hflip else float(yaw.mean())
    yaw_std = float(np.sqrt(((yaw - yaw_mean) ** 2).mean()))
    f_mean, f_std = factors.mean(axis=0), factors.std(axis=0)  # [F]
    for j, name in enumerate(factor_names):
        if hflip and name == "yaw":
            f_mean[j], f_std[j] = 0.0, float(np.sqrt((factors[:, j] ** 2).mean()))
    return yaw_mean, max(yaw_std, 1e-6), f_mean, np.maximum(f_std, 1e-6)


@torch.no_grad()
def evaluate_predictor(model: AttributePredictor, dataset, limit: int = 0, batch_size: int = 256,
                       modelled: Sequence[str] = (), autocast=None) -> dict:
    """``prediction_metrics`` of a predictor on the first ``limit`` items (0 = all) of a ``CelebACache`` split.

    Uses only the cache's contract API: unflipped images from ``images_uint8``, labels from ``labels()`` and
    ``known()`` (unknown labels are not scored), so
    it is deterministic; runs in eval mode (restored after) under ``autocast`` (a context factory) if given.
    """
    n = len(dataset) if limit <= 0 else min(limit, len(dataset))
    attributes, yaw, factors = (torch.from_numpy(np.asarray(a[:n], dtype=np.float32)) for a in dataset.labels())
    known = torch.from_numpy(np.asarray(dataset.known()[:n], dtype=bool))  # [n, 40]
    known = None if bool(known.all()) else known  # a fully labelled split scores exactly as before
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    outs: dict[str, list[torch.Tensor]] = {"logits": [], "yaw": [], "factors": []}
    try:
        for start in range(0, n, batch_size):
            u8 = torch.from_numpy(dataset.images_uint8(np.arange(start, min(start + batch_size, n))))  # [b, R, R, 3]
            x = (u8.permute(0, 3, 1, 2).float() / 127.5 - 1).to(device)  # [b, 3, R, R] in [-1, 1]
            with autocast() if autocast is not None else contextlib.nullcontext():
                out = model(x)
            for key in outs:
                outs[key].append(out[key].float().cpu())
    finally:
        model.train(was_training)
    outputs = {k: torch.cat(v) for k, v in outs.items()}
    return prediction_metrics(outputs, attributes, yaw, factors.reshape(n, -1), model.factor_names, modelled, known)


# ------------------------------------------------------------------------------------------------ inference


def _as_model_images(images, resolution: int) -> torch.Tensor:
    """Float ``[B, 3, R, R]`` in [-1, 1] from float [-1, 1] ``[B, 3, H, W]`` or uint8 ``[B, H, W, 3]`` input."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    if not torch.is_tensor(images):
        raise PredictorError(f"score_images expects a tensor or array of images, got {type(images).__name__}")
    if images.dtype == torch.uint8:  # [B, H, W, 3] as stored by the cache / PIL
        if images.dim() != 4 or images.shape[-1] != 3:
            raise PredictorError(f"uint8 images must be [B, H, W, 3], got {tuple(images.shape)}")
        images = images.permute(0, 3, 1, 2).float() / 127.5 - 1
    _check_images(images)
    images = images.float()
    if images.shape[-2:] != (resolution, resolution):
        # Antialiased bilinear: downscaling 128 -> 32 without it aliases fine texture into the prediction.
        images = F.interpolate(images, size=(resolution, resolution), mode="bilinear", align_corners=False,
                               antialias=True)
    return images


@torch.no_grad()
def score_images(predictor: AttributePredictor, images, batch_size: int = 256) -> dict[str, torch.Tensor]:
    """Score images with a predictor: ``probs [N, 40]`` in (0, 1), ``yaw [N]``, ``factors [N, F]``,
    ``features [N, Df]``, all float32 on the CPU.

    ``images``: float ``[N, 3, H, W]`` in [-1, 1] (any H, W; resized to ``predictor.resolution``) or uint8
    ``[N, H, W, 3]``. Runs in eval mode in float32 on the predictor's device, batch by batch; the predictor's
    train/eval mode is restored afterwards.
    """
    device = next(predictor.parameters()).device
    was_training = predictor.training
    predictor.eval()
    parts: dict[str, list[torch.Tensor]] = {"probs": [], "yaw": [], "factors": [], "features": []}
    try:
        for start in range(0, len(images), batch_size):
            chunk = _as_model_images(images[start:start + batch_size], predictor.resolution).to(device)
            out = predictor(chunk)
            parts["probs"].append(torch.sigmoid(out["logits"].float()).clamp(PROB_EPS, 1 - PROB_EPS).cpu())
            parts["yaw"].append(out["yaw"].float().cpu())
            parts["factors"].append(out["factors"].float().cpu())
            parts["features"].append(out["features"].float().cpu())
    finally:
        predictor.train(was_training)
    if not parts["probs"]:  # no images: empty results with the right trailing shapes
        return {"probs": torch.zeros(0, NUM_ATTRIBUTES), "yaw": torch.zeros(0),
                "factors": torch.zeros(0, predictor.num_factors), "features": torch.zeros(0, predictor.feature_dim)}
    return {k: torch.cat(v) for k, v in parts.items()}


# ------------------------------------------------------------------------------------------------ loading


def predictor_from_checkpoint(checkpoint: dict, device: str | torch.device = "cpu") -> AttributePredictor:
    """Rebuild a predictor from a training checkpoint dict (EMA weights when present), in eval mode."""
    weights = averaged_weights(checkpoint, "predictor") if "predictor" in (checkpoint.get("models") or {}) else None
    config = checkpoint.get("config")
    if weights is None or not isinstance(config, dict):
        raise PredictorError("checkpoint holds no attribute predictor (expected models.predictor and config; "
                             "was it written by scripts/train_predictor.py?)")
    model = build_predictor(config.get("model", {}), int(config["data"]["resolution"]),
                            factor_names=checkpoint.get("factor_names", []))
    model.load_state_dict(weights)
    return model.to(device).eval()


def load_predictor(run_dir: str | Path, device: str | torch.device = "cpu") -> AttributePredictor:
    """The trained predictor of a ``runs/predictor/<name>`` folder (or one of its ``.pt`` checkpoints), in eval
    mode with the EMA weights if any."""
    from common.run import load_run_checkpoint  # lazy: common.run pulls in tensorboard

    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise FileNotFoundError(2, "predictor run folder not found (train one with scripts/train_predictor.py)",
                                str(run_dir))
    checkpoint = load_run_checkpoint(run_dir, map_location="cpu")
    try:
        return predictor_from_checkpoint(checkpoint, device)
    except PredictorError as exc:
        raise PredictorError(f"{run_dir}: {exc}") from None
