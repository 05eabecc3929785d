"""The attribute predictor's training: its step (what scripts/benchmark.py can time) and its ``Trainer`` for fit.

Objective (common/predictor.py): total = loss.attributes * BCE-with-logits averaged over the 40 attributes
(over the known labels only, in a cache of own photos with a partial labels file) + loss.yaw * MSE of the
standardised yaw + loss.factors * MSE of the standardised synthetic factors (when the cache has them). Targets
are standardised with the training split's mean/std, stored in the model. AdamW (no decay on BN and biases) with
common.predictor.learning_rate's warm-up and cosine schedule, counted in images.

Logged: loss/{total,attributes,yaw,factors}, lr (and perf/img_per_s by the logger); val/mean_accuracy,
val/mean_accuracy_modelled, val/yaw_mae, val/yaw_corr every eval.val_every_images on the valid split; a grid of
validation images with their predictions (run/samples/*.png + .json) every log.image_every_images. metrics.json:
the full valid split's per-attribute accuracy (and majority-class baseline), the means over all 40 and over the
modelled attributes, yaw MAE / correlation and per-factor correlations.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from common.attributes import CELEBA_ATTRIBUTES
from common.cache import CelebACache, open_training_cache
from common.checkpoint import atomic_write_text, ema_weights
from common.cli import UserError
from common.predictor import (
    AttributePredictor,
    build_predictor,
    evaluate_predictor,
    learning_rate,
    predictor_loss,
    target_stats,
)
from common.predictor_config import PredictorConfig
from common.run import EMA, adam
from common.training import StepTools, Trainer

GRID_IMAGES = 32  # validation images in each prediction grid


def train_step(model: torch.nn.Module, net: AttributePredictor, opt: torch.optim.Optimizer, images: torch.Tensor,
               attributes: torch.Tensor, yaw: torch.Tensor, factors: torch.Tensor, tools: StepTools,
               clip: float | None = None, known: torch.Tensor | None = None,
               weights: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> dict[str, torch.Tensor]:
    """One optimiser step: forward under autocast, predictor_loss in fp32, finite check, backward, clip, AdamW.

    images [B, 3, R, R] in [-1, 1], attributes [B, 40] in {0, 1}, yaw [B], factors [B, F] (data units), known
    bool [B, 40] or None (own photos' partial labels), weights (attributes, yaw, factors) from cfg.loss. ``model``
    is what is called (DDP/compiled), ``net`` the bare module. Returns the float32 loss terms.
    """
    with tools.autocast():
        out = model(images)
    losses = predictor_loss(out, attributes, yaw, factors, net, *weights, known=known)
    tools.check_finite(losses["total"], "loss/total")
    tools.step(losses["total"], opt, clip=clip)
    return losses


def open_predictor_data(cfg: PredictorConfig) -> tuple[Path, CelebACache, CelebACache]:
    """The cache folder and its train and valid splits; UserError when either split is empty."""
    cache_dir, dataset = open_training_cache(cfg.data)
    valid = CelebACache(cache_dir, "valid")
    if len(dataset) == 0 or len(valid) == 0:
        raise UserError(f"{cache_dir}: the train and valid splits must both hold images (train {len(dataset)}, "
                        f"valid {len(valid)}); check list_eval_partition (own photos: the labels file's "
                        "partition column)")
    return cache_dir, dataset, valid


def validate(model: AttributePredictor, dataset: CelebACache, limit: int, cfg: PredictorConfig, autocast) -> dict:
    """evaluate_predictor on the first ``limit`` items (0 = all), the means also over cfg's modelled attributes."""
    modelled = cfg.eval.modelled_attributes or list(CELEBA_ATTRIBUTES)
    return evaluate_predictor(model, dataset, limit, cfg.eval.batch_size, modelled, autocast)


@torch.no_grad()
def prediction_rows(model: AttributePredictor, images: torch.Tensor, attributes: torch.Tensor, known: torch.Tensor,
                    names: list[str], autocast) -> list[dict]:
    """Per image: predicted probability vs true label (None when unknown) of each attribute in ``names``, and the
    predicted yaw."""
    was_training = model.training
    model.eval()
    with autocast():
        out = model(images)
    model.train(was_training)
    probs = torch.sigmoid(out["logits"].float()).cpu()  # [n, 40]
    idx = [CELEBA_ATTRIBUTES.index(a) for a in names]
    rows = []
    for i in range(len(images)):
        row = {"image": i, "yaw": round(float(out["yaw"][i]), 3)}
        for name, j in zip(names, idx, strict=True):
            row[name] = {"pred": round(float(probs[i, j]), 3),
                         "true": int(attributes[i, j]) if known[i, j] else None}
        rows.append(row)
    return rows


class PredictorTrainer(Trainer):
    """The predictor, its AdamW, EMA, schedule, prediction grids and validation, for common.training.fit."""

    def __init__(self, cfg: PredictorConfig, ctx):
        self.cfg, self.ctx = cfg, ctx
        self.cache_dir, self.dataset, self.valid = open_predictor_data(cfg)
        self.factor_names = list(self.dataset.factor_names or [])
        raw = build_predictor(cfg.model, cfg.data.resolution, self.factor_names)
        _, train_yaw, train_factors = self.dataset.labels()
        raw.set_target_stats(*target_stats(train_yaw, train_factors, self.factor_names, cfg.data.hflip))
        if ctx.is_main:
            params = sum(p.numel() for p in raw.parameters())
            print(f"predictor: {params:,} parameters, resnet18 width {cfg.model.width} blocks "
                  f"{list(cfg.model.blocks)}, {cfg.data.resolution}x{cfg.data.resolution}, {len(self.factor_names)} "
                  f"factors; train {len(self.dataset)} / valid {len(self.valid)} images", flush=True)
        self.model = ctx.wrap(raw)
        self.net: AttributePredictor = ctx.unwrap(self.model)
        decay, no_decay = [], []
        for p in self.net.parameters():  # no weight decay on BN and biases (standard for ResNets)
            (no_decay if p.ndim <= 1 else decay).append(p)
        self.opt = adam([{"params": decay, "weight_decay": cfg.optim.weight_decay},
                         {"params": no_decay, "weight_decay": 0.0}], lr=cfg.train.lr, decoupled=True)  # fused AdamW
        self.ema = EMA(self.net, cfg.train.ema_decay) if cfg.train.ema_decay > 0 else None

        self.samples_dir = ctx.out / "samples"
        if ctx.is_main:
            self.samples_dir.mkdir(parents=True, exist_ok=True)
        # fixed validation images for the prediction grids, so that successive grids are comparable
        grid_n = min(GRID_IMAGES, len(self.valid))
        grid_items = [self.valid[i] for i in range(grid_n)]
        self.grid_images = torch.stack([it["image"] for it in grid_items]).to(ctx.device)  # [n, 3, R, R]
        self.grid_attrs = torch.stack([torch.as_tensor(it["attributes"]) for it in grid_items])  # [n, 40]
        self.grid_known = torch.from_numpy(self.valid.known()[:grid_n])  # [n, 40] bool
        self.shown = list(cfg.eval.modelled_attributes or CELEBA_ATTRIBUTES[:10])

        self.batches = ctx.batches(self.dataset, cfg.train.batch_size)
        self.start_time: float | None = None  # this process's training time, for train_seconds_this_session
        self.end_time = 0.0
        self.start_images = 0
        self.model.train()

    @property
    def scored(self) -> AttributePredictor:
        """The weights that are validated and shown: the EMA's when there is one."""
        return self.net if self.ema is None else self.ema.module

    def state_dict(self) -> dict:
        return {"models": {"predictor": self.net.state_dict()}, "optimizers": {"adamw": self.opt.state_dict()},
                "ema": {"predictor": self.ema.state_dict()} if self.ema is not None else {},  # load_predictor's pick
                "factor_names": self.factor_names}

    def load_state_dict(self, state: dict) -> None:
        self.net.load_state_dict(state["models"]["predictor"])
        self.opt.load_state_dict(state["optimizers"]["adamw"])
        averaged = ema_weights(state, "predictor")
        if self.ema is not None and averaged is not None:
            self.ema.load_state_dict(averaged)

    def train_step(self) -> tuple[int, dict]:
        cfg = self.cfg
        if self.start_time is None:
            self.start_time, self.start_images = time.perf_counter(), self.images_seen
        batch = next(self.batches)
        lr = learning_rate(cfg.train.lr, self.images_seen, cfg.train.total_images, cfg.optim.warmup_images,
                           cfg.optim.schedule, cfg.optim.min_lr_ratio)
        for group in self.opt.param_groups:
            group["lr"] = lr
        losses = train_step(self.model, self.net, self.opt, batch["image"], batch["attributes"], batch["yaw"],
                            batch["factors"], self.ctx, cfg.train.grad_clip or None, known=batch.get("known"),
                            weights=(cfg.loss.attributes, cfg.loss.yaw, cfg.loss.factors))
        if self.ema is not None:
            self.ema.update(self.net)
        # tensors, not .item(): the logger sums on the device, so there is no GPU sync per step
        scalars = {f"loss/{key}": losses[key].detach() for key in ("total", "attributes", "yaw", "factors")}
        scalars["lr"] = lr
        return cfg.train.batch_size * self.ctx.world_size, scalars

    def after_step(self, step_images: int, done: bool) -> None:
        cfg, ctx, seen = self.cfg, self.ctx, self.images_seen
        if ctx.due(cfg.log.image_every_images, seen, step_images):
            self.log_predictions()
        if ctx.due(cfg.eval.val_every_images, seen, step_images):
            # every rank validates (the same images) so the cross-rank reduction in log.scalar stays in step
            val = validate(self.scored, self.valid, cfg.eval.val_images, cfg, ctx.autocast)
            for key in ("mean_accuracy", "mean_accuracy_modelled", "yaw_mae", "yaw_corr"):
                ctx.log.scalar(f"val/{key}", val[key])
            if ctx.is_main:
                from tqdm import tqdm

                tqdm.write(f"[{seen} images] val mean acc {val['mean_accuracy']:.4f}, modelled "
                           f"{val['mean_accuracy_modelled']:.4f}, yaw corr {val['yaw_corr']:.3f}")
        self.end_time = time.perf_counter()

    def log_predictions(self) -> None:
        """The grid of fixed validation images (samples/predictions_<images>.png) and, beside it, what the
        predictor currently says about them (.json)."""
        ctx = self.ctx
        png = ctx.log.images("predictions", self.grid_images)
        if ctx.is_main:
            rows = prediction_rows(self.scored, self.grid_images, self.grid_attrs, self.grid_known, self.shown,
                                   ctx.autocast)
            path = (Path(png).with_suffix(".json") if png
                    else self.samples_dir / f"predictions_{self.images_seen:010d}.json")
            atomic_write_text(path, json.dumps(rows, indent=1) + "\n")

    def finish(self) -> dict | None:
        ctx = self.ctx
        if not ctx.is_main:
            return None
        seconds = self.end_time - self.start_time if self.start_time is not None else 0.0
        trained = self.images_seen - self.start_images if self.start_time is not None else 0
        metrics = validate(self.scored, self.valid, 0, self.cfg, ctx.autocast)
        metrics = {"split": "valid", "images_seen": self.images_seen, "ema": self.ema is not None,
                   "train_seconds_this_session": round(seconds, 1),
                   "train_img_per_s": round(trained / max(seconds, 1e-9), 1),
                   "factor_names": self.factor_names, **metrics}
        acc = metrics["accuracy"]
        print("valid accuracy: " + ", ".join(f"{a} {acc[a]:.3f}" if acc[a] is not None else f"{a} (no labels)"
                                             for a in self.shown), flush=True)
        print(f"mean accuracy {metrics['mean_accuracy']:.4f} (majority baseline "
              f"{metrics['mean_majority_baseline']:.4f}), modelled {metrics['mean_accuracy_modelled']:.4f} "
              f"(baseline {metrics['mean_majority_baseline_modelled']:.4f}), yaw MAE {metrics['yaw_mae']:.4f} "
              f"corr {metrics['yaw_corr']:.4f}; metrics in {ctx.out / 'metrics.json'}", flush=True)
        return metrics
