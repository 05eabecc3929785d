"""Tests for InterFaceGAN on the PGGAN: inversion, GANSpace/SeFa, scored-sample directions, the edit script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from common.directions import is_noise, isotropic_null, pca_directions
from interface_gan.boundaries import GANDirections, ScoredSamples, fit_boundary, fit_mean
from interface_gan.inversion import PGGANEditable, invert
from interface_gan.pca import ganspace, name_components, pca_with_null, regress_directions, sefa, sefa_components
from interface_gan.pggan import Generator, sample_latents

REPO = Path(__file__).resolve().parents[1]
TRAIN_SETS = ["--set", "pggan.phase_weights=[1,1,1,1,1,1,1]", "--set", "model.latent_dim=16",
              "--set", "model.fmap_base=64", "--set", "model.fmap_max=16", "--set", "model.fmap_min=8",
              "--set", "pggan.batch_sizes=[8,8,8,8]", "--set", "pggan.grid_images=4", "--set", "train.device=cpu",
              "--set", "log.tensorboard=false", "--set", "edit.inversion_steps=20", "--set", "edit.inversion_starts=2",
              "--set", "edit.ganspace_samples=200"]


def tiny_generator(seed: int = 0, latent_dim: int = 16) -> Generator:
    torch.manual_seed(seed)
    return Generator(latent_dim=latent_dim, resolution=16, fmap_base=64, fmap_max=32, fmap_min=8).eval()


def test_inversion_improves_over_random_start_and_stays_on_sphere():
    g = tiny_generator()
    target_z = sample_latents(2, 16, torch.Generator().manual_seed(5))
    with torch.no_grad():
        images = g(target_z)
    result = invert(g, images, 16, steps=40, lr=0.3, starts=3, generator=torch.Generator().manual_seed(0))
    assert result.latents.shape == (2, 16)
    torch.testing.assert_close(result.latents.norm(dim=1), torch.full((2,), 4.0))
    assert (result.psnr > 20.0).all() and (result.psnr > result.initial_psnr + 10.0).all(), result
    cosine = (result.latents * target_z).sum(dim=1) / 16.0  # both on the radius-4 sphere
    assert (cosine > 0.95).all(), cosine  # the image's own latent is found again
    # the editable model wraps the same search; a feature loss (any differentiable map) is optional
    model = PGGANEditable(g, steps=15, lr=0.3, starts=2, feature_weight=1.0)
    model.predictor = None
    with torch.no_grad():  # run_edit encodes under no_grad: inversion must still get gradients
        z = model.encode(images)
    assert z.shape == (2, 16) and len(model.last_psnr) == 2
    assert np.mean(model.last_psnr) > np.mean(model.last_initial_psnr)
    assert model.decode(z).abs().max() <= 1.0


def test_remembered_inversions_are_reused_only_for_the_same_photos_budget_and_stamp(tmp_path, monkeypatch):
    import interface_gan.inversion as inversion

    g = tiny_generator()
    with torch.no_grad():
        images = g(sample_latents(3, 16, torch.Generator().manual_seed(5)))
    calls = []
    real_invert = inversion.invert
    monkeypatch.setattr(inversion, "invert", lambda *a, **k: calls.append(1) or real_invert(*a, **k))
    store = tmp_path / "directions" / "inverted.pt"

    def model(stamp="ckpt-1", steps=5):
        m = PGGANEditable(g, steps=steps, lr=0.3, starts=2, progress=False)
        m.remember(store, stamp)
        return m

    first = model()
    z = first.encode(images)
    assert len(calls) == 1 and store.is_file()
    again = model()  # a new process: read from the file
    torch.testing.assert_close(again.encode(images), z)
    assert len(calls) == 1 and again.last_psnr == pytest.approx(first.last_psnr)
    assert again.encode_report()["inversion"]["mean_psnr"] == pytest.approx(np.mean(first.last_psnr), abs=1e-3)
    model().encode(images[:2])  # other photos
    model(steps=6).encode(images)  # another budget
    model(stamp="ckpt-2").encode(images)  # a retrained checkpoint
    assert len(calls) == 4


def test_pca_on_isotropic_latents_is_noise():
    z = np.random.default_rng(0).standard_normal((2000, 32))
    _, ratios, null, noise = pca_with_null(z, 5)
    assert noise.all(), (ratios, null)


def test_ganspace_recovers_planted_structure():
    # A "generator" whose 4x4 activations depend on z only through z . u: GANSpace's top component, mapped
    # back to z by least squares, must be u (up to sign), and it is far above the isotropic null.
    rng = np.random.default_rng(0)
    d = 24
    u = rng.standard_normal(d)
    u /= np.linalg.norm(u)
    pattern = torch.from_numpy(rng.standard_normal((8, 4, 4))).float()

    class Planted(torch.nn.Module):
        levels = 1

        def features(self, z, depth=0):
            s = (z.double() @ torch.from_numpy(u)).float()  # [B]
            noise = 0.05 * torch.randn(z.shape[0], 8, 4, 4, generator=torch.Generator().manual_seed(1))
            return s[:, None, None, None] * pattern + noise  # [B, 8, 4, 4]

        def parameters(self):
            return iter([torch.zeros(1)])

    z = sample_latents(3000, d, torch.Generator().manual_seed(0))
    scores = {"Smiling": (z.numpy() @ u) * 2 + 0.1 * rng.standard_normal(3000),
              "Male": rng.standard_normal(3000)}
    comps = ganspace(Planted(), z, 3, scores=scores)
    assert abs(comps.vectors[0] @ u) > 0.99
    assert not comps.noise[0] and comps.explained_variance_ratio[0] > 0.9
    assert comps.names[0].startswith("PC0 ~ Smiling, r=") and abs(list(comps.correlations[0].values())[0]) > 0.9


def test_regress_directions_inverts_a_linear_map():
    rng = np.random.default_rng(1)
    z = rng.standard_normal((500, 6))
    basis = np.linalg.qr(rng.standard_normal((6, 6)))[0]  # orthonormal rows
    coords = z @ basis.T  # coordinate k = z . basis[k]
    vectors = regress_directions(z, coords)[:2]  # all coordinates: the least-squares map is exact
    np.testing.assert_allclose(np.abs(np.sum(vectors * basis[:2], axis=1)), 1.0, atol=1e-6)


def test_sefa_closed_form():
    rng = np.random.default_rng(2)
    v = np.linalg.qr(rng.standard_normal((5, 5)))[0]
    w = np.diag([5.0, 3.0, 1.0, 0.5, 0.1]) @ v.T  # W^T W = V diag(s^2) V^T
    vectors, shares = sefa(w, 2)
    np.testing.assert_allclose(np.abs(np.sum(vectors * v[:, :2].T, axis=1)), 1.0, atol=1e-8)
    assert shares[0] == pytest.approx(25 / (25 + 9 + 1 + 0.25 + 0.01))
    comps = sefa_components(tiny_generator(), 3)
    assert comps.vectors.shape == (3, 16)
    np.testing.assert_allclose(np.linalg.norm(comps.vectors, axis=1), 1.0, atol=1e-6)


def test_isotropic_null_matches_pca_on_gaussian():
    z = np.random.default_rng(3).standard_normal((1000, 20))
    ratios = pca_directions(z, 3)[1]
    null = isotropic_null(1000, 20, 3)
    assert is_noise(ratios, null).all()


def planted_samples(n: int = 4000, d: int = 16) -> tuple[ScoredSamples, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    z = sample_latents(n, d, torch.Generator().manual_seed(0)).numpy()
    smile = np.eye(d)[0]
    mouth = (np.eye(d)[0] + np.eye(d)[1]) / np.sqrt(2)  # correlated with smiling
    probs = np.full((n, 40), 0.5, dtype=np.float32)
    probs[:, 31] = 1 / (1 + np.exp(-3 * z @ smile))  # Smiling
    probs[:, 21] = 1 / (1 + np.exp(-3 * z @ mouth))  # Mouth_Slightly_Open
    yaw = (0.2 * z[:, 2] + 0.01 * rng.standard_normal(n)).astype(np.float32)
    return ScoredSamples(z, probs, yaw, np.zeros((n, 0), np.float32), "planted"), smile, mouth


def test_boundaries_on_planted_scores():
    samples, smile, mouth = planted_samples()
    b = fit_boundary(samples, "smiling", fraction=0.25)
    assert b.attribute == "Smiling" and b.vector @ smile > 0.97
    assert b.metrics["val_accuracy"] > 0.95
    pose = fit_boundary(samples, "pose", fraction=0.25)
    assert pose.vector[2] > 0.97
    mean = fit_mean(samples, "Mouth_Slightly_Open")
    assert mean.vector @ mouth > 0.95


def test_find_direction_pca_component_named_and_oriented():
    samples, _, _ = planted_samples(2000)
    model = PGGANEditable(tiny_generator())
    calls = []
    find = GANDirections(model, lambda: calls.append(1) or samples, ganspace_samples=2000, max_components=4)
    d = find("Smiling", "pca:0")
    assert find.components("pca") is find.components("pca") and len(find.components("pca").names) == 4
    assert d.metrics["name"].startswith("PC0 ~ ") and "explained_variance_ratio" in d.metrics
    assert d.vector.shape == (16,) and abs(np.linalg.norm(d.vector) - 1) < 1e-9
    s = find("Smiling", "sefa:1")
    assert s.vector.shape == (16,) and s.metrics["component"] == 1
    # oriented: a positive strength raises the attribute (projection correlates positively with its logit)
    logit = np.log(samples.probs[:, 31] / (1 - samples.probs[:, 31]))
    assert np.corrcoef(samples.latents @ s.vector, logit)[0, 1] >= 0
    assert s.metrics["correlation_with_attribute"] >= 0
    with pytest.raises(ValueError, match="component 9"):
        find("Smiling", "pca:9")
    assert len(calls) == 1  # the samples are scored once for every direction and component


def test_name_components():
    x = np.linspace(-1, 1, 100)
    names, corr = name_components(np.stack([x, x**2], 1), {"pose": -x, "Smiling": x**2})
    assert names[0] == "PC0 ~ pose, r=-1.00" and names[1] == "PC1 ~ Smiling, r=1.00"


# ------------------------------------------------------------------------------------------- edit end to end


def test_edit_interface_gan_end_to_end(tmp_path, request, capsys):
    for module in ("common/run.py", "common/cache.py", "common/editing.py", "common/predictor.py",
                   "scripts/train_predictor.py", "tests/conftest.py"):
        if not (REPO / module).exists():
            pytest.skip(f"{module} is not written yet")
    cache = request.getfixturevalue("tiny_cache")
    cfg = REPO / "configs" / "interface_gan" / "synthetic.yaml"
    run = tmp_path / "pggan"
    train = subprocess.run([sys.executable, "scripts/train_pggan.py", "--config", str(cfg), "--out", str(run),
                            "--set", f"data.cache={cache}", "--set", "train.total_images=56", *TRAIN_SETS],
                           cwd=REPO, capture_output=True, text=True, timeout=120)
    assert train.returncode == 0, train.stderr[-2000:]
    predictor = _tiny_predictor(cache, tmp_path / "predictor")
    out = tmp_path / "edits"
    base = ["--run", str(run), "--predictor", str(predictor), "--samples", "200", "--steps", "3", "--out", str(out),
            "--device", "cpu"]
    code, err = _edit(base + ["--attribute", "Smiling", "--keep", "Mouth_Slightly_Open", "--num", "2",
                              "--list-components"], capsys)
    assert code == 0, err[-2000:]
    record = json.loads((out / "Smiling-keep-Mouth_Slightly_Open-boundary.json").read_text())
    assert record["walk"] == "sphere" and len(record["predicted"]["Smiling"]) == 3
    assert (out / "Smiling-keep-Mouth_Slightly_Open-boundary.png").exists()
    assert "val_accuracy" in json.loads((run / "directions" / "Smiling-boundary.json").read_text())["metrics"]
    with np.load(run / "directions" / "samples.npz") as data:
        assert data["latents"].shape == (200, 16) and data["probs"].shape == (200, 40)
    components = json.loads((run / "directions" / "components.json").read_text())
    assert components["pca"][0]["name"].startswith("PC0 ~ ")
    # a photo: inverted first, PSNR reported
    from PIL import Image

    photo = tmp_path / "face.png"
    Image.fromarray((np.random.default_rng(0).uniform(0, 255, (218, 178, 3))).astype(np.uint8)).save(photo)
    code, err = _edit(base + ["--attribute", "pose", "--method", "pca:1", "--images", str(photo), "--no-align"], capsys)
    assert code == 0, err[-2000:]
    record = json.loads((out / "pose-pca1.json").read_text())
    assert record["inversion"]["mean_psnr"] > 0 and record["direction"]["metrics"]["name"].startswith("PC1 ~ ")
    # --cache-images N: N cache test images, inverted (not random samples)
    code, err = _edit(base + ["--attribute", "Smiling", "--cache-images", "2", "--out", str(out / "cached")], capsys)
    assert code == 0, err[-2000:]
    record = json.loads((out / "cached" / "Smiling-boundary.json").read_text())
    assert len(record["inversion"]["psnr"]) == 2 and record["source"]["kind"] == "cache"
    code, err = _edit(base + ["--attribute", "Smiling", "--method", "pca:0", "--keep", "Male"], capsys)
    assert code == 2 and "error: --keep with --method pca:0" in err


def _edit(argv: list[str], capsys) -> tuple[int, str]:
    """Run scripts/edit_interface_gan.py in this process (saves a torch import per call); (exit code, stderr)."""
    import runpy

    old = sys.argv
    sys.argv = ["edit_interface_gan.py", *argv]
    try:
        runpy.run_path(str(REPO / "scripts" / "edit_interface_gan.py"), run_name="__main__")
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    finally:
        sys.argv = old
    return code, capsys.readouterr().err


def _tiny_predictor(cache: Path, out: Path) -> Path:
    cfg = REPO / "configs" / "predictor" / "synthetic.yaml"
    if not cfg.exists():
        pytest.skip("configs/predictor/synthetic.yaml is not written yet")
    result = subprocess.run([sys.executable, "scripts/train_predictor.py", "--config", str(cfg), "--out", str(out),
                             "--set", f"data.cache={cache}", "--set", "train.total_images=64",
                             "--set", "train.device=cpu", "--set", "log.tensorboard=false"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        pytest.skip(f"could not train a tiny predictor: {result.stderr.strip().splitlines()[-1:]}")
    return out
