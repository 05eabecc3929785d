"""Find the faces in photos and align them like CelebA's img_align_celeba (178x218, from 5 landmarks).

    python scripts/align_faces.py me.jpg holiday/ --out aligned/ [--face largest|all|N]

For each photo writes ``DIR/<stem>.png`` (the aligned face; ``<stem>-<k>.png`` for face k when several are
written) and ``DIR/<stem>.json``: ``landmarks`` [5, 2] in the photo's pixels in CelebA's order (left eye,
right eye, nose, left mouth corner, right mouth corner), ``score``, ``transform`` (2x3, photo -> aligned
pixels), ``box``, and ``faces`` (one entry per face written). Faces are numbered left to right. A photo with no
face is reported in one line naming it; the other photos are still written, and the exit code is 2.
See docs/own-photos.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common.align import (
    ALIGNED_SIZE,
    CELEBA_TEMPLATE,
    align_face,
    detect_faces,
    expand_image_paths,
    load_photo,
    pick_faces,
)
from common.checkpoint import atomic_write_text
from common.cli import UserError, run_main
from common.grids import atomic_save


def face_type(value: str) -> str:
    if value in ("largest", "all") or value.isdigit():
        return value
    raise argparse.ArgumentTypeError(f"{value!r}: expected largest, all or a face number (0 = leftmost)")


def align_photo(path: Path, out: Path, which: str) -> list[Path]:
    """Detect, align and write one photo's faces; returns the files written. UserError when it has no face."""
    photo = load_photo(path)
    faces = detect_faces(photo)
    if not faces:
        raise UserError(f"{path}: no face found ({photo.width}x{photo.height} photo)")
    try:
        chosen = pick_faces(faces, which)
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None
    several = len(chosen) > 1
    written, records = [], []
    for index, face in chosen:
        aligned, transform = align_face(photo, face.landmarks)
        name = f"{path.stem}-{index}.png" if several else f"{path.stem}.png"
        written.append(atomic_save(aligned, out / name, "PNG"))
        records.append({"face": index, "aligned": name, "landmarks": face.landmarks.round(3).tolist(),
                        "score": round(face.score, 6), "box": face.box.round(2).tolist(),
                        "transform": transform.round(8).tolist()})
    record = {"photo": str(path), "photo_size": list(photo.size), **records[0], "faces": records,
              "faces_found": len(faces), "aligned_size": list(ALIGNED_SIZE),
              "template": CELEBA_TEMPLATE.tolist(), "detector": "facenet-pytorch MTCNN",
              "transform_maps": "photo pixels -> aligned pixels: aligned = T[:, :2] @ xy + T[:, 2]"}
    json_path = out / f"{path.stem}.json"
    atomic_write_text(json_path, json.dumps(record, indent=2) + "\n")
    return [*written, json_path]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", metavar="PHOTO_OR_FOLDER", help="photos, or folders of photos")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--face", type=face_type, default="largest",
                        help="which faces: largest (default), all, or N (0 = leftmost)")
    args = parser.parse_args()
    paths = expand_image_paths(args.inputs)
    stems = {}
    for path in paths:
        if path.stem in stems:
            raise UserError(f"{path} and {stems[path.stem]}: same name, both would write {path.stem}.png")
        stems[path.stem] = path
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from tqdm import tqdm

    failures = []
    for path in tqdm(paths, desc="aligning", unit="photo", disable=len(paths) < 2, leave=False):
        try:
            written = align_photo(path, out, args.face)
        except UserError as exc:
            failures.append(str(exc))
            tqdm.write(f"error: {exc}", file=sys.stderr)
            continue
        if len(paths) < 2:
            print(f"wrote {', '.join(str(p) for p in written)}")
    done = len(paths) - len(failures)
    if len(paths) > 1:
        print(f"aligned {done} of {len(paths)} photos into {out}")
    return 2 if failures else 0


if __name__ == "__main__":
    run_main(main)
