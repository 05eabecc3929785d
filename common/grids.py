"""Pictures of edits and samples: labelled interpolation grids (PNG), ping-pong animations (GIF), contact sheets.

Inputs are model images, float in [-1, 1], shape ``[..., 3, H, W]`` (torch tensors or numpy arrays). Tiny
images (the 32x32 synthetic runs) are upscaled so every cell is at least ``MIN_CELL`` pixels wide and the
result can be looked at. Text uses PIL's default font; every file is written to a temporary name beside the
target and renamed into place, so a reader never sees half a picture.

Layout of ``edit_grid`` (all sizes in pixels, ``cell`` = H * upscale):
  width  = label_width + PAD + [cell + PAD + INPUT_GAP if an input column] + S * (cell + PAD)
  height = [LINE + PAD if a title] + LINE + PAD + R * (cell + PAD)
where label_width is 0 without row labels. The unedited column is outlined in ``MARK_COLOUR``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from common.checkpoint import atomic_path

PAD = 6  # gap between cells; the marker outline is drawn inside it
LINE = 16  # height of one line of text
INPUT_GAP = 10  # extra space separating the input column from the edits
MARK_WIDTH = 3  # thickness of the outline around the unedited column
MIN_CELL = 96  # automatic upscaling makes cells at least this wide
MAX_LABEL_WIDTH = 220  # row labels longer than this are cut with "..."
MAX_CAPTION_LINES = 3
BACKGROUND = (255, 255, 255)
TEXT_COLOUR = (20, 20, 20)
MARK_COLOUR = (220, 40, 30)
FONT_SIZE = 12


def _font():
    try:
        return ImageFont.load_default(size=FONT_SIZE)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def to_uint8(images) -> np.ndarray:
    """[-1, 1] images [..., 3, H, W] (torch or numpy) -> uint8 [..., H, W, 3], rounded and clipped."""
    if hasattr(images, "detach"):
        images = images.detach().float().cpu().numpy()
    x = np.asarray(images, dtype=np.float32)
    if x.ndim < 3 or x.shape[-3] != 3:
        raise ValueError(f"images: expected [..., 3, H, W] in [-1, 1], got shape {tuple(x.shape)}")
    x = np.nan_to_num(x, nan=0.0)
    pixels = np.clip(np.rint((x + 1.0) * 127.5), 0, 255).astype(np.uint8)
    return np.moveaxis(pixels, -3, -1)  # [..., H, W, 3]


def auto_upscale(height: int, upscale: int | None = None) -> int:
    """The integer factor that makes a cell at least MIN_CELL pixels (or ``upscale`` when given)."""
    if upscale is not None:
        if upscale < 1:
            raise ValueError(f"upscale: expected an integer >= 1, got {upscale}")
        return int(upscale)
    return max(1, math.ceil(MIN_CELL / height))


def _to_pil(pixels: np.ndarray, upscale: int, resample: str) -> Image.Image:
    """uint8 [H, W, 3] -> PIL image upscaled by an integer factor."""
    image = Image.fromarray(pixels, "RGB")
    if upscale == 1:
        return image
    method = {"nearest": Image.NEAREST, "bicubic": Image.BICUBIC}.get(resample)
    if method is None:
        raise ValueError(f"resample: expected 'nearest' or 'bicubic', got {resample!r}")
    return image.resize((image.width * upscale, image.height * upscale), method)


def atomic_save(image: Image.Image, path, format: str, **options) -> Path:
    """Save a PIL image to a temporary file beside ``path`` and rename it into place (``atomic_path``)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        image.save(tmp, format=format, **options)
    return path


def _fit_text(draw: ImageDraw.ImageDraw, text: str, width: float, font) -> str:
    """``text`` cut with "..." so it is at most ``width`` pixels wide."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def _wrap(draw: ImageDraw.ImageDraw, text: str, width: float, font, max_lines: int) -> list[str]:
    """Greedy word wrap to ``width`` pixels, at most ``max_lines`` lines (the last one cut with "...")."""
    lines: list[str] = []
    for paragraph in str(text).split("\n"):
        current = ""
        for word in paragraph.split(" "):
            candidate = f"{current} {word}" if current else word
            if draw.textlength(candidate, font=font) <= width or not current:
                current = candidate
            else:
                lines.append(current)
                current = word
        lines.append(current)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1] + " ..."
    return [_fit_text(draw, line, width, font) for line in lines]


def _centred(draw: ImageDraw.ImageDraw, text: str, x: float, y: float, width: float, font, fill) -> None:
    """Draw ``text`` horizontally centred in [x, x + width] with its line box starting at y."""
    text = _fit_text(draw, text, width, font)
    draw.text((x + (width - draw.textlength(text, font=font)) / 2, y + 1), text, fill=fill, font=font)


def strength_label(a: float) -> str:
    """Column header of an edit strength: "-3.0", "0.0", "+1.5"."""
    return "0.0" if abs(a) < 5e-10 else f"{a:+.1f}"


def edit_grid(images, strengths: Sequence[float], path, title: str | None = None,
              row_labels: Sequence[str] | None = None, marked_column: int | None = None, input_images=None,
              upscale: int | None = None, resample: str = "nearest",
              column_labels: Sequence[str] | None = None) -> Path:
    """Write a labelled PNG of edits: rows are images, columns are strengths.

    images [R, S, 3, H, W] in [-1, 1]; strengths [S] become the column headers (or ``column_labels`` [S], e.g.
    the targets of a walk in attribute units, "p=0.90"); ``marked_column`` (the
    unedited a = 0 column) is outlined; ``input_images`` [R, 3, H, W] add a first "input" column;
    ``row_labels`` [R] are written left of the rows. Returns the path written.
    """
    pixels = to_uint8(images)  # [R, S, H, W, 3]
    if pixels.ndim != 5:
        raise ValueError(f"images: expected [R, S, 3, H, W], got shape {tuple(np.shape(images))}")
    rows, steps, height = pixels.shape[0], pixels.shape[1], pixels.shape[2]
    strengths = [float(a) for a in strengths]
    if len(strengths) != steps:
        raise ValueError(f"strengths: expected {steps} values (one per column), got {len(strengths)}")
    headers = [strength_label(a) for a in strengths] if column_labels is None else [str(c) for c in column_labels]
    if len(headers) != steps:
        raise ValueError(f"column_labels: expected {steps} labels (one per column), got {len(headers)}")
    if marked_column is not None and not 0 <= marked_column < steps:
        raise ValueError(f"marked_column: expected 0..{steps - 1}, got {marked_column}")
    if row_labels is not None and len(row_labels) != rows:
        raise ValueError(f"row_labels: expected {rows} labels (one per row), got {len(row_labels)}")
    inputs = None
    if input_images is not None:
        inputs = to_uint8(input_images)  # [R, H, W, 3]
        if inputs.shape[0] != rows or inputs.shape[1:] != pixels.shape[2:]:
            raise ValueError(f"input_images: expected [{rows}, 3, {height}, {pixels.shape[3]}], got shape "
                             f"{tuple(np.shape(input_images))}")
    factor = auto_upscale(height, upscale)
    cell = height * factor
    font = _font()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_width = 0
    if row_labels is not None:
        longest = max(measure.textlength(str(label), font=font) for label in row_labels) if rows else 0
        label_width = int(min(MAX_LABEL_WIDTH, math.ceil(longest) + 2 * PAD))
    title_height = LINE + PAD if title else 0
    header_top = title_height
    grid_top = header_top + LINE + PAD
    input_width = cell + PAD + INPUT_GAP if inputs is not None else 0
    first_edit_x = label_width + PAD + input_width
    width = first_edit_x + steps * (cell + PAD)
    total_height = grid_top + rows * (cell + PAD)

    canvas = Image.new("RGB", (width, total_height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    if title:
        _centred(draw, title, 0, 0, width, font, TEXT_COLOUR)
    if inputs is not None:
        _centred(draw, "input", label_width + PAD, header_top, cell, font, TEXT_COLOUR)
    for j, header in enumerate(headers):
        colour = MARK_COLOUR if j == marked_column else TEXT_COLOUR
        _centred(draw, header, first_edit_x + j * (cell + PAD), header_top, cell, font, colour)
    for i in range(rows):
        y = grid_top + i * (cell + PAD)
        if row_labels is not None:
            text = _fit_text(draw, str(row_labels[i]), label_width - PAD, font)
            draw.text((PAD // 2, y + (cell - LINE) / 2), text, fill=TEXT_COLOUR, font=font)
        if inputs is not None:
            canvas.paste(_to_pil(inputs[i], factor, resample), (label_width + PAD, y))
        for j in range(steps):
            canvas.paste(_to_pil(pixels[i, j], factor, resample), (first_edit_x + j * (cell + PAD), y))
    if marked_column is not None and rows:
        x0 = first_edit_x + marked_column * (cell + PAD) - MARK_WIDTH
        y0 = grid_top - MARK_WIDTH
        x1 = x0 + cell + 2 * MARK_WIDTH - 1
        y1 = grid_top + rows * (cell + PAD) - PAD + MARK_WIDTH - 1
        draw.rectangle((x0, y0, x1, y1), outline=MARK_COLOUR, width=MARK_WIDTH)
    return atomic_save(canvas, path, "PNG")


def gif_frame_order(steps: int) -> list[int]:
    """Column indices of a ping-pong sweep: 0..S-1 then back S-2..1 (2S - 2 frames; [0] when S = 1)."""
    return list(range(steps)) + list(range(steps - 2, 0, -1))


def edit_gif(images, path, duration_ms: int = 120, strengths: Sequence[float] | None = None,
             upscale: int | None = None, resample: str = "nearest", captions: Sequence[str] | None = None) -> Path:
    """Write an animated GIF sweeping the strengths forward and back; each frame is the row of R images.

    images [R, S, 3, H, W] in [-1, 1]. With ``strengths`` a caption under each frame shows its strength;
    ``captions`` [S] give each frame's caption instead (e.g. "p=0.90").
    Pillow folds identical consecutive frames into one, so without captions a sweep that changes nothing
    has fewer frames.
    """
    pixels = to_uint8(images)  # [R, S, H, W, 3]
    if pixels.ndim != 5:
        raise ValueError(f"images: expected [R, S, 3, H, W], got shape {tuple(np.shape(images))}")
    rows, steps, height = pixels.shape[0], pixels.shape[1], pixels.shape[2]
    if captions is None and strengths is not None:
        captions = [f"strength {strength_label(float(a))}" for a in strengths]
    if captions is not None and len(captions) != steps:
        raise ValueError(f"strengths: expected {steps} values (one per frame), got {len(captions)}")
    factor = auto_upscale(height, upscale)
    cell = height * factor
    font = _font()
    caption = LINE + PAD if captions is not None else 0
    width = PAD + rows * (cell + PAD)
    total_height = PAD + cell + PAD + caption
    frames = []
    for j in gif_frame_order(steps):
        frame = Image.new("RGB", (width, total_height), BACKGROUND)
        for i in range(rows):
            frame.paste(_to_pil(pixels[i, j], factor, resample), (PAD + i * (cell + PAD), PAD))
        if captions is not None:
            _centred(ImageDraw.Draw(frame), str(captions[j]), 0, PAD + cell + PAD // 2, width, font, TEXT_COLOUR)
        frames.append(frame)
    return atomic_save(frames[0], path, "GIF", save_all=True, append_images=frames[1:], duration=duration_ms,
                       loop=0)


def image_grid(images, nrow: int, path, labels: Sequence[str] | None = None, upscale: int | None = None,
               resample: str = "nearest") -> Path:
    """Write a contact sheet of images [N, 3, H, W] in [-1, 1], ``nrow`` images per row.

    ``labels`` [N] are captions under the cells, word-wrapped to the cell width (at most MAX_CAPTION_LINES
    lines, longer text cut with "...").
    """
    pixels = to_uint8(images)  # [N, H, W, 3]
    if pixels.ndim != 4:
        raise ValueError(f"images: expected [N, 3, H, W], got shape {tuple(np.shape(images))}")
    if nrow < 1:
        raise ValueError(f"nrow: expected at least 1 image per row, got {nrow}")
    count, height = pixels.shape[0], pixels.shape[1]
    if labels is not None and len(labels) != count:
        raise ValueError(f"labels: expected {count} captions (one per image), got {len(labels)}")
    factor = auto_upscale(height, upscale)
    cell = height * factor
    columns = min(nrow, max(count, 1))
    grid_rows = max(1, math.ceil(count / nrow))
    font = _font()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    wrapped = [_wrap(measure, str(text), cell, font, MAX_CAPTION_LINES) for text in labels] if labels else []
    caption_height = max((len(lines) for lines in wrapped), default=0) * LINE
    row_height = cell + caption_height + PAD
    canvas = Image.new("RGB", (PAD + columns * (cell + PAD), PAD + grid_rows * row_height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for k in range(count):
        x = PAD + (k % nrow) * (cell + PAD)
        y = PAD + (k // nrow) * row_height
        canvas.paste(_to_pil(pixels[k], factor, resample), (x, y))
        for line_number, line in enumerate(wrapped[k] if wrapped else []):
            draw.text((x, y + cell + line_number * LINE + 1), line, fill=TEXT_COLOUR, font=font)
    return atomic_save(canvas, path, "PNG")
