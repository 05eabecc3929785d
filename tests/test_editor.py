"""The interactive editor's logic (pipeline/editor.py) on a tiny VAE run: slider composition, keep, caches,
upload refusals, exports, and that every file it writes lies in its output folder."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_evaluate import run_script, train_glow, train_predictor, train_vae

from pipeline.editor import Editor, EditorError, check_upload


def files_under(root) -> dict[Path, float]:
    """Every file under ``root`` with its modification time."""
    return {Path(d) / f: os.stat(Path(d) / f).st_mtime_ns for d, _, fs in os.walk(root) for f in fs}


@pytest.fixture(scope="module")
def vae_run(tiny_cache, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("editor") / "vae"
    train_vae(tiny_cache, run)
    return run


@pytest.fixture()
def editor(vae_run, tmp_path) -> Editor:
    return Editor([vae_run], tmp_path / "out", "cpu", max_train_images=64)


def test_sliders_combine_and_keep_projects_out(editor):
    name = next(iter(editor.runs))
    base, _ = editor.latent(name, editor.sample_face(3))
    assert torch.equal(editor.compose(name, base, {"Smiling": 0.0, "pose": 0.0}), base)
    smile, pose = editor.direction(name, "Smiling", "mean"), editor.direction(name, "pose", "mean")
    both = editor.compose(name, base, {"Smiling": 1.5, "pose": -1.0}, "mean", "mean")  # [1, D]
    expected = base.double().numpy() + 1.5 * smile.scale * smile.vector - 1.0 * pose.scale * pose.vector
    np.testing.assert_allclose(both.numpy(), expected, rtol=1e-5, atol=1e-5)
    kept = editor.compose(name, base, {"Smiling": 2.0}, "mean", keep=["Mouth_Slightly_Open"])
    mouth = editor.direction(name, "Mouth_Slightly_Open", "mean")
    change = (kept - base).double().numpy()[0]
    assert abs(change @ mouth.vector) < 1e-4 * np.linalg.norm(change)  # the kept attribute does not move
    assert np.linalg.norm(change) > 0
    with pytest.raises(EditorError, match="not one of"):
        editor.direction(name, "Smiling", "cflow")


def test_latents_and_directions_are_computed_once(editor, vae_run):
    name = next(iter(editor.runs))
    face = editor.cache_face(0)
    first = editor.render(name, face, {"Smiling": 1.0})
    again = editor.render(name, face, {"Smiling": 2.0})
    assert editor.stats == {"encodes": 1, "fits": 1}
    assert not np.array_equal(np.asarray(first.face), np.asarray(again.face))
    assert first.face.size == (32, 32) and first.pasted is None
    # a new session reads the saved direction instead of fitting it again
    other = Editor([vae_run], editor.out, "cpu", max_train_images=64)
    other.render(name, face, {"Smiling": 1.0})
    assert other.stats["fits"] == 0
    with pytest.raises(EditorError, match="cache has"):
        editor.render(name, editor.cache_face(10**6), {})


def test_uploads_are_refused_with_a_message(tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("not a picture at all")
    with pytest.raises(EditorError, match="not an image"):
        check_upload(text)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(EditorError, match="empty"):
        check_upload(empty)
    big = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(big)
    with pytest.raises(EditorError, match="over the upload limit"):
        check_upload(big, max_bytes=10_000)
    assert check_upload(big) == big
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(big.read_bytes()[:500])
    with pytest.raises(EditorError, match="not an image"):
        check_upload(truncated)


def test_writes_only_inside_the_output_folder(editor, vae_run, tiny_cache, tmp_path):
    name = next(iter(editor.runs))
    before_run, before_cache = files_under(vae_run), files_under(tiny_cache)
    face = editor.sample_face(0)
    rendered = editor.render(name, face, {"Smiling": 1.0, "Male": -0.5}, keep=["Young"])
    png = editor.export_png(name, face, rendered)
    gif = editor.export_gif(name, face, {"Smiling": 1.0}, "Smiling", span=(-2, 2), steps=5)
    assert files_under(vae_run) == before_run and files_under(tiny_cache) == before_cache
    out = editor.out.resolve()
    assert png.resolve().is_relative_to(out / "exports") and gif.resolve().is_relative_to(out / "exports")
    assert Image.open(png).size == (256, 256)
    with Image.open(gif) as animation:
        assert animation.n_frames == 8  # 5 steps forward and back


def test_bad_input_gives_messages(editor, vae_run, tmp_path):
    name = next(iter(editor.runs))
    with pytest.raises(EditorError, match="unknown run"):
        editor.run("glow: nowhere")
    with pytest.raises(EditorError, match="no runs"):
        Editor([], tmp_path)
    with pytest.raises(Exception, match="Smilng|Smiling"):  # the attribute resolver's did-you-mean
        editor.render(name, editor.sample_face(0), {"Smilng": 1.0})


def test_photo_is_aligned_edited_and_pasted_back(editor, real_identities, tmp_path):
    name = next(iter(editor.runs))
    photo = sorted((real_identities / "img_align_celeba").glob("*.jpg"))[0]
    bad = tmp_path / "bad.jpg"
    bad.write_text("<html>")
    with pytest.raises(EditorError, match="not an image"):
        editor.photo_face(bad)
    face = editor.photo_face(photo)  # still works after a bad upload
    assert editor.photo_face(photo) is face  # aligned once per file content
    rendered = editor.render(name, face, {"Smiling": 2.0})
    assert rendered.pasted.size == Image.open(photo).size
    assert editor.stats["encodes"] == 1


@pytest.fixture(scope="module")
def glow_and_pggan(tiny_cache, tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("editor-gan")
    problem = train_glow(tiny_cache, root / "glow")
    assert problem is None, problem
    train_predictor(tiny_cache, root / "predictor", seed=0)
    sets = ["pggan.phase_weights=[1,1,1,1,1,1,1]", "model.latent_dim=16", "model.fmap_base=64", "model.fmap_max=16",
            "model.fmap_min=8", "pggan.batch_sizes=[8,8,8,8]", "train.ema_decay=0.9", "log.every_images=16",
            "train.precision=fp32", "log.image_every_images=0", "train.checkpoint_every_images=0",
            "train.device=cpu", "log.tensorboard=false", "train.total_images=56", f"data.cache={tiny_cache}",
            f"edit.predictor={root / 'predictor'}", "edit.samples=64", "edit.inversion_steps=3",
            "edit.inversion_starts=2", "pggan.grid_images=4"]
    code, err = run_script("train_pggan.py", "--config", "configs/interface_gan/synthetic.yaml", "--out",
                           str(root / "pggan"), *[a for s in sets for a in ("--set", s)])
    assert code == 0, err[-2000:]
    return [root / "glow", root / "pggan"]


@pytest.mark.slow
def test_glow_and_pggan_edit_samples_and_cache_images(glow_and_pggan, tmp_path):
    editor = Editor(glow_and_pggan, tmp_path / "out", "cpu", max_train_images=64)
    glow, pggan = editor.runs
    assert editor.methods(glow, "pose") == ("mean", "boundary", "cflow")
    assert editor.methods(pggan) == ("boundary", "mean")
    for name in (glow, pggan):
        for face in (editor.sample_face(1), editor.cache_face(2)):  # the GAN inverts the cache image
            base, _ = editor.latent(name, face)
            rendered = editor.render(name, face, {"Smiling": 1.5, "pose": -1.0}, keep=["Male"])
            assert rendered.face.size == (32, 32) and torch.isfinite(rendered.latent).all()
            assert not torch.equal(rendered.latent, base)
    moved = editor.render(pggan, editor.sample_face(1), {"Smiling": 2.0}).latent
    assert torch.linalg.norm(moved).item() == pytest.approx(4.0, rel=1e-4)  # back on PGGAN's sqrt(D) sphere
    assert editor.stats["encodes"] == 2
    # the GAN's scored samples are written under the editor's folder, never into the run
    assert not (glow_and_pggan[1] / "directions" / "samples.npz").exists()
    assert (tmp_path / "out" / "directions" / "pggan-samples.npz").is_file()
