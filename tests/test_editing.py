"""The shared edit pipeline on a toy linear model whose latent directions are known exactly.

The model decodes z to tanh(W z) (3x8x8 images) and encodes with the pseudo-inverse, so encode(decode(z)) = z.
A fake cache (same interface as common.cache.CelebACache: items are dicts with "image", ``labels()`` returns
(attributes [n, 40], yaw [n], factors)) has Smiling, Male and yaw planted along known latent directions.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from common.attributes import CELEBA_ATTRIBUTES, UnknownAttributeError, attribute_index
from common.cli import UserError
from common.directions import Direction, load_direction
from common.editing import (
    EditableModel,
    add_edit_arguments,
    encoder_direction,
    get_direction,
    output_stem,
    run_cache_dir,
    run_edit,
)

D, SIZE = 6, 8


class ToyLinearModel:
    """decode = tanh(W z) reshaped to [3, 8, 8]; encode = pinv(W) atanh(x): an exact inverse in range."""

    resolution = SIZE
    latent_dim = D

    def __init__(self, seed: int = 0, latent_on_sphere: bool = False):
        generator = torch.Generator().manual_seed(seed)
        self.weight = torch.randn(3 * SIZE * SIZE, D, generator=generator, dtype=torch.float64) * 0.08  # [P, D]
        self.pinv = torch.linalg.pinv(self.weight)  # [D, P]
        self.latent_on_sphere = latent_on_sphere
        self.decoded = 0

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        flat = images.reshape(images.shape[0], -1).double().clamp(-0.999999, 0.999999)  # [B, P]
        return (torch.atanh(flat) @ self.pinv.T).float()  # [B, D]

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        self.decoded += latents.shape[0]
        return torch.tanh(latents.double() @ self.weight.T).float().reshape(-1, 3, SIZE, SIZE)

    def sample_latents(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        z = torch.randn(n, D, generator=generator)
        if self.latent_on_sphere:
            z = z * (D ** 0.5) / z.norm(dim=1, keepdim=True)
        return z

    def latent_flow_layout(self) -> None:
        return None

    def encode_report(self) -> dict:
        return {}


class FakeCache(torch.utils.data.Dataset):
    """A CelebACache stand-in: images decoded from known latents, labels planted along known directions."""

    def __init__(self, model: ToyLinearModel, latents: np.ndarray, directions: dict, offset: int = 0):
        self.latents = latents  # [n, D]
        self.images = model.decode(torch.from_numpy(latents)).clamp(-1, 1)  # [n, 3, 8, 8]
        self.attributes = np.zeros((len(latents), len(CELEBA_ATTRIBUTES)), dtype=np.float32)
        for name in ("Smiling", "Male"):
            self.attributes[:, attribute_index(name)] = latents @ directions[name] > 0
        self.yaw = (latents @ directions["pose"]).astype(np.float32)
        self.offset = offset

    def labels(self):
        return self.attributes, self.yaw, np.zeros((len(self.yaw), 0), dtype=np.float32)

    def __len__(self):
        return len(self.latents)

    def __getitem__(self, i):
        return {"image": self.images[i], "attributes": torch.from_numpy(self.attributes[i]),
                "yaw": torch.tensor(self.yaw[i]), "index": torch.tensor(self.offset + i)}


@pytest.fixture(scope="module")
def world():
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.standard_normal((D, D)))[0]
    smile = basis[0]
    male = 0.6 * basis[0] + 0.8 * basis[1]  # correlated with smiling, as in CelebA's data
    pose = basis[2]
    directions = {"Smiling": smile, "Male": male, "pose": pose}
    model = ToyLinearModel()
    train = FakeCache(model, rng.standard_normal((2000, D)).astype(np.float32), directions)
    test = FakeCache(model, rng.standard_normal((12, D)).astype(np.float32) * 0.5, directions, offset=5000)
    return model, train, test, directions


def parse(argv):
    parser = argparse.ArgumentParser()
    add_edit_arguments(parser, methods=("mean", "boundary", "pca"))
    return parser.parse_args(argv)


def finder(model, cache, calls):
    def find_direction(attribute, method):
        calls.append((attribute, method))
        return encoder_direction(model, cache, attribute, method, batch_size=256, progress=False)

    return find_direction


def test_toy_model_is_an_editable_model(world):
    model = world[0]
    assert isinstance(model, EditableModel)
    assert not isinstance(object(), EditableModel)
    z = torch.randn(4, D)
    torch.testing.assert_close(model.encode(model.decode(z)), z, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("method", ["mean", "boundary"])
def test_encoder_direction_recovers_planted_direction(world, method):
    model, train, _, directions = world
    smile = encoder_direction(model, train, "smiling", method, progress=False)
    assert smile.attribute == "Smiling" and smile.method == method
    assert float(smile.vector @ directions["Smiling"]) > 0.99
    assert smile.metrics["n_images"] == 2000
    assert 0.4 < smile.metrics["positive_fraction"] < 0.6
    if method == "boundary":
        assert smile.metrics["val_accuracy"] > 0.95
        assert smile.metrics["n_train"] + smile.metrics["n_val"] == 2000  # every sample, with its own label
    else:
        assert smile.scale == pytest.approx(2 * np.sqrt(2 / np.pi), rel=0.1)  # N(0,1) halves' mean distance
    pose = encoder_direction(model, train, "pose", method, progress=False)
    assert float(pose.vector @ directions["pose"]) > 0.99


def test_encoder_direction_caps_images_and_rejects_other_methods(world):
    model, train, _, directions = world
    capped = encoder_direction(model, train, "Male", "mean", progress=False, max_images=500, seed=3)
    assert capped.metrics["n_images"] == 500
    assert float(capped.vector @ directions["Male"]) > 0.95
    with pytest.raises(UserError, match="mean, boundary, cflow"):
        encoder_direction(model, train, "Male", "pca:1", progress=False)
    with pytest.raises(UserError, match="cflow edits the continuous pose score; for Male use mean or boundary"):
        encoder_direction(model, train, "Male", "cflow", progress=False)
    with pytest.raises(UserError, match="Bald: all 2000 training images have the label 0"):
        encoder_direction(model, train, "Bald", "mean", progress=False)


def test_get_direction_saves_then_reuses(world, tmp_path):
    model, train, _, _ = world
    calls = []
    first = get_direction(tmp_path, "Smiling", "mean", finder(model, train, calls))
    second = get_direction(tmp_path, "Smiling", "mean", finder(model, train, calls))
    assert calls == [("Smiling", "mean")]
    assert (tmp_path / "directions" / "Smiling-mean.npz").exists()
    assert (tmp_path / "directions" / "Smiling-mean.json").exists()
    np.testing.assert_array_equal(first.vector, second.vector)
    assert load_direction(tmp_path / "directions" / "Smiling-mean").metrics["n_images"] == 2000


def test_run_edit_records_the_encode_report_and_the_callers_extra_fields(world, tmp_path):
    model, train, test, _ = world

    class Reporting(ToyLinearModel):  # like PGGAN's inversion: encode measures something worth recording
        def __init__(self):
            super().__init__()
            self.encoded = 0

        def encode(self, images):
            self.encoded += len(images)
            return super().encode(images)

        def encode_report(self):
            report, self.encoded = ({"inversion": {"images": self.encoded}} if self.encoded else {}), 0
            return report

    reporting = Reporting()
    reporting.encode(test[0]["image"][None])  # an earlier encode is not this edit's
    seen = []

    def extra(result):
        seen.append(result["images"].shape)
        return {"checked": float(result["images"][:, 1].abs().max())}

    args = parse(["--run", str(tmp_path), "--attribute", "Smiling", "--steps", "3", "--batch-size", "3"])
    result = run_edit(reporting, tmp_path, args, finder(reporting, train, []), cache=test, progress=False,
                      record_extra=extra)
    record = json.loads(result["paths"]["json"].read_text())
    assert record["inversion"] == {"images": 8}  # all 8 faces, over three encode batches, and nothing else
    assert seen == [(8, 3, 3, SIZE, SIZE)] and record["checked"] == pytest.approx(result["record"]["checked"])
    assert 0 < record["checked"] <= 1
    args = parse(["--run", str(tmp_path), "--attribute", "Smiling", "--steps", "3", "--num", "2"])
    record = run_edit(reporting, tmp_path, args, finder(reporting, train, []), progress=False)["record"]
    assert "inversion" not in record  # sampled latents: nothing was encoded


def test_run_edit_writes_grid_gif_and_record(world, tmp_path):
    model, train, test, directions = world
    calls = []
    run_dir = tmp_path / "run"
    args = parse(["--run", str(run_dir), "--attribute", "smiling", "--range", "-2", "2", "--steps", "5"])
    result = run_edit(model, run_dir, args, finder(model, train, calls), cache=test, progress=False)
    assert result["images"].shape == (8, 5, 3, SIZE, SIZE)
    assert result["latents"].shape == (8, 5, D) and result["base_latents"].shape == (8, D)
    assert result["images"].min() >= -1 and result["images"].max() <= 1
    # the a = 0 column is the reconstruction of the input
    torch.testing.assert_close(result["images"][:, 2], result["inputs"], atol=1e-4, rtol=0)
    # the walk moves along the planted direction by strength * scale
    step = result["latents"][:, 3] - result["latents"][:, 2]  # [8, D]
    cosine = step.double().numpy() @ directions["Smiling"] / step.double().norm(dim=1).numpy()
    assert np.all(cosine > 0.99)
    assert step.norm(dim=1).numpy() == pytest.approx(np.full(8, result["direction"].scale), rel=1e-4)

    paths = result["paths"]
    assert paths["png"] == run_dir / "edits" / "Smiling-mean.png"
    for path in paths.values():
        assert path.exists()
    with Image.open(paths["png"]) as png:
        assert png.size[1] > 8 * 96  # 8 rows of upscaled cells
    with Image.open(paths["gif"]) as gif:
        assert gif.n_frames == 2 * 5 - 2
    record = json.loads(paths["json"].read_text())
    assert record["attribute"] == "Smiling" and record["keep"] == [] and record["method"] == "mean"
    assert record["walk"] == "relative" and record["strengths"] == [-2.0, -1.0, 0.0, 1.0, 2.0]
    assert record["marked_column"] == 2
    assert record["source"]["kind"] == "cache" and record["source"]["indices"] == list(range(5000, 5008))
    assert record["direction"]["cosine_to_unconditioned"] == 1.0
    assert record["direction"]["metrics"]["n_images"] == 2000
    assert record["run_dir"] == str(run_dir) and record["outputs"]["gif"] == str(paths["gif"])
    assert calls == [("Smiling", "mean")]


def test_run_edit_keep_makes_the_direction_orthogonal(world, tmp_path):
    model, train, test, directions = world
    calls = []
    run_dir = tmp_path / "run"
    args = parse(["--run", str(run_dir), "--attribute", "Smiling", "--keep", "male", "--method", "boundary",
                  "--cache-images", "3", "--seed", "1", "--out", str(tmp_path / "out")])
    result = run_edit(model, run_dir, args, finder(model, train, calls), cache=test, progress=False)
    male = load_direction(run_dir / "directions" / "Male-boundary")
    direction = result["direction"]
    assert abs(float(direction.vector @ male.vector)) < 1e-9
    assert direction.keep == ["Male"]
    assert sorted(calls) == [("Male", "boundary"), ("Smiling", "boundary")]
    # with Male held fixed the edit still moves Smiling, along basis[0]'s part orthogonal to Male
    assert float(direction.vector @ directions["Smiling"]) > 0.6
    steps = result["latents"][:, -1] - result["latents"][:, 0]  # [3, D]
    np.testing.assert_allclose(steps.double().numpy() @ male.vector, 0.0, atol=1e-4)
    json_path = tmp_path / "out" / "Smiling-keep-Male-boundary.json"
    record = json.loads(json_path.read_text())
    assert record["keep"] == ["Male"] and record["seed"] == 1
    assert 0.5 < record["direction"]["cosine_to_unconditioned"] < 0.99
    assert len(record["source"]["indices"]) == 3
    assert (tmp_path / "out" / "Smiling-keep-Male-boundary.png").exists()


def test_run_edit_samples_latents_and_walks_on_the_sphere(world, tmp_path):
    _, train, _, _ = world
    model = ToyLinearModel(latent_on_sphere=True)
    args = parse(["--run", str(tmp_path), "--attribute", "pose", "--num", "2", "--seed", "4", "--steps", "3"])
    result = run_edit(model, tmp_path, args, finder(model, train, []), progress=False)
    assert result["inputs"] is None and result["images"].shape == (2, 3, 3, SIZE, SIZE)
    norms = result["latents"].norm(dim=2)
    torch.testing.assert_close(norms, torch.full_like(norms, D ** 0.5), atol=1e-4, rtol=0)
    record = json.loads((tmp_path / "edits" / "pose-mean.json").read_text())
    assert record["walk"] == "sphere" and record["source"] == {"kind": "sample", "num": 2, "seed": 4}
    again = run_edit(model, tmp_path, args, finder(model, train, []), progress=False)
    torch.testing.assert_close(again["base_latents"], result["base_latents"])  # seeded


def test_run_edit_photos_already_aligned(world, tmp_path):
    model, train, _, _ = world
    photo = tmp_path / "me.png"
    Image.new("RGB", (300, 200), (200, 120, 90)).save(photo)
    args = parse(["--run", str(tmp_path), "--attribute", "Smiling", "--images", str(photo), "--steps", "3",
                  "--no-align"])
    result = run_edit(model, tmp_path, args, finder(model, train, []), progress=False)
    assert result["inputs"].shape == (1, 3, SIZE, SIZE)
    expected = torch.tensor([200, 120, 90]) / 127.5 - 1
    torch.testing.assert_close(result["inputs"][0, :, 4, 4], expected, atol=0.01, rtol=0)
    record = json.loads((tmp_path / "edits" / "Smiling-mean.json").read_text())
    assert record["source"]["kind"] == "images" and record["source"]["paths"] == [str(photo)]
    assert record["source"]["aligned"] is False
    # the photo is centre-cropped to 178:218 (163x200) and scaled: 200 / 218 photo pixels per aligned pixel
    np.testing.assert_allclose(record["source"]["faces"][0]["transform"],
                               [[218 / 200, 0, (0.5 - (300 - 178 * 200 / 218) / 2) * 218 / 200 - 0.5],
                                [0, 218 / 200, 0.5 * 218 / 200 - 0.5]], atol=1e-6)
    jpgs = [tmp_path / "edits" / f"me-Smiling-{name}.jpg" for name in ("-3.0", "0.0", "+3.0")]
    assert record["outputs"]["photos"] == [{"photo": str(photo), "jpg": [str(p) for p in jpgs],
                                            "gif": str(tmp_path / "edits" / "me-Smiling.gif")}]
    for path in jpgs:
        with Image.open(path) as pasted:
            assert pasted.size == (300, 200)

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    with pytest.raises(UserError, match=r"broken\.jpg: cannot read the image"):
        run_edit(model, tmp_path, parse(["--run", "r", "--attribute", "Smiling", "--images", str(broken)]),
                 finder(model, train, []), progress=False)
    with pytest.raises(UserError, match=r"missing\.jpg: image file not found"):
        run_edit(model, tmp_path, parse(["--run", "r", "--attribute", "Smiling", "--images", "missing.jpg"]),
                 finder(model, train, []), progress=False)


def test_unknown_attribute_names_it_with_a_suggestion(world, tmp_path):
    model, train, test, _ = world
    with pytest.raises(UnknownAttributeError, match=r"'Smilling'.*did you mean 'Smiling'"):
        run_edit(model, tmp_path, parse(["--run", "r", "--attribute", "Smilling"]), finder(model, train, []),
                 cache=test, progress=False)
    with pytest.raises(UnknownAttributeError, match=r"'Mael'"):
        run_edit(model, tmp_path, parse(["--run", "r", "--attribute", "Smiling", "--keep", "Young,Mael"]),
                 finder(model, train, []), cache=test, progress=False)
    with pytest.raises(UserError, match="cannot hold fixed the attribute being edited"):
        run_edit(model, tmp_path, parse(["--run", "r", "--attribute", "Smiling", "--keep", "smiling"]),
                 finder(model, train, []), cache=test, progress=False)
    assert not (tmp_path / "directions").exists()  # nothing computed before the names were checked


def test_edit_arguments_defaults_and_method_validation(capsys):
    args = parse(["--run", "r", "--attribute", "Smiling"])
    assert (args.method, args.range, args.steps, args.walk, args.split, args.device) == (
        "mean", (-3.0, 3.0), None, None, "test", "auto")  # --steps None: 7 strengths, unless --target
    assert args.images is None and args.num is None and args.keep == ""
    assert parse(["--run", "r", "--attribute", "x", "--method", "pca:3"]).method == "pca:3"
    for bad in (["--method", "svm"], ["--method", "pca:x"], ["--images", "a.jpg", "--num", "2"]):
        with pytest.raises(SystemExit):
            parse(["--run", "r", "--attribute", "x", *bad])
    assert "svm" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse(["--attribute", "x"])  # --run is required


def test_output_stem_and_run_cache_dir(tmp_path):
    assert output_stem("Smiling", ["Male", "Young"], "pca:3") == "Smiling-keep-Male-Young-pca3"
    (tmp_path / "config.yaml").write_text("method: vae\ndata:\n  root: data/synthetic\n  resolution: 32\n"
                                          "  cache: ''\n")
    assert run_cache_dir(tmp_path) == Path("data/cache/synthetic_32")
    assert str(run_cache_dir(tmp_path, override="elsewhere")) == "elsewhere"
    with pytest.raises(UserError, match="config.yaml: not found"):
        run_cache_dir(tmp_path / "nope")
    # a relative cache is found from wherever the reader runs: the training's workdir, else a folder above the run
    work, project = tmp_path / "work", tmp_path / "project"
    (work / "data/cache/faces_64").mkdir(parents=True)
    (project / "data/cache/old_64").mkdir(parents=True)
    run = project / "runs/vae/r"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(f"method: vae\nworkdir: {work}\ndata:\n  root: data/faces\n  resolution: 64\n")
    assert run_cache_dir(run) == work / "data/cache/faces_64"
    (run / "config.yaml").write_text("method: vae\ndata:\n  root: data/old\n  resolution: 64\n")  # no workdir
    assert run_cache_dir(run) == project / "data/cache/old_64"


def test_direction_file_of_another_size_is_reported(world, tmp_path):
    model, train, test, _ = world
    from common.directions import save_direction

    save_direction(Direction(vector=np.ones(3) / 3 ** 0.5, attribute="Smiling", method="mean"),
                   tmp_path / "directions" / "Smiling-mean")
    with pytest.raises(UserError, match=r"Smiling-mean.npz: a 3-d direction for a 6-d model"):
        run_edit(model, tmp_path, parse(["--run", "r", "--attribute", "Smiling"]), finder(model, train, []),
                 cache=test, progress=False)


SHARED_PHOTOS = Path(__file__).resolve().parents[1].parent / "shared" / "celeba-real" / "identities" / "img_align_celeba"


@pytest.mark.skipif(not SHARED_PHOTOS.is_dir(), reason=f"{SHARED_PHOTOS} (real CelebA photos) not found")
def test_run_edit_aligns_a_photo_and_pastes_the_edit_back(world, tmp_path):
    pytest.importorskip("facenet_pytorch")
    from common.align import load_photo, model_crop, paste_mask, warp

    model, train, _, _ = world
    original = load_photo(SHARED_PHOTOS / "000002.jpg")
    angle, scale = np.radians(12.0), 1.2  # the aligned photo rotated, scaled and shifted onto a bigger canvas
    moved = np.array([[scale * np.cos(angle), -scale * np.sin(angle), 160],
                      [scale * np.sin(angle), scale * np.cos(angle), 60]])
    folder = tmp_path / "photos"
    folder.mkdir()
    warp(original, moved, (520, 400), fill=(128, 128, 128)).save(folder / "me.png")
    args = parse(["--run", str(tmp_path), "--attribute", "Smiling", "--images", str(folder), "--steps", "3",
                  "--out", str(tmp_path / "out")])
    result = run_edit(model, tmp_path, args, finder(model, train, []), progress=False)
    # the model saw the face framed as in CelebA: close to the original's own 8x8 crop
    reference = torch.from_numpy(model_crop(original, SIZE)).permute(2, 0, 1).float() / 127.5 - 1
    assert (result["inputs"][0] - reference).abs().mean() < 0.1
    record = json.loads((tmp_path / "out" / "Smiling-mean.json").read_text())
    assert record["source"]["aligned"] is True and record["source"]["paths"] == [str(folder / "me.png")]
    face = record["source"]["faces"][0]
    assert np.shape(face["landmarks"]) == (5, 2) and face["score"] > 0.9
    photos = record["outputs"]["photos"]
    assert [Path(p).name for p in photos[0]["jpg"]] == ["me-Smiling--3.0.jpg", "me-Smiling-0.0.jpg",
                                                       "me-Smiling-+3.0.jpg"]
    assert Path(photos[0]["gif"]).name == "me-Smiling.gif"
    with Image.open(photos[0]["gif"]) as gif:
        assert gif.n_frames == 4 and gif.size == (520, 400)
    photo = np.asarray(Image.open(folder / "me.png")).astype(int)
    mask = paste_mask((520, 400), face["transform"])
    for path in photos[0]["jpg"]:
        with Image.open(path) as pasted:
            pixels = np.asarray(pasted).astype(int)
        assert pixels.shape == photo.shape
        assert np.abs(pixels - photo)[mask == 0].mean() < 1.5  # unchanged away from the face (up to JPEG)
    # --paste change (the default): strength 0 is the photo itself, the others differ inside the face
    first, zero, last = (np.asarray(Image.open(p)).astype(int) for p in photos[0]["jpg"])
    assert record["paste"] == "change" and np.abs(zero - photo).mean() < 1.5
    assert np.abs(first - last)[mask == 1].mean() > 5
    # --paste face: the model's own (8x8, here) face replaces the photo's inside the mask, even at strength 0
    args = parse(["--run", str(tmp_path), "--attribute", "Smiling", "--images", str(folder / "me.png"),
                  "--steps", "3", "--out", str(tmp_path / "face"), "--paste", "face"])
    run_edit(model, tmp_path, args, finder(model, train, []), progress=False)
    zero = np.asarray(Image.open(tmp_path / "face" / "me-Smiling-0.0.jpg")).astype(int)
    assert np.abs(zero - photo)[mask == 1].mean() > 5 and np.abs(zero - photo)[mask == 0].mean() < 1.5
