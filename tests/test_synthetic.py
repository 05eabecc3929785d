"""Tests of the synthetic CelebA-format face generator (common/synthetic.py, scripts/make_synthetic_celeba.py).

The label files are read back with a tiny independent reader (not common.celeba) so that a format slip in the
writer cannot hide behind the same slip in the project's parser; torchvision's own CelebA reader must load the
official layout too.
"""

from __future__ import annotations

import re
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common import synthetic
from common.attributes import ATTRIBUTE_INDEX, CELEBA_ATTRIBUTES
from common.celeba import yaw_from_landmarks
from common.cli import UserError
from common.synthetic import (
    FACTOR_NAMES,
    celeba_labels,
    render_face,
    sample_factors,
    split_sizes,
    write_synthetic_celeba,
)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
LANDMARK_HEADER = ("lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y "
                   "rightmouth_x rightmouth_y")
ATTR_ROW = re.compile(r"^\d{6}\.jpg (-1|1)( (-1| 1)){39}$")  # CelebA's rows: "000007.jpg 1 -1  1 ..."


def read_table(path: Path, count: bool, header: bool) -> tuple[int | None, list[str], list[list[str]]]:
    """Independent reader: optional count line, optional header, then whitespace-separated rows."""
    lines = [line.rstrip("\r") for line in path.read_text().split("\n") if line.strip()]
    n = int(lines.pop(0)) if count else None
    names = lines.pop(0).split() if header else []
    return n, names, [line.split() for line in lines]


def read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    lines = [line.rstrip("\r") for line in path.read_text().split("\n") if line.strip()]
    return lines[0].split(","), [line.split(",") for line in lines[1:]]


@pytest.fixture(scope="module")
def official(tmp_path_factory) -> Path:
    """A 40-image official-layout set rendered by 2 workers (seed 3)."""
    return write_synthetic_celeba(tmp_path_factory.mktemp("synth") / "official", 40, 3, workers=2)


# ----------------------------------------------------------------------------------------------- rendering


def test_render_face_size_landmarks_at_celeba_positions():
    image, landmarks = render_face({}, np.random.default_rng(0))
    assert image.size == (178, 218) and image.mode == "RGB"
    assert landmarks.shape == (10,)
    typical = np.array([69, 111, 108, 111, 88, 136, 72, 152, 105, 152])  # CelebA's aligned positions
    assert np.abs(landmarks - typical).max() < 4


def test_landmark_yaw_increases_with_the_yaw_factor():
    for base in ({}, {"male": 1, "glasses": 1, "smile": 1, "mouth_open": 1}):
        yaws = np.linspace(-1, 1, 9)
        scores = np.array([float(yaw_from_landmarks(render_face({**base, "yaw": y}, np.random.default_rng(1))[1]))
                           for y in yaws])
        assert np.all(np.diff(scores) > 0.03), scores
        assert abs(scores[4]) < 0.02 and scores[0] < -0.25 and scores[-1] > 0.25  # same sign, CelebA's spread


def _region_change(a: dict, b: dict, box: tuple[int, int, int, int]) -> float:
    """Mean absolute pixel difference of two renders (same nuisances) inside box (x0, y0, x1, y1)."""
    img_a = np.asarray(render_face(a, np.random.default_rng(2))[0], dtype=np.float32)
    img_b = np.asarray(render_face(b, np.random.default_rng(2))[0], dtype=np.float32)
    x0, y0, x1, y1 = box
    return float(np.abs(img_a - img_b)[y0:y1, x0:x1].mean())


def test_factors_change_their_own_region():
    mouth, eyes, forehead = (62, 138, 116, 168), (55, 100, 122, 120), (60, 60, 118, 90)
    assert _region_change({"smile": -1}, {"smile": 1}, mouth) > 15
    assert _region_change({"smile": -1}, {"smile": 1}, forehead) == 0
    assert _region_change({"mouth_open": 0}, {"mouth_open": 1}, mouth) > 15
    assert _region_change({"eye_open": 0}, {"eye_open": 1}, eyes) > 15
    assert _region_change({"eye_open": 0}, {"eye_open": 1}, mouth) == 0
    assert _region_change({"glasses": 0}, {"glasses": 1}, eyes) > 15
    assert _region_change({"bangs": 0}, {"bangs": 1}, forehead) > 15


def test_render_turn_holds_the_face_and_turns_the_head():
    frames = synthetic.render_turn({"smile": 0.5, "male": 1.0}, [-0.8, -0.4, 0.0, 0.4, 0.8], seed=3, resolution=32)
    assert frames.shape == (5, 32, 32, 3) and frames.dtype == np.uint8
    again = synthetic.render_turn({"smile": 0.5, "male": 1.0}, [0.0], seed=3, resolution=32)
    assert np.array_equal(again[0], frames[2])  # each frame depends only on its own yaw: the nuisances are held
    # the further the head turns, the further the frame moves from the first one
    distance = [np.abs(f.astype(int) - frames[0].astype(int)).mean() for f in frames]
    assert distance[0] == 0 and all(b > a for a, b in zip(distance, distance[1:], strict=False))


def test_render_face_rejects_unknown_factor():
    with pytest.raises(UserError, match="unknown factor 'smiel'.*'smile'"):
        render_face({"smiel": 1.0}, np.random.default_rng(0))


# ----------------------------------------------------------------------------------------------- sampling


def test_factor_ranges_and_prefix_stability():
    factors = sample_factors(300, 5)
    assert list(factors) == list(FACTOR_NAMES)
    assert factors["smile"].min() >= -1 and factors["smile"].max() <= 1
    assert factors["yaw"].min() >= -1 and factors["yaw"].max() <= 1
    for name in ("mouth_open", "eye_open", "hair_dark", "skin", "age", "beard", "background"):
        assert 0 <= factors[name].min() and factors[name].max() <= 1, name
    for name in ("glasses", "male", "bangs", "bald", "lipstick"):
        assert set(np.unique(factors[name])) <= {0.0, 1.0}, name
    assert (factors["beard"][factors["male"] == 0] == 0).all()  # beards only on men
    head = sample_factors(100, 5)
    for name in FACTOR_NAMES:
        np.testing.assert_array_equal(head[name], factors[name][:100])
    np.testing.assert_array_equal(celeba_labels(head, 5), celeba_labels(factors, 5)[:100])


def test_label_shares_and_correlations_follow_celeba():
    labels = celeba_labels(sample_factors(2000, 0), 0) > 0  # [2000, 40]

    def share(name, given=None, value=True):
        rows = np.ones(len(labels), bool) if given is None else labels[:, ATTRIBUTE_INDEX[given]] == value
        return labels[rows, ATTRIBUTE_INDEX[name]].mean()

    for name, target in (("Smiling", 0.48), ("Male", 0.42), ("Narrow_Eyes", 0.12), ("Bangs", 0.15),
                         ("Mouth_Slightly_Open", 0.48), ("Young", 0.78), ("No_Beard", 0.83),
                         ("Wearing_Lipstick", 0.47), ("Attractive", 0.51)):
        assert abs(share(name) - target) < 0.035, (name, share(name))
    assert abs(share("Mouth_Slightly_Open", "Smiling") - 0.76) < 0.05
    assert abs(share("Mouth_Slightly_Open", "Smiling", False) - 0.22) < 0.05
    assert abs(share("High_Cheekbones", "Smiling") - 0.80) < 0.05
    assert share("Narrow_Eyes", "Smiling") > share("Narrow_Eyes", "Smiling", False)
    assert share("Bangs", "Male") < share("Bangs", "Male", False) - 0.07
    # Glasses are raised on purpose but keep CelebA's male/female ratio (0.12 vs 0.02).
    assert 0.12 < share("Eyeglasses", "Male") < 0.23 and share("Eyeglasses", "Male", False) < 0.06
    assert share("Young", "Eyeglasses") < share("Young", "Eyeglasses", False) - 0.2
    assert share("Wearing_Lipstick", "Male") < 0.09  # label noise keeps a few, as in CelebA
    assert np.corrcoef(labels[:, ATTRIBUTE_INDEX["Male"]], labels[:, ATTRIBUTE_INDEX["Wearing_Lipstick"]])[0, 1] < -0.6


def test_split_sizes_follow_celeba():
    assert split_sizes(202599) == (162770, 19867, 19962)
    assert split_sizes(160) == (128, 16, 16)
    assert sum(split_sizes(7)) == 7 and min(split_sizes(7)) >= 1


# ----------------------------------------------------------------------------------------------- files


def test_official_files_parse_and_match_the_factors(official):
    n = 40
    count, names, rows = read_table(official / "list_attr_celeba.txt", count=True, header=True)
    assert count == n and tuple(names) == CELEBA_ATTRIBUTES and len(rows) == n
    raw = (official / "list_attr_celeba.txt").read_bytes().split(b"\r\n")
    assert raw[1].endswith(b"Young ") and all(ATTR_ROW.match(line.decode()) for line in raw[2:n + 2])
    assert [r[0] for r in rows] == [f"{i:06d}.jpg" for i in range(1, n + 1)]
    attrs = np.array([[int(v) for v in r[1:]] for r in rows])
    np.testing.assert_array_equal(attrs, celeba_labels(sample_factors(n, 3), 3))

    count, names, rows = read_table(official / "synthetic_factors.txt", count=True, header=True)
    assert count == n and tuple(names) == FACTOR_NAMES
    assert all(re.fullmatch(r"-?\d\.\d{4}", v) for r in rows for v in r[1:])
    factors = np.array([[float(v) for v in r[1:]] for r in rows])  # [n, F]
    np.testing.assert_allclose(factors[:, FACTOR_NAMES.index("smile")], sample_factors(n, 3)["smile"], atol=1e-4)

    count, names, rows = read_table(official / "list_landmarks_align_celeba.txt", count=True, header=True)
    assert count == n and " ".join(names) == LANDMARK_HEADER
    landmarks = np.array([[int(v) for v in r[1:]] for r in rows])  # [n, 10]
    yaw_factor = factors[:, FACTOR_NAMES.index("yaw")]
    turned = np.abs(yaw_factor) > 0.3
    assert turned.any() and (np.sign(yaw_from_landmarks(landmarks))[turned] == np.sign(yaw_factor[turned])).all()
    assert np.corrcoef(yaw_from_landmarks(landmarks), yaw_factor)[0, 1] > 0.95

    count, names, rows = read_table(official / "list_bbox_celeba.txt", count=True, header=True)
    assert count == n and names == ["image_id", "x_1", "y_1", "width", "height"]
    assert all(len(r) == 5 and int(r[3]) > 0 and int(r[4]) > 0 for r in rows)
    _, _, rows = read_table(official / "list_eval_partition.txt", count=False, header=False)
    partition = [int(r[1]) for r in rows]
    train, valid, test = split_sizes(n)
    assert partition == [0] * train + [1] * valid + [2] * test  # contiguous by index, like CelebA
    _, _, rows = read_table(official / "identity_CelebA.txt", count=False, header=False)
    assert len(rows) == n and all(int(r[1]) >= 1 for r in rows)

    images = sorted((official / "img_align_celeba").iterdir())
    assert [p.name for p in images] == [f"{i:06d}.jpg" for i in range(1, n + 1)]
    with Image.open(images[0]) as image:
        assert image.format == "JPEG" and image.size == (178, 218)


def test_attr_rows_have_the_real_files_shape():
    real = SHARED_DATA / "list_attr_celeba.head300.txt"
    if not real.is_file():
        pytest.skip(f"{real} not present")
    lines = real.read_bytes().split(b"\r\n")
    assert all(ATTR_ROW.match(line.decode()) for line in lines[2:302])  # the pattern our rows are checked with
    assert lines[1] == (" ".join(CELEBA_ATTRIBUTES) + " ").encode()


def test_same_bytes_whatever_the_worker_count(official, tmp_path):
    single = write_synthetic_celeba(tmp_path / "single", 40, 3, workers=1)
    files = sorted(p.relative_to(official) for p in official.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(single) for p in single.rglob("*") if p.is_file())
    for rel in files:
        assert (official / rel).read_bytes() == (single / rel).read_bytes(), rel
    other = write_synthetic_celeba(tmp_path / "other_seed", 3, 4, workers=1)
    assert (other / "img_align_celeba/000001.jpg").read_bytes() != (single / "img_align_celeba/000001.jpg").read_bytes()


def test_kaggle_layout(tmp_path):
    root = write_synthetic_celeba(tmp_path / "kaggle", 6, 1, layout="kaggle", workers=1)
    assert len(list((root / "img_align_celeba" / "img_align_celeba").glob("*.jpg"))) == 6
    assert not (root / "identity_CelebA.txt").exists() and not (root / "list_attr_celeba.txt").exists()
    expected = {
        "list_attr_celeba.csv": ["image_id", *CELEBA_ATTRIBUTES],
        "list_eval_partition.csv": ["image_id", "partition"],
        "list_landmarks_align_celeba.csv": ["image_id", *LANDMARK_HEADER.split()],
        "list_bbox_celeba.csv": ["image_id", "x_1", "y_1", "width", "height"],
        "synthetic_factors.csv": ["image_id", *FACTOR_NAMES],
    }
    for name, header in expected.items():
        columns, rows = read_csv(root / name)
        assert columns == header and len(rows) == 6 and all(len(r) == len(header) for r in rows), name
        assert rows[0][0] == "000001.jpg"
    _, rows = read_csv(root / "list_attr_celeba.csv")
    assert {v for r in rows for v in r[1:]} <= {"-1", "1"}
    real = SHARED_DATA / "kaggle_list_eval_partition.head300.csv"
    if real.is_file():
        assert read_csv(real)[0] == read_csv(root / "list_eval_partition.csv")[0]


def test_torchvision_celeba_reads_the_official_layout(tmp_path, monkeypatch):
    datasets = pytest.importorskip("torchvision.datasets")
    n = 12
    write_synthetic_celeba(tmp_path / "celeba", n, 2, workers=1)
    monkeypatch.setattr(datasets.CelebA, "_check_integrity", lambda self: True)  # md5s are the originals'
    data = datasets.CelebA(str(tmp_path), split="all", target_type=["attr", "landmarks", "identity", "bbox"])
    assert len(data) == n
    expected = (celeba_labels(sample_factors(n, 2), 2) + 1) // 2
    np.testing.assert_array_equal(data.attr.numpy(), expected)
    image, (attr, landmarks, identity, bbox) = data[0]
    assert image.size == (178, 218) and attr.shape == (40,) and landmarks.shape == (10,)
    assert len(datasets.CelebA(str(tmp_path), split="train")) == split_sizes(n)[0]


def test_interrupted_run_leaves_no_attribute_file(tmp_path, monkeypatch):
    root = write_synthetic_celeba(tmp_path / "set", 3, 0, workers=1)
    assert (root / "list_attr_celeba.txt").exists()

    def crash(job):
        raise RuntimeError("disk full")

    monkeypatch.setattr(synthetic, "_render_chunk", crash)
    with pytest.raises(RuntimeError):
        write_synthetic_celeba(root, 3, 0, workers=1)
    assert not (root / "list_attr_celeba.txt").exists()  # not mistaken for a complete set
    assert not list(root.rglob(".*.tmp*"))


def test_bad_arguments_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="--layout"):
        write_synthetic_celeba(tmp_path, 3, 0, layout="zip")
    with pytest.raises(UserError, match="--num"):
        write_synthetic_celeba(tmp_path, 0, 0)
    with pytest.raises(UserError, match="--workers"):
        write_synthetic_celeba(tmp_path, 2, 0, workers=0)


def run_script(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """Run scripts/make_synthetic_celeba.py in this process (a subprocess would re-import numpy and PIL)."""
    monkeypatch.setattr(sys, "argv", ["make_synthetic_celeba.py", *args])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(REPO / "scripts" / "make_synthetic_celeba.py"), run_name="__main__")
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def test_script_writes_a_set_and_reports_bad_input(tmp_path, monkeypatch, capsys):
    code, out, err = run_script(monkeypatch, capsys, "--out", str(tmp_path / "cli"), "--num", "4", "--seed", "1",
                                "--workers", "1")
    assert code == 0, err
    assert "4 synthetic faces" in out and "images/s" in out
    assert len(list((tmp_path / "cli" / "img_align_celeba").glob("*.jpg"))) == 4
    assert (tmp_path / "cli" / "list_attr_celeba.txt").read_text().startswith("4\n")
    code, out, err = run_script(monkeypatch, capsys, "--out", str(tmp_path / "bad"), "--num", "0")
    assert code == 2 and err.strip().splitlines()[-1] == "error: --num: expected at least 1 image, got 0"
