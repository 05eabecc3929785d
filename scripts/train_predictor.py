"""Train the attribute predictor. Usage: python scripts/train_predictor.py --config configs/predictor/synthetic.yaml
[--set train.total_images=2000] [--set train.seed=1 --out runs/predictor/synthetic-judge]

Objective (common/predictor.py): total = loss.attributes * BCE-with-logits averaged over the 40 attributes
(over the known labels only, in a cache of own photos with a partial labels file) + loss.yaw * MSE of the
standardised yaw + loss.factors * MSE of the standardised synthetic factors (when the cache has them). Targets
are standardised with the training split's mean/std, stored in the model.

Logged: loss/{total,attributes,yaw,factors}, lr, perf/img_per_s; val/mean_accuracy, val/mean_accuracy_modelled,
val/yaw_mae, val/yaw_corr every eval.val_every_images on the valid split; a grid of validation images with their
predictions (run/samples/*.png + .json) every log.image_every_images. At the end run/metrics.json holds the full
valid split's per-attribute accuracy (and majority-class baseline), the means over all 40 and over the modelled
attributes, yaw MAE / correlation and per-factor correlations.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from common.attributes import CELEBA_ATTRIBUTES
from common.cache import CelebACache, open_training_cache
from common.cli import UserError, run_main
from common.config import load_config
from common.predictor import (
    AttributePredictor,
    build_predictor,
    evaluate_predictor,
    learning_rate,
    predictor_loss,
    target_stats,
)
from common.predictor_config import PredictorConfig
from common.run import EMA, RunContext, adam, add_train_arguments


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def validate(model: AttributePredictor, dataset: CelebACache, limit: int, cfg, autocast) -> dict:
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_train_arguments(parser)
    args = parser.parse_args()
    cfg = load_config(PredictorConfig, args.config, args.set)
    ctx = RunContext.create("predictor", cfg, args)
    if ctx is None:
        return 0  # --dry-run

    cache_dir, dataset = open_training_cache(cfg.data)
    valid = CelebACache(cache_dir, "valid")
    if len(dataset) == 0 or len(valid) == 0:
        raise UserError(f"{cache_dir}: the train and valid splits must both hold images (train {len(dataset)}, "
                        f"valid {len(valid)}); check list_eval_partition (own photos: the labels file's "
                        "partition column)")
    factor_names = list(dataset.factor_names or [])
    raw = build_predictor(cfg.model, cfg.data.resolution, factor_names)
    _, train_yaw, train_factors = dataset.labels()
    raw.set_target_stats(*target_stats(train_yaw, train_factors, factor_names, cfg.data.hflip))
    if ctx.is_main:
        params = sum(p.numel() for p in raw.parameters())
        print(f"predictor: {params:,} parameters, resnet18 width {cfg.model.width} blocks {list(cfg.model.blocks)}, "
              f"{cfg.data.resolution}x{cfg.data.resolution}, {len(factor_names)} factors; train {len(dataset)} / "
              f"valid {len(valid)} images", flush=True)
    model = ctx.wrap(raw)
    net: AttributePredictor = ctx.unwrap(model)
    decay, no_decay = [], []
    for p in net.parameters():  # no weight decay on BN and biases (standard for ResNets)
        (no_decay if p.ndim <= 1 else decay).append(p)
    opt = adam([{"params": decay, "weight_decay": cfg.optim.weight_decay},
                {"params": no_decay, "weight_decay": 0.0}], lr=cfg.train.lr, decoupled=True)  # fused AdamW
    ema = EMA(net, cfg.train.ema_decay) if cfg.train.ema_decay > 0 else None

    images_seen, step = 0, 0
    state = ctx.load_checkpoint()
    if state:
        net.load_state_dict(state["models"]["predictor"])
        opt.load_state_dict(state["optimizers"]["adamw"])
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        images_seen, step = int(state["images_seen"]), int(state["step"])

    def checkpoint() -> None:
        models = {"predictor": net.state_dict()}
        if ema is not None:
            models["predictor_ema"] = ema.module.state_dict()
        ctx.save_checkpoint({"models": models, "optimizers": {"adamw": opt.state_dict()},
                             "ema": ema.state_dict() if ema is not None else None,
                             "images_seen": images_seen, "step": step, "factor_names": factor_names})

    samples_dir = ctx.out / "samples"
    if ctx.is_main:
        samples_dir.mkdir(parents=True, exist_ok=True)
    grid_n = min(32, len(valid))
    grid_items = [valid[i] for i in range(grid_n)]
    grid_images = torch.stack([it["image"] for it in grid_items]).to(ctx.device)  # [n, 3, R, R]
    grid_attrs = torch.stack([torch.as_tensor(it["attributes"]) for it in grid_items])  # [n, 40]
    grid_known = torch.from_numpy(valid.known()[:grid_n])  # [n, 40] bool
    shown = list(cfg.eval.modelled_attributes or CELEBA_ATTRIBUTES[:10])

    batch_size = cfg.train.batch_size
    step_images = batch_size * ctx.world_size
    batches = ctx.batches(dataset, batch_size)
    bar = ctx.progress(cfg.train.total_images, initial=images_seen)
    start_time = last_time = time.perf_counter()
    start_images = last_images = images_seen
    model.train()
    while images_seen < cfg.train.total_images and not ctx.should_stop:
        batch = next(batches)
        lr = learning_rate(cfg.train.lr, images_seen, cfg.train.total_images, cfg.optim.warmup_images,
                           cfg.optim.schedule, cfg.optim.min_lr_ratio)
        for group in opt.param_groups:
            group["lr"] = lr
        with ctx.autocast():
            out = model(batch["image"])  # images [B, 3, R, R] in [-1, 1]
        losses = predictor_loss(out, batch["attributes"], batch["yaw"], batch["factors"], net,
                                cfg.loss.attributes, cfg.loss.yaw, cfg.loss.factors,
                                known=batch.get("known"))  # float32 scalars; "known": own photos' partial labels
        ctx.check_finite(losses["total"], "loss/total")
        ctx.step(losses["total"], opt, clip=cfg.train.grad_clip or None)
        if ema is not None:
            ema.update(net)
        images_seen += step_images
        step += 1

        for key in ("total", "attributes", "yaw", "factors"):
            ctx.log.scalar(f"loss/{key}", losses[key].item())
        ctx.log.scalar("lr", lr)
        now = time.perf_counter()
        if now - last_time > 5.0:
            ctx.log.scalar("perf/img_per_s", (images_seen - last_images) / (now - last_time))
            last_time, last_images = now, images_seen
        ctx.log.advance(images_seen)
        bar.update(step_images)

        scored = net if ema is None else ema.module
        if ctx.due(cfg.log.image_every_images, images_seen, step_images):
            # the grid of fixed validation images (samples/predictions_<images>.png) and, beside it, what the
            # predictor currently says about them (.json)
            png = ctx.log.images("predictions", grid_images)
            if ctx.is_main:
                rows = prediction_rows(scored, grid_images, grid_attrs, grid_known, shown, ctx.autocast)
                path = Path(png).with_suffix(".json") if png else samples_dir / f"predictions_{images_seen:010d}.json"
                write_atomic(path, (json.dumps(rows, indent=1) + "\n").encode())
        if ctx.due(cfg.eval.val_every_images, images_seen, step_images):
            # every rank validates (the same images) so the cross-rank reduction in log.scalar stays in step
            val = validate(scored, valid, cfg.eval.val_images, cfg, ctx.autocast)
            for key in ("mean_accuracy", "mean_accuracy_modelled", "yaw_mae", "yaw_corr"):
                ctx.log.scalar(f"val/{key}", val[key])
            if ctx.is_main:
                bar.write(f"[{images_seen} images] val mean acc {val['mean_accuracy']:.4f}, modelled "
                          f"{val['mean_accuracy_modelled']:.4f}, yaw corr {val['yaw_corr']:.3f}")
        if ctx.due(cfg.train.checkpoint_every_images, images_seen, step_images):
            checkpoint()
    bar.close()
    train_seconds = time.perf_counter() - start_time
    checkpoint()

    if images_seen >= cfg.train.total_images and ctx.is_main:
        final = net if ema is None else ema.module
        metrics = validate(final, valid, 0, cfg, ctx.autocast)
        metrics = {"split": "valid", "images_seen": images_seen, "ema": ema is not None,
                   "train_seconds_this_session": round(train_seconds, 1),
                   "train_img_per_s": round((images_seen - start_images) / max(train_seconds, 1e-9), 1),
                   "factor_names": factor_names, **metrics}
        write_atomic(ctx.out / "metrics.json", (json.dumps(metrics, indent=2) + "\n").encode())
        acc = metrics["accuracy"]
        print("valid accuracy: " + ", ".join(f"{a} {acc[a]:.3f}" if acc[a] is not None else f"{a} (no labels)"
                                             for a in shown), flush=True)
        print(f"mean accuracy {metrics['mean_accuracy']:.4f} (majority baseline "
              f"{metrics['mean_majority_baseline']:.4f}), modelled {metrics['mean_accuracy_modelled']:.4f} "
              f"(baseline {metrics['mean_majority_baseline_modelled']:.4f}), yaw MAE {metrics['yaw_mae']:.4f} "
              f"corr {metrics['yaw_corr']:.4f}; metrics in {ctx.out / 'metrics.json'}", flush=True)
    ctx.close()
    return 0


if __name__ == "__main__":
    run_main(main)
