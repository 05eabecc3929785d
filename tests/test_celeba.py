"""Tests of the CelebA data layer: the real file excerpts, the three layouts, every malformed-file error, yaw."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from common.attributes import CELEBA_ATTRIBUTES
from common.celeba import (
    CelebAFormatError,
    find_layout,
    parse_attr_file,
    parse_bbox_file,
    parse_factors_file,
    parse_identity_file,
    parse_landmarks_file,
    parse_partition_file,
    read_celeba,
    yaw_from_landmarks,
)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"shared CelebA excerpt {path} is absent")
    return path


# ----------------------------------------------------------------------------------------------- real excerpts


def test_real_attr_excerpt_count_mismatch_is_an_error_by_default():
    path = shared("list_attr_celeba.head300.txt")
    with pytest.raises(CelebAFormatError, match=rf"^{re.escape(str(path))}:1: count line says 202599 images but "
                                                r"300 rows follow"):
        parse_attr_file(path)


def test_real_attr_excerpt_parses_with_strict_count_off():
    table = parse_attr_file(shared("list_attr_celeba.head300.txt"), strict_count=False)
    assert table.values.shape == (300, 40) and table.values.dtype == np.int8
    assert set(np.unique(table.values)) <= {0, 1}
    assert table.columns == list(CELEBA_ATTRIBUTES)  # the header's trailing space and CRLF are not names
    assert table.filenames[0] == "000001.jpg" and table.filenames[-1] == "000300.jpg"
    assert table.lines[0] == 3 and table.lines[-1] == 302
    # 000001.jpg -1  1  1 -1 -1 -1 -1 -1 -1 -1 -1  1 ... (the real first row): -1 -> 0, 1 -> 1
    np.testing.assert_array_equal(table.values[0, :12], [0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1])
    # CelebA's first 300 images: roughly 40-50% male and about half smiling, nowhere near 0 or 1
    male = table.values[:, CELEBA_ATTRIBUTES.index("Male")]
    smiling = table.values[:, CELEBA_ATTRIBUTES.index("Smiling")]
    assert 0.25 < male.mean() < 0.65 and 0.3 < smiling.mean() < 0.7


def test_real_kaggle_partition_excerpt():
    table = parse_partition_file(shared("kaggle_list_eval_partition.head300.csv"))
    assert table.filenames == [f"{i:06d}.jpg" for i in range(1, 301)]
    assert table.values.dtype == np.int8 and (table.values == 0).all()  # images 1..162770 are the train split


# ----------------------------------------------------------------------------------------------- layouts


@pytest.mark.parametrize("layout,expected_name", [("official", "official"), ("torchvision", "torchvision"),
                                                  ("kaggle", "kaggle")])
def test_read_celeba_detects_each_layout_with_the_same_labels(tmp_path, celeba_writer, layout, expected_name):
    root = celeba_writer(tmp_path / layout, num=12, seed=3, layout=layout)
    index = read_celeba(root)
    reference = read_celeba(celeba_writer(tmp_path / "ref", num=12, seed=3, layout="official"))
    assert index.layout == expected_name
    assert expected_name in find_layout(root).describe() and str(index.image_dir) in find_layout(root).describe()
    assert index.filenames == [f"{i:06d}.jpg" for i in range(1, 13)]
    np.testing.assert_array_equal(index.attributes, reference.attributes)
    np.testing.assert_array_equal(index.landmarks, reference.landmarks)
    np.testing.assert_array_equal(index.partition, reference.partition)
    np.testing.assert_allclose(index.factors, reference.factors)
    assert index.factor_names == ["smile", "mouth_open", "yaw"]
    assert index.attributes.dtype == np.int8 and index.landmarks.dtype == np.float32
    assert index.bbox.shape == (12, 4)
    if layout == "kaggle":
        assert index.identity is None and "no identity_CelebA" in index.description
    else:
        assert index.identity.shape == (12,) and index.identity.dtype == np.int32


def test_rows_of_other_files_are_realigned_to_the_attribute_order(tmp_path, celeba_writer):
    root = celeba_writer(tmp_path / "c", num=6)
    lines = (root / "list_eval_partition.txt").read_text().splitlines(keepends=True)
    (root / "list_eval_partition.txt").write_text("".join(reversed(lines)), newline="")
    index = read_celeba(root)
    np.testing.assert_array_equal(index.partition, [0, 0, 0, 0, 0, 1])  # writer: 80/10/10 by position


def test_not_found_lists_the_expected_layouts(tmp_path):
    (tmp_path / "photos").mkdir()
    with pytest.raises(CelebAFormatError) as info:
        find_layout(tmp_path)
    message = str(info.value)
    assert "\n" not in message and "CelebA not found" in message and "photos/" in message
    for expected in ("img_align_celeba/", "list_attr_celeba.txt", "list_eval_partition.txt", "celeba/",
                     "img_align_celeba/img_align_celeba/", "list_attr_celeba.csv", "kaggle"):
        assert expected in message


def test_a_missing_required_file_is_named(tmp_path, celeba_writer):
    root = celeba_writer(tmp_path / "c", num=4)
    (root / "list_landmarks_align_celeba.txt").unlink()
    with pytest.raises(CelebAFormatError, match="not list_landmarks_align_celeba.txt"):
        find_layout(root)


def test_a_missing_listed_image_is_an_error_only_when_checking(tmp_path, celeba_writer):
    root = celeba_writer(tmp_path / "c", num=5)
    (root / "img_align_celeba" / "000004.jpg").unlink()
    with pytest.raises(CelebAFormatError, match=r"list_attr_celeba.txt:6: image '000004.jpg' is listed but not in "
                                                r".*img_align_celeba \(1 of 5"):
        read_celeba(root)
    assert len(read_celeba(root, check_images=False)) == 5


# ----------------------------------------------------------------------------------------------- malformed files


def _edit(path: Path, line: int, new: str | None) -> None:
    """Replace (or with None delete) 1-based ``line`` of a CRLF file."""
    lines = path.read_text().splitlines()
    if new is None:
        del lines[line - 1]
    else:
        lines[line - 1] = new
    path.write_text("".join(f"{text}\r\n" for text in lines), newline="")


ROW = "000002.jpg " + " ".join(["-1"] * 40)
CASES = {
    "wrong column count": ("list_attr_celeba.txt", 4, "000002.jpg " + " ".join(["-1"] * 39), 4,
                           "expected a filename and 40 values, got 39"),
    "value not +-1": ("list_attr_celeba.txt", 4, ROW[:-2] + " 0", 4, "expected values -1/1, got '0' in column 41"),
    "not an integer": ("list_attr_celeba.txt", 4, ROW[:-2] + " x", 4, "expected integers, got 'x'"),
    "count disagrees": ("list_attr_celeba.txt", 1, "7", 1, "count line says 7 images but 5 rows follow"),
    "count not a number": ("list_attr_celeba.txt", 1, "many", 1, "expected a count line"),
    "duplicate filename": ("list_attr_celeba.txt", 5, "000002.jpg " + " ".join(["1"] * 40), 5,
                           "duplicate filename '000002.jpg' \\(first on line 4\\)"),
    "misspelt attribute": ("list_attr_celeba.txt", 2, " ".join(CELEBA_ATTRIBUTES).replace("Smiling", "Smilling"),
                           2, "unknown attribute name 'Smilling' \\(did you mean 'Smiling'"),
    "attribute missing": ("list_attr_celeba.txt", 2, " ".join(CELEBA_ATTRIBUTES[:-1]), 2,
                          "header lacks attribute names Young"),
    "attributes reordered": ("list_attr_celeba.txt", 2, " ".join(reversed(CELEBA_ATTRIBUTES)), 2,
                             "attribute names out of order or duplicated \\(column 1 is 'Young', expected "
                             "'5_o_Clock_Shadow'\\)"),
    "partition 3": ("list_eval_partition.txt", 3, "000003.jpg 3", 3, "expected values 0/1/2, got '3'"),
    "landmark header": ("list_landmarks_align_celeba.txt", 2, "lefteye_x lefteye_y righteye_x righteye_y nose_x "
                        "nose_y leftmouth_x leftmouth_y rightmouth_x rightmouth", 2,
                        "unknown landmark name 'rightmouth' \\(did you mean 'rightmouth_.' or 'rightmouth_."),
    "bbox header": ("list_bbox_celeba.txt", 2, "image_id x y width height", 2, "unknown bbox name 'x'"),
    "landmark not an integer": ("list_landmarks_align_celeba.txt", 4, "000002.jpg 69.5 111 108 111 88 136 72 152 "
                                "105 152", 4, "expected integers, got '69.5'"),
    "row without values": ("list_landmarks_align_celeba.txt", 5, "000003.jpg", 5,
                           "expected a filename and 10 values, got 0"),
    "identity columns": ("identity_CelebA.txt", 2, "000002.jpg 17 18", 2, "expected a filename and 1 values"),
    "factor not a number": ("synthetic_factors.txt", 3, "000001.jpg 0.1 zero 0.3", 3, "expected numbers, got 'zero'"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_malformed_files_give_file_line_and_expectation(tmp_path, celeba_writer, case):
    name, line, text, error_line, expected = CASES[case]
    root = celeba_writer(tmp_path / "c", num=5)
    _edit(root / name, line, text)
    with pytest.raises(CelebAFormatError, match=rf"^{re.escape(str(root / name))}:{error_line}: {expected}"):
        read_celeba(root)


def test_a_row_missing_from_one_file_names_both_files(tmp_path, celeba_writer):
    root = celeba_writer(tmp_path / "c", num=5)
    _edit(root / "list_eval_partition.txt", 3, None)  # drops 000003.jpg
    with pytest.raises(CelebAFormatError, match=r"list_attr_celeba.txt:5: '000003.jpg' has no row in "
                                                r".*list_eval_partition.txt"):
        read_celeba(root)


def test_an_extra_row_in_one_file_names_both_files(tmp_path, celeba_writer):
    root = celeba_writer(tmp_path / "c", num=5)
    path = root / "list_landmarks_align_celeba.txt"
    _edit(path, 1, "6")
    path.write_text(path.read_text() + "000099.jpg 69 111 108 111 88 136 72 152 105 152\r\n", newline="")
    with pytest.raises(CelebAFormatError, match=r"list_landmarks_align_celeba.txt:8: '000099.jpg' is not listed in "
                                                r".*list_attr_celeba.txt"):
        read_celeba(root)


def test_kaggle_csv_errors(tmp_path, celeba_writer):
    root = celeba_writer(tmp_path / "k", num=4, layout="kaggle")
    path = root / "list_eval_partition.csv"
    _edit(path, 1, "filename,partition")
    with pytest.raises(CelebAFormatError, match=rf"^{re.escape(str(path))}:1: expected a header starting with "
                                                "'image_id'"):
        read_celeba(root)
    _edit(path, 1, "image_id,partition")
    _edit(path, 3, "000002.jpg,7")
    with pytest.raises(CelebAFormatError, match=r"list_eval_partition.csv:3: expected values 0/1/2, got '7'"):
        read_celeba(root)


def test_low_level_parsers_return_typed_tables(tmp_path, celeba_writer):
    root = celeba_writer(tmp_path / "c", num=5)
    assert parse_landmarks_file(root / "list_landmarks_align_celeba.txt").values.shape == (5, 10)
    bbox = parse_bbox_file(root / "list_bbox_celeba.txt")
    assert bbox.values.dtype == np.int32 and bbox.columns == ["x_1", "y_1", "width", "height"]
    assert parse_identity_file(root / "identity_CelebA.txt").values.shape == (5,)
    factors = parse_factors_file(root / "synthetic_factors.txt")
    assert factors.columns == ["smile", "mouth_open", "yaw"] and factors.values.dtype == np.float32


def test_an_attribute_file_without_rows_is_an_error(tmp_path, celeba_writer):
    root = celeba_writer(tmp_path / "c", num=2)
    attr = root / "list_attr_celeba.txt"
    attr.write_text("0\r\n" + attr.read_text().splitlines()[1] + "\r\n", newline="")
    with pytest.raises(CelebAFormatError, match=r"list_attr_celeba.txt:3: expected at least one image row"):
        read_celeba(root)


def test_non_utf8_file_is_a_format_error(tmp_path, celeba_writer):
    root = celeba_writer(tmp_path / "c", num=3)
    (root / "list_eval_partition.txt").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(CelebAFormatError, match=r"list_eval_partition.txt:0: expected a UTF-8"):
        read_celeba(root)


# ----------------------------------------------------------------------------------------------- yaw


TYPICAL = np.array([69, 111, 108, 111, 88, 136, 72, 152, 105, 152], dtype=np.float32)  # aligned CelebA face


def flip_landmarks(landmarks: np.ndarray, width: float = 178.0) -> np.ndarray:
    """Landmarks after a left-right flip: x -> W - x, and left/right points swap roles."""
    x = landmarks.copy()
    x[..., 0::2] = width - x[..., 0::2]
    return x[..., [2, 3, 0, 1, 4, 5, 8, 9, 6, 7]]


def test_yaw_formula_and_sign():
    assert abs(yaw_from_landmarks(TYPICAL)) < 0.02  # frontal
    turned = TYPICAL.copy()
    turned[4] += 10  # nose towards the image's right
    expected = (98 - (88.5 + 88.5) / 2) / (108 - 69)
    assert yaw_from_landmarks(turned) == pytest.approx(expected) and expected > 0
    turned[4] -= 20
    assert yaw_from_landmarks(turned) == pytest.approx(-expected - 2 * (88.5 - 88) / 39)


def test_yaw_flip_negates_and_shapes_broadcast():
    rng = np.random.default_rng(0)
    landmarks = (TYPICAL + rng.normal(0, 4, size=(3, 5, 10))).astype(np.float32)  # [3, 5, 10]
    yaw = yaw_from_landmarks(landmarks)
    assert yaw.shape == (3, 5)
    np.testing.assert_allclose(yaw_from_landmarks(flip_landmarks(landmarks)), -yaw, rtol=1e-5, atol=1e-6)
    as_torch = yaw_from_landmarks(torch.from_numpy(landmarks))
    assert isinstance(as_torch, torch.Tensor) and as_torch.shape == (3, 5)
    np.testing.assert_allclose(as_torch.numpy(), yaw, rtol=1e-6)
    # scale invariance: the same face twice as large has the same yaw
    np.testing.assert_allclose(yaw_from_landmarks(landmarks * 2), yaw, rtol=1e-5)
