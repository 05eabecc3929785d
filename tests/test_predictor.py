"""Tests of the attribute predictor: shapes and heads, scoring (resize, probabilities, batching), loss values and
gradients, metrics on known answers, the LR schedule, load_predictor round trip and the training script end to end."""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from common.attributes import CELEBA_ATTRIBUTES
from common.predictor import (
    AttributePredictor,
    PredictorError,
    attribute_accuracy,
    build_predictor,
    evaluate_predictor,
    learning_rate,
    majority_baseline,
    pearson,
    prediction_metrics,
    predictor_loss,
    score_images,
    target_stats,
)

REPO = Path(__file__).resolve().parents[1]
FACTORS = ["smile", "mouth_open", "yaw"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and on a shared, loaded 2-core machine two OpenMP threads spinning
    against other processes made these tests ~20x slower (0.9 s -> 20 s measured); restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(resolution=32, factor_names=FACTORS, seed=0) -> AttributePredictor:
    torch.manual_seed(seed)
    model = AttributePredictor(resolution, width=8, blocks=(1, 1, 1, 1), factor_names=factor_names)
    if list(factor_names) == FACTORS:
        model.set_target_stats(0.1, 0.3, [0.0, 0.5, 0.0], [0.5, 0.3, 0.2])
    # zero-initialised residual BNs make every block the identity at init; perturb them so outputs depend on input
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
    return model.eval()


def images(n, size, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ------------------------------------------------------------------------------------------------ model


@pytest.mark.parametrize("resolution", [32, 64])
@pytest.mark.parametrize("factor_names", [FACTORS, []])
def test_forward_shapes_and_heads(resolution, factor_names):
    model = AttributePredictor(resolution, width=8, blocks=(1, 1, 1, 1), factor_names=factor_names)
    out = model(images(3, resolution))
    assert set(out) == {"logits", "yaw", "factors", "features"}
    assert out["logits"].shape == (3, 40)
    assert out["yaw"].shape == (3,)
    assert out["factors"].shape == (3, len(factor_names))
    assert out["features"].shape == (3, 64) == (3, model.feature_dim)  # Df = 8 * width
    assert model.features(images(3, resolution)).shape == (3, 64)
    assert model.resolution == resolution and model.num_factors == len(factor_names)
    # ResNet adapted to small images: 3x3 stride-1 stem, no max-pool
    stem = model.stem[0]
    assert stem.kernel_size == (3, 3) and stem.stride == (1, 1)
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())
    assert sum(1 for m in model.modules() if type(m).__name__ == "BasicBlock") == 4


def test_resnet18_layout_and_build_errors():
    model = build_predictor({"arch": "resnet18", "width": 16, "blocks": [2, 2, 2, 2]}, 64)
    assert sum(1 for m in model.modules() if type(m).__name__ == "BasicBlock") == 8
    assert model.feature_dim == 128
    with pytest.raises(PredictorError, match="unknown predictor arch 'vgg'"):
        build_predictor({"arch": "vgg"}, 32)
    with pytest.raises(PredictorError, match=r"\[B, 3, H, W\]"):
        model(torch.zeros(2, 1, 32, 32))


def test_regression_heads_return_data_units():
    model = tiny()
    with torch.no_grad():  # zero the heads: the prediction must then be the stored mean
        for head in (model.yaw_head, model.factor_head):
            head.weight.zero_()
            head.bias.zero_()
        model.factor_head.bias[1] = 2.0  # two standard deviations above the mean
        out = model(images(2, 32))
    assert torch.allclose(out["yaw"], torch.full((2,), 0.1))
    assert torch.allclose(out["factors"], torch.tensor([[0.0, 0.5 + 2 * 0.3, 0.0]] * 2))


def test_bf16_autocast_keeps_heads_float32():
    model = tiny()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(images(2, 32))
    assert out["logits"].dtype == out["yaw"].dtype == out["factors"].dtype == torch.float32
    ref = model(images(2, 32))
    assert torch.allclose(out["logits"], ref["logits"], atol=0.15)


# ------------------------------------------------------------------------------------------------ scoring


def test_score_images_resizes_and_returns_probabilities():
    model = tiny()
    x = images(5, 32)
    scores = score_images(model, x, batch_size=2)
    assert set(scores) == {"probs", "yaw", "factors", "features"}
    assert scores["probs"].shape == (5, 40) and scores["yaw"].shape == (5,)
    assert scores["factors"].shape == (5, 3) and scores["features"].shape == (5, 64)
    assert all(v.dtype == torch.float32 and v.device.type == "cpu" for v in scores.values())
    assert (scores["probs"] > 0).all() and (scores["probs"] < 1).all()
    with torch.no_grad():
        ref = model(x)
    assert torch.allclose(scores["probs"], torch.sigmoid(ref["logits"]), atol=1e-6)  # batching changes nothing
    # a 2x nearest upscale is resized back (antialiased bilinear) to about the original image
    big = score_images(model, x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3))
    assert big["probs"].shape == (5, 40)
    assert torch.allclose(big["probs"], scores["probs"], atol=0.15)
    odd = score_images(model, images(3, 48))
    assert odd["probs"].shape == (3, 40)


def test_score_images_saturated_logits_stay_inside_0_1_and_uint8_input():
    model = tiny()
    with torch.no_grad():
        model.attribute_head.bias.fill_(100.0)
        model.attribute_head.bias[0] = -100.0
    scores = score_images(model, images(2, 32))
    assert (scores["probs"] > 0).all() and (scores["probs"] < 1).all()
    assert scores["probs"][:, 1].min() > 0.99 and scores["probs"][:, 0].max() < 0.01
    u8 = np.random.default_rng(0).integers(0, 256, size=(2, 40, 40, 3), dtype=np.uint8)
    as_float = torch.from_numpy(u8).permute(0, 3, 1, 2).float() / 127.5 - 1
    assert torch.allclose(score_images(model, u8)["yaw"], score_images(model, as_float)["yaw"])
    assert model.training is False
    model.train()
    score_images(model, images(1, 32))
    assert model.training is True  # mode restored


# ------------------------------------------------------------------------------------------------ loss


def test_loss_values_finite_and_backward():
    model = tiny().train()
    x = images(4, 32)
    attrs = torch.randint(0, 2, (4, 40)).float()
    yaw = torch.randn(4) * 0.3
    factors = torch.randn(4, 3)
    out = model(x)
    losses = predictor_loss(out, attrs, yaw, factors, model, 1.0, 0.5, 2.0)
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    bce = torch.nn.functional.binary_cross_entropy_with_logits(out["logits"], attrs)
    yaw_mse = (((out["yaw"] - yaw) / 0.3) ** 2).mean()  # standardised by the stored std
    f_std = torch.tensor([0.5, 0.3, 0.2])
    f_mse = (((out["factors"] - factors) / f_std) ** 2).mean()
    assert torch.allclose(losses["attributes"], bce)
    assert torch.allclose(losses["yaw"], yaw_mse, rtol=1e-5)
    assert torch.allclose(losses["factors"], f_mse, rtol=1e-5)
    assert torch.allclose(losses["total"], bce + 0.5 * yaw_mse + 2.0 * f_mse, rtol=1e-5)
    losses["total"].backward()
    for head in (model.attribute_head, model.yaw_head, model.factor_head, model.stem[0]):
        assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0
    # every parameter gets a gradient (DDP refuses unused parameters), also without factors
    assert all(p.grad is not None for p in model.parameters())
    plain = tiny(factor_names=[]).train()
    predictor_loss(plain(x), attrs, yaw, torch.zeros(4, 0), plain)["total"].backward()
    assert plain.factor_head is None and all(p.grad is not None for p in plain.parameters())


def test_loss_perfect_regression_is_zero_and_no_factors():
    model = tiny(factor_names=[]).train()
    out = model(images(3, 32))
    losses = predictor_loss(out, torch.zeros(3, 40), out["yaw"].detach(), torch.zeros(3, 0), model)
    assert losses["yaw"].item() == pytest.approx(0.0, abs=1e-10)
    assert losses["factors"].item() == 0.0
    assert torch.isfinite(losses["total"])


def test_a_few_steps_learn_a_visible_attribute():
    # Smiling := the image is bright (with a margin); 30 steps on 64 images must separate them (the whole
    # pipeline, from heads through the loss to the backbone, can learn).
    torch.manual_seed(0)
    model = AttributePredictor(12, width=4, blocks=(1, 1, 1, 1))
    brightness = torch.linspace(0.2, 0.6, 32).repeat(2) * torch.tensor([-1.0, 1.0]).repeat_interleave(32)
    x = (images(64, 12) * 0.3 + brightness[:, None, None, None]).clamp(-1, 1)
    attrs = torch.zeros(64, 40)
    attrs[:, CELEBA_ATTRIBUTES.index("Smiling")] = (brightness > 0).float()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(30):
        loss = predictor_loss(model(x), attrs, torch.zeros(64), torch.zeros(64, 0), model)["total"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    probs = score_images(model, x)["probs"][:, CELEBA_ATTRIBUTES.index("Smiling")]
    assert ((probs > 0.5).float() == attrs[:, CELEBA_ATTRIBUTES.index("Smiling")]).float().mean() >= 0.95


def test_train_step_with_bare_step_tools_and_an_all_unknown_mask():
    # what scripts/benchmark.py calls: plain tensors, a bare StepTools in bf16 (CPU autocast here)
    from common.predictor_training import train_step
    from common.training import StepTools

    tools = StepTools("cpu", "bf16")
    model = tiny().train()
    x, attrs = images(4, 32), torch.randint(0, 2, (4, 40)).float()
    yaw, factors = torch.randn(4) * 0.3, torch.randn(4, 3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    before = [p.detach().clone() for p in model.parameters()]
    losses = train_step(model, model, opt, x, attrs, yaw, factors, tools, clip=1.0, weights=(1.0, 0.5, 2.0))
    assert set(losses) == {"total", "attributes", "yaw", "factors"}
    assert all(torch.isfinite(v) and v.dtype == torch.float32 for v in losses.values())
    assert losses["attributes"] > 0
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
    assert all(p.grad is None for p in model.parameters())  # the step zeroes the gradients
    # no attribute label known (own photos with an empty labels file): no attribute loss, so the attribute head
    # gets no gradient and plain SGD leaves it as it was (Adam's momentum would not), while yaw still trains
    head = model.attribute_head.weight.detach().clone()
    yaw_head = model.yaw_head.weight.detach().clone()
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = train_step(model, model, sgd, x, attrs, yaw, factors, tools, known=torch.zeros(4, 40, dtype=torch.bool))
    assert losses["attributes"].item() == 0.0 and torch.isfinite(losses["total"])
    assert torch.allclose(losses["total"], losses["yaw"] + losses["factors"])
    assert torch.equal(model.attribute_head.weight, head) and not torch.equal(model.yaw_head.weight, yaw_head)


# ------------------------------------------------------------------------------------------------ metrics


def test_metrics_on_known_answers():
    targets = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [1.0, 1.0]])
    logits = torch.tensor([[3.0, -1.0], [2.0, -2.0], [-1.0, 1.0], [1.0, 5.0]])
    assert torch.allclose(attribute_accuracy(logits, targets), torch.tensor([1.0, 0.75]))
    assert torch.allclose(majority_baseline(targets), torch.tensor([0.75, 0.75]))
    a = torch.arange(10.0)
    assert pearson(a, 3 * a + 1) == pytest.approx(1.0)
    assert pearson(a, -a) == pytest.approx(-1.0)
    assert math.isnan(pearson(a, torch.ones(10)))

    attrs = torch.zeros(8, 40)
    attrs[:4, CELEBA_ATTRIBUTES.index("Smiling")] = 1
    out = {"logits": attrs * 8 - 4, "yaw": torch.linspace(-1, 1, 8), "factors": torch.linspace(0, 1, 8)[:, None]}
    m = prediction_metrics(out, attrs, torch.linspace(-1, 1, 8) + 0.1, torch.linspace(0, 2, 8)[:, None], ["smile"],
                           ["Smiling", "Male"])
    assert set(m["accuracy"]) == set(CELEBA_ATTRIBUTES) and m["mean_accuracy"] == 1.0
    assert m["mean_accuracy_modelled"] == 1.0 and m["mean_majority_baseline_modelled"] == pytest.approx(0.75)
    assert m["yaw_mae"] == pytest.approx(0.1) and m["yaw_corr"] == pytest.approx(1.0)
    assert m["factor_corr"]["smile"] == pytest.approx(1.0) and m["factor_mae"]["smile"] == pytest.approx(0.5)


def test_target_stats_with_and_without_flips():
    yaw = np.array([0.1, 0.3, 0.5])
    factors = np.array([[0.0, 0.2], [1.0, 0.4], [2.0, 0.6]])
    y_mean, y_std, f_mean, f_std = target_stats(yaw, factors, ["smile", "yaw"], hflip=False)
    assert y_mean == pytest.approx(0.3) and y_std == pytest.approx(np.std(yaw))
    assert np.allclose(f_mean, [1.0, 0.4]) and np.allclose(f_std, np.std(factors, axis=0))
    # flips negate yaw (and the yaw factor): symmetric about 0, scale = root mean square
    y_mean, y_std, f_mean, f_std = target_stats(yaw, factors, ["smile", "yaw"], hflip=True)
    assert y_mean == 0.0 and y_std == pytest.approx(np.sqrt(np.mean(yaw ** 2)))
    assert f_mean[0] == pytest.approx(1.0) and f_mean[1] == 0.0 and f_std[1] == pytest.approx(np.sqrt(np.mean(
        factors[:, 1] ** 2)))
    _, y_std, _, f_std = target_stats(np.zeros(4), np.ones((4, 1)), ["smile"], hflip=False)
    assert y_std > 0 and f_std[0] > 0  # constant targets: no division by zero


def test_evaluate_predictor_on_the_cache(tiny_cache):
    from common.cache import CelebACache

    valid = CelebACache(tiny_cache, "valid")
    model = tiny(factor_names=valid.factor_names)
    metrics = evaluate_predictor(model, valid, limit=0, batch_size=7, modelled=["Smiling"])
    attributes, yaw, _ = valid.labels()
    assert metrics["num_images"] == len(valid) > 0
    # the same numbers as scoring the cache's images directly
    scores = score_images(model, valid.images_uint8(np.arange(len(valid))))
    acc = ((scores["probs"] > 0.5).float() == torch.from_numpy(attributes)).float().mean(0)
    assert metrics["accuracy"]["Smiling"] == pytest.approx(float(acc[CELEBA_ATTRIBUTES.index("Smiling")]))
    assert metrics["yaw_mae"] == pytest.approx(float((scores["yaw"] - torch.from_numpy(yaw)).abs().mean()), rel=1e-5)
    assert set(metrics["factor_corr"]) == set(valid.factor_names)
    assert evaluate_predictor(model, valid, limit=3)["num_images"] == 3


def test_learning_rate_schedule():
    assert learning_rate(1.0, 0, 1000, 100) == pytest.approx(0.01)
    assert learning_rate(1.0, 99, 1000, 100) == pytest.approx(1.0)
    assert learning_rate(1.0, 100, 1000, 100, "cosine") == pytest.approx(1.0)
    assert learning_rate(1.0, 550, 1000, 100, "cosine") == pytest.approx(0.5)
    assert learning_rate(1.0, 1000, 1000, 100, "cosine", 0.1) == pytest.approx(0.1)
    assert learning_rate(1.0, 700, 1000, 100, "constant") == 1.0
    assert type(learning_rate(1.0, 700, 1000, 100)) is float  # numpy scalars break weights_only loading


# ------------------------------------------------------------------------------------------------ config


def test_config_files_load_and_are_strict(tmp_path):
    from common.config import ConfigError, load_config
    from common.predictor_config import PredictorConfig

    cfg = load_config(PredictorConfig, REPO / "configs/predictor/synthetic.yaml", [])
    assert cfg.data.resolution == 32 and cfg.model.arch == "resnet18"
    big = load_config(PredictorConfig, REPO / "configs/predictor/celeba64.yaml", [])
    assert big.data.resolution == 64 and big.model.width == 64 and big.model.blocks == [2, 2, 2, 2]
    assert big.train.total_images == 20 * 162770
    with pytest.raises(ConfigError, match="eval.modelled_attributes"):
        load_config(PredictorConfig, REPO / "configs/predictor/synthetic.yaml", ["eval.modelled_attributes=[Smilng]"])
    with pytest.raises(ConfigError, match="loss.yaww"):
        load_config(PredictorConfig, REPO / "configs/predictor/synthetic.yaml", ["loss.yaww=1"])


def test_modelled_attributes_match_the_synthetic_generator():
    from common.predictor_config import PredictorConfig

    synthetic = pytest.importorskip("common.synthetic")
    assert sorted(PredictorConfig().eval.modelled_attributes) == sorted(synthetic.MODELLED)


# ------------------------------------------------------------------------------------------------ loading


def test_load_predictor_round_trip(tmp_path):
    from common.config import load_config
    from common.predictor import load_predictor
    from common.predictor_config import PredictorConfig
    from common.run import RunContext, add_train_arguments

    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    out = tmp_path / "run"
    args = parser.parse_args(["--config", str(REPO / "configs/predictor/synthetic.yaml"), "--out", str(out),
                              "--set", "train.device=cpu", "--set", "log.tensorboard=false",
                              "--set", "model.width=8", "--set", "model.blocks=[1,1,1,1]"])
    cfg = load_config(PredictorConfig, args.config, args.set)
    ctx = RunContext.create("predictor", cfg, args)
    model = build_predictor(cfg.model, cfg.data.resolution, FACTORS)
    model.set_target_stats(0.1, 0.3, [0.0, 0.5, 0.0], [0.5, 0.3, 0.2])
    for m in model.modules():  # non-trivial BN statistics and weights, so a lost buffer would show
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
            m.running_mean.uniform_(-0.1, 0.1)
    ctx.save_checkpoint({"models": {"predictor": model.state_dict()}, "images_seen": 0, "step": 0,
                         "factor_names": FACTORS})
    ctx.close()
    loaded = load_predictor(out)
    assert loaded.training is False and loaded.factor_names == FACTORS and loaded.resolution == 32
    x = images(4, 32)
    a, b = score_images(model.eval(), x), score_images(loaded, x)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert torch.equal(score_images(load_predictor(out / "checkpoints/last.pt"), x)["probs"], a["probs"])
    with pytest.raises(FileNotFoundError):
        load_predictor(tmp_path / "missing")
    (tmp_path / "vae").mkdir()
    torch.save({"format": torch.load(out / "checkpoints/last.pt", weights_only=True)["format"],
                "models": {"vae": {}}, "config": {"data": {"resolution": 32}}}, tmp_path / "vae" / "x.pt")
    with pytest.raises(PredictorError, match="holds no attribute predictor"):
        load_predictor(tmp_path / "vae" / "x.pt")


# ------------------------------------------------------------------------------------------------ script


def test_train_predictor_script_smoke(tiny_cache, tmp_path):
    from common.predictor import load_predictor

    out = tmp_path / "pred"
    cmd = [sys.executable, str(REPO / "scripts/train_predictor.py"), "--config",
           str(REPO / "configs/predictor/synthetic.yaml"), "--out", str(out),
           "--set", f"data.cache={tiny_cache}", "--set", "train.device=cpu", "--set", "model.width=8",
           "--set", "model.blocks=[1,1,1,1]", "--set", "train.batch_size=16", "--set", "train.total_images=96",
           "--set", "optim.warmup_images=16", "--set", "eval.val_every_images=48", "--set", "eval.val_images=16",
           "--set", "log.image_every_images=48", "--set", "train.checkpoint_every_images=48",
           "--set", "log.every_images=16"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # see one_thread()
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["accuracy"]) == set(CELEBA_ATTRIBUTES)
    assert all(0.0 <= v <= 1.0 for v in metrics["accuracy"].values())
    assert metrics["images_seen"] == 96 and metrics["num_images"] > 0
    assert 0 <= metrics["mean_accuracy"] <= 1 and math.isfinite(metrics["yaw_mae"])
    assert set(metrics["factor_corr"]) == set(metrics["factor_names"])
    assert sorted(p.name for p in (out / "samples").glob("predictions_*")) == [
        "predictions_0000000048.json", "predictions_0000000048.png",
        "predictions_0000000096.json", "predictions_0000000096.png"]
    rows = json.loads((out / "samples/predictions_0000000096.json").read_text())
    assert 0 < len(rows) <= 32 and 0 <= rows[0]["Smiling"]["pred"] <= 1 and rows[0]["Smiling"]["true"] in (0, 1)
    assert (out / "checkpoints/last.pt").is_file() and (out / "config.yaml").is_file()
    predictor = load_predictor(out)
    assert predictor.num_factors == len(metrics["factor_names"])
    assert score_images(predictor, images(2, 64))["probs"].shape == (2, 40)
