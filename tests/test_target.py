"""--target: strength in attribute units. Each face walks until the attribute predictor reads the target.

On the toy linear model of test_editing.py with a toy predictor that reads the planted directions exactly
(logit of Smiling = GAIN * z . smile, yaw = z . pose), the strength that reaches a probability p is known in closed
form, so the tests compare with it; then the real path: a tiny trained VAE and predictor through
scripts/edit_vae.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from test_editing import SIZE, ToyLinearModel, finder, parse, world  # noqa: F401  (world: the fixture)
from test_evaluate import run_script

from common.attributes import NUM_ATTRIBUTES, attribute_index
from common.cli import UserError
from common.editing import load_target_predictor, parse_targets, run_edit, target_headers, target_names

GAIN = 3.0  # the toy predictor's logit per unit of z along the planted Smiling direction


class ToyPredictor(torch.nn.Module):
    """Reads a toy face back to its latent (the toy model's exact inverse) and scores the planted directions."""

    def __init__(self, model: ToyLinearModel, directions: dict):
        super().__init__()
        self.resolution, self.num_factors, self.feature_dim = SIZE, 0, 1
        self.register_buffer("pinv", model.pinv.float())  # [D, P]
        self.register_buffer("smile", torch.as_tensor(directions["Smiling"], dtype=torch.float32))
        self.register_buffer("pose", torch.as_tensor(directions["pose"], dtype=torch.float32))
        self.unused = torch.nn.Parameter(torch.zeros(1))  # score_images finds the device from a parameter

    def latents(self, images: torch.Tensor) -> torch.Tensor:
        flat = images.reshape(len(images), -1).double().clamp(-0.999999, 0.999999)
        return (torch.atanh(flat) @ self.pinv.double().T).float()  # [B, D]

    def forward(self, images: torch.Tensor) -> dict:
        z = self.latents(images)
        logits = torch.zeros(len(z), NUM_ATTRIBUTES)
        logits[:, attribute_index("Smiling")] = GAIN * (z @ self.smile)
        return {"logits": logits, "yaw": z @ self.pose, "factors": torch.zeros(len(z), 0),
                "features": torch.zeros(len(z), 1)}


def expected_strength(base: torch.Tensor, direction, attribute_vector: np.ndarray, reading: np.ndarray) -> np.ndarray:
    """The relative walk's strength a with reading(z + a * scale * n) = target: [R] faces x [T] readings -> [R, T]."""
    z = base.double().numpy() @ attribute_vector  # [R]
    rate = direction.scale * float(direction.vector @ attribute_vector)
    return (reading[None, :] - z[:, None]) / rate


def logit(p):
    p = np.asarray(p, dtype=np.float64)
    return np.log(p / (1 - p))


def test_target_reaches_the_predictors_probability_per_face(world, tmp_path):  # noqa: F811
    model, train, test, directions = world
    predictor = ToyPredictor(model, directions)
    targets = np.array([0.1, 0.5, 0.9])
    args = parse(["--run", str(tmp_path), "--attribute", "Smiling", "--target", "0.1", "0.5", "0.9"])
    result = run_edit(model, tmp_path, args, finder(model, train, []), cache=test, progress=False,
                      predictor=predictor)
    direction = result["direction"]
    expected = expected_strength(result["base_latents"], direction, directions["Smiling"], logit(targets) / GAIN)
    record = json.loads((tmp_path / "edits" / "Smiling-mean.json").read_text())
    section = record["target"]
    assert section["attribute"] == "Smiling" and section["unit"] == "probability"
    assert section["values"] == [0.1, 0.5, 0.9] and section["labels"] == ["p=0.1", "p=0.5", "p=0.9"]
    reached = np.array(section["reached"])
    np.testing.assert_array_equal(reached, np.abs(expected) <= 3.0)  # reachable within --range -3 3
    assert reached.sum() >= 20  # most of the 8 x 3 walks get there, so the checks below check something
    strength, score = np.array(section["strength"]), np.array(section["score"])
    np.testing.assert_allclose(strength[reached], expected[reached], atol=2e-3)
    np.testing.assert_allclose(score[reached], np.broadcast_to(targets, reached.shape)[reached], atol=1e-3)
    # the score recorded is the predictor's reading of the face in the grid, and that face is the walk's
    images = result["images"]  # [R, T, 3, H, W]: the columns are the targets
    assert images.shape == (8, 3, 3, SIZE, SIZE) and result["strengths"].shape == (8, 3)
    read = torch.sigmoid(predictor(images.flatten(0, 1))["logits"][:, attribute_index("Smiling")]).reshape(8, 3)
    np.testing.assert_allclose(read.numpy(), score, atol=1e-4)
    step = result["latents"] - result["base_latents"][:, None]  # [R, T, D]
    np.testing.assert_allclose(step.double().numpy() @ direction.vector, strength * direction.scale, atol=1e-4)
    unedited = 1 / (1 + np.exp(-GAIN * (result["base_latents"].double().numpy() @ directions["Smiling"])))
    np.testing.assert_allclose(section["unedited_score"], unedited, atol=1e-4)
    assert section["never_reached"] == [f"#{i}" for i, row in zip(record["source"]["indices"], reached, strict=True)
                                        if not row.all()]
    assert record["strengths"] is None and record["marked_column"] is None
    assert section["search"] == {"range": [-3.0, 3.0], "steps": 25, "refine_steps": 4}
    # the grid has one column per target, the GIF one frame per target (there and back)
    with Image.open(tmp_path / "edits" / "Smiling-mean.png") as png:
        target_width = png.width
    with Image.open(tmp_path / "edits" / "Smiling-mean.gif") as gif:
        assert gif.n_frames == 2 * 3 - 2
    run_edit(model, tmp_path, parse(["--run", str(tmp_path), "--attribute", "Smiling"]), finder(model, train, []),
             cache=test, progress=False)  # the same faces at the 7 default strengths
    with Image.open(tmp_path / "edits" / "Smiling-mean.png") as png:
        assert png.width - target_width == 4 * (96 + 6)  # 4 columns fewer, of 8-pixel faces upscaled to 96


def test_target_records_faces_that_never_get_there(world, tmp_path):  # noqa: F811
    model, train, test, directions = world
    predictor = ToyPredictor(model, directions)
    args = parse(["--run", str(tmp_path), "--attribute", "Smiling", "--target", "0.5", "0.95", "--range", "-0.5",
                  "0.5", "--cache-images", "6"])
    result = run_edit(model, tmp_path, args, finder(model, train, []), cache=test, progress=False,
                      predictor=predictor)
    section = result["record"]["target"]
    expected = expected_strength(result["base_latents"], result["direction"], directions["Smiling"],
                                 logit([0.5, 0.95]) / GAIN)
    reachable = np.abs(expected) <= 0.5
    assert 0 < reachable.sum() < reachable.size  # some walks get there within +-0.5, some do not
    np.testing.assert_array_equal(section["reached"], reachable)
    assert section["never_reached"] == [f"#{5000 + i}" for i in range(6) if not reachable[i].all()]
    score = np.array(section["score"])
    np.testing.assert_allclose(score[reachable], np.broadcast_to([0.5, 0.95], (6, 2))[reachable], atol=1e-3)
    # a face that cannot get there stops at the searched strength whose score is closest: an end of the range
    strength = np.array(section["strength"])
    assert np.all(np.isin(np.round(strength[~reachable], 6), [-0.5, 0.5]))
    goals = np.broadcast_to([0.5, 0.95], (6, 2))
    assert np.all(np.abs(score[~reachable] - goals[~reachable]) > 1e-3)


def test_target_pose_yaw_columns_and_pasted_photos(world, tmp_path):  # noqa: F811
    model, train, _, directions = world
    predictor = ToyPredictor(model, directions)
    photo = tmp_path / "me.png"
    Image.new("RGB", (120, 150), (150, 110, 100)).save(photo)
    args = parse(["--run", str(tmp_path), "--attribute", "pose", "--target", "-0.3", "0.3", "--images", str(photo),
                  "--no-align"])
    result = run_edit(model, tmp_path, args, finder(model, train, []), progress=False, predictor=predictor)
    section = result["record"]["target"]
    assert section["unit"] == "yaw" and section["labels"] == ["yaw=-0.30", "yaw=+0.30"]
    assert section["reached"] == [[True, True]]
    np.testing.assert_allclose(section["score"], [[-0.3, 0.3]], atol=1e-3)
    jpgs = [tmp_path / "edits" / f"me-pose-{name}.jpg" for name in ("yaw-0.30", "yaw+0.30")]
    assert result["record"]["outputs"]["photos"][0]["jpg"] == [str(p) for p in jpgs]
    for path in jpgs:
        with Image.open(path) as pasted:
            assert pasted.size == (120, 150)


def test_target_names_and_one_line_errors(world, tmp_path):  # noqa: F811
    model, train, test, directions = world
    assert target_names("Smiling", [0.1, 0.95]) == ["p0.10", "p0.95"]
    assert target_names("Smiling", [0.9]) == ["p0.9"] and target_headers("Smiling", [0.9]) == ["p=0.9"]
    assert target_names("pose", [0.3, 0.0, -0.125]) == ["yaw+0.300", "yaw0.000", "yaw-0.125"]
    assert target_headers("pose", [0.3]) == ["yaw=+0.30"]
    assert parse_targets(None, "Smiling") is None
    np.testing.assert_array_equal(parse_targets([0.2, 0.8], "Smiling"), [0.2, 0.8])
    np.testing.assert_array_equal(parse_targets([-1.5, 2.0], "pose"), [-1.5, 2.0])  # yaw: any finite number
    predictor = ToyPredictor(model, directions)
    edit = lambda *argv, **kw: run_edit(model, tmp_path, parse(["--run", "r", *argv]),  # noqa: E731
                                        finder(model, train, []), cache=test, progress=False, **kw)
    with pytest.raises(UserError, match=r"^--target 1.2 0: Smiling is a probability, expected values strictly "
                                        r"between 0 and 1"):
        edit("--attribute", "Smiling", "--target", "0.5", "1.2", "0", predictor=predictor)
    with pytest.raises(UserError, match="--target needs --predictor RUN"):
        edit("--attribute", "Smiling", "--target", "0.9")
    with pytest.raises(UserError, match="--steps with --target: the columns are the 2 targets"):
        edit("--attribute", "Smiling", "--target", "0.2", "0.9", "--steps", "5", predictor=predictor)
    with pytest.raises(UserError, match="the same target twice"):
        edit("--attribute", "Smiling", "--target", "0.9", "0.90", predictor=predictor)
    with pytest.raises(UserError, match="expected finite numbers"):
        edit("--attribute", "pose", "--target", "nan", predictor=predictor)
    with pytest.raises(UserError, match="expected a span of strengths"):
        edit("--attribute", "pose", "--target", "0.2", "--range", "1", "1", predictor=predictor)
    assert not (tmp_path / "directions").exists()  # every error came before any direction was computed
    # the scripts' loader: None without --target, one-line errors for a missing flag or folder
    assert load_target_predictor(parse(["--run", "r", "--attribute", "Smiling"]), "cpu") is None
    with pytest.raises(UserError, match="--target needs --predictor RUN"):
        load_target_predictor(parse(["--run", "r", "--attribute", "Smiling", "--target", "0.9"]), "cpu")
    with pytest.raises(UserError, match="nope: predictor run not found"):
        load_target_predictor(parse(["--run", "r", "--attribute", "Smiling", "--target", "0.9", "--predictor",
                                     str(tmp_path / "nope")]), "cpu")


def train_tiny(cache, vae, predictor) -> None:
    """A tiny VAE (640 images) and predictor (1280 images, 10 epochs) on the tiny cache, a few seconds: the
    predictor's Smiling probability then moves along the VAE's Smiling direction (by ~0.005 to 0.02 over -6..6;
    after 48 images it is flat to 1e-5)."""
    quiet = ["--set", "train.device=cpu", "--set", "log.tensorboard=false", "--set", "log.image_every_images=0",
             "--set", f"data.cache={cache}"]
    code, err = run_script(
        "train_vae.py", "--config", "configs/vae/synthetic.yaml", "--out", str(vae), *quiet, "--set",
        "model.widths=[8,16]", "--set", "model.latent_dim=8", "--set", "train.batch_size=32", "--set",
        "train.total_images=640", "--set", "log.every_images=320", "--set", "eval.val_every_images=0", "--set",
        "train.checkpoint_every_images=640", "--set", "vae.kl_warmup_images=160")
    assert code == 0, err[-3000:]
    code, err = run_script(
        "train_predictor.py", "--config", "configs/predictor/synthetic.yaml", "--out", str(predictor), *quiet,
        "--set", "model.width=8", "--set", "model.blocks=[1,1,1,1]", "--set", "train.batch_size=32", "--set",
        "train.total_images=1280", "--set", "optim.warmup_images=64", "--set", "eval.val_every_images=1280",
        "--set", "eval.val_images=16", "--set", "train.checkpoint_every_images=1280", "--set",
        "log.every_images=320")
    assert code == 0, err[-3000:]


def test_edit_vae_target_reaches_the_predictors_value_on_a_trained_tiny_run(tiny_cache, tmp_path):
    vae, predictor = tmp_path / "vae", tmp_path / "predictor"
    train_tiny(tiny_cache, vae, predictor)
    out = tmp_path / "edits"
    base = ["--run", str(vae), "--predictor", str(predictor), "--attribute", "Smiling", "--num", "3", "--seed", "0",
            "--range", "-6", "6", "--out", str(out), "--device", "cpu"]
    # targets at the ends of (0, 1): no face gets there, and each stops at its lowest or highest searched score
    code, err = run_script("edit_vae.py", *base, "--target", "0.001", "0.999")
    assert code == 0, err[-2000:]
    first = json.loads((out / "Smiling-mean.json").read_text())["target"]
    low, high = np.array(first["score"]).T  # [3] each: the range of scores each face's walk covers
    assert first["never_reached"] == [f"sample {i} (seed 0)" for i in range(3)] and not np.any(first["reached"])
    assert np.all(high - low > 0.002)  # the walks move the predictor's reading
    # a target inside face 0's range is reached (the walk covers scores on both sides of it)
    middle = float((low[0] + high[0]) / 2)
    code, err = run_script("edit_vae.py", *base, "--target", str(middle))
    assert code == 0, err[-2000:]
    record = json.loads((out / "Smiling-mean.json").read_text())
    section = record["target"]
    assert section["values"] == [middle] and section["predictor"] == str(predictor)
    assert section["reached"][0] == [True] and -6 <= section["strength"][0][0] <= 6
    for i in range(3):  # every face that got there reads the target, to 2% of its walk's span of scores
        if section["reached"][i][0]:
            assert abs(section["score"][i][0] - middle) < 0.02 * (high[i] - low[i])
    code, err = run_script("edit_vae.py", *base, "--target", "0.9", "--predictor", str(tmp_path / "none"))
    assert code == 2 and "none: predictor run not found" in err and err.strip().count("\n") == 0
    code, err = run_script("edit_vae.py", *base, "--target", "1.5")
    assert code == 2 and "strictly between 0 and 1" in err and err.strip().count("\n") == 0
