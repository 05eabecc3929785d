"""CelebA's label files, read exactly as distributed, and the yaw score derived from its landmarks.

Two distributions are understood and detected automatically by ``find_layout``:

- official (also torchvision's, which adds a ``celeba/`` level): ``img_align_celeba/*.jpg`` plus
  ``list_attr_celeba.txt``, ``list_eval_partition.txt``, ``list_landmarks_align_celeba.txt``,
  ``list_bbox_celeba.txt`` and ``identity_CelebA.txt`` (space-separated, CRLF line ends, count line and header);
- Kaggle: ``img_align_celeba/img_align_celeba/*.jpg`` plus ``list_attr_celeba.csv``,
  ``list_eval_partition.csv``, ``list_landmarks_align_celeba.csv``, ``list_bbox_celeba.csv`` (comma-separated
  with a header row ``image_id,...``; no identity file).

The synthetic stand-in (``common.synthetic``) adds ``synthetic_factors.txt`` / ``.csv`` with its true
continuous factors. Every malformed line raises ``CelebAFormatError("<file>:<line>: <what was expected>")``.
Attributes are mapped from CelebA's -1/+1 to 0/1, like torchvision does.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.attributes import CELEBA_ATTRIBUTES, suggest


class CelebAFormatError(ValueError):
    """A CelebA file or folder that is not as distributed; the message is ``<file>:<line>: <expected ...>``."""


LANDMARK_NAMES: tuple[str, ...] = (
    "lefteye_x", "lefteye_y", "righteye_x", "righteye_y", "nose_x", "nose_y",
    "leftmouth_x", "leftmouth_y", "rightmouth_x", "rightmouth_y",
)
BBOX_NAMES: tuple[str, ...] = ("x_1", "y_1", "width", "height")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
IMAGE_FOLDERS = ("img_align_celeba", "img_align_celeba_png")

# Base names of the label files; the official layout adds ".txt", the Kaggle one ".csv".
ATTR, PARTITION, LANDMARKS, BBOX, IDENTITY, FACTORS = (
    "list_attr_celeba", "list_eval_partition", "list_landmarks_align_celeba", "list_bbox_celeba",
    "identity_CelebA", "synthetic_factors",
)
REQUIRED = (ATTR, PARTITION, LANDMARKS)  # attributes, split and yaw are what the project needs
OPTIONAL = (BBOX, IDENTITY, FACTORS)

EXPECTED_LAYOUTS = (
    "expected one of: official = ROOT/img_align_celeba/000001.jpg... with ROOT/list_attr_celeba.txt, "
    "list_eval_partition.txt, list_landmarks_align_celeba.txt (optional list_bbox_celeba.txt, identity_CelebA.txt); "
    "torchvision = the same inside ROOT/celeba/; kaggle = ROOT/img_align_celeba/img_align_celeba/000001.jpg... "
    "with ROOT/list_attr_celeba.csv, list_eval_partition.csv, list_landmarks_align_celeba.csv "
    "(optional list_bbox_celeba.csv)"
)


# ----------------------------------------------------------------------------------------------- layout


@dataclass
class CelebALayout:
    """Where one copy of CelebA keeps its images and label files."""

    name: str  # "official", "torchvision" or "kaggle"
    base: Path  # folder holding the label files
    image_dir: Path
    files: dict[str, Path]  # base name (ATTR, PARTITION, ...) -> path of the files that exist

    @property
    def label_files(self) -> list[Path]:
        return [self.files[k] for k in (*REQUIRED, *OPTIONAL) if k in self.files]

    def describe(self) -> str:
        """One line for the user saying which layout was found and where."""
        optional = [self.files[k].name for k in OPTIONAL if k in self.files]
        missing = [k for k in (BBOX, IDENTITY) if k not in self.files]
        text = (f"CelebA {self.name} layout in {self.base}: images in {self.image_dir}, labels "
                f"{', '.join(self.files[k].name for k in REQUIRED)}")
        if optional:
            text += f" + {', '.join(optional)}"
        if missing:
            text += f" (no {', '.join(missing)})"
        return text


def _layout_at(base: Path, name: str) -> CelebALayout | None:
    """The layout rooted exactly at ``base`` if its attribute file and image folder exist there."""
    ext = ".csv" if name == "kaggle" else ".txt"
    if not (base / (ATTR + ext)).is_file():
        return None
    # CelebA's own PNG distribution names its folder img_align_celeba_png (its label files still say .jpg)
    image_dir = next((base / folder for folder in IMAGE_FOLDERS if (base / folder).is_dir()), None)
    if image_dir is None:
        return None
    if name == "kaggle" and (image_dir / image_dir.name).is_dir():
        image_dir = image_dir / image_dir.name  # the Kaggle zip nests the folder in itself
    files = {key: base / (key + ext) for key in (*REQUIRED, *OPTIONAL) if (base / (key + ext)).is_file()}
    missing = [key + ext for key in REQUIRED if key not in files]
    if missing:
        raise CelebAFormatError(
            f"{base}:0: found {ATTR + ext} and img_align_celeba/ but not {', '.join(missing)}; {EXPECTED_LAYOUTS}"
        )
    return CelebALayout(name=name, base=base, image_dir=image_dir, files=files)


def find_layout(root: str | os.PathLike) -> CelebALayout:
    """Detect how CelebA is laid out under ``root`` (official, torchvision's ``celeba/`` level, or Kaggle)."""
    root = Path(root)
    if not root.is_dir():
        raise CelebAFormatError(f"{root}:0: CelebA folder does not exist; {EXPECTED_LAYOUTS}")
    for base, name in ((root, "official"), (root / "celeba", "torchvision"), (root, "kaggle"),
                       (root / "celeba", "kaggle")):
        if base.is_dir():
            layout = _layout_at(base, name)
            if layout is not None:
                return layout
    present = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())
    shown = ", ".join(present[:12]) + (f", ... ({len(present)} entries)" if len(present) > 12 else "")
    raise CelebAFormatError(
        f"{root}:0: CelebA not found (the folder holds: {shown or 'nothing'}); {EXPECTED_LAYOUTS}"
    )


# ----------------------------------------------------------------------------------------------- parsing


@dataclass
class LabelTable:
    """One parsed label file: a row per image, in file order."""

    path: Path
    filenames: list[str]
    values: np.ndarray  # [N, K] (dtype depends on the file)
    columns: list[str]
    lines: np.ndarray  # [N] 1-based line number of each row, for error messages


def _read_lines(path: Path) -> list[tuple[int, str]]:
    """Non-blank lines with their 1-based numbers; CRLF/LF both accepted, trailing spaces kept out."""
    try:
        text = Path(path).read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CelebAFormatError(f"{path}:0: expected a UTF-8/ASCII text file ({exc.reason})") from None
    return [(i + 1, line.strip()) for i, line in enumerate(text.splitlines()) if line.strip()]


def _split(line: str, csv: bool) -> list[str]:
    # The official files right-align values, so one or two spaces separate them: split on any whitespace.
    return [part.strip() for part in line.split(",")] if csv else line.split()


def _check_header(path: Path, line_no: int, names: list[str], expected: tuple[str, ...] | None,
                  what: str) -> None:
    if expected is None or tuple(names) == expected:
        return
    for name in names:
        if name not in expected:
            close = suggest(name, expected)
            hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
            raise CelebAFormatError(f"{path}:{line_no}: unknown {what} name {name!r}{hint}; expected the "
                                    f"{len(expected)} names {expected[0]} ... {expected[-1]} in CelebA's order")
    missing = [n for n in expected if n not in names]
    if missing:
        raise CelebAFormatError(f"{path}:{line_no}: header lacks {what} names {', '.join(missing[:5])}; expected "
                                f"the {len(expected)} names in CelebA's order")
    column = next((i for i, (got, want) in enumerate(zip(names, expected)) if got != want), None)
    if column is None:
        raise CelebAFormatError(f"{path}:{line_no}: header has {len(names)} {what} names; expected the "
                                f"{len(expected)} names {expected[0]} ... {expected[-1]}")
    raise CelebAFormatError(f"{path}:{line_no}: {what} names out of order or duplicated (column {column + 1} is "
                            f"{names[column]!r}, expected {expected[column]!r}); expected the {len(expected)} "
                            f"names in CelebA's order")


def parse_label_file(path: str | os.PathLike, *, has_count: bool, has_header: bool,
                     expected_columns: tuple[str, ...] | None = None, num_values: int | None = None,
                     dtype=np.int64, allowed: tuple | None = None, strict_count: bool = True,
                     what: str = "column") -> LabelTable:
    """Parse one label file (official ``.txt`` or Kaggle ``.csv``, chosen by suffix) into a ``LabelTable``.

    ``.txt``: optional count line, optional header of column names (without ``image_id``), then rows
    ``filename v v ...``. ``.csv``: a header ``image_id,name,...`` and rows ``filename,v,...`` (no count line).
    Every row must have the same number of values (``num_values``, or the header's length), values must be
    in ``allowed`` when given, filenames unique, and the count line (when ``strict_count``) must equal the rows.
    """
    path = Path(path)
    csv = path.suffix.lower() == ".csv"
    lines = _read_lines(path)
    pos = 0
    count = None
    if has_count and not csv:
        if not lines:
            raise CelebAFormatError(f"{path}:1: expected a count line (the number of images), got an empty file")
        line_no, text = lines[0]
        if not text.isdigit():
            raise CelebAFormatError(f"{path}:{line_no}: expected a count line (the number of images), got {text!r}")
        count, pos = int(text), 1
    columns: list[str] = []
    if has_header or csv:
        if pos >= len(lines):
            raise CelebAFormatError(f"{path}:{pos + 1}: expected a header line of column names, got end of file")
        line_no, text = lines[pos]
        columns = _split(text, csv)
        if csv:
            if not columns or columns[0] != "image_id":
                raise CelebAFormatError(f"{path}:{line_no}: expected a header starting with 'image_id', got {text!r}")
            columns = columns[1:]
        _check_header(path, line_no, columns, expected_columns, what)
        pos += 1
    if num_values is None:
        num_values = len(columns)
    rows = lines[pos:]
    if count is not None and strict_count and count != len(rows):
        raise CelebAFormatError(f"{path}:{lines[0][0]}: count line says {count} images but {len(rows)} rows follow")
    separator = "," if csv else None
    filenames, rests = [], []
    for _, text in rows:  # only the filename is split off per row; the values are parsed in one go below
        name, *rest = text.split(separator, 1)
        filenames.append(name.strip())
        rests.append(rest[0] if rest else "")
    line_numbers = np.array([n for n, _ in rows], dtype=np.int64)
    values = _convert(path, rows, rests, line_numbers, num_values, dtype, allowed, csv)
    if len(set(filenames)) != len(filenames):
        seen: dict[str, int] = {}
        for name, line_no in zip(filenames, line_numbers):
            if name in seen:
                raise CelebAFormatError(f"{path}:{line_no}: duplicate filename {name!r} (first on line {seen[name]}); "
                                        "expected each image once")
            seen[name] = int(line_no)
    return LabelTable(path, filenames, values, columns, line_numbers)


def _tokens_per_row(blob: bytes, num_rows: int) -> np.ndarray:
    """Number of whitespace-separated tokens on each line of ``blob`` (vectorised: CelebA has 200k rows)."""
    chars = np.frombuffer(blob, dtype=np.uint8)
    space = (chars == 32) | (chars == 10) | (chars == 9) | (chars == 13)
    starts = ~space & np.concatenate([[True], space[:-1]])  # first character of each token
    token_starts = np.flatnonzero(starts)  # [tokens] byte offsets
    row_starts = np.concatenate([[0], np.flatnonzero(chars == 10) + 1])  # [rows] byte offset of each line
    bounds = np.searchsorted(token_starts, np.concatenate([row_starts, [len(chars)]]))  # [rows + 1]
    return np.diff(bounds)[:num_rows]  # tokens between consecutive line starts


def _convert(path: Path, rows: list[tuple[int, str]], rests: list[str], line_numbers: np.ndarray, num_values: int,
             dtype, allowed: tuple | None, csv: bool) -> np.ndarray:
    """The value part of every row -> numbers [N, num_values], naming the first bad line on error.

    The fast path parses all rows with one ``np.fromstring``; only when that fails are rows scanned one by
    one to find the offending token (a per-row split of CelebA's 8M values takes seconds).
    """
    if not rows:
        return np.zeros((0, num_values), dtype=dtype)
    text = "\n".join(rest.replace(",", " ") for rest in rests) if csv else "\n".join(rests)
    blob = text.encode("ascii", errors="replace")  # non-ASCII becomes '?', which then fails to parse
    counts = _tokens_per_row(blob, len(rows))
    wrong = np.flatnonzero(counts != num_values)
    if len(wrong):
        i = int(wrong[0])
        raise CelebAFormatError(f"{path}:{line_numbers[i]}: expected a filename and {num_values} values, got "
                                f"{counts[i]} values in {rows[i][1][:80]!r}")
    kind = "integers" if np.issubdtype(dtype, np.integer) else "numbers"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # older numpy warns (newer raises) when a token does not parse
            flat = np.fromstring(blob, dtype=np.int64 if kind == "integers" else np.float64, sep=" ")
    except ValueError:
        flat = np.zeros(0)
    if flat.size != len(rows) * num_values:
        for (line_no, _), rest in zip(rows, rests):
            for token in _split(rest, csv):
                try:
                    int(token) if kind == "integers" else float(token)
                except ValueError:
                    raise CelebAFormatError(f"{path}:{line_no}: expected {kind}, got {token!r}") from None
        raise CelebAFormatError(f"{path}:0: expected {len(rows) * num_values} {kind}, parsed {flat.size}")
    values = flat.reshape(len(rows), num_values)
    if kind == "numbers" and not np.isfinite(values).all():
        bad = int(np.argwhere(~np.isfinite(values))[0, 0])
        raise CelebAFormatError(f"{path}:{line_numbers[bad]}: expected finite numbers, got nan/inf")
    if allowed is not None:
        ok = np.isin(values, np.array(allowed))
        if not ok.all():
            bad_row, bad_col = (int(v) for v in np.argwhere(~ok)[0])
            shown = "/".join(str(a) for a in allowed)
            token = _split(rests[bad_row], csv)[bad_col]
            raise CelebAFormatError(f"{path}:{line_numbers[bad_row]}: expected values {shown}, got {token!r} in "
                                    f"column {bad_col + 2}")
    return values.astype(dtype)


def parse_attr_file(path: str | os.PathLike, strict_count: bool = True) -> LabelTable:
    """``list_attr_celeba.txt``/``.csv`` -> table with ``values`` int8 [N, 40] in {0, 1} (mapped from -1/+1)."""
    table = parse_label_file(path, has_count=True, has_header=True, expected_columns=CELEBA_ATTRIBUTES,
                             dtype=np.int8, allowed=(-1, 1), strict_count=strict_count, what="attribute")
    table.values = ((table.values + 1) // 2).astype(np.int8)  # [N, 40]
    return table


def parse_partition_file(path: str | os.PathLike) -> LabelTable:
    """``list_eval_partition.txt`` (no count, no header) / ``.csv`` -> ``values`` int8 [N] in 0/1/2."""
    table = parse_label_file(path, has_count=False, has_header=False, expected_columns=("partition",),
                             num_values=1, dtype=np.int8, allowed=(0, 1, 2))
    table.values = table.values[:, 0]  # [N]
    return table


def parse_landmarks_file(path: str | os.PathLike, strict_count: bool = True) -> LabelTable:
    """``list_landmarks_align_celeba.txt``/``.csv`` -> ``values`` float32 [N, 10] (aligned 178x218 pixels)."""
    table = parse_label_file(path, has_count=True, has_header=True, expected_columns=LANDMARK_NAMES,
                             dtype=np.int64, strict_count=strict_count, what="landmark")
    table.values = table.values.astype(np.float32)  # [N, 10]
    return table


def parse_bbox_file(path: str | os.PathLike, strict_count: bool = True) -> LabelTable:
    """``list_bbox_celeba.txt`` (header ``image_id x_1 y_1 width height``) / ``.csv`` -> ``values`` int32 [N, 4]."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        table = parse_label_file(path, has_count=False, has_header=True, expected_columns=BBOX_NAMES,
                                 dtype=np.int64, what="bbox")
    else:
        # The official header names the filename column too, so it is checked with it and then dropped.
        table = parse_label_file(path, has_count=True, has_header=True, num_values=4,
                                 expected_columns=("image_id", *BBOX_NAMES), dtype=np.int64,
                                 strict_count=strict_count, what="bbox")
        table.columns = list(BBOX_NAMES)
    table.values = table.values.astype(np.int32)  # [N, 4]
    return table


def parse_identity_file(path: str | os.PathLike) -> LabelTable:
    """``identity_CelebA.txt`` (no count, no header) -> ``values`` int32 [N]."""
    table = parse_label_file(path, has_count=False, has_header=False, num_values=1, dtype=np.int64)
    table.values = table.values[:, 0].astype(np.int32)  # [N]
    return table


def parse_factors_file(path: str | os.PathLike, strict_count: bool = True) -> LabelTable:
    """``synthetic_factors.txt``/``.csv`` -> ``values`` float32 [N, F], factor names in ``columns``."""
    table = parse_label_file(path, has_count=True, has_header=True, dtype=np.float32,
                             strict_count=strict_count, what="factor")
    table.values = table.values.astype(np.float32)  # [N, F]
    return table


# ----------------------------------------------------------------------------------------------- the index


@dataclass
class CelebAIndex:
    """Every label of one CelebA copy, aligned row by row with ``filenames`` (the attribute file's order)."""

    filenames: list[str]
    attributes: np.ndarray  # [N, 40] int8 in {0, 1}
    landmarks: np.ndarray  # [N, 10] float32, aligned 178x218 coordinates
    partition: np.ndarray  # [N] int8: 0 train, 1 valid, 2 test
    identity: np.ndarray | None  # [N] int32
    bbox: np.ndarray | None  # [N, 4] int32 (x_1, y_1, width, height of the in-the-wild image)
    image_dir: Path
    layout: str
    label_files: list[Path]
    factors: np.ndarray | None = None  # [N, F] float32 (synthetic set only)
    factor_names: list[str] = field(default_factory=list)
    description: str = ""
    image_files: list[str] = field(default_factory=list)  # [N] names on disk (000001.png where labels say .jpg)
    missing: list[str] = field(default_factory=list)  # listed images left out by only_present (label names)
    listed: int = 0  # images the label files list (len(self) + len(self.missing))

    def __post_init__(self):
        if not self.image_files:
            self.image_files = list(self.filenames)
        self.listed = self.listed or len(self.filenames) + len(self.missing)

    def subset(self, keep: np.ndarray) -> CelebAIndex:
        """The rows where ``keep`` (bool [N]) is True, every label array sliced alike."""
        def rows(array):
            return None if array is None else array[keep]

        picked = np.flatnonzero(keep)
        return CelebAIndex(
            filenames=[self.filenames[i] for i in picked], attributes=self.attributes[keep],
            landmarks=self.landmarks[keep], partition=self.partition[keep], identity=rows(self.identity),
            bbox=rows(self.bbox), image_dir=self.image_dir, layout=self.layout, label_files=self.label_files,
            factors=rows(self.factors), factor_names=self.factor_names, description=self.description,
            image_files=[self.image_files[i] for i in picked],
            missing=self.missing + [self.filenames[i] for i in np.flatnonzero(~keep)], listed=self.listed)

    def __len__(self) -> int:
        return len(self.filenames)

    @property
    def yaw(self) -> np.ndarray:
        return yaw_from_landmarks(self.landmarks)  # [N]

    def split_counts(self) -> dict[str, int]:
        return {name: int((self.partition == code).sum()) for code, name in enumerate(("train", "valid", "test"))}


def _align(reference: LabelTable, other: LabelTable) -> np.ndarray:
    """``other.values`` reordered to the reference file's filename order, or an error naming both files."""
    if other.filenames == reference.filenames:
        return other.values
    position = {name: i for i, name in enumerate(other.filenames)}
    for name, line_no in zip(reference.filenames, reference.lines):
        if name not in position:
            raise CelebAFormatError(f"{reference.path}:{line_no}: {name!r} has no row in {other.path}; expected "
                                    "both files to list the same images")
    listed = set(reference.filenames)
    for name, line_no in zip(other.filenames, other.lines):
        if name not in listed:
            raise CelebAFormatError(f"{other.path}:{line_no}: {name!r} is not listed in {reference.path}; expected "
                                    "both files to list the same images")
    return other.values[np.array([position[name] for name in reference.filenames], dtype=np.int64)]


def read_celeba(root: str | os.PathLike, check_images: bool = True, only_present: bool = False) -> CelebAIndex:
    """Read every label file of the CelebA copy under ``root`` (layout detected by ``find_layout``).

    Rows follow ``list_attr_celeba``'s order; every other file must list exactly the same images. With
    ``check_images`` each listed image must exist in the image folder (``000001.png`` stands for a listed
    ``000001.jpg``, as in CelebA's PNG distribution); a partial copy is an error unless ``only_present``, which
    keeps the rows whose image is there and records the others in ``missing``.
    """
    layout = find_layout(root)
    files = layout.files
    attr = parse_attr_file(files[ATTR])
    if not attr.filenames:
        raise CelebAFormatError(f"{files[ATTR]}:{len(_read_lines(files[ATTR])) + 1}: expected at least one image row")
    partition = _align(attr, parse_partition_file(files[PARTITION]))
    landmarks = _align(attr, parse_landmarks_file(files[LANDMARKS]))
    bbox = _align(attr, parse_bbox_file(files[BBOX])) if BBOX in files else None
    identity = _align(attr, parse_identity_file(files[IDENTITY])) if IDENTITY in files else None
    factors, factor_names = None, []
    if FACTORS in files:
        table = parse_factors_file(files[FACTORS])
        factors, factor_names = _align(attr, table), list(table.columns)
    index = CelebAIndex(filenames=attr.filenames, attributes=attr.values, landmarks=landmarks, partition=partition,
                        identity=identity, bbox=bbox, image_dir=layout.image_dir, layout=layout.name,
                        label_files=layout.label_files, factors=factors, factor_names=factor_names,
                        description=layout.describe())
    if check_images:
        index.image_files, present = find_image_files(layout.image_dir, attr, only_present)
        if not present.all():
            index = index.subset(present)
    return index


def find_image_files(image_dir: Path, table: LabelTable, only_present: bool = False) -> tuple[list[str], np.ndarray]:
    """The file on disk of each image ``table`` lists, and which are there (bool [N]).

    One directory listing (fast for 200k files). A listed ``000001.jpg`` is found as itself or, failing that, as
    the same stem with another image extension (CelebA's PNG copy keeps ``.jpg`` in its label files). Images
    that are not there are an error naming how many and the first few, unless ``only_present``.
    """
    on_disk = set(os.listdir(image_dir))
    by_stem: dict[str, str] = {}
    for name in on_disk:
        stem, ext = os.path.splitext(name)
        if ext.lower() in IMAGE_EXTENSIONS:
            by_stem.setdefault(stem, name)
    files = [name if name in on_disk else by_stem.get(os.path.splitext(name)[0], "") for name in table.filenames]
    present = np.array([bool(name) for name in files], dtype=bool)
    missing = np.flatnonzero(~present)
    if len(missing) == len(files):
        first = int(missing[0])
        raise CelebAFormatError(f"{table.path}:{table.lines[first]}: image {table.filenames[first]!r} is listed but "
                                f"not in {image_dir}, nor is any other of the {len(files)} listed images; expected "
                                "the images the label files name (000001.jpg or .png, ...)")
    if len(missing) and not only_present:
        first = int(missing[0])
        shown = ", ".join(table.filenames[i] for i in missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise CelebAFormatError(f"{table.path}:{table.lines[first]}: image {table.filenames[first]!r} is listed but "
                                f"not in {image_dir} ({len(missing)} of {len(files)} listed images are missing: "
                                f"{shown}); a partial download? --only-present goes on with the "
                                f"{len(files) - len(missing)} that are there")
    return files, present


# ----------------------------------------------------------------------------------------------- yaw


def yaw_from_landmarks(landmarks):
    """Signed yaw score from CelebA's five landmarks; works on numpy arrays and torch tensors.

    ``landmarks [..., 10]`` in CelebA's column order (lefteye_x, lefteye_y, righteye_x, righteye_y, nose_x,
    nose_y, leftmouth_x, leftmouth_y, rightmouth_x, rightmouth_y) -> ``yaw [...]``:

        yaw = (nose_x - (eye_mid_x + mouth_mid_x) / 2) / (righteye_x - lefteye_x)

    with ``eye_mid_x = (lefteye_x + righteye_x) / 2`` and ``mouth_mid_x = (leftmouth_x + rightmouth_x) / 2``.
    The nose's offset from the face's vertical midline, in units of the eye distance, so it does not depend
    on the face's size. Positive means the nose is towards the image's right (the person turned to their own
    left). A horizontal flip negates it (x -> W - x swaps left/right points and reverses every difference).
    Frontal faces give ~0; CelebA's spread is roughly -0.5..0.5.
    """
    lefteye_x, righteye_x, nose_x = landmarks[..., 0], landmarks[..., 2], landmarks[..., 4]
    leftmouth_x, rightmouth_x = landmarks[..., 6], landmarks[..., 8]
    eye_mid_x = (lefteye_x + righteye_x) / 2  # [...]
    mouth_mid_x = (leftmouth_x + rightmouth_x) / 2  # [...]
    return (nose_x - (eye_mid_x + mouth_mid_x) / 2) / (righteye_x - lefteye_x)  # [...]
