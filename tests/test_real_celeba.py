"""Real CelebA photos, read from ``../shared/celeba-real/`` (never committed; every test skips without them).

The half-size copy prepared at 64 holds the official labels and the same faces as full-size crops; every method
takes a few training steps on real faces from its ``celeba-cpu64`` config; a tiny VAE edits a real test face.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_evaluate import run_script

from common.attributes import attribute_index
from common.cache import CelebACache, crop_and_resize, read_manifest
from common.celeba import parse_attr_file, parse_landmarks_file, yaw_from_landmarks


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0 ** 2 / max(mse, 1e-12)))


def test_half10k_prepares_with_its_official_labels(real_cache64, real_half10k):
    manifest = read_manifest(real_cache64)
    assert manifest["source_size"] == [89, 109] and manifest["source_format"] == "jpg"
    assert manifest["counts"] == {"train": 8000, "valid": 1020, "test": 980} and not manifest["upscaled"]
    dataset = CelebACache(real_cache64, "all")
    with Image.open(real_half10k / "img_align_celeba" / "000001.jpg") as image:
        np.testing.assert_array_equal(dataset.images_uint8([0])[0], crop_and_resize(image, 64))
    attributes = parse_attr_file(real_half10k / "list_attr_celeba.txt")
    np.testing.assert_array_equal(np.load(real_cache64 / "attributes.npy"), attributes.values)
    # the landmark file stays in the official full-size frame (yaw does not depend on the scale anyway)
    landmarks = parse_landmarks_file(real_half10k / "list_landmarks_align_celeba.txt").values
    np.testing.assert_array_equal(np.load(real_cache64 / "landmarks.npy"), landmarks)
    np.testing.assert_allclose(np.load(real_cache64 / "yaw.npy"), yaw_from_landmarks(landmarks), rtol=1e-6)
    smiling = attributes.values[:, attribute_index("Smiling")]
    assert 0.3 < smiling.mean() < 0.7  # CelebA's 48% smiling, not a constant column


def test_a_resized_copy_gives_the_faces_of_the_full_size_crop(real_identities):
    paths = sorted((real_identities / "img_align_celeba").glob("*.jpg"))[:24]
    psnrs = []
    for path in paths:
        with Image.open(path) as image:
            full = image.convert("RGB")
        assert full.size == (178, 218)
        half = full.resize((89, 109), Image.LANCZOS)  # how the downloadable half-size copies were made
        psnrs.append(_psnr(crop_and_resize(full, 64), crop_and_resize(half, 64)))
    assert min(psnrs) > 32 and np.mean(psnrs) > 37, psnrs


def _tiny(config: str, out: Path, cache: Path, *sets: str) -> None:
    args = [a for s in (f"data.cache={cache}", "train.device=cpu", "log.tensorboard=false", *sets)
            for a in ("--set", s)]
    code, err = run_script(config, "--config", f"configs/{out.parent.name}/celeba-cpu64.yaml", "--out", str(out), *args)
    assert code == 0, err[-3000:]


@pytest.fixture(scope="module")
def real_runs(real_cache64, tmp_path_factory):
    root = tmp_path_factory.mktemp("real_runs")
    runs = {name: root / folder / "tiny" for name, folder in
            (("predictor", "predictor"), ("vae", "vae"), ("glow", "flow"), ("pggan", "interface_gan"))}
    for run in runs.values():
        run.parent.mkdir()
    _tiny("train_predictor.py", runs["predictor"], real_cache64, "model.width=8", "model.blocks=[1,1,1,1]",
          "train.batch_size=16", "train.total_images=64", "optim.warmup_images=16", "eval.val_every_images=0",
          "eval.val_images=32", "log.image_every_images=0", "train.checkpoint_every_images=64", "log.every_images=16")
    _tiny("train_vae.py", runs["vae"], real_cache64, "model.widths=[8,16,16]", "model.latent_dim=8",
          "train.batch_size=16", "train.total_images=64", "log.every_images=16", "log.image_every_images=0",
          "eval.val_every_images=0", "eval.val_images=16", "eval.test_images=32", "train.checkpoint_every_images=64")
    _tiny("train_glow.py", runs["glow"], real_cache64, "model.levels=2", "model.steps=1", "model.hidden_channels=8",
          "train.batch_size=8", "train.total_images=32", "glow.warmup_images=8", "glow.init_images=16",
          "eval.test_every_images=0", "eval.test_images=16", "eval.grid_images=4", "log.every_images=8",
          "log.image_every_images=0", "train.checkpoint_every_images=0")
    _tiny("train_pggan.py", runs["pggan"], real_cache64, "model.latent_dim=16", "model.fmap_base=64",
          "model.fmap_max=16", "model.fmap_min=8", "pggan.batch_sizes=[4,4,4,4,4]", "pggan.grid_images=4",
          "train.total_images=72", "log.every_images=8", "log.image_every_images=0", "train.checkpoint_every_images=0",
          f"edit.predictor={runs['predictor']}", "edit.samples=256")
    return runs


def test_every_method_trains_a_few_steps_on_real_faces(real_runs):
    predictor = json.loads((real_runs["predictor"] / "metrics.json").read_text())
    assert len(predictor["accuracy"]) == 40 and predictor["num_images"] == 1020  # the whole real valid split
    assert 0 < predictor["mean_accuracy"] <= 1 and 0.5 < predictor["mean_majority_baseline"] < 0.95
    vae = json.loads((real_runs["vae"] / "metrics.json").read_text())
    assert np.isfinite(vae["test_psnr_db"]) and vae["test_images"] == 32
    glow = json.loads((real_runs["glow"] / "metrics.json").read_text())
    assert 0 < glow["test_bpd"] < 8 and glow["reconstruction_max_abs_error"] < 1e-4
    pggan = json.loads((real_runs["pggan"] / "metrics.json").read_text())
    assert pggan["resolution"] == 64 and pggan["images_seen"] >= 72 and all(
        np.isfinite(v) for v in pggan["final_losses"].values())
    for run in real_runs.values():
        assert list((run / "checkpoints").glob("*.pt")), run


def test_a_real_test_face_is_edited(real_runs, tmp_path):
    out = tmp_path / "edits"
    code, err = run_script("edit_vae.py", "--run", str(real_runs["vae"]), "--attribute", "Smiling", "--cache-images",
                           "2", "--steps", "3", "--range", "-1", "1", "--out", str(out), "--device", "cpu",
                           "--max-train-images", "256")
    assert code == 0, err[-3000:]
    record = json.loads(next(out.glob("*.json")).read_text())
    assert record["source"]["kind"] == "cache" and record["source"]["split"] == "test"
    grid = next(out.glob("*.png"))
    with Image.open(grid) as image:
        assert image.size[0] >= 3 * 64 and image.size[1] >= 2 * 64  # 2 faces x 3 strengths at 64x64


def test_the_real_turn_check_on_two_pairs(real_runs, real_identities, tmp_path):
    out = tmp_path / "pairs"
    code, err = run_script("turn_pairs.py", "--runs", str(real_runs["vae"]), str(real_runs["pggan"]),
                           "--photos", str(real_identities), "--predictor", str(real_runs["predictor"]),
                           "--judge", str(real_runs["predictor"]), "--method", "mean", "--num", "2", "--min-gap", "0",
                           "--max-gap", "5", "--inversion-steps", "2", "--inversion-starts", "1", "--show", "2",
                           "--out", str(out))
    assert code == 0, err[-3000:]
    report = json.loads((out / "turn_pairs.json").read_text())
    assert len(report["pairs"]) == 2 and all(a != b for a, b in report["pairs"]) and report["max_gap"] == 5
    for run in ("vae", "pggan"):
        result = report["runs"][str(real_runs[run])]
        for name in ("edit", "unedited", "reconstruction", "crossfade"):
            assert set(result[name]) == {"psnr_face_db", "feature_distance", "yaw_error"}
            assert 0 < result[name]["psnr_face_db"] < 99 and result[name]["feature_distance"] > 0
        assert 0 <= result["reached_fraction"] <= 1
    inversion = report["runs"][str(real_runs["pggan"])]["inversion"]  # the GAN's photos, inverted on the budget
    assert inversion["steps"] == 2 and inversion["starts"] == 1 and len(inversion["psnr"]) == 2
    assert (real_runs["pggan"] / "directions" / "inverted.pt").is_file()
    with Image.open(out / "turn_pairs.png") as image:
        assert image.size[0] >= 5 * 64  # first photo, two edits, the cross-fade, the second photo
