"""Edit grids, GIFs and contact sheets: sizes from the layout arithmetic, the marker, frames, captions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageSequence

from common.grids import (
    INPUT_GAP,
    LINE,
    MARK_COLOUR,
    MARK_WIDTH,
    PAD,
    edit_gif,
    edit_grid,
    gif_frame_order,
    image_grid,
    strength_label,
    to_uint8,
)


def ramp_images(rows, steps, size=8):
    """[R, S, 3, H, W] in [-1, 1] whose brightness grows with the column (distinct frames)."""
    values = torch.linspace(-0.9, 0.9, steps)
    images = values.view(1, steps, 1, 1, 1).expand(rows, steps, 3, size, size).clone()
    images[:, :, 1] = torch.linspace(-1, 1, rows).view(rows, 1, 1, 1)  # rows differ in green
    return images


def test_to_uint8_maps_range_and_moves_channels():
    x = torch.tensor([-1.0, 0.0, 1.0, 2.0, -3.0]).view(1, 5, 1).expand(3, 5, 1)[None]  # [1, 3, 5, 1]
    out = to_uint8(x)
    assert out.shape == (1, 5, 1, 3) and out.dtype == np.uint8
    assert out[0, :, 0, 0].tolist() == [0, 128, 255, 255, 0]
    with pytest.raises(ValueError, match=r"\[\.\.\., 3, H, W\]"):
        to_uint8(np.zeros((2, 4, 4)))


def test_strength_labels():
    assert [strength_label(a) for a in (-3, 0, 1.5, 3)] == ["-3.0", "0.0", "+1.5", "+3.0"]


def test_edit_grid_size_matches_layout_and_upscales_tiny_images(tmp_path):
    rows, steps = 2, 5
    path = edit_grid(ramp_images(rows, steps, size=32), np.linspace(-2, 2, steps), tmp_path / "g.png")
    cell = 96  # 32 px images are upscaled 3x so they can be seen
    with Image.open(path) as image:
        assert image.size == (PAD + steps * (cell + PAD), LINE + PAD + rows * (cell + PAD))
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_edit_grid_with_title_input_column_and_labels(tmp_path):
    rows, steps, size = 3, 4, 8
    images = ramp_images(rows, steps, size)
    inputs = torch.zeros(rows, 3, size, size)
    plain = edit_grid(images, [-1, 0, 1, 2], tmp_path / "plain.png", upscale=4, input_images=inputs,
                      title="Smiling, keep Male")
    cell = size * 4
    with Image.open(plain) as image:
        assert image.size == (PAD + cell + PAD + INPUT_GAP + steps * (cell + PAD),
                              LINE + PAD + LINE + PAD + rows * (cell + PAD))
        # the input column holds the (grey) input image, upscaled
        x, y = PAD + cell // 2, 2 * (LINE + PAD) + cell // 2
        assert image.getpixel((x, y)) == (128, 128, 128)
    labelled = edit_grid(images, [-1, 0, 1, 2], tmp_path / "labelled.png", upscale=4,
                         row_labels=["photo_1.jpg", "a" * 300, "c"])
    with Image.open(labelled) as image:
        assert image.size[0] > PAD + steps * (cell + PAD)  # room for the labels
        assert image.size[0] <= PAD + steps * (cell + PAD) + 220  # long labels are cut, not the grid widened


def test_edit_grid_marks_the_unedited_column(tmp_path):
    rows, steps, size, scale = 2, 5, 8, 12
    path = edit_grid(ramp_images(rows, steps, size), np.linspace(-2, 2, steps), tmp_path / "m.png",
                     marked_column=2, upscale=scale)
    cell = size * scale
    grid_top = LINE + PAD
    with Image.open(path) as image:
        image = image.convert("RGB")
        for j in range(steps):
            left = PAD + j * (cell + PAD)
            beside = (left - MARK_WIDTH + 1, grid_top + cell // 2)  # inside the outline band left of the cell
            expected = MARK_COLOUR if j == 2 else (255, 255, 255)
            assert image.getpixel(beside) == expected, j
        # the outline goes round every row and does not cover the images
        left = PAD + 2 * (cell + PAD)
        bottom_band = grid_top + rows * (cell + PAD) - PAD + 1
        assert image.getpixel((left + cell // 2, bottom_band)) == MARK_COLOUR
        assert image.getpixel((left + cell // 2, grid_top + cell // 2)) == tuple(to_uint8(
            ramp_images(rows, steps, size))[0, 2, 0, 0].tolist())


def test_edit_grid_rejects_mismatched_inputs(tmp_path):
    images = ramp_images(2, 3)
    with pytest.raises(ValueError, match="strengths: expected 3"):
        edit_grid(images, [0, 1], tmp_path / "x.png")
    with pytest.raises(ValueError, match="marked_column"):
        edit_grid(images, [0, 1, 2], tmp_path / "x.png", marked_column=3)
    with pytest.raises(ValueError, match="input_images"):
        edit_grid(images, [0, 1, 2], tmp_path / "x.png", input_images=torch.zeros(3, 3, 8, 8))
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("steps", [2, 5, 7])
def test_edit_gif_ping_pongs(tmp_path, steps):
    rows, size = 3, 8
    path = edit_gif(ramp_images(rows, steps, size), tmp_path / "a.gif", duration_ms=80,
                    strengths=np.linspace(-3, 3, steps))
    assert gif_frame_order(steps)[:steps] == list(range(steps))
    with Image.open(path) as gif:
        assert gif.n_frames == 2 * steps - 2
        assert gif.info["duration"] == 80
        cell = size * 12  # upscaled to at least 96 px
        assert gif.size == (PAD + rows * (cell + PAD), PAD + cell + PAD + LINE + PAD)
        brightness = [np.asarray(frame.convert("RGB"))[PAD + 2, PAD + 2, 0] for frame in ImageSequence.Iterator(gif)]
    # red channel follows the sweep: up to the last column, then back down
    assert brightness[: steps] == sorted(brightness[: steps])
    assert brightness[steps - 1:] == sorted(brightness[steps - 1:], reverse=True)


def test_edit_gif_without_captions_has_just_the_images(tmp_path):
    path = edit_gif(ramp_images(1, 3, 8), tmp_path / "b.gif", upscale=2)
    with Image.open(path) as gif:
        assert gif.n_frames == 4 and gif.size == (PAD + 16 + PAD, PAD + 16 + PAD)


def test_image_grid_arithmetic_and_long_captions(tmp_path):
    images = torch.rand(7, 3, 32, 32) * 2 - 1
    plain = image_grid(images, nrow=3, path=tmp_path / "plain.png")
    with Image.open(plain) as image:
        assert image.size == (PAD + 3 * (96 + PAD), PAD + 3 * (96 + PAD))
    labels = ["smile open glasses yaw +0.12", "x" * 500, " ".join(["word"] * 80), "", "a\nb\nc\nd\ne", "-", "z"]
    captioned = image_grid(images, nrow=4, path=tmp_path / "captioned.png", labels=labels)
    with Image.open(captioned) as image:
        # at most three caption lines under each row of cells
        assert image.size == (PAD + 4 * (96 + PAD), PAD + 2 * (96 + 3 * LINE + PAD))
        # the first image is pasted unchanged (nearest upscaling)
        assert image.getpixel((PAD, PAD)) == tuple(to_uint8(images)[0, 0, 0].tolist())
    with pytest.raises(ValueError, match="labels: expected 7"):
        image_grid(images, nrow=3, path=tmp_path / "bad.png", labels=["a"])
