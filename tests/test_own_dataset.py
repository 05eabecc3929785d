"""A folder of own photos as a data set: ``prepare_data.py --align [--labels CSV]``, training on it, and directions
from a predictor's scores where the cache has no labels.

Built from ~30 real CelebA photos of ../shared/celeba-real/identities/ (skipped when absent, or without
facenet-pytorch): some moved onto a bigger canvas (rotated, scaled, shifted), one of pure noise (no face), a few
missing from the labels CSV, some labels blank. Everything runs in this process; the training runs are a few
steps, so only shapes, files and the handling of unknown labels are checked.
"""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import io
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from common.attributes import CELEBA_ATTRIBUTES
from common.cli import UserError, run_main

REPO = Path(__file__).resolve().parents[1]
IDENTITIES = REPO.parent / "shared" / "celeba-real" / "identities"
pytestmark = [
    pytest.mark.skipif(not (IDENTITIES / "labels.csv").is_file(), reason="../shared/celeba-real/identities absent"),
    pytest.mark.skipif(importlib.util.find_spec("facenet_pytorch") is None, reason="facenet-pytorch not installed"),
]
COLUMNS = ["Male", "Smiling", "Young", "Eyeglasses", "Mouth_Slightly_Open", "Attractive"]  # a subset of the 40
MOVED = 6  # photos put onto a bigger canvas, rotated and scaled
UNLISTED = 3  # photos the CSV does not name (every label unknown, split by the hash of the name)


def run_script(script: str, *args: str) -> tuple[int, str, str]:
    """scripts/<script>'s main() through run_main in this process -> (exit code, stdout, stderr)."""
    spec = importlib.util.spec_from_file_location(f"_own_test_{Path(script).stem}", REPO / "scripts" / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    argv, cwd, out, err = sys.argv, os.getcwd(), io.StringIO(), io.StringIO()
    sys.argv = [script, *args]
    os.chdir(REPO)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            run_main(module.main)
    except SystemExit as exc:
        return int(exc.code or 0), out.getvalue(), err.getvalue()
    finally:
        sys.argv = argv
        os.chdir(cwd)
    return 0, out.getvalue(), err.getvalue()


def prepare(root: Path, out: Path, *extra: str) -> tuple[int, str, str]:
    return run_script("prepare_data.py", "--root", str(root), "--align", "--resolution", "32", "--out", str(out),
                      "--workers", "1", "--no-progress", *extra)


@pytest.fixture(scope="module")
def own(tmp_path_factory):
    """{"root", "csv", "cache", "rows" (the CSV rows written), "moved", "plain", "unlisted"}."""
    from common.align import load_photo, random_unalign

    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("own")
    root, images = base / "photos", IDENTITIES / "img_align_celeba"
    root.mkdir()
    with open(IDENTITIES / "labels.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    # all 40 known (ids up to 020000, CelebA's train split); MTCNN misses the face of 000627, so it is not used
    labelled = [r for r in table if r["Smiling"] and r["image_id"] != "000627.jpg"][:20]
    valid = [r for r in table if r["official_partition"] == "1"][:4]  # only Male and Attractive known
    test = [r for r in table if r["official_partition"] == "2"][:3]
    picked = labelled + valid + test
    unlisted = labelled[-UNLISTED:]
    listed = [r for r in picked if r not in unlisted]
    rng = np.random.default_rng(0)
    moved = [r["image_id"] for r in labelled[:MOVED]]
    for r in picked:
        if r["image_id"] in moved:
            random_unalign(load_photo(images / r["image_id"]), rng, max_angle=20, scales=(0.8, 1.5))[0].save(
                root / r["image_id"], quality=95)
        else:
            shutil.copy(images / r["image_id"], root / r["image_id"])
    Image.fromarray(rng.integers(0, 256, (240, 200, 3), dtype=np.uint8)).save(root / "noise.png")
    rows = []
    for k, r in enumerate(listed):
        row = {"image_id": r["image_id"], "identity": r["identity"], "official_partition": r["official_partition"]}
        row.update({c: r[c] for c in COLUMNS})
        row["Male"] = {"1": "1", "-1": "0", "": ""}[row["Male"]]  # the 0/1 convention, beside +1/-1
        if k % 5 == 4:
            row["Smiling"] = ""  # unknown
        rows.append(row)
    labels = base / "labels.csv"
    with open(labels, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image_id", "identity", "official_partition", *COLUMNS])
        writer.writeheader()
        writer.writerows(rows)
    cache = base / "cache"
    code, out, err = prepare(root, cache, "--labels", str(labels))
    assert code == 0, err
    return {"root": root, "csv": labels, "cache": cache, "rows": rows, "moved": moved, "base": base,
            "plain": [r["image_id"] for r in picked if r["image_id"] not in moved], "log": out,
            "unlisted": [r["image_id"] for r in unlisted]}


def test_prepared_cache_holds_the_faces_labels_and_mask(own):
    from common.cache import CelebACache, read_manifest
    from common.photo_folder import split_for_name

    manifest = read_manifest(own["cache"])
    n = len(own["plain"]) + len(own["moved"])
    assert manifest["layout"] == "aligned-folder" and manifest["num_images"] == n
    assert manifest["image_shape"] == [n, 32, 32, 3] and manifest["labels_file"] == str(own["csv"].resolve())
    assert [s["file"] for s in manifest["skipped"]] == ["noise.png"] and "no face" in manifest["skipped"][0]["error"]
    assert "skipped" in own["log"] and "noise.png" in own["log"]
    assert "MTCNN" in manifest["detector"] and set(manifest["label_sha256"]) == {"photos", "labels.csv"}
    cache = CelebACache(own["cache"], "all")
    names = cache.filenames
    assert sorted(names) == sorted(own["plain"] + own["moved"]) and "noise.png" not in names
    attributes, yaw, _ = cache.labels()
    known = cache.known()
    assert attributes.shape == (n, 40) and known.shape == (n, 40) and known.dtype == bool
    assert np.isfinite(yaw).all() and np.abs(yaw).max() < 1.0
    landmarks = np.load(own["cache"] / "landmarks.npy")  # in the aligned frame: near CelebA's template
    assert landmarks.shape == (n, 10) and np.abs(landmarks[:, 0] - 69.35).max() < 6
    by_name = {row["image_id"]: row for row in own["rows"]}
    split = np.load(own["cache"] / "split.npy")
    identity = np.load(own["cache"] / "identity.npy")
    for i, name in enumerate(names):
        row = by_name.get(name)
        for j, attribute in enumerate(CELEBA_ATTRIBUTES):
            value = row.get(attribute, "") if row else ""
            assert known[i, j] == (value != ""), (name, attribute)
            assert attributes[i, j] == (value == "1"), (name, attribute)
        assert split[i] == (int(row["official_partition"]) if row else split_for_name(name))
        assert identity[i] == (int(row["identity"]) if row else -1)
    assert manifest["known_counts"]["Smiling"] == int(known[:, CELEBA_ATTRIBUTES.index("Smiling")].sum()) > 0
    assert manifest["known_counts"]["Bald"] == 0
    assert manifest["counts"] == {"train": int((split == 0).sum()), "valid": int((split == 1).sum()),
                                  "test": int((split == 2).sum())}
    assert (split == 1).sum() >= 4 and (split == 2).sum() >= 3 and (split == 0).sum() >= 17
    batch = CelebACache(own["cache"], "train")[np.arange(4)]
    assert batch["known"].dtype == torch.bool and batch["known"].shape == (4, 40)


def test_a_rerun_reuses_the_cache_and_a_changed_csv_rebuilds_it(own, tmp_path):
    from common.cache import CelebACache

    stamp = (own["cache"] / "manifest.json").stat().st_mtime_ns
    code, out, err = prepare(own["root"], own["cache"], "--labels", str(own["csv"]))
    assert code == 0 and "reusing it" in out, err
    assert (own["cache"] / "manifest.json").stat().st_mtime_ns == stamp
    copy, changed = tmp_path / "cache", tmp_path / "labels.csv"
    shutil.copytree(own["cache"], copy)
    lines = own["csv"].read_text().splitlines()
    changed.write_text("\n".join([lines[0].replace(",Eyeglasses", ",Bald"), *lines[1:]]) + "\n")
    code, out, err = prepare(own["root"], copy, "--labels", str(changed))
    assert code == 0 and "is stale (the label files changed): rebuilding it" in out, err
    cache = CelebACache(copy, "all")
    assert cache.known()[:, CELEBA_ATTRIBUTES.index("Bald")].any()
    assert not cache.known()[:, CELEBA_ATTRIBUTES.index("Eyeglasses")].any()


def test_aligned_crops_are_close_to_celeba_own_crops(own):
    from common.cache import CelebACache, crop_and_resize
    from common.metrics import psnr

    cache = CelebACache(own["cache"], "all")
    for group, floor in ((own["plain"], 22.0), (own["moved"], 19.0)):  # measured 25.5, 23.1 dB
        positions = [cache.filenames.index(name) for name in group]
        ours = cache.images_uint8(positions).astype(np.float64) / 127.5 - 1
        with contextlib.ExitStack() as stack:
            originals = [stack.enter_context(Image.open(IDENTITIES / "img_align_celeba" / name)) for name in group]
            theirs = np.stack([crop_and_resize(image, 32) for image in originals]).astype(np.float64) / 127.5 - 1
        assert float(np.mean(psnr(ours, theirs))) > floor, (group, psnr(ours, theirs))


def test_labels_csv_errors_are_one_line(own, tmp_path):
    from common.photo_folder import read_label_csv

    names = ["a.jpg", "b.jpg"]
    bad = tmp_path / "bad.csv"
    bad.write_text("image_id,Smilng\na.jpg,1\n")
    with pytest.raises(UserError, match=r"bad.csv:1: unknown column 'Smilng' \(did you mean Smiling"):
        read_label_csv(bad, names)
    bad.write_text("image_id,Smiling\na.jpg,1\nc.jpg,-1\n")
    with pytest.raises(UserError, match=r"bad.csv:3: 'c.jpg' is not a photo in the folder"):
        read_label_csv(bad, names)
    bad.write_text("image_id,Smiling\na.jpg,yes\n")
    with pytest.raises(UserError, match=r"bad.csv:2: Smiling is 'yes'; expected \+1/-1, 0/1 or blank"):
        read_label_csv(bad, names)
    good = tmp_path / "good.csv"
    good.write_text("image_id,Smiling,Male,partition\nb.jpg,0,1,test\na.jpg,,+1,\n")
    table = read_label_csv(good, names)
    assert table["known"][:, CELEBA_ATTRIBUTES.index("Smiling")].tolist() == [False, True]
    assert table["attributes"][:, CELEBA_ATTRIBUTES.index("Male")].tolist() == [1, 1]
    assert table["partition"].tolist() == [-1, 2] and table["identity"] is None
    code, _, err = prepare(own["root"], tmp_path / "never", "--labels", str(bad))
    assert code == 2 and err.count("\n") == 1 and "bad.csv:2" in err
    empty = tmp_path / "noise"
    empty.mkdir()
    shutil.copy(own["root"] / "noise.png", empty / "noise.png")
    code, _, err = prepare(empty, tmp_path / "never")
    assert code == 2 and "no face found in any of the 1 photos" in err and err.count("\n") == 1


def test_predictor_loss_ignores_unknown_labels():
    from common.predictor import AttributePredictor, predictor_loss

    model = AttributePredictor(resolution=8, width=4, blocks=(1,))
    out = model(torch.rand(6, 3, 8, 8) * 2 - 1)
    attributes = (torch.rand(6, 40) > 0.5).float()
    known = torch.ones(6, 40, dtype=torch.bool)
    smiling = CELEBA_ATTRIBUTES.index("Smiling")
    known[:, smiling] = False
    flipped = attributes.clone()
    flipped[:, smiling] = 1 - flipped[:, smiling]
    yaw, factors = torch.zeros(6), torch.zeros(6, 0)
    masked = predictor_loss(out, attributes, yaw, factors, model, known=known)["attributes"]
    torch.testing.assert_close(masked, predictor_loss(out, flipped, yaw, factors, model, known=known)["attributes"])
    others = [j for j in range(40) if j != smiling]
    expected = torch.nn.functional.binary_cross_entropy_with_logits(out["logits"][:, others], attributes[:, others])
    torch.testing.assert_close(masked, expected)
    plain = predictor_loss(out, attributes, yaw, factors, model)["attributes"]  # all known: as before
    torch.testing.assert_close(plain, predictor_loss(out, attributes, yaw, factors, model,
                                                     known=torch.ones(6, 40, dtype=torch.bool))["attributes"])
    nothing = predictor_loss(out, attributes, yaw, factors, model, known=torch.zeros(6, 40, dtype=torch.bool))
    assert nothing["attributes"].item() == 0.0


@pytest.fixture(scope="module")
def runs(own):
    """A tiny VAE and a tiny predictor trained on the own-photo cache: {"vae", "predictor"}."""
    base, cache = own["base"] / "runs", own["cache"]
    code, _, err = run_script(
        "train_predictor.py", "--config", "configs/predictor/synthetic.yaml", "--out", str(base / "predictor"),
        "--set", f"data.cache={cache}", "--set", "train.device=cpu", "--set", "model.width=8",
        "--set", "model.blocks=[1,1,1,1]", "--set", "train.batch_size=8", "--set", "train.total_images=32",
        "--set", "optim.warmup_images=8", "--set", "eval.val_every_images=32", "--set", "eval.val_images=8",
        "--set", "log.image_every_images=0", "--set", "train.checkpoint_every_images=32",
        "--set", "log.every_images=16", "--set", "log.tensorboard=false")
    assert code == 0, err[-3000:]
    code, _, err = run_script(
        "train_vae.py", "--config", "configs/vae/synthetic.yaml", "--out", str(base / "vae"),
        "--set", f"data.cache={cache}", "--set", "model.widths=[8,16]", "--set", "model.latent_dim=8",
        "--set", "train.batch_size=8", "--set", "train.total_images=32", "--set", "log.every_images=16",
        "--set", "log.image_every_images=0", "--set", "log.tensorboard=false", "--set", "eval.val_every_images=0",
        "--set", "train.checkpoint_every_images=32", "--set", "vae.kl_warmup_images=16",
        "--set", "train.device=cpu")
    assert code == 0, err[-3000:]
    return {"vae": base / "vae", "predictor": base / "predictor"}


def test_trainers_train_on_the_own_photo_cache(own, runs):
    from common.cache import CelebACache

    assert (runs["vae"] / "checkpoints" / "last.pt").is_file()
    metrics = json.loads((runs["predictor"] / "metrics.json").read_text())
    # the valid split: CelebA's partition 1, where only Male and Attractive are known, and unlisted photos
    assert metrics["num_images"] == len(CelebACache(own["cache"], "valid"))
    assert metrics["accuracy"]["Smiling"] is None and metrics["majority_baseline"]["Bald"] is None
    assert metrics["accuracy"]["Male"] is not None and metrics["known_labels"]["Male"] == 4
    assert np.isfinite(metrics["mean_accuracy"]) and np.isfinite(metrics["yaw_mae"])


def test_directions_without_labels_come_from_the_predictor(own, runs, tmp_path):
    from common.cache import CelebACache
    from common.directions import DirectionError
    from common.predictor import load_predictor, score_images
    from pipeline.registry import load_method

    bare_root = tmp_path / "bare"  # own photos with no labels file at all
    bare_root.mkdir()
    for name in own["plain"][:10]:
        shutil.copy(own["root"] / name, bare_root / name)
    bare = tmp_path / "bare_cache"
    code, _, err = prepare(bare_root, bare)
    assert code == 0, err
    train = CelebACache(bare, "train")
    assert not train.known().any() and len(train) >= 4 and not (bare / "identity.npy").exists()

    # the tiny predictor's Smiling logit, centred on these images so that it calls about half of them smiling
    smiling = CELEBA_ATTRIBUTES.index("Smiling")
    probs = score_images(load_predictor(runs["predictor"]), train.images_uint8(np.arange(len(train))))["probs"]
    median = float(torch.logit(probs[:, smiling].double()).median())
    path = runs["predictor"] / "checkpoints" / "last.pt"
    state = torch.load(path, weights_only=True)
    for weights in state["models"].values():
        weights["attribute_head.bias"][smiling] -= median
    torch.save(state, path)

    _, find_direction, _ = load_method(runs["vae"], "cpu", cache=str(bare))
    with pytest.raises(DirectionError, match=r"Smiling: the cache has no Smiling labels .*pass --predictor RUN"):
        find_direction("Smiling", "mean")
    pose = find_direction("pose", "mean")  # the yaw comes from the landmarks: no labels needed
    assert pose.metrics["label_source"] == "yaw from the landmarks"
    _, find_direction, _ = load_method(runs["vae"], "cpu", predictor_run=str(runs["predictor"]), cache=str(bare))
    direction = find_direction("Smiling", "mean")
    assert direction.metrics["label_source"] == f"predictor {runs['predictor']}"
    assert direction.vector.shape == (8,) and np.isclose(np.linalg.norm(direction.vector), 1.0)
    assert 0 < direction.metrics["positive_fraction"] < 1 and direction.metrics["n_images"] == len(train)
